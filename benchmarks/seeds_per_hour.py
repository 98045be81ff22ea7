"""Wall time of the batched multi-seed MuJoCo run, this checkout against an earlier revision, side by side.

    python benchmarks/seeds_per_hour.py --rev 31c25a9 [--env HalfCheetah-v5] [--seeds 1 2 3 4 5] [--steps 999424]

Both trees train the ``mujoco`` recipe (CleanRL's MuJoCo settings, 1 env per seed) for every seed, all seeds
batched in one process (rlkit.ppo_multiseed.train_seeds, 1 torch thread, checkpoints every 10 updates as the
recipe's default), the two processes at the same time, one per core of the 2-core machine, so machine noise hits
both alike.  Reported: each tree's wall time (minutes), the ratio then / now, seeds per hour, and each seed's score
(mean return of its last 100 training episodes, CleanRL's), so the same table shows the learning is unchanged.
The run folders are kept as --runs/{then,now}/<env>/seed_<s> (``rlkit report --runs/now --compare --runs/then``
adds the probability of improvement).  Writes results.json and results.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from results_io import ROOT, revision_tree, write_results  # benchmarks/ is sys.path[0] when run as a script

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = """
import json, os, sys, time
tree = os.environ["RLKIT_TREE"]
sys.path.insert(0, tree)
from rlkit.config import read_recipe
from rlkit.ppo import PPOConfig
from rlkit.ppo_multiseed import train_seeds
_, values, _ = read_recipe("mujoco")
seeds, runs = json.loads(os.environ["RLKIT_SEEDS"]), os.environ["RLKIT_RUNS"]
cfg = PPOConfig(**{**values, "env_id": os.environ["RLKIT_ENV"], "total_timesteps": int(os.environ["RLKIT_STEPS"]),
                   "device": "cpu", "torch_threads": 1, "run_dir": runs})
start = time.perf_counter()
results = train_seeds(cfg, seeds, run_dirs=[os.path.join(runs, cfg.env_id, f"seed_{s}") for s in seeds], progress=False)
seconds = time.perf_counter() - start
scores = [sum(r.episode_returns[-100:]) / len(r.episode_returns[-100:]) for r in results]
print(json.dumps({"seconds": seconds, "scores": scores, "global_step": results[0].global_step,
                  "cpu_seconds": time.process_time()}))
"""


def start(tree: str, env_id: str, seeds: list[int], steps: int, runs: str) -> subprocess.Popen:
    env = {**os.environ, "RLKIT_TREE": tree, "RLKIT_ENV": env_id, "RLKIT_SEEDS": json.dumps(seeds),
           "RLKIT_STEPS": str(steps), "RLKIT_RUNS": runs, "PYTHONPATH": tree, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD], env=env, cwd=tree, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", required=True, help="the earlier revision (commit, tag or branch)")
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--steps", type=int, default=999_424, help="env steps per seed (the recipe's 1M)")
    parser.add_argument("--runs", default=os.path.join(ROOT, "runs", "seeds_per_hour"), help="where the run folders go")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "seeds_per_hour"))
    args = parser.parse_args(argv)
    command = "python benchmarks/seeds_per_hour.py " + " ".join(sys.argv[1:] if argv is None else argv)
    with revision_tree(args.rev) as (then_tree, rev, now_label):
        trees = {"then": then_tree, "now": ROOT}
        procs = {label: start(tree, args.env, args.seeds, args.steps, os.path.join(os.path.abspath(args.runs), label))
                 for label, tree in trees.items()}
        results = {}
        for label, proc in procs.items():
            out, err = proc.communicate()
            if proc.returncode:
                sys.exit(f"{label} failed:\n{err[-3000:]}")
            results[label] = json.loads(out.strip().splitlines()[-1])
    then, now = results["then"], results["now"]
    per_hour = lambda r: len(args.seeds) * 3600 / r["seconds"]  # noqa: E731
    lines = [f"# {len(args.seeds)} seeds of {args.env} batched, {args.steps:,} steps each: this checkout vs {rev}", "",
             "```", command, "```", "",
             f"then = {rev}, now = {now_label}; {os.cpu_count()} CPU cores, the two runs at the same time (one each), "
             f"1 torch thread, the mujoco recipe; load average {os.getloadavg()[0]:.1f} at the end.", "",
             "| tree | wall minutes | seeds per hour | score per seed | mean |", "|-|-|-|-|-|"]
    for label, rev_label in (("then", rev), ("now", now_label)):
        r = results[label]
        lines.append(f"| {label} ({rev_label}) | {r['seconds'] / 60:.1f} | {per_hour(r):.1f} | "
                     f"{', '.join(f'{s:.0f}' for s in r['scores'])} | {statistics.mean(r['scores']):.1f} |")
    lines += ["", f"**then / now wall time: {then['seconds'] / now['seconds']:.2f}x** "
              f"(the faster run's process ends first; the slower then runs its last part alone, so this is if anything low)."]
    write_results(args.out, {"command": command, "rev": rev, "now": now_label, "env": args.env, "seeds": args.seeds,
                             "steps": args.steps, "results": results}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
