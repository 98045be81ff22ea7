"""SPS of `rlkit train` against Stable-Baselines3 PPO at identical hyperparameters.

Both run CleanRL's continuous defaults (the `mujoco` recipe): 1 env, 2048 steps
per rollout, 10 epochs of 32 minibatches (64 samples), Adam 3e-4 annealed,
gamma 0.99, lambda 0.95, clip 0.2 on policy and value, ent 0, vf 0.5, grad clip
0.5, separate 64x64 tanh nets with orthogonal init and log-std 0, observation
normalisation and reward scaling (VecNormalize for SB3), CPU.  Every run is a
fresh subprocess; repeats are interleaved so machine noise hits all of them
alike; we report medians and the ratio of medians.  Raw env stepping (random
actions, the same wrapper stack) and the bare env (no wrappers) are measured in the same run as floors.

    python benchmarks/sps_vs_sb3.py --envs Pendulum-v1 CartPole-v1 HalfCheetah-v5 --steps 16384 --repeats 3

Needs `pip install "rlkit[mujoco,bench]"`.  Writes benchmarks/results/sps_vs_sb3/.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "sps_vs_sb3")
SHARED = dict(num_steps=2048, num_minibatches=32, update_epochs=10, learning_rate=3e-4, gamma=0.99, gae_lambda=0.95,
              clip_coef=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5)


def run_rlkit(env_id: str, steps: int, threads: int, torch_compile: bool = False) -> dict[str, float]:
    """Whole-run SPS, and SPS after the first update (what a long run sees once compiled)."""
    import tempfile

    from rlkit.ppo import PPOConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = PPOConfig(env_id=env_id, total_timesteps=steps, num_envs=1, device="cpu", torch_threads=threads,
                        torch_compile=torch_compile, run_dir=tmp, checkpoint_interval=0, **SHARED)
        result = train(cfg, run_name="run", progress=False)
        with open(os.path.join(tmp, "run", "metrics.jsonl")) as f:
            updates = [u for u in map(json.loads, f) if u.get("kind") == "update"]
    # each update logs SPS = global_step / seconds since the start, so seconds = global_step / SPS
    first, last = updates[0], updates[-1]
    seconds = last["global_step"] / last["SPS"] - first["global_step"] / first["SPS"]
    return {"sps": result.global_step / result.wall_time,
            "steady_sps": (last["global_step"] - first["global_step"]) / seconds}


def run_rlkit_compiled(env_id: str, steps: int, threads: int) -> dict[str, float]:
    return run_rlkit(env_id, steps, threads, torch_compile=True)


def make_sb3_ppo(env_id: str):
    """Stable-Baselines3 PPO at rlkit's settings (SHARED), on a VecNormalize-d env.  SB3 clips actions
    to the bounds itself and stores the unclipped ones, like rlkit."""
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    env = VecNormalize(DummyVecEnv([lambda: gym.make(env_id)]), gamma=SHARED["gamma"])
    lr = SHARED["learning_rate"]
    return PPO(
        "MlpPolicy", env, n_steps=SHARED["num_steps"], batch_size=SHARED["num_steps"] // SHARED["num_minibatches"],
        n_epochs=SHARED["update_epochs"], learning_rate=lambda progress: progress * lr, gamma=SHARED["gamma"],
        gae_lambda=SHARED["gae_lambda"], clip_range=SHARED["clip_coef"], clip_range_vf=SHARED["clip_coef"],
        ent_coef=SHARED["ent_coef"], vf_coef=SHARED["vf_coef"], max_grad_norm=SHARED["max_grad_norm"],
        policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64]), activation_fn=torch.nn.Tanh, log_std_init=0.0),
        device="cpu", seed=1, verbose=0,
    )


def run_sb3(env_id: str, steps: int, threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    model = make_sb3_ppo(env_id)
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    return steps / (time.perf_counter() - start)


def run_raw(env_id: str, steps: int, threads: int, num_envs: int = 1) -> float:
    """rlkit's vector env and wrappers alone (``steps`` counts every env's steps)."""
    from rlkit.envs import make_vector_env

    envs = make_vector_env(env_id, num_envs, normalize_obs=True, normalize_reward=True)
    envs.reset(seed=1)
    envs.action_space.seed(1)
    actions = [envs.action_space.sample() for _ in range(1000)]  # drawn beforehand: the floor is the env's cost
    start = time.perf_counter()
    for i in range(steps // num_envs):
        envs.step(actions[i % 1000])
    return steps / (time.perf_counter() - start)


def run_bare(env_id: str, steps: int, threads: int) -> float:
    """The env alone: gym.make, no vector env, no wrappers; actions drawn beforehand."""
    import gymnasium as gym

    env = gym.make(env_id).unwrapped  # no TimeLimit either: episodes end by termination or by the loop below
    env.action_space.seed(1)
    actions = [env.action_space.sample() for _ in range(1000)]
    env.reset(seed=1)
    length = 0
    start = time.perf_counter()
    for i in range(steps):
        _, _, terminated, _, _ = env.step(actions[i % 1000])
        length += 1
        if terminated or length == 1000:  # every env here has a 500- or 1000-step limit
            env.reset()
            length = 0
    return steps / (time.perf_counter() - start)


RUNNERS = {"rlkit": run_rlkit, "rlkit_compiled": run_rlkit_compiled, "sb3": run_sb3, "raw_env": run_raw,
           "bare_env": run_bare}


def child(args: argparse.Namespace) -> None:
    sps = RUNNERS[args.child](args.env, args.steps, args.threads)
    print(json.dumps(sps if isinstance(sps, dict) else {"sps": sps}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["Pendulum-v1", "CartPole-v1", "HalfCheetah-v5"])
    parser.add_argument("--steps", type=int, default=16384, help="env steps per run (a multiple of 2048)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sb3-threads", type=int, nargs="+", default=[1, 2],
                        help="torch threads for SB3 (rlkit uses its default, 1); the faster SB3 setting is compared")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--child", choices=list(RUNNERS), help=argparse.SUPPRESS)
    parser.add_argument("--env", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    variants = [("rlkit", 1), ("rlkit_compiled", 1), *[("sb3", t) for t in args.sb3_threads], ("raw_env", 1),
                ("bare_env", 1)]
    rows = []
    total = args.repeats * len(args.envs) * len(variants)
    done = 0
    for repeat in range(args.repeats):
        for env_id in args.envs:
            for name, threads in variants:
                steps = args.steps * {"raw_env": 4, "bare_env": 8}.get(name, 1)
                command = [sys.executable, __file__, "--child", name, "--env", env_id, "--steps", str(steps),
                           "--threads", str(threads)]
                output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                measured = json.loads(output.strip().splitlines()[-1])
                sps = measured["sps"]
                rows.append({"repeat": repeat, "env": env_id, "impl": name, "threads": threads, "steps": steps, "sps": sps,
                             "steady_sps": measured.get("steady_sps", "")})
                done += 1
                print(f"[{done}/{total}] {env_id:16s} {name:8s} threads={threads}  {sps:8.0f} SPS", flush=True)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def median(env_id, impl, threads=None, key="sps"):
        values = [r[key] for r in rows if r["env"] == env_id and r["impl"] == impl and (threads is None or r["threads"] == threads)]
        return statistics.median(values)

    command = "python benchmarks/sps_vs_sb3.py " + " ".join(sys.argv[1:])
    lines = [
        "# PPO steps per second: rlkit vs Stable-Baselines3 (CPU)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {os.cpu_count()} CPU cores, no GPU; {args.repeats} interleaved repeats, fresh process per run, "
        f"{args.steps} env steps per PPO run; medians.",
        "",
        "| env | bare env SPS | env stack SPS | rlkit SPS | " + " | ".join(f"SB3 SPS ({t} thr)" for t in args.sb3_threads)
        + " | rlkit / best SB3 | rlkit wall / bare-env wall | rlkit wall / env-stack wall "
        "| rlkit compiled SPS: whole run / after update 1 | compiled / best SB3: whole run / after update 1 |",
        "|---|---|---|---|" + "---|" * len(args.sb3_threads) + "---|---|---|---|---|",
    ]
    summary = {}
    for env_id in args.envs:
        bare, raw, ours = median(env_id, "bare_env"), median(env_id, "raw_env"), median(env_id, "rlkit")
        sb3 = {t: median(env_id, "sb3", t) for t in args.sb3_threads}
        best = max(sb3.values())
        compiled, compiled_steady = median(env_id, "rlkit_compiled"), median(env_id, "rlkit_compiled", key="steady_sps")
        summary[env_id] = {"bare_env": bare, "raw_env": raw, "rlkit": ours, "sb3": sb3, "ratio_vs_best_sb3": ours / best,
                           "wall_over_bare": bare / ours, "wall_over_raw": raw / ours, "rlkit_compiled": compiled,
                           "rlkit_compiled_steady": compiled_steady, "compiled_ratio_vs_best_sb3": compiled / best,
                           "compiled_steady_ratio_vs_best_sb3": compiled_steady / best}
        lines.append(f"| {env_id} | {bare:,.0f} | {raw:,.0f} | {ours:,.0f} | "
                     + " | ".join(f"{sb3[t]:,.0f}" for t in args.sb3_threads)
                     + f" | {ours / best:.2f}x | {bare / ours:.1f}x | {raw / ours:.1f}x | {compiled:,.0f} / "
                     f"{compiled_steady:,.0f} | {compiled / best:.2f}x / {compiled_steady / best:.2f}x |")
    lines += ["", "bare env: `gym.make(env_id).unwrapped` stepped with actions drawn beforehand (no vector env, no "
              "wrappers). env stack: the vector env and wrappers rlkit trains on (episode statistics, action clip, "
              "observation and reward normalisation), actions drawn beforehand. Both are floors a PPO run cannot beat.",
              "", "Hyperparameters (both): " + ", ".join(f"{k}={v}" for k, v in SHARED.items())
              + ", 1 env, obs/reward normalisation, 64x64 tanh separate nets.",
              "", "rlkit compiled = `torch_compile = true`: the rollout's policy step and the minibatch loss with its "
              "backward through torch.compile. Its whole-run SPS includes the one-off compile; \"after update 1\" is "
              "the rate from the end of the first update to the end of the run (from the run's own metrics), what a "
              "long run sees."]
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"command": command, "summary": summary, "rows": rows}, f, indent=2)
    print("\n".join(lines))
    print(f"\nwrote {args.out}/results.{{csv,md,json}}")


if __name__ == "__main__":
    main()
