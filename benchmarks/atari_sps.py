"""Atari steps per second: ale_py's C++ AtariVectorEnv (rlkit's fast path) against the python wrapper stack.

    python benchmarks/atari_sps.py [--env-ids BreakoutNoFrameskip-v4 PongNoFrameskip-v4] [--repeats 3]
    python benchmarks/atari_sps.py --device cuda --torch-threads 0 --machine "one H100, 16 CPU cores"

For each game, interleaved over --repeats rounds (medians reported):
- env only: 8 envs, random actions, --env-steps vector steps (agent steps = 4 frames each);
- PPO: ``rlkit.ppo.train`` with the ``atari`` recipe (CleanRL's hyperparameters: 8 envs x 128
  steps, 4 epochs x 4 minibatches, Nature CNN) for --ppo-steps agent steps on --device.
Writes sps.csv and sps.md (sps_<device>.* for a device other than cpu) to --out.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import statistics
import sys
import tempfile
import time

import numpy as np

BACKENDS = ("ale_vector", "python")


def env_sps(env_id: str, backend: str, steps: int, num_envs: int = 8) -> float:
    from rlkit.envs.atari import make_atari_vector_env

    envs = make_atari_vector_env(env_id, num_envs, backend)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    n = envs.single_action_space.n
    start = time.perf_counter()
    for _ in range(steps):
        envs.step(rng.integers(0, n, size=num_envs))
    elapsed = time.perf_counter() - start
    envs.close()
    return steps * num_envs / elapsed


def ppo_sps(env_id: str, backend: str, steps: int, device: str = "cpu", torch_threads: int = 1) -> float:
    from rlkit.config import config_from_dict, read_recipe
    from rlkit.ppo import PPOConfig, train

    _, values, source = read_recipe("atari")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config_from_dict(PPOConfig, {**values, "env_id": env_id, "atari_backend": backend, "total_timesteps": steps,
                                           "run_dir": tmp, "checkpoint_interval": 0, "device": device,
                                           "torch_threads": torch_threads}, source)
        result = train(cfg, run_name="sps", progress=False, log=False)
    return result.sps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-ids", nargs="+", default=["BreakoutNoFrameskip-v4", "PongNoFrameskip-v4"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--env-steps", type=int, default=1000, help="vector steps of the env-only measurement")
    parser.add_argument("--ppo-steps", type=int, default=3072, help="agent steps of each PPO measurement (1024 per update)")
    parser.add_argument("--device", default="cpu", help="device of the PPO measurements (cpu, cuda, ...)")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads of the PPO measurements (0: torch's default)")
    parser.add_argument("--machine", default="2 CPU cores, shared", help="what the table says it ran on")
    parser.add_argument("--out", default="benchmarks/results/atari")
    args = parser.parse_args(argv)
    suffix = "" if args.device == "cpu" else "_" + args.device.replace(":", "")
    command = "python benchmarks/atari_sps.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    rows = []
    for repeat in range(args.repeats):
        for env_id in args.env_ids:
            for backend in BACKENDS:
                for what in ("env", "ppo"):
                    if what == "env":
                        sps = env_sps(env_id, backend, args.env_steps)
                    else:
                        sps = ppo_sps(env_id, backend, args.ppo_steps, args.device, args.torch_threads)
                    rows.append({"repeat": repeat, "env_id": env_id, "backend": backend, "measure": what, "sps": sps})
                    print(f"repeat {repeat} {env_id:24s} {backend:10s} {what}: {sps:,.0f} SPS", flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"sps{suffix}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def median(env_id: str, backend: str, what: str) -> float:
        return statistics.median(r["sps"] for r in rows if (r["env_id"], r["backend"], r["measure"]) == (env_id, backend, what))

    lines = ["# Atari SPS: C++ fast path vs python wrapper stack", "", "```", command.strip(), "```", "",
             f"Medians of {args.repeats} interleaved repeats on {args.machine}. Agent steps per second "
             "(1 agent step = 4 emulator frames). env: 8 envs, random actions. PPO: the `atari` recipe (CleanRL's "
             f"hyperparameters, Nature CNN) on {args.device}, {args.torch_threads or 'default'} torch thread(s), "
             f"{args.ppo_steps} steps per measurement.", "",
             "| game | env: python stack | env: ale_vector | ratio | PPO: python stack | PPO: ale_vector | ratio |",
             "|-|-|-|-|-|-|-|"]
    for env_id in args.env_ids:
        e_py, e_fast = median(env_id, "python", "env"), median(env_id, "ale_vector", "env")
        p_py, p_fast = median(env_id, "python", "ppo"), median(env_id, "ale_vector", "ppo")
        lines.append(f"| {env_id} | {e_py:,.0f} | {e_fast:,.0f} | {e_fast / e_py:.2f}x | {p_py:,.0f} | {p_fast:,.0f} | "
                     f"{p_fast / p_py:.2f}x |")
    with open(os.path.join(args.out, f"sps{suffix}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[-len(args.env_ids) - 2 :]))
    print(f"wrote {args.out}/sps{suffix}.csv and sps{suffix}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
