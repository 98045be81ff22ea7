"""Is EnvPool faster than gymnasium's vector env at CleanRL's MuJoCo setting (1 env)?

    pip install envpool==1.2.5 && python benchmarks/envpool_step.py [--env-id HalfCheetah-v5] [--repeats 5]

Times one env step (zero actions, 5,000 steps per repeat, the variants interleaved, medians) of:
- gymnasium's env alone (``gym.make(id).unwrapped``), the floor;
- gymnasium's SyncVectorEnv with 1 env and same-step autoreset, what rlkit steps;
- EnvPool's C++ pool with 1 env, with its default threads and with one thread.
Writes results.json and results.md to --out.  Only EnvPool's numbers come from EnvPool; nothing
of it is used by rlkit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from results_io import write_results  # benchmarks/ is sys.path[0] when run as a script


def step_seconds(step, action: np.ndarray, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step(action)
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="HalfCheetah-v5")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--out", default="benchmarks/results/envpool_step")
    args = parser.parse_args(argv)
    try:
        import envpool
    except ImportError:
        print("envpool is not installed: pip install envpool==1.2.5", file=sys.stderr)
        return 2

    bare = gym.make(args.env_id).unwrapped
    bare.reset(seed=1)
    vector = gym.make_vec(args.env_id, num_envs=1, vectorization_mode="sync",
                          vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP})
    vector.reset(seed=1)
    pool = envpool.make(args.env_id, env_type="gymnasium", num_envs=1, seed=1)
    pool.reset()
    pool_one_thread = envpool.make(args.env_id, env_type="gymnasium", num_envs=1, seed=1, num_threads=1)
    pool_one_thread.reset()
    action = np.zeros((1, *bare.action_space.shape), dtype=np.float32)
    variants = {
        "gymnasium env alone": lambda a: bare.step(a[0]),
        "gymnasium SyncVectorEnv (1 env)": vector.step,
        "EnvPool (1 env, default threads)": pool.step,
        "EnvPool (1 env, 1 thread)": pool_one_thread.step,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        for name, step in variants.items():
            times[name].append(step_seconds(step, action, args.steps))
        print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{n} {t[-1] * 1e6:.0f} µs" for n, t in times.items()),
              flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    reference = medians["gymnasium SyncVectorEnv (1 env)"]
    command = "python benchmarks/envpool_step.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = ["# One env step: EnvPool vs gymnasium (1 env, CPU)", "", "```", command.strip(), "```", "",
             f"{args.env_id}, envpool {envpool.__version__}, gymnasium {gym.__version__}, {os.cpu_count()} CPU cores "
             f"(shared machine); medians of {args.repeats} interleaved repeats of {args.steps} steps.", "",
             "| variant | µs per step | vs SyncVectorEnv |", "|-|-|-|"]
    lines += [f"| {name} | {seconds * 1e6:.1f} | {seconds / reference:.2f}x |" for name, seconds in medians.items()]
    write_results(args.out, {"command": command, "env_id": args.env_id, "envpool": envpool.__version__, "median_s": medians,
                   "raw_s": times}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
