"""Deterministic evaluation of every finished run of an `rlkit bench` folder (OUT/<env>/seed_<s>/).

Published PPO scores such as RL-Zoo's are deterministic evaluations of trained agents, while
`rlkit report`'s score is the stochastic policy's training return; this puts the comparable
number beside it.  Each seed's final agent runs `rlkit eval --deterministic` (its saved
observation-normaliser statistics frozen); writes OUT/deterministic_eval.csv (one row per seed; rows of
envs not evaluated this time are kept)
and prints, per env, the mean and std over seeds.

    python benchmarks/deterministic_eval.py bench_runs/mujoco5 --episodes 10
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the rlkit bench output folder")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=100, help="seed of the evaluation episodes (not a training seed)")
    parser.add_argument("--envs", nargs="+", help="only these env folders")
    args = parser.parse_args()
    runs = sorted(run for run in glob.glob(os.path.join(args.out, "*", "seed_*"))
                  if os.path.isfile(os.path.join(run, "summary.json"))
                  and (not args.envs or os.path.basename(os.path.dirname(run)) in args.envs))
    if not runs:
        sys.exit(f"no finished runs (seed_*/summary.json) under {args.out}")
    rows = []
    for i, run in enumerate(runs, 1):
        with tempfile.TemporaryDirectory() as tmp:
            result_file = os.path.join(tmp, "eval.json")
            subprocess.run(["rlkit", "eval", run, "--episodes", str(args.episodes), "--deterministic", "--seed",
                            str(args.seed), "--json", result_file], check=True, capture_output=True)
            with open(result_file) as f:
                result = json.load(f)
        returns = result["returns"] if "returns" in result else result["episode_returns"]
        env_id, seed = os.path.basename(os.path.dirname(run)), int(os.path.basename(run).split("_")[1])
        rows.append({"env_id": env_id, "seed": seed, "episodes": len(returns), "mean": statistics.mean(returns),
                     "std": statistics.pstdev(returns)})
        print(f"[{i}/{len(runs)}] {env_id} seed {seed}: {rows[-1]['mean']:.1f} ± {rows[-1]['std']:.1f}", flush=True)
    path = os.path.join(args.out, "deterministic_eval.csv")
    if os.path.isfile(path):  # keep the rows of envs not evaluated this time
        evaluated = {r["env_id"] for r in rows}
        with open(path) as f:
            kept = [r for r in csv.DictReader(f) if r["env_id"] not in evaluated]
        rows = sorted(kept + rows, key=lambda r: (r["env_id"], int(r["seed"])))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for env_id in sorted({r["env_id"] for r in rows}):
        means = [float(r["mean"]) for r in rows if r["env_id"] == env_id]
        print(f"{env_id}: {statistics.mean(means):.1f} ± {statistics.pstdev(means):.1f} over {len(means)} seeds")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
