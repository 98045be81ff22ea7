"""PPO steps per second of rlkit against its peers at identical hyperparameters, side by side.

Peers: Stable-Baselines3, CleanRL (its ppo_continuous_action.py, run from a copy OUTSIDE this
repository: pass --cleanrl PATH; nothing of it is committed), TorchRL and skrl.  Every library
runs CleanRL's MuJoCo settings: a 2,048-step batch (1 env x 2,048 steps, or 8 envs x 256),
10 epochs of 32 minibatches of 64, Adam 3e-4 annealed, gamma 0.99, lambda 0.95, clip 0.2 on
policy and value, entropy 0, value 0.5, gradient clip 0.5, separate 64x64 tanh nets, a
state-independent log-std, observation and reward normalisation, CPU, one torch thread.

Each library normalises the way its users do: rlkit its vector-env normalisers, SB3
VecNormalize, CleanRL (its own script), TorchRL and skrl gymnasium's NormalizeObservation /
NormalizeReward wrappers inside each env (the same stack CleanRL builds).  Floors, measured in
the same run: the bare env (gym.make(...).unwrapped, actions drawn beforehand) and rlkit's env
stack alone (its vector env and wrappers, actions drawn beforehand).

Every run is a fresh process; the repeats are interleaved (repeat 1 of every library, then
repeat 2, ...) so machine noise hits all alike; the table gives medians and, per peer, the
median of the per-repeat ratios rlkit / peer.

    python benchmarks/sps_vs_peers.py --setup /tmp/rlkit-peers-venv --cleanrl /path/to/ppo_continuous_action.py

--setup VENV creates that venv (torch==2.13.0 CPU, this checkout with [mujoco],
stable-baselines3, torchrl, skrl, tyro, tensorboard) unless it exists, and runs every library
in it, so all share one torch and one gymnasium.  Writes benchmarks/results/sps_vs_peers/.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from sps_vs_sb3 import run_bare, run_raw  # noqa: E402  (the same floors as the SB3 benchmark)
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results", "sps_vs_peers")
BATCH, MINIBATCHES, EPOCHS, LR, GAMMA, LAMBDA, CLIP, ENT, VF, MAX_GRAD = 2048, 32, 10, 3e-4, 0.99, 0.95, 0.2, 0.0, 0.5, 0.5
PEERS = ["sb3", "cleanrl", "torchrl", "skrl"]


def gym_wrapped_env(env_id: str):
    """One env with CleanRL's wrapper stack (the peers that take a gymnasium env use it)."""
    import gymnasium as gym
    import numpy as np

    env = gym.make(env_id)
    env = gym.wrappers.RecordEpisodeStatistics(env)
    env = gym.wrappers.ClipAction(env)
    env = gym.wrappers.NormalizeObservation(env)
    env = gym.wrappers.TransformObservation(env, lambda obs: np.clip(obs, -10, 10), env.observation_space)
    env = gym.wrappers.NormalizeReward(env, gamma=GAMMA)
    return gym.wrappers.TransformReward(env, lambda r: np.clip(r, -10, 10))


# --- one library per function: steps and wall seconds of its training call -----------------------

def run_rlkit(env_id: str, steps: int, num_envs: int) -> float:
    from rlkit.ppo import PPOConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = PPOConfig(env_id=env_id, total_timesteps=steps, num_envs=num_envs, num_steps=BATCH // num_envs,
                        num_minibatches=MINIBATCHES, update_epochs=EPOCHS, learning_rate=LR, gamma=GAMMA,
                        gae_lambda=LAMBDA, clip_coef=CLIP, ent_coef=ENT, vf_coef=VF, max_grad_norm=MAX_GRAD,
                        device="cpu", torch_threads=1, run_dir=tmp, checkpoint_interval=0)
        result = train(cfg, run_name="run", progress=False)
    return result.global_step / result.wall_time


def run_sb3(env_id: str, steps: int, num_envs: int) -> float:
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    env = VecNormalize(DummyVecEnv([lambda: gym.make(env_id)] * num_envs), gamma=GAMMA)
    model = PPO("MlpPolicy", env, n_steps=BATCH // num_envs, batch_size=BATCH // MINIBATCHES, n_epochs=EPOCHS,
                learning_rate=lambda progress: progress * LR, gamma=GAMMA, gae_lambda=LAMBDA, clip_range=CLIP,
                clip_range_vf=CLIP, ent_coef=ENT, vf_coef=VF, max_grad_norm=MAX_GRAD,
                policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64]), activation_fn=torch.nn.Tanh, log_std_init=0.0),
                device="cpu", seed=1, verbose=0)
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    return steps / (time.perf_counter() - start)


