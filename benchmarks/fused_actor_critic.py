"""Would a fused actor-critic be faster?  A prototype against rlkit's two-MLP agent, CPU, 1 thread.

    python benchmarks/fused_actor_critic.py [--repeats 7]

The prototype (here only, not in rlkit) computes both networks as one chain: the two first layers
as one [obs, 128] matmul, the two second layers as one batched matmul over a [2, 64, 64] weight,
then the two heads.  Same loss (rlkit.ppo.minibatch_loss), same flat-parameter Adam and clip.
Measured at HalfCheetah's sizes (17 observations, 6 actions, 64 hidden, minibatch 64): aten ops
and microseconds per gradient step, interleaved repeats, medians; and one forward of a single
observation (the rollout's policy step), best of the repeats.  Writes results.json / results.md to --out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from ppo_profile import OpCounter
from results_io import write_results  # benchmarks/ is sys.path[0] when run as a script


class FusedActorCritic(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int, hidden: int = 64):
        super().__init__()
        self.hidden = hidden
        self.w1, self.b1 = nn.Parameter(torch.randn(obs_dim, 2 * hidden) * 0.1), nn.Parameter(torch.zeros(2 * hidden))
        self.w2, self.b2 = nn.Parameter(torch.randn(2, hidden, hidden) * 0.1), nn.Parameter(torch.zeros(2, 1, hidden))
        self.wa, self.ba = nn.Parameter(torch.randn(hidden, action_dim) * 0.01), nn.Parameter(torch.zeros(action_dim))
        self.wc, self.bc = nn.Parameter(torch.randn(hidden, 1)), nn.Parameter(torch.zeros(1))
        self.actor_logstd = nn.Parameter(torch.zeros(1, action_dim))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = torch.tanh(torch.addmm(self.b1, obs, self.w1)).view(-1, 2, self.hidden).transpose(0, 1)
        second = torch.tanh(torch.baddbmm(self.b2, first, self.w2))
        return torch.addmm(self.ba, second[0], self.wa), torch.addmm(self.bc, second[1], self.wc).squeeze(-1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/results/fused_actor_critic")
    args = parser.parse_args(argv)
    from rlkit.ppo import (
        PPOConfig,
        agent_minibatch_loss,
        make_agent,
        make_optimizer,
        minibatch_loss,
        normal_sample_and_score,
        optimized_parameters,
    )

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = PPOConfig(env_id="HalfCheetah-v5").validate()
    obs_dim, action_dim, n = 17, 6, cfg.batch_size
    agents = {"rlkit (two MLPs)": make_agent(cfg, gym.spaces.Box(-np.inf, np.inf, (obs_dim,)),
                                             gym.spaces.Box(-1.0, 1.0, (action_dim,))),
              "fused prototype": FusedActorCritic(obs_dim, action_dim)}
    optimizers = {name: make_optimizer(agent, cfg.learning_rate, flat=True) for name, agent in agents.items()}
    obs, actions = torch.randn(n, obs_dim), torch.randn(n, action_dim)
    targets = [torch.randn(n) for _ in range(4)]
    settings = (cfg.norm_adv, cfg.clip_coef, cfg.clip_vloss, cfg.ent_coef, cfg.vf_coef)

    def gradient_step(name: str, mb: torch.Tensor) -> None:
        agent, optimizer = agents[name], optimizers[name]
        mb_targets = [t[mb] for t in targets]
        if isinstance(agent, FusedActorCritic):
            mean, value = agent(obs[mb])
            _, log_prob, entropy = normal_sample_and_score(mean, agent.actor_logstd, actions[mb])
            loss = minibatch_loss(log_prob, entropy, value, *mb_targets, *settings)[0]
        else:
            loss = agent_minibatch_loss(agent, obs[mb], actions[mb], None, *mb_targets, *settings)[0]
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        nn.utils.clip_grad_norm_(optimized_parameters(optimizer), cfg.max_grad_norm)
        optimizer.step()

    ops, step_us, forward_us, forward_ops = {}, {name: [] for name in agents}, {}, {}
    for name in agents:
        with OpCounter() as counter:
            gradient_step(name, torch.arange(cfg.minibatch_size))
        ops[name] = counter.count
    generator = torch.Generator().manual_seed(0)
    steps = cfg.update_epochs * cfg.num_minibatches
    for _ in range(args.repeats):
        for name in agents:
            start = time.perf_counter()
            for _ in range(steps):
                gradient_step(name, torch.randint(0, n, (cfg.minibatch_size,), generator=generator))
            step_us[name].append((time.perf_counter() - start) / steps * 1e6)
    one = torch.randn(1, obs_dim)
    with torch.inference_mode():
        for name, agent in agents.items():
            with OpCounter() as counter:
                agent(one)
            forward_ops[name] = counter.count
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                for _ in range(5000):
                    agent(one)
                best = min(best, (time.perf_counter() - start) / 5000 * 1e6)
            forward_us[name] = best

    command = "python benchmarks/fused_actor_critic.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = ["# A fused actor-critic prototype vs rlkit's two MLPs (CPU, 1 thread)", "", "```", command.strip(), "```", "",
             f"HalfCheetah sizes, minibatch 64, {os.cpu_count()} CPU cores (shared machine); gradient step: median of "
             f"{args.repeats} interleaved repeats of {steps} steps; forward of one observation: best of {args.repeats}.",
             "", "| network | aten ops per gradient step | µs per gradient step | aten ops per forward (1 obs) | "
             "µs per forward (1 obs) |", "|-|-|-|-|-|"]
    for name in agents:
        lines.append(f"| {name} | {ops[name]} | {statistics.median(step_us[name]):.0f} | {forward_ops[name]} | "
                     f"{forward_us[name]:.1f} |")
    write_results(args.out, {"command": command, "ops_per_gradient_step": ops, "gradient_step_us": step_us,
                             "forward_ops": forward_ops, "forward_us": forward_us}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
