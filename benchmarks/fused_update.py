"""The minibatch gradient step three ways: autograd (the readable path), autograd through torch.compile, and
the fused update (rlkit.fast.FusedMLPLoss, config update_backend), for one agent and for 5 stacked seeds.

    python benchmarks/fused_update.py [--repeats 5] [--no-compile]

HalfCheetah sizes (17 observations, 6 actions, two 64-wide tanh MLPs), CleanRL's MuJoCo update
(2,048 samples, 32 minibatches of 64, 10 epochs), CPU, 1 torch thread.  A gradient step here is what
rlkit.ppo.ppo_update runs per minibatch: loss and gradients, the global-norm clip, the finite check and
Adam.  Per backend: aten ops per step, and µs per step over a whole update (320 steps), median of
interleaved repeats; the compiled one is timed after its compile (reported apart).  Writes
results.json / results.md to --out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace

import gymnasium as gym
import numpy as np
import torch
from ppo_profile import OpCounter
from results_io import write_results  # benchmarks/ is sys.path[0] when run as a script


def single_learner(cfg, backend: str):
    from rlkit.ppo import Batch, FusedLearner, Learner, make_agent, make_optimizer

    torch.manual_seed(0)
    agent = make_agent(cfg, gym.spaces.Box(-np.inf, np.inf, (17,)), gym.spaces.Box(-1.0, 1.0, (6,)))
    optimizer = make_optimizer(agent, cfg.learning_rate, flat=True)
    run_cfg = replace(cfg, torch_compile=backend == "compiled").validate()
    learner = (FusedLearner if backend == "fused" else Learner)(agent, optimizer, run_cfg, torch.Generator().manual_seed(1))
    obs = torch.randn(cfg.batch_size, 17)
    with torch.no_grad():
        action, log_prob, _, value = agent.get_action_and_value(obs)
    return learner, Batch(obs, action, log_prob, torch.randn(cfg.batch_size), torch.randn(cfg.batch_size), value)


def stacked_learner(cfg, backend: str, seeds: int = 5):
    from torch.func import stack_module_state

    from rlkit.ppo import Batch, make_agent
    from rlkit.ppo_multiseed import BatchedSeedLearner

    spaces = gym.spaces.Box(-np.inf, np.inf, (17,)), gym.spaces.Box(-1.0, 1.0, (6,))
    agents = []
    for s in range(seeds):
        torch.manual_seed(s)
        agents.append(make_agent(cfg, *spaces))
    params, buffers = stack_module_state(agents)
    template = make_agent(cfg, *spaces).to("meta")
    optimizer = torch.optim.Adam(list(params.values()), lr=cfg.learning_rate, eps=1e-5, fused=True)
    learner = BatchedSeedLearner(template, params, buffers, optimizer, replace(cfg, update_backend=backend).validate(),
                                 [torch.Generator().manual_seed(s) for s in range(seeds)])
    n = cfg.batch_size
    obs = torch.randn(seeds, n, 17)
    with torch.no_grad():
        parts = [a.get_action_and_value(obs[i]) for i, a in enumerate(agents)]
    stack = lambda k: torch.stack([p[k] for p in parts])  # noqa: E731
    return learner, Batch(obs, stack(0), stack(1), torch.randn(seeds, n), torch.randn(seeds, n), stack(3))


def gradient_step(learner, batch, mb, cfg) -> None:
    """One step of rlkit.ppo.ppo_update's inner loop."""
    loss = learner.loss_and_gradients(batch, mb)[0]
    grad_norm = learner.clip_gradients(cfg.max_grad_norm)
    torch.isfinite(loss.detach() + grad_norm).all()
    learner.optimizer.step()


def one_update(learner, batch, cfg) -> float:
    start = time.perf_counter()
    for _ in range(cfg.update_epochs):
        for mb in learner.minibatches(batch):
            gradient_step(learner, batch, mb, cfg)
    return (time.perf_counter() - start) / (cfg.update_epochs * cfg.num_minibatches) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile backend (slow to compile)")
    parser.add_argument("--out", default="benchmarks/results/fused_update")
    args = parser.parse_args(argv)
    from rlkit.ppo import PPOConfig

    torch.set_num_threads(1)
    cfg = PPOConfig(env_id="HalfCheetah-v5").validate()
    cases = {"1 agent, autograd": single_learner(cfg, "autograd"), "1 agent, fused": single_learner(cfg, "fused"),
             "5 seeds stacked, autograd (vmap)": stacked_learner(cfg, "autograd"),
             "5 seeds stacked, fused": stacked_learner(cfg, "fused")}
    compile_seconds = None
    if not args.no_compile:
        cases["1 agent, autograd + torch.compile"] = single_learner(cfg, "compiled")
        start = time.perf_counter()
        learner, batch = cases["1 agent, autograd + torch.compile"]
        one_update(learner, batch, cfg)  # compiles
        compile_seconds = time.perf_counter() - start
    ops = {}
    for name, (learner, batch) in cases.items():
        mb = learner.minibatches(batch)[0]
        gradient_step(learner, batch, mb, cfg)  # warm
        with OpCounter() as counter:
            gradient_step(learner, batch, mb, cfg)
        ops[name] = counter.count
    step_us = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (learner, batch) in cases.items():
            step_us[name].append(one_update(learner, batch, cfg))
    median = {name: statistics.median(v) for name, v in step_us.items()}
    base = {name: "1 agent, autograd" if name.startswith("1 agent") else "5 seeds stacked, autograd (vmap)" for name in cases}
    per_repeat = {name: [a / b for a, b in zip(step_us[base[name]], step_us[name])] for name in cases}

    command = "python benchmarks/fused_update.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = ["# The minibatch gradient step: autograd, torch.compile, fused (CPU, 1 thread)", "", "```", command.strip(), "```", "",
             f"HalfCheetah sizes, minibatch 64, 320 steps per update, {os.cpu_count()} CPU cores (shared: other jobs ran "
             f"beside it); µs per step: median of {args.repeats} interleaved repeats of a whole update; speed-up: vs "
             "the autograd step of the same form, median of the per-repeat ratios."
             + (f" torch.compile's first update (compiling) took {compile_seconds:.0f} s." if compile_seconds else ""),
             "", "| gradient step | aten ops | µs per step | speed-up |", "|-|-|-|-|"]
    for name in cases:
        counted = "-" if "compile" in name else ops[name]  # a dispatch mode runs the compiled graph's ops uncompiled
        lines.append(f"| {name} | {counted} | {median[name]:.0f} | {statistics.median(per_repeat[name]):.2f}x |")
    write_results(args.out, {"command": command, "ops": ops, "step_us": step_us, "per_repeat_speedup": per_repeat,
                             "compile_seconds": compile_seconds}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