def run_cleanrl(env_id: str, steps: int, num_envs: int, script: str) -> float:
    """CleanRL's own script, unmodified, in this process; the rate it prints at its end.  gymnasium 1.x needs TransformObservation's
    observation space, which CleanRL's call leaves out: it is filled in for the script."""
    import contextlib
    import io
    import runpy

    import gymnasium as gym

    original = gym.wrappers.TransformObservation

    def transform_observation(env, func, observation_space=None):
        return original(env, func, observation_space or env.observation_space)

    gym.wrappers.TransformObservation = transform_observation
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # its runs/ (TensorBoard) folder
        sys.argv = [script, "--env-id", env_id, "--total-timesteps", str(steps), "--num-envs", str(num_envs),
                    "--num-steps", str(BATCH // num_envs), "--no-cuda", "--seed", "1"]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            runpy.run_path(script, run_name="__main__")
    # its own last "SPS: n" line: global_step / seconds since its loop started, as it reports it
    return float([line for line in printed.getvalue().splitlines() if line.startswith("SPS:")][-1].split()[1])


def run_torchrl(env_id: str, steps: int, num_envs: int) -> float:
    import torch
    from tensordict.nn import AddStateIndependentNormalScale, TensorDictModule
    from torchrl.collectors import Collector
    from torchrl.data import LazyTensorStorage, ReplayBuffer
    from torchrl.data.replay_buffers.samplers import SamplerWithoutReplacement
    from torchrl.envs import DoubleToFloat, GymWrapper, SerialEnv, TransformedEnv
    from torchrl.modules import MLP, IndependentNormal, ProbabilisticActor, ValueOperator
    from torchrl.objectives import ClipPPOLoss
    from torchrl.objectives.value import GAE

    def make_env():
        return TransformedEnv(GymWrapper(gym_wrapped_env(env_id)), DoubleToFloat())

    env = make_env() if num_envs == 1 else SerialEnv(num_envs, make_env)
    obs_dim, act_dim = env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1]
    net = torch.nn.Sequential(MLP(in_features=obs_dim, out_features=act_dim, num_cells=[64, 64],
                                  activation_class=torch.nn.Tanh),
                              AddStateIndependentNormalScale(act_dim, scale_mapping="exp"))
    actor = ProbabilisticActor(TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
                               in_keys=["loc", "scale"], spec=env.action_spec, distribution_class=IndependentNormal,
                               return_log_prob=True)
    critic = ValueOperator(MLP(in_features=obs_dim, out_features=1, num_cells=[64, 64], activation_class=torch.nn.Tanh),
                           in_keys=["observation"])
    advantage = GAE(gamma=GAMMA, lmbda=LAMBDA, value_network=critic, average_gae=False)
    loss_module = ClipPPOLoss(actor_network=actor, critic_network=critic, clip_epsilon=CLIP, entropy_coeff=ENT,
                              critic_coeff=VF, loss_critic_type="l2", normalize_advantage=True, clip_value=CLIP)
    optimizer = torch.optim.Adam(loss_module.parameters(), lr=LR, eps=1e-5)
    collector = Collector(env, actor, frames_per_batch=BATCH, total_frames=steps, device="cpu")
    buffer = ReplayBuffer(storage=LazyTensorStorage(BATCH), sampler=SamplerWithoutReplacement(),
                          batch_size=BATCH // MINIBATCHES)
    updates = steps // BATCH
    start = time.perf_counter()
    for update, data in enumerate(collector):
        for group in optimizer.param_groups:
            group["lr"] = LR * (1 - update / updates)
        with torch.no_grad():
            data = advantage(data)
        buffer.extend(data.reshape(-1))
        for _ in range(EPOCHS):
            for _ in range(MINIBATCHES):
                losses = loss_module(buffer.sample())
                loss = losses["loss_objective"] + losses["loss_critic"] + losses.get("loss_entropy", 0.0)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(loss_module.parameters(), MAX_GRAD)
                optimizer.step()
        collector.update_policy_weights_()
    seconds = time.perf_counter() - start
    collector.shutdown()
    return steps / seconds


def run_skrl(env_id: str, steps: int, num_envs: int) -> float:
    import gymnasium as gym
    import torch
    from skrl.agents.torch.ppo import PPO, PPO_CFG
    from skrl.envs.wrappers.torch import wrap_env
    from skrl.memories.torch import RandomMemory
    from skrl.models.torch import DeterministicMixin, GaussianMixin, Model
    from skrl.trainers.torch import SequentialTrainer

    def mlp(inputs: int, outputs: int):
        return torch.nn.Sequential(torch.nn.Linear(inputs, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                                   torch.nn.Linear(64, outputs))

    class Policy(GaussianMixin, Model):
        def __init__(self, observation_space, action_space, device):
            Model.__init__(self, observation_space=observation_space, action_space=action_space, device=device)
            GaussianMixin.__init__(self, clip_actions=False)
            self.net = mlp(self.num_observations, self.num_actions)
            self.log_std = torch.nn.Parameter(torch.zeros(self.num_actions))

        def compute(self, inputs, role=""):
            return self.net(inputs["observations"]), {"log_std": self.log_std}

    class Value(DeterministicMixin, Model):
        def __init__(self, observation_space, action_space, device):
            Model.__init__(self, observation_space=observation_space, action_space=action_space, device=device)
            DeterministicMixin.__init__(self)
            self.net = mlp(self.num_observations, 1)

        def compute(self, inputs, role=""):
            return self.net(inputs["observations"]), {}

    env = wrap_env(gym.vector.SyncVectorEnv([lambda: gym_wrapped_env(env_id)] * num_envs))
    rollouts, updates = BATCH // num_envs, steps // BATCH
    with tempfile.TemporaryDirectory() as tmp:
        cfg = PPO_CFG(rollouts=rollouts, learning_epochs=EPOCHS, mini_batches=MINIBATCHES, discount_factor=GAMMA,
                      gae_lambda=LAMBDA, learning_rate=LR, learning_rate_scheduler=torch.optim.lr_scheduler.LinearLR,
                      learning_rate_scheduler_kwargs={"start_factor": 1.0, "end_factor": 1.0 / updates,
                                                      "total_iters": updates},
                      grad_norm_clip=MAX_GRAD, ratio_clip=CLIP, value_clip=CLIP, entropy_loss_scale=ENT,
                      value_loss_scale=VF, time_limit_bootstrap=True)
        cfg.experiment.directory, cfg.experiment.write_interval, cfg.experiment.checkpoint_interval = tmp, 0, 0
        models = {"policy": Policy(env.observation_space, env.action_space, "cpu"),
                  "value": Value(env.observation_space, env.action_space, "cpu")}
        agent = PPO(models=models, memory=RandomMemory(memory_size=rollouts, num_envs=num_envs, device="cpu"),
                    observation_space=env.observation_space, action_space=env.action_space, device="cpu", cfg=cfg)
        trainer = SequentialTrainer(env=env, agents=agent, cfg={"timesteps": steps // num_envs, "disable_progressbar": True,
                                                                  "headless": True})
        start = time.perf_counter()
        trainer.train()
        return steps / (time.perf_counter() - start)


def run_env_stack(env_id: str, steps: int, num_envs: int) -> float:
    """rlkit's vector env and wrappers alone, actions drawn beforehand: the floor of rlkit's rollout."""
    return run_raw(env_id, steps, 1, num_envs)


def run_bare_env(env_id: str, steps: int, num_envs: int) -> float:
    """The env alone (one, whatever num_envs): no vector env, no wrappers, no time limit."""
    return run_bare(env_id, steps, 1)


RUNNERS = {"rlkit": run_rlkit, "sb3": run_sb3, "cleanrl": run_cleanrl, "torchrl": run_torchrl, "skrl": run_skrl,
           "env_stack": run_env_stack, "bare_env": run_bare_env}


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    extra = (args.cleanrl,) if args.child == "cleanrl" else ()
    sps = RUNNERS[args.child](args.env, args.steps, args.num_envs[0], *extra)
    print(json.dumps({"sps": sps}))


def setup_venv(venv: str) -> str:
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        print(f"creating {venv} (torch 2.13.0 CPU, rlkit[mujoco], stable-baselines3, torchrl, skrl, tyro, tensorboard)")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        pip = [python, "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        subprocess.run([*pip, "-e", f"{REPO}[mujoco]"], check=True)
        subprocess.run([*pip, "stable-baselines3", "torchrl", "skrl", "tyro", "tensorboard"], check=True)
    return python


def versions(python: str) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "['torch', 'gymnasium', 'mujoco', 'stable-baselines3', 'torchrl', 'tensordict', 'skrl']}))")
    return json.loads(subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["Pendulum-v1", "HalfCheetah-v5"])
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=16384, help="env steps per PPO run (a multiple of 2048)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peers", nargs="+", default=PEERS, choices=PEERS)
    parser.add_argument("--cleanrl", help="path to CleanRL's ppo_continuous_action.py (a copy outside this repository)")
    parser.add_argument("--setup", metavar="VENV", help="create (if needed) and use this venv for every library")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--child", choices=list(RUNNERS), help=argparse.SUPPRESS)
    parser.add_argument("--env", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.steps % BATCH:
        parser.error(f"--steps must be a multiple of {BATCH}")
    peers = [p for p in args.peers if p != "cleanrl" or args.cleanrl]
    if "cleanrl" in args.peers and not args.cleanrl:
        print("CleanRL left out: pass --cleanrl PATH (its ppo_continuous_action.py)")
    if args.cleanrl and os.path.abspath(args.cleanrl).startswith(REPO + os.sep):
        parser.error("--cleanrl must point outside this repository (CleanRL's code is never committed here)")
    python = setup_venv(args.setup) if args.setup else sys.executable
    libraries = ["rlkit", *peers, "env_stack", "bare_env"]
    cases = [(e, n) for e in args.envs for n in args.num_envs]
    rows, total, done = [], args.repeats * len(cases) * len(libraries), 0
    env_vars = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for repeat in range(args.repeats):
        for env_id, num_envs in cases:
            for library in libraries:
                steps = args.steps * {"env_stack": 4, "bare_env": 8}.get(library, 1)
                command = [python, os.path.abspath(__file__), "--child", library, "--env", env_id, "--steps", str(steps),
                           "--num-envs", str(num_envs), *(["--cleanrl", os.path.abspath(args.cleanrl)] if args.cleanrl else [])]
                run = subprocess.run(command, capture_output=True, text=True, env=env_vars)
                if run.returncode:
                    sys.exit(f"{library} on {env_id} x{num_envs} failed:\n{run.stderr[-3000:]}")
                sps = json.loads(run.stdout.strip().splitlines()[-1])["sps"]
                rows.append({"repeat": repeat, "env": env_id, "num_envs": num_envs, "library": library, "steps": steps,
                             "sps": sps})
                done += 1
                print(f"[{done}/{total}] {env_id:15s} x{num_envs}  {library:9s} {sps:8.0f} SPS", flush=True)
    write(args, rows, cases, peers, versions(python))


def write(args: argparse.Namespace, rows: list[dict], cases: list, peers: list[str], library_versions: dict) -> None:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def sps(env_id, num_envs, library):
        return [r["sps"] for r in rows if (r["env"], r["num_envs"], r["library"]) == (env_id, num_envs, library)]

    command = "python benchmarks/sps_vs_peers.py " + " ".join(
        a if not a.startswith("/") else "PATH" for a in sys.argv[1:])
    load = os.getloadavg()[0]
    names = {"sb3": "SB3", "cleanrl": "CleanRL", "torchrl": "TorchRL", "skrl": "skrl"}
    lines = ["# PPO steps per second: rlkit vs SB3, CleanRL, TorchRL and skrl (CPU, 1 torch thread)", "",
             "```", command, "```", "",
             f"{os.cpu_count()} CPU cores (shared machine; load average {load:.1f} when the run ended), {args.repeats} "
             f"interleaved repeats, a fresh process per run, {args.steps:,} env steps per PPO run; medians; "
             "'rlkit / peer' is the median of the per-repeat ratios (their range in brackets).", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in library_versions.items()), "",
             "| env | envs | bare env | env stack | rlkit | " + " | ".join(names[p] for p in peers) + " | "
             + " | ".join(f"rlkit / {names[p]}" for p in peers) + " |",
             "|" + "-|" * (5 + 2 * len(peers))]
    summary = {}
    for env_id, num_envs in cases:
        ours = sps(env_id, num_envs, "rlkit")
        entry = {lib: statistics.median(sps(env_id, num_envs, lib)) for lib in ["rlkit", *peers, "env_stack", "bare_env"]}
        ratios = {p: [a / b for a, b in zip(ours, sps(env_id, num_envs, p))] for p in peers}
        entry["ratios"] = {p: {"median": statistics.median(r), "per_repeat": r} for p, r in ratios.items()}
        summary[f"{env_id} x{num_envs}"] = entry
        lines.append(f"| {env_id} | {num_envs} | {entry['bare_env']:,.0f} | {entry['env_stack']:,.0f} | {entry['rlkit']:,.0f} | "
                     + " | ".join(f"{entry[p]:,.0f}" for p in peers) + " | "
                     + " | ".join(f"{statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f})" for r in ratios.values()) + " |")
    lines += ["", "Batch 2,048 env steps per update (1 env x 2,048 or 8 envs x 256), 10 epochs x 32 minibatches of 64, "
              "Adam 3e-4 annealed, gamma 0.99, lambda 0.95, clip 0.2 (policy and value), entropy 0, value 0.5, "
              "gradient clip 0.5, 64x64 tanh actor and critic, state-independent log-std, observation and reward "
              "normalisation. SPS of the training call (rlkit: its TrainResult wall time, from the start of its loop; SB3 and skrl: learn / "
              "train; CleanRL: its own final SPS print, from the start of its loop; TorchRL: the collect-and-update loop). bare env: "
              "`gym.make(env_id).unwrapped`; env stack: rlkit's vector env and wrappers; both step actions drawn "
              "beforehand, the floors a PPO run cannot beat (at 8 envs the env stack steps 8 envs per call; the bare "
              "env is always one)."]
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"command": command, "versions": library_versions, "load_average": load, "summary": summary,
                   "rows": rows}, f, indent=2)
    print("\n".join(lines))
    print(f"\nwrote {args.out}/results.{{csv,md,json}}")


if __name__ == "__main__":
    main()
