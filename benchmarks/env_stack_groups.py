"""Batched seeds' envs: one grouped vector env (per-seed normaliser groups) against one stack per seed.

    python benchmarks/env_stack_groups.py [--envs Pendulum-v1 HalfCheetah-v5] [--seeds 5] [--per-seed 1] [--steps 4096] [--repeats 5]

The same wrapper stack (CleanRL's MuJoCo settings: RecordEpisodeStatistics, action clip, observation and reward
normalisation with clips) built two ways for N seeds of E envs each: N separate stacks stepped one after the other with
their outputs concatenated (what rlkit.ppo_multiseed did before; it also merged the info dicts, left out here, so the
"per seed" figures are if anything low), and one stack of N * E envs with ``groups=N`` (what it does now).  Both
step the same pre-drawn actions, interleaved within each repeat in alternating order, in one process with 1 thread.
Reported: µs per step of all seeds' envs, medians over repeats, the ratio, and the floor: the N * E bare sub-envs
stepped in a Python loop.  Writes results.json and results.md to --out.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from results_io import interleaved_step_times, medians, write_results  # benchmarks/ is sys.path[0] when run as a script

HERE = os.path.dirname(os.path.abspath(__file__))
STACK = dict(gamma=0.99, normalize_obs=True, normalize_reward=True)


def per_seed_stacks(env_id: str, seeds: int, per_seed: int):
    from rlkit.envs import make_vector_env

    stacks = [make_vector_env(env_id, per_seed, **STACK) for _ in range(seeds)]
    for k, envs in enumerate(stacks):
        envs.reset(seed=100 * k)

    def step(actions: np.ndarray):
        results = [envs.step(a) for envs, a in zip(stacks, np.split(actions, seeds))]
        return tuple(np.concatenate(part) for part in list(zip(*results))[:4])

    return step, stacks


def grouped_stack(env_id: str, seeds: int, per_seed: int):
    from rlkit.envs import make_vector_env

    envs = make_vector_env(env_id, seeds * per_seed, groups=seeds, **STACK)
    envs.reset(seed=[100 * k + j for k in range(seeds) for j in range(per_seed)])
    return envs.step, [envs]


def bare_sub_envs(env_id: str, seeds: int, per_seed: int):
    from rlkit.envs import make_vector_env

    vector = make_vector_env(env_id, seeds * per_seed)
    vector.reset(seed=0)
    subs = vector.unwrapped.envs

    def step(actions: np.ndarray):
        for env, action in zip(subs, actions):
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()

    return step, [vector]


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["Pendulum-v1", "HalfCheetah-v5"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[5])
    parser.add_argument("--per-seed", type=int, default=1, help="envs per seed")
    parser.add_argument("--steps", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "env_stack_groups"))
    args = parser.parse_args(argv)
    command = "python benchmarks/env_stack_groups.py " + " ".join(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    ways = {"per_seed": per_seed_stacks, "grouped": grouped_stack, "bare": bare_sub_envs}
    rows = []
    for env_id in args.envs:
        for seeds in args.seeds:
            n = seeds * args.per_seed
            built = {name: make(env_id, seeds, args.per_seed) for name, make in ways.items()}
            space = built["grouped"][1][0].single_action_space
            actions = np.random.default_rng(0).uniform(space.low.clip(-1), space.high.clip(max=1),
                                                       (args.steps, n, *space.shape)).astype(np.float32)
            for repeat in range(args.repeats):
                times = interleaved_step_times({name: step for name, (step, _) in built.items()}, actions, repeat)
                rows.append({"env": env_id, "seeds": seeds, "per_seed": args.per_seed, "repeat": repeat,
                             **{f"{name}_us": t for name, t in times.items()}})
                print(rows[-1], flush=True)
            for _, envs in built.values():
                for e in envs:
                    e.close()
    lines = ["# Batched seeds' envs: one grouped vector env vs one stack per seed", "", "```", command, "```", "",
             f"{os.cpu_count()} CPU cores (shared machine; load average {os.getloadavg()[0]:.1f} at the end), 1 thread, "
             f"{args.per_seed} env(s) per seed, {args.steps:,} steps per repeat, {args.repeats} repeats interleaved; "
             "µs per step of all seeds' envs, medians over repeats (per repeat ratios in results.json).", "",
             "| env | seeds | one stack per seed, µs | grouped stack, µs | per seed / grouped | bare sub-envs (floor), µs "
             "| wrappers per seed, µs | wrappers grouped, µs |", "|-|-|-|-|-|-|-|-|"]
    for env_id in args.envs:
        for seeds in args.seeds:
            med, ratio = medians([r for r in rows if r["env"] == env_id and r["seeds"] == seeds],
                                 ("per_seed_us", "grouped_us"))
            lines.append(f"| {env_id} | {seeds} | {med('per_seed_us'):.1f} | {med('grouped_us'):.1f} | {ratio:.2f}x | "
                         f"{med('bare_us'):.1f} | {med('per_seed_us') - med('bare_us'):.1f} | "
                         f"{med('grouped_us') - med('bare_us'):.1f} |")
    write_results(args.out, {"command": command, "rows": rows}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
