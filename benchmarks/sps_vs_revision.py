"""PPO steps per second of this checkout against an earlier git revision of rlkit, side by side.

    python benchmarks/sps_vs_revision.py --rev 57edba5 [--envs Pendulum-v1 HalfCheetah-v5] [--steps 10240] [--repeats 3]
    python benchmarks/sps_vs_revision.py --rev 28c3280 --batched-seeds 5 --out benchmarks/results/multiseed_vs_revision

The revision is checked out into a temporary git worktree; every run is a fresh process that
imports rlkit from one of the two trees (same venv, same recipe: CleanRL's MuJoCo settings, as
benchmarks/sps_vs_sb3.py), and the two alternate so machine noise hits both alike.  Reported:
the rate after the first update (from the run's own metrics, so process start-up is left out),
medians, and the ratio now / then, per repeat too.  With ``--batched-seeds N`` each run trains N
seeds batched in one process (rlkit.ppo_multiseed.train_seeds) and the rate is all seeds' steps
per second (seeds per hour = that rate * 3600 / steps per seed).  Writes results.json and results.md
to --out.
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
sys.path.insert(0, os.environ["RLKIT_TREE"])
sys.path.insert(0, os.path.join(os.environ["RLKIT_TREE"], "benchmarks"))
import sps_vs_sb3
env_id, steps, seeds = os.environ["RLKIT_ENV"], int(os.environ["RLKIT_STEPS"]), int(os.environ["RLKIT_SEEDS"])
cpu_start = time.process_time()
if not seeds:
    result = sps_vs_sb3.run_rlkit(env_id, steps, 1)
    result["cpu_sps"] = steps / (time.process_time() - cpu_start)
    print(json.dumps(result))
else:
    import tempfile
    from rlkit.ppo import PPOConfig
    from rlkit.ppo_multiseed import train_seeds
    with tempfile.TemporaryDirectory() as tmp:
        cfg = PPOConfig(env_id=env_id, total_timesteps=steps, num_envs=1, device="cpu", torch_threads=1, run_dir=tmp,
                        checkpoint_interval=0, **sps_vs_sb3.SHARED)
        train_seeds(cfg, list(range(1, seeds + 1)), run_dirs=[os.path.join(tmp, str(s)) for s in range(seeds)], progress=False)
        updates = [u for u in map(json.loads, open(os.path.join(tmp, "0", "metrics.jsonl"))) if u.get("kind") == "update"]
    first, last = updates[0], updates[-1]
    seconds = last["global_step"] / last["SPS"] - first["global_step"] / first["SPS"]
    print(json.dumps({"steady_sps": seeds * (last["global_step"] - first["global_step"]) / seconds,
                      "cpu_sps": seeds * last["global_step"] / (time.process_time() - cpu_start)}))
"""


def run(tree: str, env_id: str, steps: int, seeds: int = 0) -> dict:
    env = {**os.environ, "RLKIT_TREE": tree, "RLKIT_ENV": env_id, "RLKIT_STEPS": str(steps), "RLKIT_SEEDS": str(seeds),
           "PYTHONPATH": tree}
    output = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=tree, check=True, capture_output=True,
                            text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", required=True, help="the earlier revision (commit, tag or branch)")
    parser.add_argument("--envs", nargs="+", default=["Pendulum-v1", "HalfCheetah-v5"])
    parser.add_argument("--steps", type=int, default=10240, help="env steps per run (a multiple of 2048)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batched-seeds", type=int, default=0, help="N > 0: time N seeds batched in one process")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "sps_vs_revision"))
    args = parser.parse_args(argv)
    command = "python benchmarks/sps_vs_revision.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rows = []
    with revision_tree(args.rev) as (then_tree, rev, now_label):
        for repeat in range(args.repeats):
            for env_id in args.envs:
                for label, tree in (("then", then_tree), ("now", ROOT)):
                    result = run(tree, env_id, args.steps, args.batched_seeds)
                    rows.append({"repeat": repeat, "env": env_id, "tree": label, "steady_sps": result["steady_sps"],
                                 "cpu_sps": result["cpu_sps"]})
                    print(f"repeat {repeat + 1}/{args.repeats} {env_id:16s} {label:4s} {result['steady_sps']:8.0f} SPS "
                          f"{result['cpu_sps']:8.0f} steps per CPU second", flush=True)

    lines = ["# PPO steps per second: this checkout vs an earlier revision (CPU)", "", "```", command.strip(), "```", "",
             f"then = {rev}, now = {now_label}. {os.cpu_count()} CPU cores (shared machine), CleanRL's MuJoCo settings "
             f"(1 env, 2,048-step rollouts, 10 x 32 minibatches), {args.steps} env steps per run, 1 torch thread; "
             f"rate after the first update; {args.repeats} interleaved repeats, medians."
             + (f" {args.batched_seeds} seeds batched in one process; SPS counts all seeds' steps." if args.batched_seeds else "")
             + " Also steps per CPU second of the training process (time.process_time over the whole training, env "
             "creation and first update included): on a shared, loaded machine it moves much less than wall-clock SPS, "
             "because waiting for a core is not counted.", "",
             f"Machine load average when the run ended: {os.getloadavg()[0]:.1f}.", "",
             "| env | then SPS | now SPS | now / then | per repeat | then steps/CPU-s | now steps/CPU-s | now / then (CPU) "
             "| per repeat (CPU) |", "|-|-|-|-|-|-|-|-|-|"]
    summary = {}
    for env_id in args.envs:
        then = [r["steady_sps"] for r in rows if r["env"] == env_id and r["tree"] == "then"]
        now = [r["steady_sps"] for r in rows if r["env"] == env_id and r["tree"] == "now"]
        cpu_then = [r["cpu_sps"] for r in rows if r["env"] == env_id and r["tree"] == "then"]
        cpu_now = [r["cpu_sps"] for r in rows if r["env"] == env_id and r["tree"] == "now"]
        ratio = statistics.median(now) / statistics.median(then)
        cpu_ratio = statistics.median(cpu_now) / statistics.median(cpu_then)
        summary[env_id] = {"then": statistics.median(then), "now": statistics.median(now), "ratio": ratio,
                           "cpu_then": statistics.median(cpu_then), "cpu_now": statistics.median(cpu_now),
                           "cpu_ratio": cpu_ratio}
        per_repeat = ", ".join(f"{b / a:.2f}x" for a, b in zip(then, now))
        cpu_per_repeat = ", ".join(f"{b / a:.2f}x" for a, b in zip(cpu_then, cpu_now))
        lines.append(f"| {env_id} | {statistics.median(then):,.0f} | {statistics.median(now):,.0f} | {ratio:.2f}x | "
                     f"{per_repeat} | {statistics.median(cpu_then):,.0f} | {statistics.median(cpu_now):,.0f} | "
                     f"{cpu_ratio:.2f}x | {cpu_per_repeat} |")
    write_results(args.out, {"command": command, "then": rev, "now": now_label, "summary": summary, "rows": rows}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
