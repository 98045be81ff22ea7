"""Recurrent PPO: the feed-forward core (rlkit.ppo) with an LSTM between torso and heads.

The five LSTM details of "The 37 Implementation Details of PPO", tagged ``[lstm n]``:

1. LSTM weights orthogonal (gain 1), biases 0.
2. Zero initial hidden and cell states.
3. States reset (multiplied by 0) where an episode ended, inside the sequence.
4. Minibatches made of whole env sequences (split over envs, not steps), so the
   LSTM sees each sequence in order during training.
5. During training the states are rebuilt from the states stored at the start of
   the rollout, not from the states seen during collection.

Everything else is rlkit.ppo's, through the same loop: the rollout, GAE, the clipped losses,
the update with its KL stop and grad clip, truncation bootstrapping, same-step autoreset,
logging, and the run lifecycle (checkpoints with the LSTM state, ``--resume``, SIGINT/SIGTERM,
the non-finite guard, callbacks).  This file supplies only what differs: the network, a
:class:`RecurrentPolicy` that carries the LSTM state through the rollout, and a
:class:`SequenceLearner` that forms minibatches of whole sequences [lstm 4, 5].
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from rlkit.envs import ObservationLayout
from rlkit.ppo import (
    DEFAULT_HIDDEN_SIZE,
    ActorCriticBase,
    Batch,
    FeedForward,
    Learner,
    PPOConfig,
    Rollout,
    RolloutPolicy,
    TrainResult,
    layer_init,
    make_optimizer,
    minibatch_loss,
    refuse,
)
from rlkit.ppo import train as ppo_train
from rlkit.runtime import Callback

LSTMState = tuple[Tensor, Tensor]


@dataclass
class RecurrentPPOConfig(PPOConfig):
    """PPOConfig plus the LSTM size; num_minibatches must divide num_envs [lstm 4]."""

    lstm_hidden_size: int = 64
    """units of the LSTM layer between the torso and the heads"""
    shared_network: bool | None = None
    """the recurrent agent's encoder and LSTM are always shared by actor and critic: unset or true (false is
    refused: separate ones are not implemented)"""

    def validate(self) -> RecurrentPPOConfig:
        super().validate()
        refuse("recurrent PPO (ppo_lstm)",
               [problem for bad, problem in (
                   (self.shared_network is False, "shared_network = false (the encoder and LSTM are shared by both heads)"),
                   (self.torch_compile, "torch_compile = true"),
                   (self.update_backend == "fused", "update_backend = 'fused' (the LSTM's gradient is autograd's)"),
                   (self.network not in ("auto", "mlp"), f"network = {self.network!r} (its encoder is one tanh layer)"),
               ) if bad], "remove these keys or use the feed-forward [ppo] table")
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
        if len(observation_space.shape) != 1 or (isinstance(observation_space, ObservationLayout) and observation_space.images):
            from rlkit.errors import EnvError  # the env does not fit the agent: exit code 4

            raise EnvError(f"recurrent PPO (ppo_lstm) takes vector observations without images (its encoder is one "
                             f"tanh layer), got {observation_space}; use the feed-forward [ppo] table for images")
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


class RecurrentPolicy(RolloutPolicy):
    """The LSTM agent acting in the rollout: its state is carried from step to step and rollout to rollout."""

    def __init__(self, agent: LSTMAgent, num_envs: int):
        self.agent, self.num_envs = agent, num_envs
        self.load_state_tensors(None)

    def begin(self) -> None:
        # the states the rollout starts from, rebuilt from in training [lstm 5]
        self.rollout_start_state = (self.state[0].clone(), self.state[1].clone())
        self.rollout_first_start = self.start.clone()

    def act(self, obs: Tensor, action_mask: Tensor | None, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        action, log_prob, _, value, self.state = self.agent.get_action_and_value(
            obs, self.state, self.start, action_mask=action_mask, deterministic=deterministic)
        return action, log_prob, value

    def final_values(self, final_obs: Tensor, env_index: np.ndarray) -> Tensor:
        # the final obs continues the ended episode: value it from the current state
        state = (self.state[0][:, env_index], self.state[1][:, env_index])
        return self.agent.get_value(final_obs, state, torch.zeros(len(env_index), device=final_obs.device))

    def after_step(self, dones: np.ndarray) -> None:
        self.start = torch.tensor(dones, dtype=torch.float32, device=self.start.device)  # reset before the next step [lstm 3]

    def bootstrap_value(self, obs: Tensor) -> Tensor:
        return self.agent.get_value(obs, self.state, self.start)

    def state_tensors(self) -> dict[str, Tensor]:
        return {"lstm_hidden": self.state[0], "lstm_cell": self.state[1], "episode_start": self.start}

    def load_state_tensors(self, tensors: dict[str, Tensor] | None) -> None:
        device = next(self.agent.parameters()).device
        if tensors is None:  # a fresh start: zero states [lstm 2], every env begins an episode
            self.state = self.agent.initial_state(self.num_envs, device)
            self.start = torch.ones(self.num_envs, device=device)
        else:
            self.state = (tensors["lstm_hidden"].clone(), tensors["lstm_cell"].clone())
            self.start = tensors["episode_start"].clone()


@dataclass
class SequenceBatch(Batch):
    """A Batch plus where episodes start, for rebuilding the LSTM states in training."""

    episode_starts: Tensor | None = None


class SequenceLearner(Learner):
    """Minibatches of whole env sequences, in time order [lstm 4], scored from the rollout's start states [lstm 5]."""

    def __init__(self, agent: LSTMAgent, optimizer, cfg: PPOConfig, generator: torch.Generator, policy: RecurrentPolicy):
        super().__init__(agent, optimizer, cfg, generator)
        self.policy = policy
        self.envs_per_minibatch = cfg.num_envs // cfg.num_minibatches
        device = next(agent.parameters()).device
        self.step_index = torch.arange(cfg.batch_size, device=device).reshape(cfg.num_steps, cfg.num_envs)

    def minibatches(self, batch: Batch) -> list[Tensor]:
        env_order = torch.randperm(self.cfg.num_envs, generator=self.generator).to(self.step_index.device)
        return [self.step_index[:, envs].reshape(-1) for envs in env_order.split(self.envs_per_minibatch)]

    def loss(self, batch: SequenceBatch, mb: Tensor):
        envs_in_mb = mb[: self.envs_per_minibatch] % self.cfg.num_envs  # mb is [T, envs] flattened: its first row names the envs
        start = self.policy.rollout_start_state
        state = (start[0][:, envs_in_mb], start[1][:, envs_in_mb])
        masks = None if batch.action_masks is None else batch.action_masks[mb]
        _, new_log_prob, entropy, new_value, _ = self.agent.get_action_and_value(
            batch.obs[mb], state, batch.episode_starts[mb], batch.actions[mb], action_mask=masks)
        return minibatch_loss(new_log_prob, entropy, new_value, *self.targets(batch, mb))


