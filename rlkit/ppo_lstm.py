"""Recurrent PPO: the feed-forward core (rlkit.ppo) with an LSTM between torso and heads.

The five LSTM details of "The 37 Implementation Details of PPO", tagged ``[lstm n]``:

1. LSTM weights orthogonal (gain 1), biases 0.
2. Zero initial hidden and cell states.
3. States reset (multiplied by 0) where an episode ended, inside the sequence.
4. Minibatches made of whole env sequences (split over envs, not steps), so the
   LSTM sees each sequence in order during training.
5. During training the states are rebuilt from the states stored at the start of
   the rollout, not from the states seen during collection.

Everything else (GAE, the clipped losses, the update loop with its KL stop and
grad clip, truncation bootstrapping, same-step autoreset, logging) is rlkit.ppo's.
No checkpoint/resume here yet: a run is short enough to restart.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from rlkit.envs import normalizer_state
from rlkit.logger import RunLogger
from rlkit.ppo import (
    ActorCriticBase,
    EpisodeLog,
    PPOConfig,
    TrainResult,
    _check_finite,
    action_mask_from_info,
    explained_variance,
    gae,
    layer_init,
    make_envs,
    make_optimizer,
    ppo_update,
    resolve_device,
    seed_everything,
    truncated_final_obs,
)

LSTMState = tuple[Tensor, Tensor]


@dataclass
class RecurrentPPOConfig(PPOConfig):
    """PPOConfig plus the LSTM size; num_minibatches must divide num_envs [lstm 4]."""

    lstm_hidden_size: int = 64
    """units of the LSTM layer between the torso and the heads"""

    def validate(self) -> RecurrentPPOConfig:
        super().validate()
        if self.lstm_hidden_size <= 0:
            raise ValueError(f"lstm_hidden_size must be > 0, got {self.lstm_hidden_size}")
        if self.num_envs % self.num_minibatches:
            raise ValueError(
                f"num_minibatches ({self.num_minibatches}) must divide num_envs ({self.num_envs}): "
                "recurrent minibatches are whole env sequences"
            )
        return self


class LSTMAgent(ActorCriticBase):
    """obs -> Linear(hidden) tanh -> LSTM -> policy head (gain 0.01) and value head (gain 1)."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, hidden_size: int = 64, lstm_hidden_size: int = 64):
        super().__init__(observation_space, action_space)
        self.encoder = nn.Sequential(layer_init(nn.Linear(self.obs_dim, hidden_size)), nn.Tanh())
        self.lstm = nn.LSTM(hidden_size, lstm_hidden_size)
        for name, param in self.lstm.named_parameters():  # [lstm 1]
            if "bias" in name:
                nn.init.constant_(param, 0.0)
            elif "weight" in name:
                nn.init.orthogonal_(param, 1.0)
        self.actor = layer_init(nn.Linear(lstm_hidden_size, self.action_dim), std=0.01)
        self.critic = layer_init(nn.Linear(lstm_hidden_size, 1), std=1.0)
        if self.continuous:
            self.actor_logstd = nn.Parameter(torch.zeros(1, self.action_dim))

    def initial_state(self, num_envs: int, device: torch.device | str = "cpu") -> LSTMState:
        """Zero hidden and cell states [lstm 2]."""
        shape = (self.lstm.num_layers, num_envs, self.lstm.hidden_size)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def get_states(self, obs: Tensor, state: LSTMState, episode_starts: Tensor) -> tuple[Tensor, LSTMState]:
        """Run the LSTM over [T * N] time-major observations; returns [T * N, H] outputs and the last state.

        ``episode_starts[t, n] = 1`` where obs t of env n begins a new episode: the
        state is zeroed before that step [lstm 3].
        """
        hidden = self.encoder(obs)
        num_envs = state[0].shape[1]
        hidden = hidden.reshape(-1, num_envs, hidden.shape[-1])
        starts = episode_starts.reshape(-1, num_envs)
        outputs = []
        for step_input, start in zip(hidden, starts):
            keep = (1.0 - start).view(1, -1, 1)
            output, state = self.lstm(step_input.unsqueeze(0), (keep * state[0], keep * state[1]))
            outputs.append(output)
        return torch.flatten(torch.cat(outputs), 0, 1), state

    def get_value(self, obs: Tensor, state: LSTMState, episode_starts: Tensor) -> Tensor:
        output, _ = self.get_states(obs, state, episode_starts)
        return self.critic(output).squeeze(-1)

    def get_action_and_value(
        self,
        obs: Tensor,
        state: LSTMState,
        episode_starts: Tensor,
        action: Tensor | None = None,
        deterministic: bool = False,
        action_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, LSTMState]:
        output, state = self.get_states(obs, state, episode_starts)
        policy_out, value = self.actor(output), self.critic(output).squeeze(-1)
        action, log_prob, entropy = self.sample_and_score(policy_out, action, deterministic, action_mask)
        return action, log_prob, entropy, value, state


