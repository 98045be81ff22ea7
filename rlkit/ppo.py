"""PPO in one file: config, actor-critic, GAE, losses, the update and the train loop.

Read top to bottom.  Every implementation detail of "The 37 Implementation
Details of PPO" (Huang et al., ICLR blog track 2022) that applies to vector
observations is here and tagged ``[core n]`` / ``[cont n]`` where it happens;
the README's table points at these tags.  Beyond CleanRL: truncated episodes are
bootstrapped from the value of their last observation, gymnasium 1.x autoreset
is handled in the same step (no reset transition is ever trained on), an
optional target-KL early stop, and ``device = auto | cpu | cuda[:i]``.

The pure functions (``gae``, ``clipped_policy_loss``, ``clipped_value_loss``,
``kl_estimators``, ``masked_whiten``, ...) take tensors and an optional padding
mask, so the RLHF path (rlkit.rlhf) calls them on token sequences unchanged.
"""

from __future__ import annotations

import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from rlkit.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_optimizer_tensors,
    optimized_parameters,
    optimizer_tensors,
    resolve_checkpoint,
    save_checkpoint,
)
from rlkit.envs import (
    ATARI_BACKENDS,
    env_state,
    is_atari_id,
    load_env_state,
    load_normalizer_state,
    make_atari_vector_env,
    make_vector_env,
    normalizer_state,
    supports_exact_state,
)
from rlkit.logger import RunLogger

# ---------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------