class Recurrent(FeedForward):
    """The recurrent variant of rlkit.ppo.train: LSTMAgent, RecurrentPolicy, SequenceLearner."""

    name = "ppo_lstm"
    config_class = RecurrentPPOConfig

    def make_agent(self, cfg: RecurrentPPOConfig, envs: gym.vector.VectorEnv) -> LSTMAgent:
        hidden_size = DEFAULT_HIDDEN_SIZE if cfg.hidden_size is None else cfg.hidden_size
        return LSTMAgent(envs.single_observation_space, envs.single_action_space, hidden_size, cfg.lstm_hidden_size)

    def make_optimizer(self, agent: LSTMAgent, cfg: PPOConfig) -> torch.optim.Optimizer:
        return make_optimizer(agent, cfg.learning_rate)

    def rollout_policy(self, agent: LSTMAgent, cfg: PPOConfig, num_envs: int) -> RecurrentPolicy:
        return RecurrentPolicy(agent, num_envs)

    def learner(self, agent: LSTMAgent, optimizer, cfg: PPOConfig, generator: torch.Generator,
                policy: RecurrentPolicy) -> SequenceLearner:
        return SequenceLearner(agent, optimizer, cfg, generator, policy)

    def batch(self, rollout: Rollout, advantages: Tensor, returns: Tensor, policy: RecurrentPolicy) -> SequenceBatch:
        starts = torch.cat([policy.rollout_first_start.unsqueeze(0), rollout.dones[:-1]])  # obs t begins an episode
        flat = Batch.from_rollout(rollout, advantages, returns)
        return SequenceBatch(**vars(flat), episode_starts=starts.reshape(-1))


def train(cfg: RecurrentPPOConfig | None = None, run_name: str | None = None, progress: bool = True, log: bool = True,
          resume: str | None = None, callbacks: list[Callback] = ()) -> TrainResult:
    """Recurrent PPO: rlkit.ppo.train with the recurrent variant (checkpoints, resume and all)."""
    return ppo_train(cfg, run_name, progress, log, resume, callbacks, variant=Recurrent())
