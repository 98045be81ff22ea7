"""Bitwise behaviour of ``rlkit.ppo.train`` in this checkout against an earlier git revision.

    python benchmarks/behaviour_vs_revision.py --rev 28c3280 [--envs Pendulum-v1 CartPole-v1] [--updates 2]

For a refactor that must not change what PPO computes: each tree (the revision, checked out
into a temporary git worktree, and this checkout) trains the same config at a fixed seed in a
fresh process, and the script compares SHA-256 hashes of the final weights (every tensor of the
agent's state_dict, in order), of the metrics (every episode and update line of metrics.jsonl
without the wall-clock fields) and of the episode returns.  Equal hashes = bitwise the same run.
Writes results.json and results.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from results_io import ROOT, revision_tree, write_results  # benchmarks/ is sys.path[0] when run as a script

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = """
import hashlib, json, os, sys, tempfile
sys.path.insert(0, os.environ["RLKIT_TREE"])
from rlkit.ppo import PPOConfig, train
env_id, updates = os.environ["RLKIT_ENV"], int(os.environ["RLKIT_UPDATES"])
steps = 256
with tempfile.TemporaryDirectory() as tmp:
    cfg = PPOConfig(env_id=env_id, seed=3, num_envs=2, num_steps=steps, num_minibatches=4, update_epochs=4,
                    total_timesteps=2 * steps * updates, run_dir=tmp, checkpoint_interval=0)
    result = train(cfg, run_name="r", progress=False)
    weights = hashlib.sha256()
    for name, tensor in result.agent.state_dict().items():
        weights.update(name.encode()); weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    metrics = hashlib.sha256()
    timing = {"SPS", "wall_time", "sps"}
    for line in open(os.path.join(tmp, "r", "metrics.jsonl")):
        record = json.loads(line)
        metrics.update(json.dumps({k: v for k, v in record.items() if k not in timing}, sort_keys=True).encode())
print(json.dumps({"weights": weights.hexdigest(), "metrics": metrics.hexdigest(),
                  "returns": hashlib.sha256(json.dumps(result.episode_returns).encode()).hexdigest(),
                  "episodes": len(result.episode_returns), "global_step": result.global_step}))
"""


def run(tree: str, env_id: str, updates: int) -> dict:
    env = {**os.environ, "RLKIT_TREE": tree, "RLKIT_ENV": env_id, "RLKIT_UPDATES": str(updates), "PYTHONPATH": tree}
    output = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=tree, check=True, capture_output=True,
                            text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", required=True, help="the earlier revision (commit, tag or branch)")
    parser.add_argument("--envs", nargs="+", default=["Pendulum-v1", "CartPole-v1"])
    parser.add_argument("--updates", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "behaviour_vs_revision"))
    args = parser.parse_args(argv)
    command = "python benchmarks/behaviour_vs_revision.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rows = []
    with revision_tree(args.rev) as (then_tree, rev, now_label):
        for env_id in args.envs:
            then, now = run(then_tree, env_id, args.updates), run(ROOT, env_id, args.updates)
            same = all(then[k] == now[k] for k in ("weights", "metrics", "returns"))
            rows.append({"env": env_id, "then": then, "now": now, "bitwise_same": same})
            print(f"{env_id:14s} then {then['weights'][:12]} now {now['weights'][:12]}  same: {same}", flush=True)
    lines = ["# rlkit.ppo.train: this checkout vs an earlier revision, bitwise", "", "```", command.strip(), "```", "",
             f"then = {rev}, now = {now_label}; seed 3, 2 envs x 256 steps, 4 x 4 minibatches, {args.updates} updates, "
             "CPU, 1 torch thread. SHA-256 of the final weights, of metrics.jsonl without wall-clock fields, and of the "
             "episode returns.", "",
             "| env | weights then | weights now | metrics then | metrics now | episodes | bitwise same |", "|-|-|-|-|-|-|-|"]
    for r in rows:
        lines.append(f"| {r['env']} | `{r['then']['weights'][:16]}` | `{r['now']['weights'][:16]}` | "
                     f"`{r['then']['metrics'][:16]}` | `{r['now']['metrics'][:16]}` | {r['now']['episodes']} | "
                     f"{'yes' if r['bitwise_same'] else 'NO'} |")
    write_results(args.out, {"command": command, "then": rev, "now": now_label, "rows": rows}, lines)
    return 0 if all(r["bitwise_same"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
