"""The rollout's policy step: agent.get_action_and_value against rlkit.fast.FusedPolicyStep (config update_backend).

    python benchmarks/policy_step.py [--repeats 5] [--out benchmarks/results/policy_step]

One env and 8 envs at HalfCheetah-v5's and Pendulum-v1's sizes (17 -> 6 and 3 -> 1, two 64-wide tanh MLPs),
and 5 seeds batched (rlkit.ppo_multiseed.BatchedSeedPolicy, plain stacked forward vs fused), all in inference
mode on one torch thread: aten ops per step (counted with a TorchDispatchMode) and µs per step, medians of
--repeats interleaved repeats of 3,000 steps each, the ratio plain / fused per repeat.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import gymnasium as gym
import numpy as np
import torch
from ppo_profile import OpCounter
from results_io import write_results  # benchmarks/ is sys.path[0] when run as a script
from torch.func import stack_module_state

from rlkit.fast import FusedPolicyStep
from rlkit.ppo import Agent
from rlkit.ppo_multiseed import BatchedSeedPolicy

SIZES = {"HalfCheetah-v5": (17, 6), "Pendulum-v1": (3, 1)}
STEPS = 3000


def cases(obs_dim: int, act_dim: int):
    """(label, plain step, fused step, obs) for 1 env, 8 envs and 5 batched seeds x 1 env."""
    spaces = gym.spaces.Box(-np.inf, np.inf, (obs_dim,)), gym.spaces.Box(-1.0, 1.0, (act_dim,))
    torch.manual_seed(0)
    agent = Agent(*spaces)
    fused = FusedPolicyStep(agent)
    for envs in (1, 8):
        obs = torch.randn(envs, obs_dim)
        yield f"{envs} env{'s' if envs > 1 else ''}", (lambda o=obs: agent.get_action_and_value(o)), (lambda o=obs: fused(o))
    agents = [Agent(*spaces) for _ in range(5)]
    params, buffers = stack_module_state(agents)
    template = copy.deepcopy(agents[0]).to("meta")
    policies = [BatchedSeedPolicy(template, params, buffers, [torch.Generator().manual_seed(s) for s in range(5)], 1,
                                  fused=f) for f in (False, True)]
    for p in policies:
        p.begin()
    obs = torch.randn(5, obs_dim)
    yield "5 seeds batched", (lambda: policies[0].act(obs, None)), (lambda: policies[1].act(obs, None))


def seconds_per_step(step) -> float:
    for _ in range(200):
        step()
    start = time.perf_counter()
    for _ in range(STEPS):
        step()
    return (time.perf_counter() - start) / STEPS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/policy_step")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with torch.inference_mode():
        for env_id, (obs_dim, act_dim) in SIZES.items():
            for label, plain, fused in cases(obs_dim, act_dim):
                ops = []
                for step in (plain, fused):
                    with OpCounter() as counter:
                        step()
                    ops.append(counter.count)
                times = {"plain": [], "fused": []}
                for _ in range(args.repeats):
                    times["plain"].append(seconds_per_step(plain))
                    times["fused"].append(seconds_per_step(fused))
                ratios = [p / f for p, f in zip(times["plain"], times["fused"])]
                rows.append({"env": env_id, "case": label, "plain_ops": ops[0], "fused_ops": ops[1],
                             "plain_us": 1e6 * statistics.median(times["plain"]),
                             "fused_us": 1e6 * statistics.median(times["fused"]),
                             "ratio": statistics.median(ratios), "ratios": ratios})
                print(rows[-1])
    lines = ["# The rollout's policy step: plain vs fused (rlkit.fast.FusedPolicyStep)", "",
             "```", f"python benchmarks/policy_step.py --repeats {args.repeats}", "```", "",
             f"CPU, 1 torch thread, inference mode, {os.cpu_count()} cores (shared machine; load average "
             f"{os.getloadavg()[0]:.1f} at the end); medians of {args.repeats} interleaved repeats of {STEPS:,} steps; "
             "'plain / fused' is the median of the per-repeat ratios (their range in brackets).", "",
             "| sizes | case | aten ops, plain | aten ops, fused | µs plain | µs fused | plain / fused |",
             "|-|-|-|-|-|-|-|"]
    for r in rows:
        lines.append(f"| {r['env']} | {r['case']} | {r['plain_ops']} | {r['fused_ops']} | {r['plain_us']:.1f} | "
                     f"{r['fused_us']:.1f} | {r['ratio']:.2f}x ({min(r['ratios']):.2f}-{max(r['ratios']):.2f}) |")
    lines += ["", "plain: agent.get_action_and_value (one seed) or the stacked per-layer forward + "
              "normal_sample_and_score (batched seeds); fused: actor and critic stacked, one batched matmul per layer, "
              "the log-prob read off the noise. Same draws from the same generators (tests/test_fused_update.py)."]
    write_results(args.out, {"rows": rows, "repeats": args.repeats, "torch": torch.__version__}, lines)


if __name__ == "__main__":
    main()
