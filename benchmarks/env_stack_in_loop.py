"""The env stack's step inside rlkit.ppo.train against the same stack stepped alone.

    python benchmarks/env_stack_in_loop.py [--envs Pendulum-v1 HalfCheetah-v5] [--steps 20480] [--repeats 3]

Each repeat is a fresh process that trains rlkit at CleanRL's MuJoCo settings (1 env, as benchmarks/sps_vs_peers.py)
with ``envs.step`` timed call by call (time.perf_counter around it; the first rollout left out), then steps the same
stack alone as many times with actions drawn beforehand, and once more alone with one (untimed) policy step between
env steps, as the loop has: the control that separates the loop's own cost from two code bases sharing one core's
caches.  Reported: the median and the mean µs per step of both and
their ratio in-loop / alone.  Medians leave out the episode resets and a shared machine's preemptions, which the
means keep.  Writes results.json and results.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from results_io import write_results  # benchmarks/ is sys.path[0] when run as a script


class TimedEnvs:
    """The vector env, with each step's wall time recorded."""

    def __init__(self, envs):
        self.envs, self.seconds = envs, []

    def __getattr__(self, name):
        return getattr(self.envs, name)

    def step(self, actions):
        start = time.perf_counter()
        out = self.envs.step(actions)
        self.seconds.append(time.perf_counter() - start)
        return out


def child(env_id: str, steps: int) -> dict:
    import torch

    import rlkit.ppo as ppo
    from rlkit.fast import FusedPolicyStep
    from sps_vs_peers import BATCH, CLIP, ENT, EPOCHS, GAMMA, LAMBDA, LR, MAX_GRAD, MINIBATCHES, VF

    torch.set_num_threads(1)
    made = []
    plain_make_envs = ppo.make_envs
    ppo.make_envs = lambda cfg: made.append(TimedEnvs(plain_make_envs(cfg))) or made[-1]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = ppo.PPOConfig(env_id=env_id, total_timesteps=steps, num_envs=1, num_steps=BATCH, num_minibatches=MINIBATCHES,
                            update_epochs=EPOCHS, learning_rate=LR, gamma=GAMMA, gae_lambda=LAMBDA, clip_coef=CLIP,
                            ent_coef=ENT, vf_coef=VF, max_grad_norm=MAX_GRAD, device="cpu", torch_threads=1, run_dir=tmp,
                            checkpoint_interval=0)
        result = ppo.train(cfg, run_name="run", progress=False)
    in_loop = np.array(made[0].seconds[BATCH:])
    envs = plain_make_envs(cfg)
    envs.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (len(in_loop), 1, *envs.single_action_space.shape)).astype(np.float32)
    alone = []
    for action in actions:
        start = time.perf_counter()
        envs.step(action)
        alone.append(time.perf_counter() - start)
    alone = np.array(alone)
    # the control: alone again, but with one policy step (not timed) between env steps, as in the loop
    step, obs, between = FusedPolicyStep(result.agent), torch.zeros(1, *envs.single_observation_space.shape), []
    with torch.inference_mode():
        for action in actions:
            step(obs)
            start = time.perf_counter()
            envs.step(action)
            between.append(time.perf_counter() - start)
    return {"sps": result.global_step / result.wall_time, "in_loop_median": float(np.median(in_loop)),
            "in_loop_mean": float(in_loop.mean()), "alone_median": float(np.median(alone)), "alone_mean": float(alone.mean()),
            "interleaved_median": float(np.median(between))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["Pendulum-v1", "HalfCheetah-v5"])
    parser.add_argument("--steps", type=int, default=20480)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/env_stack_in_loop")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return
    rows = []
    for repeat in range(args.repeats):
        for env_id in args.envs:
            run = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", env_id, "--steps", str(args.steps)],
                                 capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if run.returncode:
                sys.exit(f"{env_id} failed:\n{run.stderr[-3000:]}")
            rows.append({"repeat": repeat, "env": env_id, **json.loads(run.stdout.strip().splitlines()[-1])})
            print(rows[-1], flush=True)
    lines = ["# The env stack's step in the training loop vs alone", "", "```",
             f"python benchmarks/env_stack_in_loop.py --envs {' '.join(args.envs)} --steps {args.steps} --repeats {args.repeats}",
             "```", "", f"{os.cpu_count()} CPU cores (shared machine; load average {os.getloadavg()[0]:.1f} at the end), "
             f"1 env, CleanRL's MuJoCo settings, {args.steps:,} steps per run, {args.repeats} repeats (fresh processes); "
             "medians over repeats of each run's per-step median and mean.", "",
             "| env | rlkit SPS | in loop, median µs | alone, median µs | in loop / alone (median) | alone with a policy step "
             "between, median µs | in loop / that | in loop, mean µs | alone, mean µs | in loop / alone (mean) |",
             "|-|-|-|-|-|-|-|-|-|-|"]
    for env_id in args.envs:
        mine = [r for r in rows if r["env"] == env_id]
        med = lambda key: statistics.median(r[key] for r in mine)  # noqa: E731
        lines.append(f"| {env_id} | {med('sps'):,.0f} | {1e6 * med('in_loop_median'):.1f} | {1e6 * med('alone_median'):.1f} | "
                     f"{med('in_loop_median') / med('alone_median'):.2f}x | {1e6 * med('interleaved_median'):.1f} | "
                     f"{med('in_loop_median') / med('interleaved_median'):.2f}x | {1e6 * med('in_loop_mean'):.1f} | "
                     f"{1e6 * med('alone_mean'):.1f} | {med('in_loop_mean') / med('alone_mean'):.2f}x |")
    write_results(args.out, {"rows": rows}, lines)


if __name__ == "__main__":
    main()
