"""Seeds per hour: N seeds batched in one process (rlkit bench --batched) vs N separate processes.

    python benchmarks/multiseed.py [--recipes pendulum mujoco] [--seeds 1 2 3 4 5] [--repeats 2]

For each recipe, interleaved over --repeats rounds, the same N seeds and step budget run
(a) batched: ``rlkit bench RECIPE --batched`` (one process, 1 torch thread),
(b) separate, one at a time: ``rlkit bench RECIPE --workers 1`` (one process per seed, 1 torch thread each),
(c) separate, two at a time: ``--workers 2`` (this machine's 2 cores).
Seeds per hour = N / wall time of the whole command, median over repeats.
(a) and (b) use one core; (c) uses two, so per core it is half its number.
Writes results.csv / results.md to --out.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BUDGETS = {"pendulum": 16_000, "mujoco": 8_192, "cartpole": 32_768}
MODES = {"batched": ["--batched"], "separate, 1 at a time": ["--workers", "1"], "separate, 2 at a time": ["--workers", "2"]}


def run(recipe: str, seeds: list[int], mode: list[str], steps: int, env_id: str | None) -> float:
    out = tempfile.mkdtemp(prefix="rlkit-multiseed-")
    command = [sys.executable, "-m", "rlkit.cli", "bench", recipe, "--seeds", *map(str, seeds), "--out", out, *mode]
    if env_id:
        command += ["--env-ids", env_id]
    command += ["--", "--total_timesteps", str(steps), "--torch_threads", "1", "--checkpoint_interval", "0"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["pendulum", "mujoco"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/multiseed")
    args = parser.parse_args(argv)
    command = "python benchmarks/multiseed.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    rows = []
    for repeat in range(args.repeats):
        for recipe in args.recipes:
            env_id = "HalfCheetah-v5" if recipe == "mujoco" else None
            for mode, flags in MODES.items():
                seconds = run(recipe, args.seeds, flags, BUDGETS[recipe], env_id)
                rows.append({"repeat": repeat, "recipe": recipe, "env_id": env_id or "", "mode": mode, "seeds": len(args.seeds),
                             "steps_per_seed": BUDGETS[recipe], "seconds": seconds,
                             "seeds_per_hour": len(args.seeds) * 3600 / seconds})
                print(f"repeat {repeat} {recipe:9s} {mode:22s} {seconds:7.1f} s  {rows[-1]['seeds_per_hour']:.1f} seeds/h",
                      flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["# Batched multi-seed training: seeds per hour", "", "```", command.strip(), "```", "",
             f"{len(args.seeds)} seeds per command, median wall time of {args.repeats} interleaved repeats (whole command: "
             "process start, env creation, training, logging) on this 2-core machine, which other jobs shared.", "",
             "| recipe | steps per seed | batched (1 process) | separate, 1 at a time | separate, 2 at a time | "
             "batched vs 1 at a time | batched vs 2 at a time |", "|-|-|-|-|-|-|-|"]
    for recipe in args.recipes:
        med = {m: statistics.median(r["seeds_per_hour"] for r in rows if r["recipe"] == recipe and r["mode"] == m) for m in MODES}
        names = list(MODES)
        lines.append(f"| {recipe} | {BUDGETS[recipe]:,} | {med[names[0]]:.0f} seeds/h | {med[names[1]]:.0f} seeds/h | "
                     f"{med[names[2]]:.0f} seeds/h | {med[names[0]] / med[names[1]]:.2f}x | {med[names[0]] / med[names[2]]:.2f}x |")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[-len(args.recipes) - 2 :]))
    print(f"wrote {args.out}/results.csv and results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
