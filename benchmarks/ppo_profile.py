"""Where a PPO iteration's time goes on CPU (CleanRL's MuJoCo settings, 1 env, 1 torch thread).

    python benchmarks/ppo_profile.py [--env-id HalfCheetah-v5] [--repeats 5]

Measures, each as the median of --repeats:
- one minibatch gradient step (64 samples) split into forward + loss, backward, grad-norm clip,
  finite checks and Adam, the pieces ``rlkit.ppo.ppo_update`` runs 320 times per 2,048 env steps;
- the rollout's policy step (``get_action_and_value`` on one observation, inference mode);
- one step of the env stack rlkit trains on (random actions drawn beforehand);
- whole iterations of ``rlkit.ppo.train`` (rollout + GAE + update), from the run's own metrics;
- how many torch operators (aten ops, counted with a TorchDispatchMode) one gradient step and one
  policy step dispatch, in rlkit and in Stable-Baselines3's PPO at the same settings, and the cost of
  one small op on this machine: at these sizes time is (ops x cost per op), which is what limits both.
What the pieces do not cover is bookkeeping (buffer writes, conversions, checks, episode stats).
The pieces are those of the plain (autograd) path, so the whole iterations here train with
``update_backend = "autograd"`` too; the fused update and policy step are measured by
benchmarks/fused_update.py and benchmarks/policy_step.py.  Writes results.json and results.md to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import sys
import tempfile
import time

import torch
import torch.nn as nn
from results_io import write_results  # benchmarks/ is sys.path[0] when run as a script
from sps_vs_sb3 import SHARED, make_sb3_ppo
from torch.utils._python_dispatch import TorchDispatchMode

PARTS = ("forward_and_loss", "backward", "clip", "finite_checks", "adam")


class OpCounter(TorchDispatchMode):
    """Counts the aten operators dispatched while active (backward's included)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def grad_step_parts(cfg, envs, steps: int, count_ops: bool = False) -> dict[str, float]:
    """Seconds per gradient step of each piece, averaged over ``steps`` steps, as rlkit.ppo.ppo_update
    runs them; with ``count_ops`` instead the aten ops each piece dispatches in one step."""
    from rlkit.ppo import agent_minibatch_loss, make_agent, make_optimizer, optimized_parameters
    from rlkit.runtime import check_finite

    agent = make_agent(cfg, envs.single_observation_space, envs.single_action_space)
    optimizer = make_optimizer(agent, cfg.learning_rate, flat=cfg.network == "mlp")  # as rlkit.ppo.train does
    parameters = optimized_parameters(optimizer)
    n, batch = cfg.batch_size, cfg.batch_size // cfg.num_minibatches
    obs = torch.randn(n, *envs.single_observation_space.shape)
    actions = torch.randn(n, *envs.single_action_space.shape)
    old_log_probs, advantages, returns, old_values = (torch.randn(n) for _ in range(4))
    parts = dict.fromkeys(PARTS, 0.0)
    warmup = 20
    if count_ops:
        warmup, steps = 1, 1
    for i in range(steps + warmup):
        mb = torch.randint(0, n, (batch,))
        targets = (old_log_probs[mb], advantages[mb], returns[mb], old_values[mb])
        counters = [OpCounter() if count_ops and i >= warmup else contextlib.nullcontext() for _ in PARTS]
        t0 = time.perf_counter()
        with counters[0]:
            loss, *_ = agent_minibatch_loss(agent, obs[mb], actions[mb], None, *targets, cfg.norm_adv, cfg.clip_coef,
                                            cfg.clip_vloss, cfg.ent_coef, cfg.vf_coef)
        t1 = time.perf_counter()
        with counters[1]:
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
        t2 = time.perf_counter()
        with counters[2]:
            grad_norm = nn.utils.clip_grad_norm_(parameters, cfg.max_grad_norm)
        t3 = time.perf_counter()
        with counters[3]:
            if not torch.isfinite(loss.detach() + grad_norm):
                check_finite("loss", loss.detach())
        t4 = time.perf_counter()
        with counters[4]:
            optimizer.step()
        t5 = time.perf_counter()
        if i >= warmup:
            if count_ops:
                return {key: counter.count for key, counter in zip(PARTS, counters)}
            for key, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                parts[key] += seconds / steps
    return parts


def policy_step_ops(cfg, envs) -> int:
    from rlkit.ppo import make_agent

    agent = make_agent(cfg, envs.single_observation_space, envs.single_action_space)
    obs = torch.randn(cfg.num_envs, *envs.single_observation_space.shape)
    with torch.inference_mode(), OpCounter() as counter:
        agent.get_action_and_value(obs)
    return counter.count


def small_op_seconds(steps: int = 20000) -> float:
    """One elementwise op on a 64-element tensor: the dispatch cost that every op pays."""
    a, b = torch.randn(64), torch.randn(64)
    for _ in range(1000):
        torch.add(a, b)
    start = time.perf_counter()
    for _ in range(steps):
        torch.add(a, b)
    return (time.perf_counter() - start) / steps


def sb3_ops_and_seconds(env_id: str) -> dict[str, float] | None:
    """Stable-Baselines3 PPO at the same settings (benchmarks/sps_vs_sb3.py's model): aten ops per env
    step of its rollout and per gradient step of its update, and the update's seconds per gradient step."""
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        return None
    model = make_sb3_ppo(env_id)
    measured = {}
    collect, train = model.collect_rollouts, model.train

    def counted_collect(*args, **kwargs):
        with OpCounter() as counter:
            result = collect(*args, **kwargs)
        measured["ops_per_env_step"] = counter.count / SHARED["num_steps"]
        return result

    def counted_train():
        grad_steps = SHARED["update_epochs"] * SHARED["num_minibatches"]
        if "ops_per_grad_step" not in measured:
            with OpCounter() as counter:
                train()
            measured["ops_per_grad_step"] = counter.count / grad_steps
        else:
            start = time.perf_counter()
            train()
            measured["grad_step_s"] = (time.perf_counter() - start) / grad_steps

    model.collect_rollouts, model.train = counted_collect, counted_train
    model.learn(total_timesteps=3 * SHARED["num_steps"])  # update 1 counts ops, later ones are timed
    return measured


def policy_step_seconds(cfg, envs, steps: int) -> float:
    from rlkit.ppo import make_agent

    agent = make_agent(cfg, envs.single_observation_space, envs.single_action_space)
    obs = torch.randn(cfg.num_envs, *envs.single_observation_space.shape)
    with torch.inference_mode():
        for _ in range(20):
            agent.get_action_and_value(obs)
        start = time.perf_counter()
        for _ in range(steps):
            agent.get_action_and_value(obs)
    return (time.perf_counter() - start) / steps


def env_step_seconds(envs, steps: int) -> float:
    envs.reset(seed=1)
    envs.action_space.seed(1)
    actions = [envs.action_space.sample() for _ in range(1000)]  # drawn beforehand: only the env stack is timed
    start = time.perf_counter()
    for i in range(steps):
        envs.step(actions[i % 1000])
    return (time.perf_counter() - start) / steps


def iteration_seconds(cfg, iterations: int) -> list[float]:
    """Wall seconds of each iteration after the first, from the SPS each update logs."""
    from dataclasses import replace

    from rlkit.ppo import train

    with tempfile.TemporaryDirectory() as tmp:
        run_cfg = replace(cfg, total_timesteps=cfg.batch_size * (iterations + 1), run_dir=tmp, checkpoint_interval=0)
        train(run_cfg, run_name="run", progress=False)
        with open(os.path.join(tmp, "run", "metrics.jsonl")) as f:
            updates = [u for u in map(json.loads, f) if u.get("kind") == "update"]
    ends = [u["global_step"] / u["SPS"] for u in updates]  # SPS = global_step / seconds since the start
    return [b - a for a, b in zip(ends, ends[1:])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="HalfCheetah-v5")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--grad-steps", type=int, default=320, help="gradient steps per repeat")
    parser.add_argument("--env-steps", type=int, default=2048, help="policy / env steps per repeat")
    parser.add_argument("--iterations", type=int, default=3, help="whole PPO iterations timed (after a first one)")
    parser.add_argument("--no-sb3", action="store_true", help="skip the Stable-Baselines3 op count")
    parser.add_argument("--out", default="benchmarks/results/ppo_profile")
    args = parser.parse_args(argv)
    command = "python benchmarks/ppo_profile.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    from rlkit.ppo import PPOConfig, make_envs

    torch.set_num_threads(1)
    cfg = PPOConfig(env_id=args.env_id, num_envs=1, device="cpu", torch_threads=1, update_backend="autograd",
                    **SHARED).validate()
    envs = make_envs(cfg)
    grad, policy, env = [], [], []
    for repeat in range(args.repeats):
        grad.append(grad_step_parts(cfg, envs, args.grad_steps))
        policy.append(policy_step_seconds(cfg, envs, args.env_steps))
        env.append(env_step_seconds(envs, args.env_steps))
        print(f"repeat {repeat + 1}/{args.repeats}: grad step {sum(grad[-1].values()) * 1e6:.0f} us, policy step "
              f"{policy[-1] * 1e6:.0f} us, env step {env[-1] * 1e6:.0f} us", flush=True)
    ops = {"grad_step": grad_step_parts(cfg, envs, 1, count_ops=True), "policy_step": policy_step_ops(cfg, envs)}
    small_op = statistics.median(small_op_seconds() for _ in range(args.repeats))
    envs.close()
    iterations = [s for _ in range(args.repeats) for s in iteration_seconds(cfg, args.iterations)]
    sb3 = None if args.no_sb3 else sb3_ops_and_seconds(args.env_id)

    med = {key: statistics.median(g[key] for g in grad) for key in grad[0]}
    grad_step = sum(med.values())
    per_iteration = {
        "update (gradient steps)": grad_step * cfg.update_epochs * cfg.num_minibatches,
        "rollout policy steps": statistics.median(policy) * cfg.num_steps,
        "env stack steps": statistics.median(env) * cfg.num_steps,
    }
    iteration = statistics.median(iterations)
    per_iteration["bookkeeping and GAE (the rest)"] = iteration - sum(per_iteration.values())
    lines = ["# Where a PPO iteration's time goes (CPU)", "", "```", command.strip(), "```", "",
             f"{args.env_id}, CleanRL's MuJoCo settings (1 env, 2,048 steps per iteration, 10 epochs x 32 minibatches "
             f"of 64), 1 torch thread, {os.cpu_count()} CPU cores (shared machine); medians of {args.repeats} repeats.", "",
             "| one gradient step (64 samples) | µs | aten ops | µs per op |", "|-|-|-|-|"]
    lines += [f"| {key.replace('_', ' ')} | {seconds * 1e6:.0f} | {ops['grad_step'][key]} | "
              f"{seconds * 1e6 / max(ops['grad_step'][key], 1):.1f} |" for key, seconds in med.items()]
    grad_ops = sum(ops["grad_step"].values())
    lines += [f"| **total** | **{grad_step * 1e6:.0f}** | **{grad_ops}** | **{grad_step * 1e6 / grad_ops:.1f}** |", "",
              f"| one iteration ({cfg.batch_size} env steps, {iteration:.2f} s measured) | s | share |", "|-|-|-|"]
    lines += [f"| {key} | {seconds:.3f} | {seconds / iteration:.0%} |" for key, seconds in per_iteration.items()]
    lines += ["", f"Policy step {statistics.median(policy) * 1e6:.0f} µs and env-stack step "
              f"{statistics.median(env) * 1e6:.0f} µs per env step; whole-run rate {cfg.batch_size / iteration:,.0f} "
              "steps/s after the first iteration.", "",
              f"One elementwise op on 64 numbers costs {small_op * 1e6:.1f} µs here (dispatch, not arithmetic). "
              f"rlkit's policy step dispatches {ops['policy_step']} aten ops, its gradient step {grad_ops}.", ""]
    if sb3 is not None:
        lines += ["| aten ops (Stable-Baselines3 vs rlkit, same settings) | SB3 | rlkit | SB3 / rlkit |", "|-|-|-|-|",
                  f"| per gradient step | {sb3['ops_per_grad_step']:.0f} | {grad_ops} | "
                  f"{sb3['ops_per_grad_step'] / grad_ops:.2f}x |",
                  f"| per env step of the rollout | {sb3['ops_per_env_step']:.0f} | {ops['policy_step']} (policy step) | "
                  f"{sb3['ops_per_env_step'] / ops['policy_step']:.2f}x |", "",
                  f"SB3's gradient step takes {sb3['grad_step_s'] * 1e6:.0f} µs here "
                  f"({sb3['grad_step_s'] * 1e6 / sb3['ops_per_grad_step']:.1f} µs per op), rlkit's {grad_step * 1e6:.0f} µs."]
    write_results(args.out, {"command": command, "grad_step_parts_s": med, "policy_step_s": statistics.median(policy),
                   "env_step_s": statistics.median(env), "iteration_s": iterations, "per_iteration_s": per_iteration,
                   "aten_ops": ops, "small_op_s": small_op, "sb3": sb3,
                   "raw": {"grad": grad, "policy": policy, "env": env}}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