def train(cfg: RecurrentPPOConfig, run_name: str | None = None, progress: bool = True, log: bool = True) -> TrainResult:
    """Recurrent PPO; same outputs as rlkit.ppo.train (no checkpoints)."""
    cfg.validate()
    seed_everything(cfg.seed, cfg.torch_deterministic)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    envs = make_envs(cfg)
    agent = LSTMAgent(envs.single_observation_space, envs.single_action_space, cfg.hidden_size, cfg.lstm_hidden_size).to(device)
    optimizer = make_optimizer(agent, cfg.learning_rate)
    shuffle_generator = torch.Generator().manual_seed(cfg.seed)
    run_name = run_name or f"{cfg.env_id.replace('/', '_')}__{cfg.exp_name}__{cfg.seed}__{int(time.time())}"
    logger = RunLogger(os.path.join(cfg.run_dir, run_name), cfg.to_dict(), enabled=log, progress=progress,
                       total=cfg.num_iterations * cfg.batch_size)

    T, N = cfg.num_steps, cfg.num_envs
    obs_shape = envs.single_observation_space.shape
    obs = torch.zeros((T, N, *obs_shape), device=device)
    actions = torch.zeros((T, N, *agent.action_shape), device=device, dtype=torch.float32 if agent.continuous else torch.long)
    log_probs, rewards, dones, values, starts = (torch.zeros((T, N), device=device) for _ in range(5))
    next_obs_np, reset_info = envs.reset(seed=cfg.seed)
    next_obs = torch.as_tensor(next_obs_np, dtype=torch.float32, device=device)
    next_mask = action_mask_from_info(reset_info, device)
    masks = torch.zeros((T, N, agent.action_dim), dtype=torch.bool, device=device) if next_mask is not None else None
    next_start = torch.ones(N, device=device)
    lstm_state = agent.initial_state(N, device)
    episodes = EpisodeLog()
    global_step, start_time, stats = 0, time.time(), {}
    try:
        for iteration in range(1, cfg.num_iterations + 1):
            rollout_start_state = (lstm_state[0].clone(), lstm_state[1].clone())  # [lstm 5]
            if cfg.anneal_lr:
                optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / cfg.num_iterations) * cfg.learning_rate
            for step in range(T):
                global_step += N
                obs[step], starts[step] = next_obs, next_start
                if masks is not None:
                    masks[step] = next_mask
                with torch.inference_mode():
                    action, log_prob, _, value, lstm_state = agent.get_action_and_value(
                        next_obs, lstm_state, next_start, action_mask=next_mask
                    )
                actions[step], log_probs[step], values[step] = action, log_prob, value
                next_obs_np, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
                reward = torch.as_tensor(reward, dtype=torch.float32, device=device)
                truncated_only, final_np = (truncated_final_obs(terminations, truncations, infos) if cfg.bootstrap_truncation
                                            else (np.zeros(0, dtype=np.int64), None))
                if truncated_only.size:
                    # the final obs continues the ended episode: value it from the current state
                    final_obs = torch.as_tensor(final_np, dtype=torch.float32, device=device)
                    state = (lstm_state[0][:, truncated_only], lstm_state[1][:, truncated_only])
                    with torch.inference_mode():
                        final_value = agent.get_value(final_obs, state, torch.zeros(len(truncated_only), device=device))
                    reward[truncated_only] += cfg.gamma * final_value
                rewards[step] = reward
                next_start = torch.as_tensor(terminations | truncations, dtype=torch.float32, device=device)
                dones[step] = next_start
                next_obs = torch.as_tensor(next_obs_np, dtype=torch.float32, device=device)
                _check_finite("observations", next_obs)
                if next_mask is not None:
                    next_mask = action_mask_from_info(infos, device)
                episodes.record(infos, global_step, logger)

            with torch.inference_mode():
                next_value = agent.get_value(next_obs, lstm_state, next_start)
            advantages, returns = gae(rewards, values, dones, next_value, cfg.gamma, cfg.gae_lambda)

            flat = lambda x: x.reshape(T * N, *x.shape[2:])  # noqa: E731  time-major: index t * N + n
            b_obs, b_actions, b_starts = flat(obs), flat(actions), flat(starts)
            b_masks = None if masks is None else flat(masks)
            envs_per_minibatch = N // cfg.num_minibatches
            step_index = torch.arange(T * N, device=device).reshape(T, N)

            def sequence_minibatches() -> list[Tensor]:
                # whole env sequences, in time order inside each [lstm 4]
                env_order = torch.randperm(N, generator=shuffle_generator).to(device)
                return [step_index[:, envs].reshape(-1) for envs in env_order.split(envs_per_minibatch)]

            def score(mb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
                envs_in_mb = mb[:envs_per_minibatch] % N  # mb is [T, envs] flattened: its first row names the envs
                state = (rollout_start_state[0][:, envs_in_mb], rollout_start_state[1][:, envs_in_mb])  # [lstm 5]
                _, new_log_prob, entropy, new_value, _ = agent.get_action_and_value(
                    b_obs[mb], state, b_starts[mb], b_actions[mb], action_mask=None if b_masks is None else b_masks[mb]
                )
                return new_log_prob, entropy, new_value

            stats = ppo_update(agent, optimizer, cfg, None, None,
                               flat(log_probs), flat(advantages), flat(returns), flat(values),
                               minibatches=sequence_minibatches, score=score)
            stats["explained_variance"] = explained_variance(flat(values), flat(returns))
            stats["learning_rate"] = optimizer.param_groups[0]["lr"]
            stats["SPS"] = global_step / (time.time() - start_time)
            logger.update(global_step, iteration, stats)
            logger.advance(global_step, cfg.batch_size, stats["SPS"])
    finally:
        wall_time = time.time() - start_time
        normalizer = normalizer_state(envs)
        envs.close()
        logger.close()
    result = TrainResult(logger.run_dir, episodes.returns, episodes.lengths, episodes.steps, stats, global_step, wall_time,
                         agent, normalizer)
    logger.summary(result.summary(cfg))
    return result
