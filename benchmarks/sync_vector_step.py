"""One vector-env step: gymnasium's SyncVectorEnv.step against rlkit's SameStepSyncVectorEnv.step.

    python benchmarks/sync_vector_step.py [--envs Pendulum-v1 HalfCheetah-v5] [--num-envs 1 8] [--steps 4096] [--repeats 5]

The same sub-envs (rlkit.envs.make_vector_env, no wrappers above the vector env), the same pre-drawn
actions, the two step functions interleaved within each repeat in alternating order, 1 thread.  Reported:
µs per vector step, medians over repeats, the ratio, and the bare sub-envs stepped in a Python loop (the
floor).  The outputs are the same (tests/test_envs.py::test_the_sync_vector_env_step_is_gymnasiums).
Writes results.json and results.md to --out.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from results_io import interleaved_step_times, medians, write_results  # benchmarks/ is sys.path[0] when run as a script

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv: list[str] | None = None) -> int:
    import gymnasium as gym
    import torch

    from rlkit.envs import make_vector_env

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["Pendulum-v1", "HalfCheetah-v5"])
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "sync_vector_step"))
    args = parser.parse_args(argv)
    command = "python benchmarks/sync_vector_step.py " + " ".join(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    rows = []
    for env_id in args.envs:
        for n in args.num_envs:
            ours, theirs = make_vector_env(env_id, n), make_vector_env(env_id, n)
            theirs.unwrapped.__class__ = gym.vector.SyncVectorEnv  # gymnasium's own step
            subs = make_vector_env(env_id, n).unwrapped.envs
            for e in (ours, theirs):
                e.reset(seed=0)
            for i, sub in enumerate(subs):
                sub.reset(seed=i)
            space = ours.single_action_space
            actions = np.random.default_rng(0).uniform(space.low.clip(-1), space.high.clip(max=1),
                                                       (args.steps, n, *space.shape)).astype(np.float32)

            def bare(a):
                for sub, action in zip(subs, a):
                    _, _, terminated, truncated, _ = sub.step(action)
                    if terminated or truncated:
                        sub.reset()

            ways = {"gymnasium": theirs.unwrapped.step, "rlkit": ours.unwrapped.step, "bare": bare}
            for repeat in range(args.repeats):
                times = interleaved_step_times(ways, actions, repeat)
                rows.append({"env": env_id, "num_envs": n, "repeat": repeat, **{f"{k}_us": v for k, v in times.items()}})
                print(rows[-1], flush=True)
    lines = ["# One vector-env step: gymnasium's SyncVectorEnv.step vs rlkit's", "", "```", command, "```", "",
             f"{os.cpu_count()} CPU cores (shared machine; load average {os.getloadavg()[0]:.1f} at the end), 1 thread, "
             f"{args.steps:,} steps per repeat, {args.repeats} interleaved repeats; µs per vector step, medians over "
             "repeats (per repeat in results.json).", "",
             "| env | envs | gymnasium, µs | rlkit, µs | gymnasium / rlkit | bare sub-envs (floor), µs |", "|-|-|-|-|-|-|"]
    for env_id in args.envs:
        for n in args.num_envs:
            med, ratio = medians([r for r in rows if r["env"] == env_id and r["num_envs"] == n],
                                 ("gymnasium_us", "rlkit_us"))
            lines.append(f"| {env_id} | {n} | {med('gymnasium_us'):.1f} | {med('rlkit_us'):.1f} | {ratio:.2f}x | "
                         f"{med('bare_us'):.1f} |")
    write_results(args.out, {"command": command, "rows": rows}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
