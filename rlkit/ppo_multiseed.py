"""N seeds of one PPO config in one process, as one batched computation.

The N agents' parameters are stacked along a leading seed dimension
(``torch.func.stack_module_state``); every forward pass, loss and backward runs once
for all seeds (the update through ``torch.func.vmap``, the rollout's forward as one
batched matmul per layer), so the per-call overhead that dominates small-network PPO
on CPU is paid once instead of N times.

What stays per seed, so the seeds are independent runs: the envs (and their
normalisers), the initial weights (the same as ``rlkit.ppo.train`` with that seed),
the action-sampling and minibatch-shuffling random streams, the advantage
normalisation, the gradient-norm clip and Adam's state (Adam is elementwise, so one
Adam over stacked parameters is N Adams).  Seed k's run does not depend on which
other seeds it is batched with (tested).  It is not bit-for-bit ``rlkit.ppo.train``
with seed k: actions are sampled from per-seed generators instead of the global one.

Everything else is ``rlkit.ppo``: the same config, agent, sampling and scoring
functions, GAE and loss.  Not supported here (refused with a message): target_kl
(seeds would stop at different epochs), action masks, MultiDiscrete actions, the
Nature CNN, torch_compile; runs are not checkpointed (use ``rlkit bench`` without
``--batched`` for resumable runs).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import replace

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap

from rlkit.envs import normalizer_state
from rlkit.logger import RunLogger
from rlkit.ppo import (
    Agent,
    EpisodeLog,
    NonFiniteError,
    PPOConfig,
    TrainResult,
    categorical_sample_and_score,
    gae,
    make_agent,
    make_envs,
    minibatch_loss,
    normal_sample_and_score,
    resolve_device,
    truncated_final_obs,
)


def check_batchable(cfg: PPOConfig, envs: gym.vector.VectorEnv) -> None:
    problems = []
    if cfg.target_kl is not None:
        problems.append("target_kl (seeds would stop their epochs at different times)")
    if cfg.torch_compile:
        problems.append("torch_compile")
    if cfg.network != "mlp":
        problems.append(f"network={cfg.network!r}")
    if isinstance(envs.single_action_space, gym.spaces.MultiDiscrete):
        problems.append("MultiDiscrete actions")
    if problems:
        raise ValueError(f"batched multi-seed training does not support {', '.join(problems)}; "
                         "run the seeds as separate processes (rlkit bench without --batched)")


def train_seeds(cfg: PPOConfig, seeds: list[int], run_dirs: list[str] | None = None, progress: bool = True,
                log: bool = True) -> list[TrainResult]:
    """Train ``cfg`` once per seed, all seeds batched; one TrainResult per seed, in order.

    ``run_dirs[i]`` is where seed i's config.json / metrics.jsonl / summary.json go
    (default ``<run_dir>/<env>__<exp_name>__<seed>__<time>``).
    """
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and non-empty, got {seeds}")
    cfg = replace(cfg, seed=seeds[0]).validate()
    n = len(seeds)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    stamp = int(time.time())
    if run_dirs is None:
        run_dirs = [os.path.join(cfg.run_dir, f"{cfg.env_id.replace('/', '_')}__{cfg.exp_name}__{s}__{stamp}") for s in seeds]

    configs = [replace(cfg, seed=s).validate() for s in seeds]
    envs = [make_envs(c) for c in configs]
    check_batchable(cfg, envs[0])
    agents = []
    for seed, env in zip(seeds, envs):
        env.action_space.seed(seed)
        torch.manual_seed(seed)  # the initial weights of rlkit.ppo.train with this seed
        agents.append(make_agent(cfg, env.single_observation_space, env.single_action_space).to(device))
    params, buffers = stack_module_state(agents)  # {name: [n, ...]} leaves with requires_grad
    template = copy.deepcopy(agents[0]).to("meta")
    continuous = template.continuous
    optimizer = torch.optim.Adam(list(params.values()), lr=cfg.learning_rate, eps=1e-5, fused=True)  # [core 3], as rlkit.ppo
    sample_generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    shuffle_generators = [torch.Generator().manual_seed(s) for s in seeds]

    def forward(p: dict, b: dict, obs: Tensor) -> tuple[Tensor, Tensor]:
        return functional_call(template, (p, b), (obs,))

    def score(p: dict, policy_out: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        if continuous:
            _, log_prob, entropy = normal_sample_and_score(policy_out, p["actor_logstd"], actions)
        else:
            _, log_prob, entropy = categorical_sample_and_score(policy_out, None, actions)
        return log_prob, entropy

    def seed_loss(p, b, obs, actions, old_log_prob, advantages, returns, old_value):
        policy_out, value = forward(p, b, obs)
        log_prob, entropy = score(p, policy_out, actions)
        loss, pg_loss, v_loss, entropy_loss, stats = minibatch_loss(
            log_prob, entropy, value, old_log_prob, advantages, returns, old_value,
            cfg.norm_adv, cfg.clip_coef, cfg.clip_vloss, cfg.ent_coef, cfg.vf_coef)
        return loss, (pg_loss, v_loss, entropy_loss, stats["approx_kl"], stats["clipfrac"], stats["max_ratio_error"])

    batched_loss = vmap(seed_loss)

    def sample(policy_out: Tensor) -> Tensor:
        """One action per seed and env, each seed from its own generator."""
        if continuous:
            noise = torch.stack([torch.randn(policy_out.shape[1:], generator=g, device=device) for g in sample_generators])
            return policy_out + params["actor_logstd"].exp() * noise
        probs = torch.softmax(policy_out, dim=-1)
        return torch.stack([torch.multinomial(probs[i], 1, generator=g).squeeze(-1) for i, g in enumerate(sample_generators)])

    obs_shape = envs[0].single_observation_space.shape
    num_envs, steps = cfg.num_envs, cfg.num_steps
    action_shape = tuple(envs[0].single_action_space.shape)
    rollout_obs = torch.zeros(steps, n, num_envs, *obs_shape, device=device)
    rollout_actions = torch.zeros(steps, n, num_envs, *action_shape, device=device,
                                  dtype=torch.float32 if continuous else torch.long)
    rollout_log_probs, rollout_rewards, rollout_dones, rollout_values = (
        torch.zeros(steps, n, num_envs, device=device) for _ in range(4))

    loggers = [RunLogger(d, {**c.to_dict(), "batched_seeds": seeds}, enabled=log, progress=progress and i == 0,
                         total=cfg.num_iterations * cfg.batch_size * n) for i, (d, c) in enumerate(zip(run_dirs, configs))]
    if progress:
        loggers[0].bar.set_description(f"{n} seeds")
    episodes = [EpisodeLog() for _ in seeds]
    next_obs = torch.as_tensor(np.stack([e.reset(seed=s)[0] for e, s in zip(envs, seeds)]), dtype=torch.float32,
                               device=device)
    global_step, start_time = 0, time.time()
    per_seed_stats: list[dict] = [{} for _ in seeds]
    batch = cfg.batch_size
    try:
        for iteration in range(1, cfg.num_iterations + 1):
            if cfg.anneal_lr:  # [core 4]
                optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / cfg.num_iterations) * cfg.learning_rate
            for step in range(steps):
                global_step += num_envs
                rollout_obs[step] = next_obs
                with torch.no_grad():
                    policy_out, value = stacked_mlp_forward(template, params, next_obs)
                    action = sample(policy_out)
                    log_prob, _ = score(params, policy_out, action)  # broadcasts over the seed dimension
                rollout_actions[step], rollout_log_probs[step], rollout_values[step] = action, log_prob, value
                observations, rewards, dones = [], [], []
                for i, env in enumerate(envs):
                    obs_i, reward_i, terminated, truncated, info = env.step(action[i].cpu().numpy())
                    reward_i = np.asarray(reward_i, dtype=np.float64).copy()
                    if cfg.bootstrap_truncation:  # as rlkit.ppo.train: V(final obs) folded into the reward
                        truncated_only, final_obs = truncated_final_obs(terminated, truncated, info)
                        if truncated_only.size:
                            final = torch.as_tensor(final_obs, dtype=torch.float32, device=device)
                            with torch.no_grad():
                                _, final_value = forward({k: v[i] for k, v in params.items()},
                                                         {k: v[i] for k, v in buffers.items()}, final)
                            reward_i[truncated_only] += cfg.gamma * final_value.cpu().numpy()
                    observations.append(obs_i)
                    rewards.append(reward_i)
                    dones.append(terminated | truncated)
                    episodes[i].record(info, global_step, loggers[i])
                rollout_rewards[step] = torch.as_tensor(np.stack(rewards), dtype=torch.float32, device=device)
                rollout_dones[step] = torch.as_tensor(np.stack(dones), dtype=torch.float32, device=device)
                next_obs = torch.as_tensor(np.stack(observations), dtype=torch.float32, device=device)
            if not (torch.isfinite(rollout_obs).all() and torch.isfinite(rollout_rewards).all()):
                raise NonFiniteError(f"non-finite observations or rewards at update {iteration}")

            with torch.no_grad():
                _, next_value = stacked_mlp_forward(template, params, next_obs)
            advantages, returns = gae(rollout_rewards, rollout_values, rollout_dones, next_value, cfg.gamma, cfg.gae_lambda)

            def per_seed(x: Tensor) -> Tensor:  # [T, n, E, ...] -> [n, T * E, ...]
                return x.transpose(0, 1).reshape(n, batch, *x.shape[3:])

            b_obs, b_actions, b_log_probs = per_seed(rollout_obs), per_seed(rollout_actions), per_seed(rollout_log_probs)
            b_advantages, b_returns, b_values = per_seed(advantages), per_seed(returns), per_seed(rollout_values)
            seed_index = torch.arange(n, device=device).unsqueeze(1)
            clipfracs = []
            for _epoch in range(cfg.update_epochs):  # [core 6]
                order = torch.stack([torch.randperm(batch, generator=g) for g in shuffle_generators]).to(device)
                for start in range(0, batch, cfg.minibatch_size):
                    mb = seed_index, order[:, start : start + cfg.minibatch_size]
                    losses, (pg_loss, v_loss, entropy_loss, approx_kl, clipfrac, _) = batched_loss(
                        params, buffers, b_obs[mb], b_actions[mb], b_log_probs[mb], b_advantages[mb], b_returns[mb],
                        b_values[mb])
                    optimizer.zero_grad(set_to_none=True)
                    losses.sum().backward()  # seeds share no parameters: each gets its own gradient
                    clip_per_seed(params, cfg.max_grad_norm)  # [core 11], per seed
                    if not torch.isfinite(losses).all():
                        raise NonFiniteError(f"non-finite loss at update {iteration}")
                    optimizer.step()
                    clipfracs.append(clipfrac)
            clipfrac_mean = torch.stack(clipfracs).mean(0)
            elapsed = time.time() - start_time
            for i in range(n):
                per_seed_stats[i] = {
                    "policy_loss": float(pg_loss[i].detach()), "value_loss": float(v_loss[i].detach()),
                    "entropy": float(entropy_loss[i].detach()),
                    "approx_kl": float(approx_kl[i]), "clipfrac": float(clipfrac_mean[i]),
                    "learning_rate": optimizer.param_groups[0]["lr"], "SPS": global_step / elapsed,
                    "SPS_all_seeds": global_step * n / elapsed}
                if iteration % cfg.log_interval == 0 or iteration == cfg.num_iterations:
                    loggers[i].update(global_step, iteration, per_seed_stats[i])
            loggers[0].advance(global_step * n, batch * n, global_step * n / elapsed)
    finally:
        wall_time = time.time() - start_time
        normalizers = [normalizer_state(e) for e in envs]
        for env in envs:
            env.close()

    results = []
    for i, (agent, c) in enumerate(zip(agents, configs)):
        with torch.no_grad():
            agent.load_state_dict({k: v[i].detach().clone() for k, v in {**params, **buffers}.items()})
        result = TrainResult(run_dir=loggers[i].run_dir, episode_returns=episodes[i].returns,
                             episode_lengths=episodes[i].lengths, episode_steps=episodes[i].steps,
                             last_update=per_seed_stats[i], global_step=global_step, wall_time=wall_time, agent=agent,
                             normalizer=normalizers[i])
        loggers[i].summary({**result.summary(c), "batched_seeds": seeds})
        loggers[i].close()
        results.append(result)
    return results


def stacked_mlp_forward(template: Agent, params: dict[str, Tensor], obs: Tensor) -> tuple[Tensor, Tensor]:
    """The MLP agent's forward for all seeds at once: obs [n, E, obs_dim] -> (policy out [n, E, A], value [n, E]).

    Each Linear is one batched matmul over the seeds' stacked weights (torch.baddbmm): the math of
    ``vmap(functional_call(template))`` without vmap's per-call Python overhead, which the rollout
    would pay at every env step.  The update, which differentiates, keeps vmap.
    """

    def linear(name: str, x: Tensor) -> Tensor:
        return torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), x, params[f"{name}.weight"].transpose(1, 2))

    def run(prefix: str, layers: nn.Sequential, x: Tensor) -> Tensor:
        for index, layer in layers.named_children():
            x = linear(f"{prefix}.{index}", x) if isinstance(layer, nn.Linear) else layer.forward(x)  # else: activation
        return x

    if template.shared:
        hidden = run("torso", template.torso, obs)
        return linear("actor_head", hidden), linear("critic_head", hidden).squeeze(-1)
    return run("actor", template.actor, obs), run("critic", template.critic, obs).squeeze(-1)


def clip_per_seed(params: dict[str, Tensor], max_norm: float) -> Tensor:
    """clip_grad_norm_ applied to each seed's slice of the stacked gradients; returns the norms [n]."""
    grads = [p.grad for p in params.values() if p.grad is not None]
    norms = torch.stack([g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # torch.nn.utils.clip_grad_norm_'s formula
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))
    return norms