@dataclass
class PPOConfig:
    """Hyperparameters of a PPO run.  Defaults are CleanRL's ppo_continuous_action."""

    env_id: str = "Pendulum-v1"
    """gymnasium id of the environment (probes: rlkit/<Name>-{Discrete,Continuous}-v0)"""
    seed: int = 1
    """seed of python, numpy, torch and the environments (sub-env i gets seed + i)"""
    total_timesteps: int = 1_000_000
    """total environment steps, summed over the vector envs"""
    num_envs: int = 1
    """number of parallel environments [core 1]"""
    num_steps: int = 2048
    """steps per environment per rollout: the fixed-length segment [core 1]"""
    learning_rate: float = 3e-4
    """Adam learning rate"""
    anneal_lr: bool = True
    """anneal the learning rate linearly to 0 over the run [core 4]"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 0.95
    """lambda of generalized advantage estimation [core 5]"""
    num_minibatches: int = 32
    """minibatches per epoch; minibatch size = num_envs * num_steps / num_minibatches [core 6]"""
    update_epochs: int = 10
    """epochs over each rollout (K)"""
    norm_adv: bool = True
    """normalise advantages per minibatch [core 7]"""
    clip_coef: float = 0.2
    """surrogate clipping coefficient epsilon [core 8]"""
    clip_vloss: bool = True
    """clip the value loss around the old values with clip_coef [core 9]"""
    ent_coef: float = 0.0
    """entropy bonus coefficient [core 10]"""
    vf_coef: float = 0.5
    """value loss coefficient [core 10]"""
    max_grad_norm: float = 0.5
    """global gradient-norm clip [core 11]"""
    target_kl: float | None = None
    """stop the epochs of an update early once approx_kl exceeds this (None: never)"""
    shared_network: bool = False
    """one torso for actor and critic (True) or two separate networks [core 13]"""
    hidden_size: int = 64
    """width of the two hidden layers"""
    network: str = "mlp"
    """mlp (tanh MLP, hidden_size wide) or nature_cnn (Atari: 3 conv + 512-unit ReLU layer, shared torso) [atari 8, 9]"""
    atari_backend: str = "ale_vector"
    """Atari ids only: ale_vector (ale_py's C++ AtariVectorEnv) or python (gymnasium wrapper stack) [atari 1-7]"""
    clip_actions: bool = True
    """clip Box actions to the action bounds inside the env; the unclipped action is stored [cont 5]"""
    normalize_obs: bool = True
    """running mean/std observation normalisation [cont 6]"""
    obs_clip: float = 10.0
    """clip normalised observations to [-obs_clip, obs_clip] [cont 7]"""
    normalize_reward: bool = True
    """scale rewards by the running std of the discounted return [cont 8]"""
    reward_clip: float = 10.0
    """clip scaled rewards to [-reward_clip, reward_clip] [cont 9]"""
    bootstrap_truncation: bool = True
    """bootstrap truncated episodes from V(final obs); False reproduces CleanRL (truncation = termination)"""
    vectorization: str = "sync"
    """gymnasium vector env mode: sync (one process) or async (one process per env)"""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:i"""
    torch_deterministic: bool = True
    """torch.backends.cudnn.deterministic and deterministic algorithms where cheap"""
    torch_threads: int = 1
    """torch CPU threads (0: torch's default); small MLPs run fastest on 1"""
    torch_compile: bool = False
    """compile the rollout's policy step and the minibatch loss with its backward with torch.compile (one-off compile time; see benchmarks)"""
    run_dir: str = "runs"
    """parent folder of the run folder"""
    exp_name: str = "ppo"
    """name of the run; the run folder is <run_dir>/<env>__<exp_name>__<seed>__<time>"""
    log_interval: int = 1
    """write update metrics every this many updates"""
    checkpoint_interval: int = 10
    """write a checkpoint every this many updates (0: only at the end and on SIGINT/SIGTERM)"""
    keep_checkpoints: int = 3
    """how many of the newest checkpoints to keep"""

    # Derived at validation time, never set by the user.
    batch_size: int = field(default=0, init=False)
    minibatch_size: int = field(default=0, init=False)
    num_iterations: int = field(default=0, init=False)

    def validate(self) -> PPOConfig:
        """Check ranges and fill the derived sizes; errors name the key."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be finite, got {value}")
        positive = ["total_timesteps", "num_envs", "num_steps", "num_minibatches", "update_epochs", "hidden_size",
                    "log_interval", "keep_checkpoints"]
        for key in positive:
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ["learning_rate", "obs_clip", "reward_clip", "max_grad_norm", "clip_coef"]:
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ["gamma", "gae_lambda"]:
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {getattr(self, key)}")
        for key in ["ent_coef", "vf_coef", "torch_threads", "checkpoint_interval"]:
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.target_kl is not None and not self.target_kl > 0:
            raise ValueError(f"target_kl must be > 0 or None, got {self.target_kl}")
        if self.vectorization not in ("sync", "async"):
            raise ValueError(f"vectorization must be 'sync' or 'async', got {self.vectorization!r}")
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {NETWORKS}, got {self.network!r}")
        if self.atari_backend not in ATARI_BACKENDS:
            raise ValueError(f"atari_backend must be one of {ATARI_BACKENDS}, got {self.atari_backend!r}")
        if is_atari_id(self.env_id) and (self.normalize_obs or self.normalize_reward):
            raise ValueError("normalize_obs and normalize_reward must be false for Atari: the network scales pixels "
                             "by 1/255 and rewards are sign-clipped (the `atari` recipe sets both)")
        resolve_device(self.device)  # raises on a malformed device string
        self.batch_size = self.num_envs * self.num_steps
        if self.batch_size % self.num_minibatches:
            raise ValueError(
                f"num_minibatches ({self.num_minibatches}) must divide num_envs * num_steps ({self.batch_size})"
            )
        self.minibatch_size = self.batch_size // self.num_minibatches
        self.num_iterations = max(1, self.total_timesteps // self.batch_size)
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def user_fields(cls=PPOConfig) -> list[str]:
    """Keys a recipe or the CLI may set (the derived sizes are excluded)."""
    return [f.name for f in fields(cls) if f.init]


def resolve_device(device: str) -> torch.device:
    """auto -> cuda if available else cpu; validates cpu / cuda / cuda:i."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device; use 'auto' or 'cpu'")
        return torch.device(device)
    raise ValueError(f"device must be auto, cpu, cuda or cuda:<index>, got {device!r}")


# ---------------------------------------------------------------------------------
# Actor-critic
# ---------------------------------------------------------------------------------


def layer_init(layer: nn.Linear, std: float = math.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    """Orthogonal weights with gain ``std``, constant bias [core 2]."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias_const)
    return layer


def check_spaces(observation_space: gym.Space, action_space: gym.Space) -> None:
    """Refuse spaces this agent cannot represent, saying which ones it can."""
    if not isinstance(observation_space, gym.spaces.Box):
        raise ValueError(
            f"unsupported observation space {type(observation_space).__name__}: rlkit.ppo takes Box observations "
            "(flatten Dict/Tuple observations with gymnasium.wrappers.FlattenObservation)"
        )
    if isinstance(action_space, gym.spaces.Box):
        if len(action_space.shape) != 1:
            raise ValueError(f"Box actions must be 1-d, got shape {action_space.shape}")
    elif isinstance(action_space, gym.spaces.MultiDiscrete):
        if len(action_space.shape) != 1:
            raise ValueError(f"MultiDiscrete actions must be 1-d, got shape {action_space.shape}")
    elif not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(
            f"unsupported action space {type(action_space).__name__}: rlkit.ppo takes Discrete, MultiDiscrete "
            "or 1-d Box actions"
        )


def normal_sample_and_score(
    mean: Tensor, log_std: Tensor, action: Tensor | None = None, deterministic: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Normal policy [cont 1] with independent dimensions, log-probs summed [cont 3]."""
    log_std = log_std.expand_as(mean)
    std = log_std.exp()
    if action is None:
        action = mean if deterministic else mean + std * torch.randn_like(mean)
    log_prob = (-0.5 * ((action - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    entropy = (0.5 + 0.5 * math.log(2 * math.pi) + log_std).sum(-1)
    return action, log_prob, entropy


def categorical_sample_and_score(
    logits: Tensor,
    nvec: list[int] | None = None,
    action: Tensor | None = None,
    deterministic: bool = False,
    action_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Categorical policy; with ``nvec`` (MultiDiscrete) one categorical per action
    dimension over its slice of the logits, log-probs and entropies summed
    [multidiscrete 1].  ``action_mask`` (1 = allowed) gives invalid actions the
    lowest representable logit: never sampled, no probability, no entropy.
    """
    if action_mask is not None:
        logits = logits.masked_fill(~action_mask.bool(), torch.finfo(logits.dtype).min)
    if nvec is None:
        log_probs = torch.log_softmax(logits, dim=-1)
        if action is None:
            action = log_probs.argmax(-1) if deterministic else torch.multinomial(log_probs.exp(), 1).squeeze(-1)
        log_prob = log_probs.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        return action, log_prob, entropy
    actions, log_prob, entropy = [], 0.0, 0.0
    for i, chunk in enumerate(torch.split(logits, list(nvec), dim=-1)):
        given = None if action is None else action[..., i]
        chunk_action, chunk_log_prob, chunk_entropy = categorical_sample_and_score(chunk, None, given, deterministic)
        actions.append(chunk_action)
        log_prob = log_prob + chunk_log_prob
        entropy = entropy + chunk_entropy
    return (torch.stack(actions, -1) if action is None else action), log_prob, entropy


def policy_output_size(action_space: gym.Space) -> int:
    """Units of the policy head: action dims (Box), n (Discrete) or sum(nvec) (MultiDiscrete)."""
    if isinstance(action_space, gym.spaces.Box):
        return int(action_space.shape[0])
    if isinstance(action_space, gym.spaces.MultiDiscrete):
        return int(np.sum(action_space.nvec))
    return int(action_space.n)


class ActorCriticBase(nn.Module):
    """What every agent knows about its spaces, and how policy outputs become actions."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space):
        super().__init__()
        check_spaces(observation_space, action_space)
        self.obs_dim = int(np.prod(observation_space.shape))
        self.continuous = isinstance(action_space, gym.spaces.Box)
        self.nvec = [int(n) for n in action_space.nvec] if isinstance(action_space, gym.spaces.MultiDiscrete) else None
        self.action_dim = policy_output_size(action_space)
        self.action_shape = tuple(action_space.shape)

    def sample_and_score(
        self, policy_out: Tensor, action: Tensor | None, deterministic: bool, action_mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        if self.continuous:
            return normal_sample_and_score(policy_out, self.actor_logstd, action, deterministic)
        return categorical_sample_and_score(policy_out, self.nvec, action, deterministic, action_mask)

    def get_action_and_value(
        self, obs: Tensor, action: Tensor | None = None, deterministic: bool = False, action_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Sample (or score the given) action: action, log-prob, entropy, value."""
        policy_out, value = self(obs)
        action, log_prob, entropy = self.sample_and_score(policy_out, action, deterministic, action_mask)
        return action, log_prob, entropy, value


class Agent(ActorCriticBase):
    """Actor-critic MLP (tanh, two hidden layers) for Discrete, MultiDiscrete or Box actions.

    Separate actor and critic networks by default [cont 4]; one shared torso with
    two heads when ``shared=True`` [core 13].  Box actions use a Normal with
    independent dimensions [cont 1, cont 3] and a state-independent log-std
    initialised at 0 [cont 2].  Policy head gain 0.01, value head gain 1 [core 2].
    """

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, hidden_size: int = 64, shared: bool = False):
        super().__init__(observation_space, action_space)
        obs_dim = self.obs_dim
        self.shared = shared

        def torso() -> nn.Sequential:
            return nn.Sequential(
                layer_init(nn.Linear(obs_dim, hidden_size)),
                nn.Tanh(),
                layer_init(nn.Linear(hidden_size, hidden_size)),
                nn.Tanh(),
            )

        if shared:
            self.torso = torso()
            self.actor_head = layer_init(nn.Linear(hidden_size, self.action_dim), std=0.01)
            self.critic_head = layer_init(nn.Linear(hidden_size, 1), std=1.0)
        else:
            self.actor = nn.Sequential(*torso(), layer_init(nn.Linear(hidden_size, self.action_dim), std=0.01))
            self.critic = nn.Sequential(*torso(), layer_init(nn.Linear(hidden_size, 1), std=1.0))
        if self.continuous:
            self.actor_logstd = nn.Parameter(torch.zeros(1, self.action_dim))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Policy output (mean or logits) and value, in one pass."""
        if self.shared:
            hidden = run_layers(self.torso, obs)
            return self.actor_head.forward(hidden), self.critic_head.forward(hidden).squeeze(-1)
        return run_layers(self.actor, obs), run_layers(self.critic, obs).squeeze(-1)

    def get_value(self, obs: Tensor) -> Tensor:
        if self.shared:
            return self.critic_head.forward(run_layers(self.torso, obs)).squeeze(-1)
        return run_layers(self.critic, obs).squeeze(-1)


def run_layers(layers: nn.Sequential, x: Tensor) -> Tensor:
    """``layers(x)``, calling each layer's ``forward`` directly.

    Why: nn.Module.__call__'s hook handling costs ~2-3 µs a layer, as much as a 64-wide layer's
    math, and the MLP runs 12 layers per env step and per minibatch.  Module hooks registered on
    these layers are therefore not run (hooks on the agent itself are).
    """
    for layer in layers:
        x = layer.forward(x)
    return x


class NatureCNNAgent(ActorCriticBase):
    """The Nature DQN network (Mnih et al. 2015) as a shared actor-critic torso, for [4, 84, 84] frames.

    Pixels arrive as 0-255 and are scaled by 1/255 inside the network [atari 9]; every
    layer is orthogonal with gain sqrt(2), bias 0 [atari 8], heads 0.01 / 1 [core 2].
    """

    def __init__(self, observation_space: gym.Space, action_space: gym.Space):
        super().__init__(observation_space, action_space)
        if len(observation_space.shape) != 3:
            raise ValueError(f"nature_cnn needs image observations [frames, height, width], got {observation_space.shape}")
        channels, height, width = observation_space.shape
        self.torso = nn.Sequential(
            layer_init(nn.Conv2d(channels, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.torso(torch.zeros(1, channels, height, width)).shape[1]
        self.torso.append(layer_init(nn.Linear(flat, 512)))
        self.torso.append(nn.ReLU())
        self.actor_head = layer_init(nn.Linear(512, self.action_dim), std=0.01)
        self.critic_head = layer_init(nn.Linear(512, 1), std=1.0)
        if self.continuous:
            self.actor_logstd = nn.Parameter(torch.zeros(1, self.action_dim))
        # channels-last convolutions run ~1.5x faster on CPU (oneDNN); same math
        self.to(memory_format=torch.channels_last)

    def features(self, obs: Tensor) -> Tensor:
        return self.torso((obs / 255.0).contiguous(memory_format=torch.channels_last))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.features(obs)
        return self.actor_head(hidden), self.critic_head(hidden).squeeze(-1)

    def get_value(self, obs: Tensor) -> Tensor:
        return self.critic_head(self.features(obs)).squeeze(-1)


NETWORKS = ("mlp", "nature_cnn")


def make_agent(cfg: PPOConfig, observation_space: gym.Space, action_space: gym.Space) -> ActorCriticBase:
    """The network the config names, for these spaces."""
    if cfg.network == "nature_cnn":
        return NatureCNNAgent(observation_space, action_space)
    return Agent(observation_space, action_space, cfg.hidden_size, cfg.shared_network)


# ---------------------------------------------------------------------------------
# Pure functions: GAE, whitening, losses, KL estimators (shared with rlkit.rlhf)
# ---------------------------------------------------------------------------------


def gae(
    rewards: Tensor, values: Tensor, dones: Tensor, next_value: Tensor, gamma: float, gae_lambda: float
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation over time dimension 0 [core 5].

    rewards, values, dones: [T, ...]; ``dones[t] = 1`` when the episode ended with
    the action at step t (terminated, or truncated with its bootstrap already
    folded into ``rewards[t]``).  next_value: [...], the value of the observation
    after step T-1.  Returns (advantages, returns) with returns = advantages + values.
    """
    # Everything but the recursion is computed for all steps at once (the same arithmetic, in the
    # same order): the loop is then 2 ops per step, which matters at 2,048 steps per update.
    not_done = 1.0 - dones
    following_values = torch.cat([values[1:], next_value.unsqueeze(0)])
    deltas = rewards + gamma * following_values * not_done - values
    decays = gamma * gae_lambda * not_done
    advantages = torch.empty_like(rewards)
    last_gae = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[0])):
        last_gae = deltas[t] + decays[t] * last_gae
        advantages[t] = last_gae
    return advantages, advantages + values


def masked_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over the entries where mask is 1 (all entries when mask is None)."""
    if mask is None:
        return x.mean()
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Unbiased variance over the masked entries."""
    if mask is None:
        return x.var()
    mean = masked_mean(x, mask)
    n = mask.sum()
    return ((x - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over the masked entries [core 7]; padding never moves the statistics.

    ``shift_mean=False`` only rescales (reward whitening in RLHF keeps the sign).
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def clipped_policy_loss(
    new_log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, clip_coef: float, mask: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate, as a loss to minimise [core 8].

    Returns the loss and debug statistics [core 12]: approx_kl (k3 estimate of
    KL(old || new)), clipfrac and the largest |ratio - 1|.
    """
    log_ratio = new_log_prob - old_log_prob
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        _, _, k3 = kl_estimators(old_log_prob, new_log_prob)
        ratio_error = (ratio - 1.0).abs()
        stats = {
            "approx_kl": masked_mean(k3, mask),
            "clipfrac": masked_mean((ratio_error > clip_coef).float(), mask),
            "max_ratio_error": (ratio_error if mask is None else ratio_error * mask).max(),
        }
    return loss, stats


def clipped_value_loss(
    new_value: Tensor, old_value: Tensor, returns: Tensor, clip_coef: float | None, mask: Tensor | None = None
) -> Tensor:
    """0.5 * squared error; with ``clip_coef`` the pessimistic max of the plain and
    the clipped-around-old-value error, as in the PPO paper's code [core 9]."""
    unclipped = (new_value - returns) ** 2
    if clip_coef is None:
        return 0.5 * masked_mean(unclipped, mask)
    value_clipped = old_value + torch.clamp(new_value - old_value, -clip_coef, clip_coef)
    clipped = (value_clipped - returns) ** 2
    return 0.5 * masked_mean(torch.max(unclipped, clipped), mask)


def kl_estimators(log_p: Tensor, log_ref: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample estimators of KL(p || ref) from samples of p (Schulman, "Approximating KL").

    k1 = log p - log ref (unbiased, high variance, can be negative);
    k2 = k1^2 / 2 (biased, low variance; as a loss its gradient is KL's);
    k3 = (r - 1) - log r with r = ref / p (unbiased and always >= 0).
    """
    k1 = log_p - log_ref
    k2 = 0.5 * k1**2
    log_r = -k1
    k3 = torch.expm1(log_r) - log_r
    return k1, k2, k3


def explained_variance(predicted: Tensor, target: Tensor) -> float:
    """1 - Var(target - predicted) / Var(target); nan when the target is constant [core 12]."""
    var_target = target.var()
    if var_target == 0:
        return float("nan")
    return float(1.0 - (target - predicted).var() / var_target)


# ---------------------------------------------------------------------------------
# Rollout storage and the update
# ---------------------------------------------------------------------------------


@dataclass
class Rollout:
    """Preallocated [num_steps, num_envs, ...] tensors of one fixed-length segment [core 1]."""

    obs: Tensor
    actions: Tensor
    log_probs: Tensor
    rewards: Tensor
    dones: Tensor
    values: Tensor
    action_masks: Tensor | None = None

    @classmethod
    def allocate(cls, num_steps: int, num_envs: int, obs_shape, agent: Agent, device: torch.device,
                 masked: bool = False) -> Rollout:
        action_shape = agent.action_shape
        action_dtype = torch.float32 if agent.continuous else torch.long
        zeros = lambda *shape, dtype=torch.float32: torch.zeros(num_steps, num_envs, *shape, dtype=dtype, device=device)  # noqa: E731
        return cls(
            obs=zeros(*obs_shape),
            actions=zeros(*action_shape, dtype=action_dtype),
            log_probs=zeros(),
            rewards=zeros(),
            dones=zeros(),
            values=zeros(),
            action_masks=zeros(agent.action_dim, dtype=torch.bool) if masked else None,
        )


def action_mask_from_info(info: dict, device: torch.device) -> Tensor | None:
    """The env's ``info["action_mask"]`` (1 = allowed) as a bool tensor, or None when it gives none."""
    if "action_mask" not in info:
        return None
    return torch.as_tensor(np.stack(list(info["action_mask"])), dtype=torch.bool, device=device)


def minibatch_loss(
    new_log_prob: Tensor,
    entropy: Tensor,
    new_value: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    returns: Tensor,
    old_value: Tensor,
    norm_adv: bool,
    clip_coef: float,
    clip_vloss: bool,
    ent_coef: float,
    vf_coef: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
    """loss = policy_loss - ent_coef * entropy + vf_coef * value_loss of one minibatch [core 10].

    Returns (loss, policy loss, value loss, mean entropy, policy-loss debug stats).
    """
    if norm_adv:
        advantages = masked_whiten(advantages)  # per minibatch [core 7]
    pg_loss, pg_stats = clipped_policy_loss(new_log_prob, old_log_prob, advantages, clip_coef)
    v_loss = clipped_value_loss(new_value, old_value, returns, clip_coef if clip_vloss else None)
    entropy_loss = entropy.mean()
    loss = pg_loss - ent_coef * entropy_loss + vf_coef * v_loss
    return loss, pg_loss, v_loss, entropy_loss, pg_stats


def agent_minibatch_loss(agent: Agent, obs: Tensor, actions: Tensor, action_mask: Tensor | None, *targets):
    """The agent's forward on a minibatch, then :func:`minibatch_loss`."""
    _, new_log_prob, entropy, new_value = agent.get_action_and_value(obs, actions, action_mask=action_mask)
    return minibatch_loss(new_log_prob, entropy, new_value, *targets)


_COMPILED_LOSS = None


def compiled_agent_loss():
    """agent_minibatch_loss through torch.compile (config ``torch_compile``): the
    forward, the loss and their backward become a few fused kernels; compiled once."""
    global _COMPILED_LOSS
    if _COMPILED_LOSS is None:
        _COMPILED_LOSS = torch.compile(agent_minibatch_loss, dynamic=False)
    return _COMPILED_LOSS


def compiled_policy_step(agent: ActorCriticBase):
    """agent.get_action_and_value through torch.compile, for the rollout (config ``torch_compile``).

    ``fallback_random``: the compiled step draws its samples from torch's generator as eager
    code does, so a seed gives the same actions; log-probs may differ in the last bit.
    """
    return torch.compile(agent.get_action_and_value, dynamic=False, options={"fallback_random": True})


def ppo_update(
    agent: Agent,
    optimizer: torch.optim.Optimizer,
    cfg: PPOConfig,
    obs: Tensor,
    actions: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    returns: Tensor,
    old_values: Tensor,
    generator: torch.Generator | None = None,
    action_masks: Tensor | None = None,
    minibatches: Callable[[], list[Tensor]] | None = None,
    score: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]] | None = None,
) -> dict[str, float]:
    """K epochs of shuffled minibatches over one flattened batch [core 6].

    loss = policy_loss - ent_coef * entropy + vf_coef * value_loss [core 10],
    global grad-norm clip [core 11], optional approx-KL early stop per epoch.
    The recurrent agent (rlkit.ppo_lstm) reuses this loop with its own
    ``minibatches()`` (whole env sequences) and ``score(mb) -> (log_prob, entropy, value)``.
    """
    batch_size = old_log_probs.shape[0]
    minibatch_size = batch_size // cfg.num_minibatches
    loss_fn = compiled_agent_loss() if cfg.torch_compile else agent_minibatch_loss
    parameters = optimized_parameters(optimizer)
    clipfracs, approx_kl, first_ratio_error, epochs_run = [], torch.zeros(()), float("nan"), 0
    for epoch in range(cfg.update_epochs):
        if minibatches is None:
            permutation = torch.randperm(batch_size, generator=generator, device="cpu").to(old_log_probs.device)
            epoch_minibatches = permutation.split(minibatch_size)
        else:
            epoch_minibatches = minibatches()
        for index, mb in enumerate(epoch_minibatches):
            targets = (old_log_probs[mb], advantages[mb], returns[mb], old_values[mb], cfg.norm_adv, cfg.clip_coef,
                       cfg.clip_vloss, cfg.ent_coef, cfg.vf_coef)
            if score is None:
                mb_masks = None if action_masks is None else action_masks[mb]
                loss, pg_loss, v_loss, entropy_loss, pg_stats = loss_fn(agent, obs[mb], actions[mb], mb_masks, *targets)
            else:
                loss, pg_loss, v_loss, entropy_loss, pg_stats = minibatch_loss(*score(mb), *targets)

            optimizer.zero_grad(set_to_none=False)  # in place: gradients may be views of one flat buffer
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(parameters, cfg.max_grad_norm)
            # Checked before the step, so a bad minibatch never reaches the weights (one check for both).
            if not torch.isfinite(loss.detach() + grad_norm):
                _check_finite("loss", loss.detach())
                _check_finite("gradients (global norm)", grad_norm)
            optimizer.step()

            approx_kl = pg_stats["approx_kl"]
            clipfracs.append(pg_stats["clipfrac"])
            if epoch == 0 and index == 0:
                # Before any step the new policy IS the old one: a ratio != 1 here
                # means rollout and training compute log-probs differently.
                first_ratio_error = float(pg_stats["max_ratio_error"])
        epochs_run = epoch + 1
        if cfg.target_kl is not None and approx_kl > cfg.target_kl:
            break
    return {
        "policy_loss": pg_loss.item(),
        "value_loss": v_loss.item(),
        "entropy": entropy_loss.item(),
        "approx_kl": float(approx_kl),
        "clipfrac": float(torch.stack(clipfracs).mean()),
        "first_ratio_error": first_ratio_error,
        "epochs": epochs_run,
    }


# ---------------------------------------------------------------------------------
# The train loop
# ---------------------------------------------------------------------------------


@dataclass
class EpisodeLog:
    """Returns, lengths and end steps of finished episodes, from RecordEpisodeStatistics' info."""

    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)

    def record(self, infos: dict, global_step: int, logger: RunLogger) -> None:
        if "_episode" not in infos:
            return
        for i in np.flatnonzero(infos["_episode"]):
            self.returns.append(float(infos["episode"]["r"][i]))
            self.lengths.append(int(infos["episode"]["l"][i]))
            self.steps.append(global_step)
            logger.episode(global_step, self.returns[-1], self.lengths[-1])


@dataclass
class TrainResult:
    """What a run produced: per-episode returns, the last update's stats, timings."""

    run_dir: str
    episode_returns: list[float]
    episode_lengths: list[int]
    episode_steps: list[int]
    last_update: dict[str, float]
    global_step: int
    wall_time: float
    agent: Agent = field(repr=False)
    normalizer: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    interrupted: int | None = None
    """the signal that stopped the run early, if any"""
    checkpoint: str | None = None
    """the last checkpoint written"""

    @property
    def sps(self) -> float:
        return self.global_step / max(self.wall_time, 1e-9)

    def last_returns(self, n: int = 100) -> np.ndarray:
        return np.asarray(self.episode_returns[-n:], dtype=np.float64)

    def summary(self, cfg: PPOConfig) -> dict:
        """CleanRL's score (mean return of the last 100 training episodes) and timings."""
        last = self.last_returns(100)
        stats = {f"return_{name}": float(fn(last)) if last.size else None
                 for name, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max))}
        return {"env_id": cfg.env_id, "seed": cfg.seed, "global_step": self.global_step, "episodes": len(self.episode_returns),
                "last_episodes": int(last.size), **stats, "wall_time": self.wall_time, "sps": self.sps}


def seed_everything(seed: int, torch_deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic


def flatten_parameters(module: nn.Module) -> nn.Parameter:
    """Make every parameter of ``module`` a view into one flat tensor, and every gradient a view
    into one flat gradient; returns the flat tensor as a Parameter whose ``.grad`` is that gradient.

    Why: at PPO's MuJoCo sizes (64-sample minibatches, 64-wide MLPs) a gradient step costs per-op
    dispatch, not arithmetic.  Over one tensor the norm clip and Adam are one op each instead of
    one per weight and bias (benchmarks/ppo_profile.py).  Adam's math is elementwise, so it is the
    same; the global norm is summed in another order (last-bit differences).  The module's
    state_dict is unchanged.  Gradients must be zeroed in place (``zero_grad(set_to_none=False)``):
    a fresh ``.grad`` tensor would no longer be a view of the flat one.
    """
    parameters = list(module.parameters())
    if not all(p.is_contiguous() for p in parameters):
        raise ValueError("flatten_parameters needs contiguous parameters (not channels_last convolutions)")
    flat = torch.cat([p.detach().reshape(-1) for p in parameters])
    flat_grad = torch.zeros_like(flat)
    offset = 0
    for p in parameters:
        n = p.numel()
        p.data = flat[offset:offset + n].view_as(p)
        p.grad = flat_grad[offset:offset + n].view_as(p)
        offset += n
    flat_parameter = nn.Parameter(flat)  # shares flat's memory, so stepping it moves the module's views
    flat_parameter.grad = flat_grad
    return flat_parameter


def make_optimizer(agent: nn.Module, learning_rate: float, flat: bool = False) -> torch.optim.Adam:
    """Adam with epsilon 1e-5 instead of torch's 1e-8, as in the PPO paper's code [core 3].

    fused: one kernel for all parameters instead of a Python loop over them (same math).
    ``flat``: optimise one flat view of all parameters (:func:`flatten_parameters`); the MLP agent's choice.
    """
    parameters = [flatten_parameters(agent)] if flat else agent.parameters()
    return torch.optim.Adam(parameters, lr=learning_rate, eps=1e-5, fused=True)


def make_envs(cfg: PPOConfig) -> gym.vector.VectorEnv:
    """The vector env with the wrapper stack the config asks for (Atari's for Atari ids)."""
    if is_atari_id(cfg.env_id):
        return make_atari_vector_env(cfg.env_id, cfg.num_envs, cfg.atari_backend)
    return make_vector_env(
        cfg.env_id,
        cfg.num_envs,
        gamma=cfg.gamma,
        clip_actions=cfg.clip_actions,
        normalize_obs=cfg.normalize_obs,
        obs_clip=cfg.obs_clip,
        normalize_reward=cfg.normalize_reward,
        reward_clip=cfg.reward_clip,
        vectorization=cfg.vectorization,
    )


def truncated_final_obs(terminations: np.ndarray, truncations: np.ndarray, infos: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """(indices, last observations) of the envs whose episode hit a time limit this step.

    A time limit is not a terminal state: the return goes on past it, so the caller folds
    gamma * V(last obs) into the reward and ends the GAE trace there.
    """
    truncated_only = np.flatnonzero(truncations & ~terminations)
    if not truncated_only.size:
        return truncated_only, None
    return truncated_only, np.stack([infos["final_obs"][i] for i in truncated_only])


class NonFiniteError(RuntimeError):
    """A NaN or inf appeared; the message names the quantity and the update."""


def _check_finite(name: str, tensor: Tensor) -> None:
    if not torch.isfinite(tensor).all():
        raise NonFiniteError(f"non-finite {name}")


def _config_from_checkpoint(state: dict) -> PPOConfig:
    known = set(user_fields())
    return PPOConfig(**{k: v for k, v in state["config"].items() if k in known}).validate()


def train(
    cfg: PPOConfig | None = None,
    run_name: str | None = None,
    progress: bool = True,
    log: bool = True,
    resume: str | None = None,
) -> TrainResult:
    """Train a PPO agent; writes to <run_dir>/<run_name> when ``log``.

    ``resume``: a run folder (or checkpoint folder) to continue from; its saved
    config is used.  Where the env state is plain data (probes, classic control)
    the continued run is bit-for-bit the uninterrupted one on CPU; elsewhere the
    envs restart from a seeded reset, and the log says so.
    SIGINT / SIGTERM finish the current update, write a checkpoint and return
    with ``result.interrupted`` set to the signal number.
    """
    tensors, saved = load_checkpoint(resume) if resume is not None else ({}, None)
    if saved is not None:
        cfg = _config_from_checkpoint(saved)
        run_dir = os.path.dirname(os.path.dirname(resolve_checkpoint(resume)))
    elif cfg is None:
        raise ValueError("train() needs a config or a run to resume")
    cfg.validate()
    if saved is None:
        if run_name is None:
            run_name = f"{cfg.env_id.replace('/', '_')}__{cfg.exp_name}__{cfg.seed}__{int(time.time())}"
        run_dir = os.path.join(cfg.run_dir, run_name)
    seed_everything(cfg.seed, cfg.torch_deterministic)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)

    envs = make_envs(cfg)
    envs.action_space.seed(cfg.seed)
    agent = make_agent(cfg, envs.single_observation_space, envs.single_action_space).to(device)
    optimizer = make_optimizer(agent, cfg.learning_rate, flat=cfg.network == "mlp")
    shuffle_generator = torch.Generator().manual_seed(cfg.seed)
    episodes = EpisodeLog()
    global_step, start_iteration, elapsed_before = 0, 1, 0.0
    next_obs_np, reset_info = envs.reset(seed=cfg.seed)
    next_obs = torch.as_tensor(next_obs_np, dtype=torch.float32, device=device)
    next_mask = action_mask_from_info(reset_info, device)  # invalid-action masking, when the env provides masks
    rollout = Rollout.allocate(cfg.num_steps, cfg.num_envs, envs.single_observation_space.shape, agent, device,
                               masked=next_mask is not None)
    policy_step = compiled_policy_step(agent) if cfg.torch_compile else agent.get_action_and_value
    rewards = np.zeros((cfg.num_steps, cfg.num_envs), dtype=np.float32)
    dones = np.zeros((cfg.num_steps, cfg.num_envs), dtype=np.float32)
    notes = []
    if saved is not None:
        next_obs, next_mask, note = _restore(saved, tensors, agent, optimizer, shuffle_generator, envs, cfg, device)
        notes.append(note)
        global_step, start_iteration, elapsed_before = saved["global_step"], saved["iteration"] + 1, saved["wall_time"]
        episodes = EpisodeLog(*(list(saved["episodes"][k]) for k in ("returns", "lengths", "steps")))

    logger = RunLogger(run_dir, cfg.to_dict(), enabled=log, progress=progress, total=cfg.num_iterations * cfg.batch_size,
                       resume_metrics_at=saved["metrics_offset"] if saved is not None else None)
    logger.advance(global_step, global_step, 0.0)
    for note in notes:
        logger.note(note)

    def save(iteration: int) -> str | None:
        if not log:
            return None
        exact = supports_exact_state(envs)
        state = {
            "config": {k: getattr(cfg, k) for k in user_fields()},
            "global_step": global_step,
            "iteration": iteration,
            "wall_time": time.time() - start_time,
            "python_rng": random.getstate(),
            "numpy_rng": np.random.get_state(),
            "env_exact": exact,
            "env_state": env_state(envs) if exact else None,
            "normalizers": normalizer_state(envs),
            "spaces": {"observation_shape": list(envs.single_observation_space.shape),
                       "action_space": str(envs.single_action_space)},
            "episodes": {"returns": episodes.returns, "lengths": episodes.lengths, "steps": episodes.steps},
            "metrics_offset": logger.metrics_offset(),
        }
        optimizer_state, groups = optimizer_tensors(optimizer)
        state["optimizer_param_groups"] = groups
        rng = {"torch": torch.get_rng_state(), "shuffle": shuffle_generator.get_state(), "next_obs": next_obs}
        if next_mask is not None:
            rng["next_mask"] = next_mask
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        files = {"model": agent.state_dict(), "optimizer": optimizer_state, "rng": rng}
        return save_checkpoint(run_dir, iteration, files, state, keep=cfg.keep_checkpoints)

    stop = {"signal": None}
    handlers = _install_stop_handlers(stop)
    start_time = time.time() - elapsed_before
    stats: dict[str, float] = {}
    last_checkpoint = resolve_checkpoint(resume) if resume is not None else None
    iteration = start_iteration - 1
    try:
        for iteration in range(start_iteration, cfg.num_iterations + 1):
            if cfg.anneal_lr:  # [core 4]
                optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / cfg.num_iterations) * cfg.learning_rate

            try:
                # Rewards and dones come from the env as numpy and are written there: per step, a torch op
                # costs several times a numpy one at these sizes; they move to the rollout once, below.
                with torch.inference_mode():
                    for step in range(cfg.num_steps):
                        global_step += cfg.num_envs
                        rollout.obs[step] = next_obs
                        if next_mask is not None:
                            rollout.action_masks[step] = next_mask
                        action, log_prob, _, value = policy_step(next_obs, action_mask=next_mask)
                        rollout.actions[step] = action
                        rollout.log_probs[step] = log_prob
                        rollout.values[step] = value

                        # The env clips Box actions; the unclipped sample is what was stored [cont 5].
                        next_obs_np, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
                        rewards[step] = reward
                        if cfg.bootstrap_truncation and truncations.any():
                            truncated_only, final_obs = truncated_final_obs(terminations, truncations, infos)
                            if truncated_only.size:
                                final_value = agent.get_value(torch.as_tensor(final_obs, dtype=torch.float32, device=device))
                                rewards[step, truncated_only] += np.float32(cfg.gamma) * final_value.cpu().numpy()
                        dones[step] = terminations | truncations
                        if not np.isfinite(next_obs_np).all():  # before the policy ever sees them
                            raise NonFiniteError("non-finite observations")
                        next_obs = torch.as_tensor(next_obs_np, dtype=torch.float32, device=device)
                        if next_mask is not None:  # after an autoreset this is the new episode's mask
                            next_mask = action_mask_from_info(infos, device)
                        episodes.record(infos, global_step, logger)

                    if not np.isfinite(rewards).all():
                        raise NonFiniteError("non-finite rewards")
                    rollout.rewards.copy_(torch.from_numpy(rewards))
                    rollout.dones.copy_(torch.from_numpy(dones))
                    next_value = agent.get_value(next_obs)
                advantages, returns = gae(
                    rollout.rewards, rollout.values, rollout.dones, next_value, cfg.gamma, cfg.gae_lambda
                )
                flat_values = rollout.values.reshape(-1)
                flat_returns = returns.reshape(-1)
                stats = ppo_update(
                    agent,
                    optimizer,
                    cfg,
                    rollout.obs.reshape(-1, *envs.single_observation_space.shape),
                    rollout.actions.reshape(cfg.batch_size, *rollout.actions.shape[2:]),
                    rollout.log_probs.reshape(-1),
                    advantages.reshape(-1),
                    flat_returns,
                    flat_values,
                    shuffle_generator,
                    None if rollout.action_masks is None else rollout.action_masks.reshape(cfg.batch_size, -1),
                )
                for name, parameter in agent.named_parameters():
                    _check_finite(f"parameter {name}", parameter)
            except NonFiniteError as error:
                where = f"last good checkpoint: {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
                raise NonFiniteError(f"{error} at update {iteration} (global step {global_step}); {where}") from None

            stats["explained_variance"] = explained_variance(flat_values, flat_returns)
            stats["learning_rate"] = optimizer.param_groups[0]["lr"]
            stats["SPS"] = global_step / (time.time() - start_time)
            if iteration % cfg.log_interval == 0 or iteration == cfg.num_iterations:
                logger.update(global_step, iteration, stats)
            logger.advance(global_step, cfg.batch_size, stats["SPS"])
            due = cfg.checkpoint_interval and iteration % cfg.checkpoint_interval == 0
            if due or iteration == cfg.num_iterations or stop["signal"] is not None:
                last_checkpoint = save(iteration) or last_checkpoint
            if stop["signal"] is not None:
                break
    finally:
        _restore_handlers(handlers)
        wall_time = time.time() - start_time
        normalizer = normalizer_state(envs)
        envs.close()
        logger.close()

    result = TrainResult(
        run_dir=logger.run_dir,
        episode_returns=episodes.returns,
        episode_lengths=episodes.lengths,
        episode_steps=episodes.steps,
        last_update=stats,
        global_step=global_step,
        wall_time=wall_time,
        agent=agent,
        normalizer=normalizer,
        interrupted=stop["signal"],
        checkpoint=last_checkpoint,
    )
    if stop["signal"] is None:
        logger.summary(result.summary(cfg))  # written last: its presence marks a finished run
    return result


def _restore(saved: dict, tensors: dict, agent: Agent, optimizer, shuffle_generator, envs, cfg: PPOConfig, device
             ) -> tuple[Tensor, Tensor | None, str]:
    """Load a checkpoint's weights, optimizer, RNG and env state; returns (next_obs, next action mask, a log note)."""
    shape = list(envs.single_observation_space.shape)
    if saved["spaces"]["observation_shape"] != shape or saved["spaces"]["action_space"] != str(envs.single_action_space):
        raise CheckpointError(
            f"checkpoint was made for observations {saved['spaces']['observation_shape']} / actions "
            f"{saved['spaces']['action_space']}, but {cfg.env_id} has {shape} / {envs.single_action_space}"
        )
    try:
        agent.load_state_dict(tensors["model"])
        load_optimizer_tensors(optimizer, tensors["optimizer"], saved["optimizer_param_groups"])
    except (RuntimeError, KeyError, ValueError) as error:
        raise CheckpointError(f"checkpoint does not fit this agent's architecture: {error}") from None
    torch.set_rng_state(tensors["rng"]["torch"])
    shuffle_generator.set_state(tensors["rng"]["shuffle"])
    if device.type == "cuda" and "cuda" in tensors["rng"]:
        torch.cuda.set_rng_state(tensors["rng"]["cuda"], device)
    version, internal, gauss = saved["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(saved["numpy_rng"]))
    if saved["env_exact"] and supports_exact_state(envs):
        load_env_state(envs, saved["env_state"])
        mask = tensors["rng"]["next_mask"].to(device) if "next_mask" in tensors["rng"] else None
        return tensors["rng"]["next_obs"].to(device), mask, f"resumed at update {saved['iteration']}: exact env state restored"
    load_normalizer_state(envs, saved["normalizers"])
    next_obs_np, reset_info = envs.reset(seed=cfg.seed + 10_007 * saved["iteration"])
    note = (f"resumed at update {saved['iteration']}: {cfg.env_id}'s state cannot be saved exactly, so the envs restart "
            "from a seeded reset (weights, optimizer, normaliser statistics and RNGs are restored)")
    return torch.as_tensor(next_obs_np, dtype=torch.float32, device=device), action_mask_from_info(reset_info, device), note


def _install_stop_handlers(stop: dict) -> dict:
    """SIGINT/SIGTERM set a flag that ends training after the current update; a second SIGINT aborts."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def request_stop(signum, frame):
        if stop["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop["signal"] = signum

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, request_stop)
    return previous


def _restore_handlers(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
