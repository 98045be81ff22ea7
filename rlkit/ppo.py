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

One rollout (:func:`collect_rollout`) and one update (:func:`ppo_update`) serve every
variant: a variant (:class:`FeedForward` here, the recurrent one in rlkit.ppo_lstm, batched
seeds in rlkit.ppo_multiseed) supplies only its network, its :class:`RolloutPolicy` and its
:class:`Learner`.  The run lifecycle (run folder, checkpoints, SIGINT/SIGTERM, the non-finite
guard, callbacks) is rlkit.runtime's; speed-only code is rlkit.fast's.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

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
from rlkit.envs.sources import resolve_env_id
from rlkit.fast import (
    EpochRows,
    FusedMLPLoss,
    FusedPolicyStep,
    NumpyStaging,
    clip_grad_norm,
    compiled,
    compiled_policy_step,
    flatten_parameters,
    fused_update_support,
    run_layers,
)
from rlkit.logger import RunLogger
from rlkit.trackers import validate_track
from rlkit.runtime import (  # the run lifecycle, shared with every other loop
    Callback,
    Lifecycle,
    NonFiniteError,
    check_finite,
    check_finite_parameters,
    check_memory,
    check_run_settings,
    default_run_name,
    open_run_folder,
    linear_lr,
    restore_rng_state,
    rng_state,
    seed_everything,
)

# ---------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------


@dataclass
class PPOConfig:
    """Hyperparameters of a PPO run.  Defaults are CleanRL's ppo_continuous_action."""

    env_id: str = "Pendulum-v1"
    """gymnasium id of the environment; "module:Id" imports module first (probes: rlkit/<Name>-{Discrete,Continuous}-v0)"""
    env_module: list[str] = field(default_factory=list)
    """modules to import before making the env, e.g. ones that register your envs (CLI: --env_module a,b)"""
    env_kwargs: dict = field(default_factory=dict)
    """keyword arguments for gymnasium.make (TOML table; CLI: JSON, e.g. --env_kwargs '{"is_slippery": false}')"""
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
    shared_network: bool | None = None
    """one torso for actor and critic (true) or two separate networks (false) [core 13]; unset: the network's own
    form (separate for mlp; nature_cnn, small_cnn, multi_input and the LSTM always share one torso, as SB3's
    CnnPolicy / MultiInputPolicy, so false is refused for them)"""
    hidden_size: int | None = None
    """width of the mlp network's two hidden layers (and of multi_input's MLP for the non-image parts, and of the
    LSTM's encoder); unset: 64.  Refused for nature_cnn and small_cnn, whose layers are fixed (512 and 256 units)"""
    network: str = "auto"
    """auto (picked from the observation space when the agent is built: mlp for vectors, nature_cnn for images of at
    least 36x36, small_cnn for smaller ones, multi_input for Tuple/Dict with images; see rlkit.networks),
    mlp (tanh MLP, hidden_size wide), nature_cnn (Atari: 3 conv + 512-unit ReLU layer, shared torso) [atari 8, 9],
    small_cnn (3x3 convs + 256-unit ReLU layer) or multi_input (a CNN per image + MLP for the rest, concatenated)"""
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
    """compile the rollout's policy step and, with the autograd update, the minibatch loss with its backward with torch.compile (one-off compile time; see benchmarks)"""
    update_backend: str = "auto"
    """how a minibatch's gradient and the rollout's policy step are computed: autograd (minibatch_loss + loss.backward()
    and agent.get_action_and_value, the readable path), fused (the tanh MLP agent's loss and gradient written by hand in
    rlkit.fast.FusedMLPLoss, its policy step with actor and critic stacked in rlkit.fast.FusedPolicyStep: the same math
    and the same random draws to float rounding, ~2x fewer ops; MLP agent with Box or Discrete actions only) or auto
    (fused where it applies and torch_compile is off)"""
    run_dir: str = "runs"
    """parent folder of the run folder"""
    exp_name: str = "ppo"
    """name of the run; the run folder is <run_dir>/<env>__<exp_name>__<seed>__<time>"""
    new_folder: bool = False
    """when the run folder already holds a run: false refuses (resume it, or choose another run name); true starts the new run in <folder>-2, -3, ... (CLI: --new-folder)"""
    log_interval: int = 1
    """write update metrics every this many updates"""
    checkpoint_interval: int = 10
    """write a checkpoint every this many updates (0: only at the end and on SIGINT/SIGTERM)"""
    keep_checkpoints: int = 3
    """how many of the newest checkpoints to keep"""
    eval_interval: int = 0
    """evaluate on a separate env every this many updates, logged under eval/ with the best weights in best/ (0: never)"""
    eval_episodes: int = 10
    """episodes per periodic evaluation"""
    eval_deterministic: bool = True
    """periodic evaluation with the mean / argmax action (False: sample)"""
    eval_seed: int = 100_000
    """seed of the evaluation env's episodes (the same episodes at every evaluation)"""
    stop_at_return: float | None = None
    """stop training once a periodic evaluation's mean return reaches this (needs eval_interval > 0)"""
    track: list[str] = field(default_factory=lambda: ["tensorboard"])
    """where the run is logged besides metrics.jsonl: any of tensorboard, wandb, mlflow, trackio (rlkit.trackers; CLI: --track tensorboard,wandb)"""
    track_project: str = "rlkit"
    """project (W&B, Trackio) or experiment (MLflow) the run is logged under"""

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
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ["learning_rate", "obs_clip", "reward_clip", "max_grad_norm", "clip_coef"]:
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ["gamma", "gae_lambda"]:
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {getattr(self, key)}")
        for key in ["ent_coef", "vf_coef", "torch_threads", "checkpoint_interval", "eval_interval"]:
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.eval_episodes <= 0:
            raise ValueError(f"eval_episodes must be > 0, got {self.eval_episodes}")
        validate_track(self.track)
        if self.stop_at_return is not None and not self.eval_interval:
            raise ValueError("stop_at_return needs eval_interval > 0 (it is checked at the periodic evaluations)")
        try:  # saved in config.json and checkpoints: plain values (a numpy number would fail there, mid-run)
            json.dumps(self.env_kwargs, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(f"env_kwargs must be plain JSON values (numbers, strings, lists, dicts), got "
                             f"{self.env_kwargs!r} ({error}); pass other objects through an env factory "
                             "(PPO(lambda: MyEnv(...)))") from None
        if not all(isinstance(m, str) and m for m in self.env_module):
            raise ValueError(f"env_module must be a list of module names, got {self.env_module!r}")
        if self.target_kl is not None and not self.target_kl > 0:
            raise ValueError(f"target_kl must be > 0 or None, got {self.target_kl}")
        if self.vectorization not in ("sync", "async"):
            raise ValueError(f"vectorization must be 'sync' or 'async', got {self.vectorization!r}")
        if self.update_backend not in UPDATE_BACKENDS:
            raise ValueError(f"update_backend must be one of {UPDATE_BACKENDS}, got {self.update_backend!r}")
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {NETWORKS}, got {self.network!r}")
        if self.atari_backend not in ATARI_BACKENDS:
            raise ValueError(f"atari_backend must be one of {ATARI_BACKENDS}, got {self.atari_backend!r}")
        if is_atari_id(self.env_id) and (self.env_kwargs or self.vectorization != "sync"):
            keys = [k for k, bad in (("env_kwargs", self.env_kwargs), ("vectorization", self.vectorization != "sync")) if bad]
            raise ValueError(f"{' and '.join(keys)} are not used for Atari ids: rlkit's Atari stack (atari_backend "
                             "ale_vector: C++ threads; python: gymnasium's wrappers in one process) fixes the game's "
                             "settings and its own parallelism; remove them")
        if is_atari_id(self.env_id) and (self.normalize_obs or self.normalize_reward):
            raise ValueError("normalize_obs and normalize_reward must be false for Atari: the network scales pixels "
                             "by 1/255 and rewards are sign-clipped (the `atari` recipe sets both)")
        resolve_device(self.device)  # raises on a malformed device string
        check_run_settings(self)
        self.batch_size = self.num_envs * self.num_steps
        if self.batch_size % self.num_minibatches:
            raise ValueError(
                f"num_minibatches ({self.num_minibatches}) must divide num_envs * num_steps ({self.batch_size})"
            )
        self.minibatch_size = self.batch_size // self.num_minibatches
        if self.minibatch_size < 2:
            raise ValueError(f"num_minibatches ({self.num_minibatches}) leaves {self.minibatch_size} sample per minibatch "
                             f"(num_envs * num_steps = {self.batch_size}); advantage normalisation needs at least 2: "
                             "use fewer minibatches or more steps")
        self.num_iterations = max(1, math.ceil(self.total_timesteps / self.batch_size))  # whole updates, rounded up
        return self

    def rounding_note(self) -> str | None:
        """What training does when total_timesteps is not a whole number of updates (None when it is)."""
        steps = self.num_iterations * self.batch_size
        if steps == self.total_timesteps:
            return None
        return (f"total_timesteps {self.total_timesteps:,} is not a multiple of the batch ({self.batch_size:,} = num_envs x "
                f"num_steps): training {steps:,} steps ({self.num_iterations} updates)")

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
            from rlkit.errors import DeviceError

            raise DeviceError(f"device {device!r} asked for, but torch sees no CUDA device; use 'auto' or 'cpu'")
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
    from rlkit.errors import EnvError  # a ValueError: the env does not fit the agent (exit code 4)

    if not isinstance(observation_space, gym.spaces.Box):
        raise EnvError(
            f"unsupported observation space {type(observation_space).__name__}: rlkit.ppo takes the adapted "
            "observations of rlkit.envs.make_vector_env (one-hot Discrete/MultiDiscrete, flattened Tuple/Dict, "
            "channels-first images); wrap a hand-built env's sub-envs with rlkit.envs.adapt_observations"
        )
    if isinstance(action_space, gym.spaces.Box):
        if len(action_space.shape) != 1:
            raise EnvError(f"Box actions must be 1-d, got shape {action_space.shape}")
    elif isinstance(action_space, gym.spaces.MultiDiscrete):
        if len(action_space.shape) != 1:  # rlkit.envs.make_vector_env flattens them (FlatDiscreteActions)
            raise EnvError(f"MultiDiscrete actions must be 1-d, got shape {action_space.shape}")
    elif not isinstance(action_space, gym.spaces.Discrete):
        raise EnvError(
            f"unsupported action space {type(action_space).__name__}: rlkit.ppo takes Discrete, MultiDiscrete, "
            "MultiBinary (as MultiDiscrete, through rlkit.envs.make_vector_env) or 1-d Box actions"
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
        """Pixels 0-255 -> [0, 1] inside the network, then the torso [atari 9]."""
        return self.torso((obs / 255.0).contiguous(memory_format=torch.channels_last))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.features(obs)
        return self.actor_head(hidden), self.critic_head(hidden).squeeze(-1)

    def get_value(self, obs: Tensor) -> Tensor:
        return self.critic_head(self.features(obs)).squeeze(-1)


NETWORKS = ("auto", "mlp", "nature_cnn", "small_cnn", "multi_input")
UPDATE_BACKENDS = ("auto", "fused", "autograd")


def make_agent(cfg: PPOConfig, observation_space: gym.Space, action_space: gym.Space) -> ActorCriticBase:
    """The network the config names, for these spaces; ``auto`` picks it from the (adapted) observation
    space with :func:`rlkit.networks.resolve_network`.  small_cnn and multi_input live in rlkit.networks."""
    from rlkit import networks  # here, not at the top: rlkit.networks builds on this module

    check_spaces(observation_space, action_space)
    name = networks.resolve_network(observation_space) if cfg.network == "auto" else cfg.network
    networks.check_network(name, observation_space)
    check_network_settings(cfg, name, observation_space)
    hidden_size = DEFAULT_HIDDEN_SIZE if cfg.hidden_size is None else cfg.hidden_size
    if name == "nature_cnn":
        return NatureCNNAgent(observation_space, action_space)
    if name == "small_cnn":
        return networks.SmallCNNAgent(observation_space, action_space)
    if name == "multi_input":
        return networks.MultiInputAgent(observation_space, action_space, hidden_size)
    return Agent(observation_space, action_space, hidden_size, bool(cfg.shared_network))


DEFAULT_HIDDEN_SIZE = 64
SHARED_TORSO_NETWORKS = {"nature_cnn": "512-unit", "small_cnn": "256-unit", "multi_input": None}


def check_network_settings(cfg: PPOConfig, network: str, observation_space: gym.Space | None = None) -> None:
    """Refuse the settings a network cannot honour instead of building it without them."""
    if network not in SHARED_TORSO_NETWORKS:
        return
    problems = []
    if cfg.shared_network is False:
        problems.append(f"shared_network = false ({network} always shares one torso between actor and critic)")
    if cfg.hidden_size is not None and SHARED_TORSO_NETWORKS[network] is not None:
        problems.append(f"hidden_size = {cfg.hidden_size} ({network}'s layers are fixed: "
                        f"{SHARED_TORSO_NETWORKS[network]} feature layer)")
    parts = getattr(observation_space, "parts", None)
    if cfg.hidden_size is not None and network == "multi_input" and parts is not None and \
            all(p.kind == "image" for p in parts):
        problems.append(f"hidden_size = {cfg.hidden_size} (it sizes the MLP for the non-image parts, and these "
                        "observations are all images)")
    if problems:
        where = "network = 'auto' picks it for these observations" if cfg.network == "auto" else "network = " + repr(network)
        raise ValueError(f"{network} ({where}) cannot take {'; '.join(problems)}: leave the key unset or use "
                         "network = 'mlp'")


def saved_config_values(values: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's or export's config as this version reads it.  Earlier versions saved shared_network = false
    and hidden_size = 64 where nothing was set, which for every network means the same as leaving them unset now."""
    values = dict(values)
    if values.get("shared_network") is False:
        values["shared_network"] = None
    if values.get("hidden_size") == DEFAULT_HIDDEN_SIZE:
        values["hidden_size"] = None
    return values


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
# Rollout: storage and collection (one path for every variant)
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
    def allocate(cls, num_steps: int, num_envs: int, obs_shape, agent: ActorCriticBase, device: torch.device,
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


def action_mask_from_info(info: dict, device: torch.device, action_space: gym.Space | None = None) -> Tensor | None:
    """The env's ``info["action_mask"]`` (1 = allowed) as a bool tensor, or None when it gives none.  With the
    env's ``action_space`` (one sub-env's), a mask that does not fit it, or allows no action (of a component),
    is the env's error, in one line."""
    if "action_mask" not in info:
        return None
    mask = np.stack(list(info["action_mask"])).astype(bool)
    if action_space is not None:
        check_action_mask(mask, action_space)
    return torch.as_tensor(mask, dtype=torch.bool, device=device)


def check_action_mask(mask: np.ndarray, action_space: gym.Space) -> None:
    from rlkit.errors import EnvError

    if isinstance(action_space, gym.spaces.Box):
        raise EnvError("info['action_mask'] is for Discrete / MultiDiscrete actions; this env's are Box")
    sizes = mask_sizes(action_space)
    if mask.ndim != 2 or mask.shape[1] != sum(sizes):
        raise EnvError(f"info['action_mask'] has shape {mask.shape[1:]} per env; {action_space} actions need "
                       f"({sum(sizes)},): one entry per action" + ("" if len(sizes) == 1 else ", the components side by side"))
    empty = empty_mask_components(mask, sizes)
    if empty.any():
        env, component = (int(i) for i in np.argwhere(empty)[0])
        raise EnvError(f"info['action_mask'] of env {env} allows no action"
                       + ("" if len(sizes) == 1 else f" for component {component}")
                       + ": every step needs at least one allowed action")


def mask_sizes(action_space: gym.Space) -> list[int]:
    """The widths of an action mask's components: [n] (Discrete) or nvec (MultiDiscrete, side by side)."""
    return [int(action_space.n)] if isinstance(action_space, gym.spaces.Discrete) else [int(k) for k in action_space.nvec]


def empty_mask_components(mask: np.ndarray, sizes: list[int]) -> np.ndarray:
    """[rows, components]: True where a row's mask allows no action of that component."""
    bounds = np.cumsum([0, *sizes])
    return np.stack([~mask[:, a:b].any(axis=1) for a, b in zip(bounds[:-1], bounds[1:])], 1)


def truncated_final_obs(terminations: np.ndarray, truncations: np.ndarray, infos: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """(indices, last observations) of the envs whose episode hit a time limit this step.

    A time limit is not a terminal state: the return goes on past it, so the caller folds
    gamma * V(last obs) into the reward and ends the GAE trace there.
    """
    truncated_only = np.flatnonzero(truncations & ~terminations)
    if not truncated_only.size:
        return truncated_only, None
    return truncated_only, np.stack([infos["final_obs"][i] for i in truncated_only])


class RolloutPolicy:
    """How a variant acts while collecting: the feed-forward agent's version.

    The recurrent variant carries its LSTM state through these hooks, the batched-seed variant
    acts for all seeds at once; :func:`collect_rollout` is the same for all of them.
    """

    def __init__(self, agent: ActorCriticBase, step: Callable | None = None):
        self.agent = agent
        self.step = step or agent.get_action_and_value  # fast.compiled_policy_step with torch_compile

    def begin(self) -> None:
        """Called before each rollout, outside inference mode."""

    def act(self, obs: Tensor, action_mask: Tensor | None, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """(action, log-prob, value) for a batch of observations; deterministic: the mean / argmax action."""
        if deterministic:
            action, log_prob, _, value = self.agent.get_action_and_value(obs, action_mask=action_mask, deterministic=True)
        else:
            action, log_prob, _, value = self.step(obs, action_mask=action_mask)
        return action, log_prob, value

    def final_values(self, final_obs: Tensor, env_index: np.ndarray) -> Tensor:
        """V of the last observation of episodes that were truncated, in envs ``env_index``."""
        return self.agent.get_value(final_obs)

    def after_step(self, dones: np.ndarray) -> None:
        """The step's episode ends (1 = ended), after the truncation bootstrap."""

    def bootstrap_value(self, obs: Tensor) -> Tensor:
        """V of the observation after the rollout's last step (GAE's next value)."""
        return self.agent.get_value(obs)

    def state_tensors(self) -> dict[str, Tensor]:
        """What a checkpoint must hold to continue acting exactly (none for a feed-forward policy)."""
        return {}

    def load_state_tensors(self, tensors: dict[str, Tensor] | None) -> None:
        """Restore :meth:`state_tensors`; None: the envs were reset, start fresh."""


class FusedRolloutPolicy(RolloutPolicy):
    """The feed-forward policy acting through rlkit.fast.FusedPolicyStep (``update_backend`` auto / fused):
    the same samples to float32 rounding, in about half the ops per env step."""

    def __init__(self, agent: ActorCriticBase):
        super().__init__(agent, FusedPolicyStep(agent))

    def begin(self) -> None:
        self.step.refresh()  # the weights the last update left


@dataclass
class EnvCursor:
    """Where the vector envs stand between rollouts: the next observation and action mask, the step count."""

    obs: Tensor
    mask: Tensor | None
    global_step: int = 0

    @classmethod
    def reset(cls, envs: gym.vector.VectorEnv, seed: int, device: torch.device) -> EnvCursor:
        obs, info = envs.reset(seed=seed)
        return cls(torch.as_tensor(obs, dtype=torch.float32, device=device),
                   action_mask_from_info(info, device, envs.single_action_space))


def collect_rollout(envs: gym.vector.VectorEnv, policy: RolloutPolicy, rollout: Rollout, staging: NumpyStaging,
                    cursor: EnvCursor, cfg: PPOConfig, record: Callable[[dict, int], None]) -> Tensor:
    """Fill ``rollout`` with one fixed-length segment [core 1]; returns V(obs after the last step).

    Truncated episodes get gamma * V(final obs) folded into their last reward (``bootstrap_truncation``);
    the env's same-step autoreset means the stored next obs already begins the new episode.
    ``record(infos, global_step)`` receives every step's infos (finished episodes).
    """
    device = cursor.obs.device
    policy.begin()
    with torch.inference_mode():
        for step in range(rollout.obs.shape[0]):
            cursor.global_step += cfg.num_envs
            rollout.obs[step] = cursor.obs
            if cursor.mask is not None:
                rollout.action_masks[step] = cursor.mask
            action, log_prob, value = policy.act(cursor.obs, cursor.mask)
            rollout.actions[step] = action
            rollout.log_probs[step] = log_prob
            rollout.values[step] = value

            # The env clips Box actions; the unclipped sample is what was stored [cont 5].
            next_obs, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
            staging.rewards[step] = reward
            if cfg.bootstrap_truncation and truncations.any():
                truncated_only, final_obs = truncated_final_obs(terminations, truncations, infos)
                if truncated_only.size:
                    final_value = policy.final_values(torch.as_tensor(final_obs, dtype=torch.float32, device=device),
                                                      truncated_only)
                    staging.rewards[step, truncated_only] += np.float32(cfg.gamma) * final_value.cpu().numpy()
            staging.dones[step] = terminations | truncations
            policy.after_step(staging.dones[step])
            if not np.isfinite(next_obs).all():  # before the policy ever sees them
                raise NonFiniteError("non-finite observations")
            cursor.obs = torch.as_tensor(next_obs, dtype=torch.float32, device=device)
            if cursor.mask is not None:  # after an autoreset this is the new episode's mask
                cursor.mask = action_mask_from_info(infos, device, envs.single_action_space)
            record(infos, cursor.global_step)

        if not np.isfinite(staging.rewards).all():
            raise NonFiniteError("non-finite rewards")
        staging.to(rollout.rewards, rollout.dones)
        return policy.bootstrap_value(cursor.obs)


# ---------------------------------------------------------------------------------
# The update (one routine for every variant)
# ---------------------------------------------------------------------------------


@dataclass
class Batch:
    """One rollout flattened for the update: [num_steps * num_envs, ...], time-major (index t * N + n)."""

    obs: Tensor
    actions: Tensor
    log_probs: Tensor
    advantages: Tensor
    returns: Tensor
    values: Tensor
    action_masks: Tensor | None = None

    @classmethod
    def from_rollout(cls, rollout: Rollout, advantages: Tensor, returns: Tensor) -> Batch:
        flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
        return cls(flat(rollout.obs), flat(rollout.actions), flat(rollout.log_probs), flat(advantages), flat(returns),
                   flat(rollout.values), None if rollout.action_masks is None else flat(rollout.action_masks))


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

    Advantages are normalised here, per minibatch [core 7].
    Returns (loss, policy loss, value loss, mean entropy, policy-loss debug stats).
    """
    if norm_adv:
        advantages = masked_whiten(advantages)  # per minibatch [core 7]
    pg_loss, pg_stats = clipped_policy_loss(new_log_prob, old_log_prob, advantages, clip_coef)
    v_loss = clipped_value_loss(new_value, old_value, returns, clip_coef if clip_vloss else None)
    entropy_loss = entropy.mean()
    loss = pg_loss - ent_coef * entropy_loss + vf_coef * v_loss
    return loss, pg_loss, v_loss, entropy_loss, pg_stats


def agent_minibatch_loss(agent: ActorCriticBase, obs: Tensor, actions: Tensor, action_mask: Tensor | None, *targets):
    """The agent's forward on a minibatch, then :func:`minibatch_loss`."""
    _, new_log_prob, entropy, new_value = agent.get_action_and_value(obs, actions, action_mask=action_mask)
    return minibatch_loss(new_log_prob, entropy, new_value, *targets)


# The fused update (update_backend) is these functions written out by hand. Where one is replaced (a custom
# loss, a fault a test injects), the replacement must be what runs: auto then falls back to autograd, fused is refused.
FUSED_UPDATE_MIRRORS = {fn.__name__: fn for fn in (normal_sample_and_score, categorical_sample_and_score, masked_whiten,
                                                   clipped_policy_loss, clipped_value_loss, minibatch_loss,
                                                   agent_minibatch_loss)}


class Learner:
    """What a variant gives the update: its optimizer, how it splits a batch into minibatches, and the
    loss of one minibatch.  This is the feed-forward agent's: shuffled index minibatches [core 6].

    The recurrent variant forms minibatches of whole env sequences and rebuilds LSTM states; the
    batched-seed variant scores all seeds at once with vmap and clips each seed's gradient.
    """

    backend = "autograd"
    """how the minibatch gradient is computed (config update_backend)"""

    def __init__(self, agent: ActorCriticBase, optimizer: torch.optim.Optimizer, cfg: PPOConfig,
                 generator: torch.Generator | None = None):
        self.agent, self.optimizer, self.cfg, self.generator = agent, optimizer, cfg, generator
        self.parameters = optimized_parameters(optimizer)
        self.loss_fn = compiled(agent_minibatch_loss) if cfg.torch_compile else agent_minibatch_loss

    def targets(self, batch: Batch, mb: Tensor) -> tuple:
        cfg = self.cfg
        return (batch.log_probs[mb], batch.advantages[mb], batch.returns[mb], batch.values[mb], cfg.norm_adv,
                cfg.clip_coef, cfg.clip_vloss, cfg.ent_coef, cfg.vf_coef)

    def minibatches(self, batch: Batch) -> list[Tensor]:
        size = batch.log_probs.shape[0]
        permutation = torch.randperm(size, generator=self.generator, device="cpu").to(batch.log_probs.device)
        return permutation.split(size // self.cfg.num_minibatches)

    def loss(self, batch: Batch, mb: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        masks = None if batch.action_masks is None else batch.action_masks[mb]
        return self.loss_fn(self.agent, batch.obs[mb], batch.actions[mb], masks, *self.targets(batch, mb))

    def loss_and_gradients(self, batch: Batch, mb: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """The minibatch's loss (as :meth:`loss` returns it), with its gradient in every parameter's ``.grad``."""
        out = self.loss(batch, mb)
        self.optimizer.zero_grad(set_to_none=False)  # in place: gradients may be views of one flat buffer
        out[0].backward()
        return out

    def clip_gradients(self, max_norm: float) -> Tensor:
        """Global gradient-norm clip [core 11]; returns the norm before clipping."""
        return clip_grad_norm(self.parameters, max_norm)  # nn.utils.clip_grad_norm_, written out for one flat tensor


class FusedLearner(Learner):
    """The feed-forward learner with the MLP agent's gradient written by hand (``update_backend = "fused"``):
    the same minibatches and math as :class:`Learner`, ~3x fewer ops (rlkit.fast.FusedMLPLoss)."""

    backend = "fused"

    def __init__(self, agent: ActorCriticBase, optimizer: torch.optim.Optimizer, cfg: PPOConfig,
                 generator: torch.Generator | None = None):
        super().__init__(agent, optimizer, cfg, generator)
        self.fused, self.rows = FusedMLPLoss(agent, dict(agent.named_parameters()), cfg), EpochRows()

    def minibatches(self, batch: Batch) -> list[tuple[int, int]]:
        """The plain learner's minibatches, gathered once per epoch; each minibatch is then a slice of rows."""
        return self.rows.gather(batch, super().minibatches(batch))

    def loss_and_gradients(self, batch: Batch, mb: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        return self.fused(*self.rows.minibatch(*mb, batch.action_masks))


def use_fused_update(cfg: PPOConfig, agent: nn.Module) -> bool:
    """Whether ``update_backend`` means the fused update for this agent; refuses ``fused`` where it cannot apply."""
    replaced = [name for name, fn in FUSED_UPDATE_MIRRORS.items() if globals()[name] is not fn]
    unsupported = fused_update_support(agent) or (
        replaced and f"a replaced rlkit.ppo.{replaced[0]} (the fused update is the stock loss written out)")
    if cfg.update_backend == "fused" and unsupported:
        raise ValueError(f"update_backend='fused' does not support {unsupported}; use update_backend='auto' or 'autograd'")
    return cfg.update_backend == "fused" or (cfg.update_backend == "auto" and not unsupported and not cfg.torch_compile)


def ppo_update(batch: Batch, learner: Learner, cfg: PPOConfig) -> dict[str, Tensor | int]:
    """K epochs of the learner's minibatches over one batch [core 6], one optimiser step each.

    loss = policy_loss - ent_coef * entropy + vf_coef * value_loss [core 10], global grad-norm
    clip [core 11], optional approx-KL early stop per epoch.  Returns the statistics as tensors
    (one value per seed for batched seeds): the last minibatch's losses, approx_kl and the
    ratio error of the first minibatch, the mean clipfrac, and the epochs run.
    """
    optimizer = learner.optimizer
    clipfracs, approx_kl, first_ratio_error, epochs_run = [], torch.zeros(()), torch.tensor(float("nan")), 0
    for epoch in range(cfg.update_epochs):
        for index, mb in enumerate(learner.minibatches(batch)):
            loss, pg_loss, v_loss, entropy_loss, pg_stats = learner.loss_and_gradients(batch, mb)  # loss.backward()
            grad_norm = learner.clip_gradients(cfg.max_grad_norm)
            # Checked before the step, so a bad minibatch never reaches the weights (one check for both).
            if not torch.isfinite(loss.detach() + grad_norm).all():
                check_finite("loss", loss.detach())
                check_finite("gradients (global norm)", grad_norm)
            optimizer.step()

            approx_kl = pg_stats["approx_kl"]
            clipfracs.append(pg_stats["clipfrac"])
            if epoch == 0 and index == 0:
                # Before any step the new policy IS the old one: a ratio != 1 here
                # means rollout and training compute log-probs differently.
                first_ratio_error = pg_stats["max_ratio_error"]
        epochs_run = epoch + 1
        if cfg.target_kl is not None and approx_kl > cfg.target_kl:
            break
    return {
        "policy_loss": pg_loss.detach(),
        "value_loss": v_loss.detach(),
        "entropy": entropy_loss.detach(),
        "approx_kl": approx_kl,
        "clipfrac": torch.stack(clipfracs).mean(0),
        "first_ratio_error": first_ratio_error,
        "epochs": epochs_run,
    }


# ---------------------------------------------------------------------------------
# Variants: what differs between feed-forward, recurrent and batched-seed PPO
# ---------------------------------------------------------------------------------


class FeedForward:
    """The feed-forward variant (the MLP or the Nature CNN): every setting of PPOConfig works."""

    name = "ppo"
    config_class = PPOConfig

    def check(self, cfg: PPOConfig, envs: gym.vector.VectorEnv) -> None:
        """Refuse, up front and by key, any setting this variant cannot honour."""

    def make_agent(self, cfg: PPOConfig, envs: gym.vector.VectorEnv) -> ActorCriticBase:
        return make_agent(cfg, envs.single_observation_space, envs.single_action_space)

    def make_optimizer(self, agent: ActorCriticBase, cfg: PPOConfig) -> torch.optim.Optimizer:
        return make_optimizer(agent, cfg.learning_rate, flat=self.flat(agent))

    def flat(self, agent: ActorCriticBase) -> bool:
        """Whether the agent's parameters live in one flat tensor (:func:`rlkit.fast.flatten_parameters`).

        The MLP agent's do, in training and (so that its matmuls see the same memory layout and
        give bitwise the same actions) wherever it is loaded again."""
        return type(agent) is Agent

    def rollout_policy(self, agent: ActorCriticBase, cfg: PPOConfig, num_envs: int) -> RolloutPolicy:
        if cfg.torch_compile:
            return RolloutPolicy(agent, compiled_policy_step(agent))
        return FusedRolloutPolicy(agent) if use_fused_update(cfg, agent) else RolloutPolicy(agent)

    def learner(self, agent: ActorCriticBase, optimizer, cfg: PPOConfig, generator: torch.Generator,
                policy: RolloutPolicy) -> Learner:
        return (FusedLearner if use_fused_update(cfg, agent) else Learner)(agent, optimizer, cfg, generator)

    def batch(self, rollout: Rollout, advantages: Tensor, returns: Tensor, policy: RolloutPolicy) -> Batch:
        return Batch.from_rollout(rollout, advantages, returns)


def refuse(variant: str, problems: list[str], advice: str) -> None:
    """One error for every setting a variant cannot honour: names the keys and the variant."""
    if problems:
        raise ValueError(f"{variant} does not support {'; '.join(problems)}; {advice}")


# ---------------------------------------------------------------------------------
# The train loop
# ---------------------------------------------------------------------------------


@dataclass
class EpisodeLog:
    """Returns, lengths and end steps of finished episodes, from RecordEpisodeStatistics' info."""

    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)

    def record(self, infos: dict, global_step: int, logger: RunLogger, envs: slice | None = None) -> None:
        """Episodes that ended this step (in the vector envs ``envs`` only, when given)."""
        if "_episode" not in infos:
            return
        ended, episode = infos["_episode"], infos["episode"]
        offset = 0 if envs is None else envs.start
        for i in np.flatnonzero(ended if envs is None else ended[envs]) + offset:
            self.returns.append(float(episode["r"][i]))
            self.lengths.append(int(episode["l"][i]))
            self.steps.append(global_step)
            logger.episode(global_step, self.returns[-1], self.lengths[-1])

    def state(self) -> dict:
        return {"returns": self.returns, "lengths": self.lengths, "steps": self.steps}

    @classmethod
    def from_state(cls, state: dict) -> EpisodeLog:
        return cls(*(list(state[k]) for k in ("returns", "lengths", "steps")))


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
    agent: ActorCriticBase = field(repr=False)
    normalizer: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    interrupted: int | None = None
    """the signal that stopped the run early, if any"""
    checkpoint: str | None = None
    """the last checkpoint written"""
    updates_run: int = 0
    """updates this call trained (0: a resumed run that was already complete)"""
    evaluations: list[dict] = field(default_factory=list)
    """the periodic evaluations (eval_interval), in order"""
    update_backend: str = "autograd"
    """how the minibatch gradients were computed: fused or autograd (config update_backend)"""

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
                "last_episodes": int(last.size), **stats, "wall_time": self.wall_time, "sps": self.sps,
                "update_backend": self.update_backend}


def make_optimizer(agent: nn.Module, learning_rate: float, flat: bool = False) -> torch.optim.Adam:
    """Adam with epsilon 1e-5 instead of torch's 1e-8, as in the PPO paper's code [core 3].

    fused: one kernel for all parameters instead of a Python loop over them (same math).
    ``flat``: optimise one flat view of all parameters (:func:`rlkit.fast.flatten_parameters`); the MLP agent's choice.
    """
    parameters = [flatten_parameters(agent)] if flat else agent.parameters()
    return torch.optim.Adam(parameters, lr=learning_rate, eps=1e-5, fused=True)


def make_envs(cfg: PPOConfig, groups: int | None = None) -> gym.vector.VectorEnv:
    """The vector env with the wrapper stack the config asks for (Atari's for Atari ids).

    ``groups``: ``groups`` runs' cfg.num_envs envs each, side by side in one vector env, each run
    with normalisers of its own (batched seeds; rlkit.envs.make_vector_env)."""
    env_id = resolve_env_id(cfg.env_id, cfg.env_module)
    if is_atari_id(env_id):
        if groups is not None:
            raise ValueError("batched seeds do not take Atari ids (the Nature CNN is not batched); run the seeds separately")
        return make_atari_vector_env(env_id, cfg.num_envs, cfg.atari_backend)
    return make_vector_env(
        env_id,
        cfg.num_envs * (groups or 1),
        groups=groups,
        env_kwargs=cfg.env_kwargs,
        gamma=cfg.gamma,
        clip_actions=cfg.clip_actions,
        normalize_obs=cfg.normalize_obs,
        obs_clip=cfg.obs_clip,
        normalize_reward=cfg.normalize_reward,
        reward_clip=cfg.reward_clip,
        vectorization=cfg.vectorization,
    )


def update_stats(stats: dict, batch: Batch, optimizer: torch.optim.Optimizer, global_step: int, seconds: float) -> dict:
    """The statistics every variant logs after an update, beside ppo_update's [core 12]."""
    return {**stats, "explained_variance": explained_variance(batch.values, batch.returns),
            "learning_rate": optimizer.param_groups[0]["lr"], "SPS": global_step / seconds}


def train(
    cfg: PPOConfig | None = None,
    run_name: str | None = None,
    progress: bool = True,
    log: bool = True,
    resume: str | None = None,
    callbacks: list[Callback] = (),
    variant: FeedForward | None = None,
    total_timesteps: int | None = None,
    device: str | None = None,
) -> TrainResult:
    """Train a PPO agent; writes to <run_dir>/<run_name> when ``log``.

    ``resume``: a run folder (or checkpoint folder) to continue from; its saved config is used.
    Where the env state is plain data (probes, classic control) the continued run is bit-for-bit
    the uninterrupted one on CPU; elsewhere the envs restart from a seeded reset, and the log
    says so.  SIGINT / SIGTERM finish the current update, write a checkpoint and return with
    ``result.interrupted`` set to the signal number.  ``variant`` (default: feed-forward) supplies
    the network, the rollout policy and the learner; the recurrent variant is rlkit.ppo_lstm's.
    ``total_timesteps`` with ``resume`` extends (or just finishes) the run to that many steps; ``device``
    with ``resume`` continues it on another device (e.g. the one ``rlkit bench --devices`` assigns).
    """
    from rlkit.evaluate import PeriodicEvaluation  # evaluate builds on this module

    variant = variant or saved_variant(resume)
    cfg, run_dir, tensors, saved = open_run(cfg, run_name, resume, variant.config_class, total_timesteps, device)
    # locked for this run; a new run never lands in another run's folder; an older checkpoint branches
    folder = open_run_folder(run_dir, resume and resolve_checkpoint(resume), saved, run_name, cfg.new_folder, enabled=log)
    run_dir = folder.path
    try:  # a refusal before the run starts (a setting, a space) leaves no folder behind
        seed_everything(cfg.seed, cfg.torch_deterministic)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        device = resolve_device(cfg.device)

        envs = make_envs(cfg)
        envs.action_space.seed(cfg.seed)
        variant.check(cfg, envs)
        agent = variant.make_agent(cfg, envs).to(device)
        optimizer = variant.make_optimizer(agent, cfg)
        shuffle_generator = torch.Generator().manual_seed(cfg.seed)
        episodes = EpisodeLog()
        cursor = EnvCursor.reset(envs, cfg.seed, device)  # the mask: invalid-action masking, when the env provides masks
        check_memory("the rollout buffer", 4 * cfg.num_steps * cfg.num_envs * (int(np.prod(envs.single_observation_space.shape)) + 8))
        rollout = Rollout.allocate(cfg.num_steps, cfg.num_envs, envs.single_observation_space.shape, agent, device,
                                   masked=cursor.mask is not None)
        staging = NumpyStaging(cfg.num_steps, cfg.num_envs)
        policy = variant.rollout_policy(agent, cfg, cfg.num_envs)
        learner = variant.learner(agent, optimizer, cfg, shuffle_generator, policy)
        start_iteration, elapsed_before, notes = 1, 0.0, []
        if saved is not None:
            notes.append(restore_training_state(saved, tensors, agent, optimizer, {"shuffle": shuffle_generator}, envs,
                                                cursor, policy, cfg, device))
            start_iteration, elapsed_before, episodes = saved["iteration"] + 1, saved["wall_time"], EpisodeLog.from_state(saved["episodes"])
            if start_iteration > cfg.num_iterations:
                notes.append(f"the run is already complete at update {saved['iteration']} ({cfg.num_iterations} updates of "
                             f"{cfg.batch_size} steps); nothing to train: give a larger total_timesteps to extend it")
            elif saved.get("stopped_by_callback") and total_timesteps is None:
                start_iteration = cfg.num_iterations + 1  # it ended where a callback (or stop_at_return) stopped it
                notes.append(f"the run ended at update {saved['iteration']}, stopped by a callback or stop_at_return; "
                             "nothing to train: give total_timesteps to continue it")

        logger = RunLogger(run_dir, cfg.to_dict(), enabled=log, progress=progress, total=cfg.num_iterations * cfg.batch_size,
                           resume_metrics_at=saved["metrics_offset"] if saved is not None else None)
    except BaseException:
        folder.discard_if_unused()
        raise
    logger.advance(cursor.global_step, cursor.global_step, 0.0)
    for note in folder.notes + notes + ([cfg.rounding_note()] if cfg.rounding_note() and saved is None else []):
        logger.note(note)
    evaluation = PeriodicEvaluation(cfg) if cfg.eval_interval else None  # eval/ curve, best/ weights
    lifecycle = Lifecycle([run_dir], cfg.num_iterations, cfg.checkpoint_interval, cfg.keep_checkpoints, enabled=log,
                          last_checkpoint=resolve_checkpoint(resume) if resume is not None else None,
                          callbacks=([evaluation] if evaluation else []) + list(callbacks), folders=[folder])
    start_time = time.time() - elapsed_before
    last_stats: dict[str, float] = {}

    def iterate(iteration: int) -> dict[str, float]:
        if cfg.anneal_lr:
            linear_lr(optimizer, iteration, cfg.num_iterations, cfg.learning_rate)  # [core 4]
        next_value = collect_rollout(envs, policy, rollout, staging, cursor, cfg,
                                     lambda infos, step: episodes.record(infos, step, logger))
        lifecycle.emit("on_rollout")
        advantages, returns = gae(rollout.rewards, rollout.values, rollout.dones, next_value, cfg.gamma, cfg.gae_lambda)
        batch = variant.batch(rollout, advantages, returns, policy)
        stats = {k: v if isinstance(v, int) else float(v) for k, v in ppo_update(batch, learner, cfg).items()}
        check_finite_parameters(agent)
        last_stats.update(update_stats(stats, batch, optimizer, cursor.global_step, time.time() - start_time))
        log_update(logger, cfg, iteration, cursor.global_step, last_stats)
        return last_stats

    def capture(iteration: int) -> tuple[dict, dict]:
        return checkpoint_payload(cfg, envs, agent.state_dict(), optimizer_tensors(optimizer), {"shuffle": shuffle_generator},
                                  cursor, policy.state_tensors(), episodes, logger, iteration, time.time() - start_time,
                                  extra={"variant": variant.name})

    lifecycle.context.update(agent=agent, envs=envs, logger=logger, config=cfg, cursor=cursor, capture=capture)
    try:
        lifecycle.run(start_iteration, iterate, capture, where=lambda: f" (global step {cursor.global_step})")
    finally:
        wall_time = time.time() - start_time
        normalizer = normalizer_state(envs)
        envs.close()
        logger.close(pending_summary=lifecycle.interrupted is None)  # trackers stay open for the summary
    result = TrainResult(logger.run_dir, episodes.returns, episodes.lengths, episodes.steps, last_stats, cursor.global_step,
                         wall_time, agent, normalizer, interrupted=lifecycle.interrupted,
                         checkpoint=lifecycle.last_checkpoint, updates_run=lifecycle.updates_run,
                         evaluations=evaluation.history if evaluation else [], update_backend=learner.backend)
    if lifecycle.interrupted is None:
        logger.summary(result.summary(cfg))  # written last: its presence marks a finished run
    folder.release()
    return result


def log_update(logger: RunLogger, cfg: PPOConfig, iteration: int, global_step: int, stats: dict[str, float],
               steps: int | None = None) -> None:
    if iteration % cfg.log_interval == 0 or iteration == cfg.num_iterations:
        logger.update(global_step, iteration, stats)
    logger.advance(global_step, cfg.batch_size if steps is None else steps, stats["SPS"])


# ---------------------------------------------------------------------------------
# Checkpoint state: what a run holds, in and out (the files themselves: rlkit.checkpoint)
# ---------------------------------------------------------------------------------


VARIANTS = {"ppo": ("rlkit.ppo", "FeedForward"), "ppo_lstm": ("rlkit.ppo_lstm", "Recurrent")}
"""A checkpoint's ``variant`` -> (module, class): how ``--resume``, eval and export rebuild its agent."""


def variant_named(name: str) -> FeedForward:
    import importlib

    if name not in VARIANTS:
        if name == "ppo_lm":  # an RLHF run: its own commands
            raise CheckpointError("this is an RLHF (language-model) checkpoint: continue it with `rlkit rlhf --resume "
                                  "RUN`, export it with `rlkit rlhf-export RUN OUT`")
        raise CheckpointError(f"unknown training variant {name!r} in the checkpoint; known: {', '.join(VARIANTS)}")
    module, cls = VARIANTS[name]
    return getattr(importlib.import_module(module), cls)()


def saved_variant(resume: str | None) -> FeedForward:
    """The variant that wrote the checkpoint ``resume`` names (feed-forward for a new run or an older checkpoint)."""
    if resume is None:
        return FeedForward()
    _, saved = load_checkpoint(resume)
    return variant_named(saved.get("variant", "ppo"))


def open_run(cfg: PPOConfig | None, run_name: str | None, resume: str | None, config_class=PPOConfig,
             total_timesteps: int | None = None, device: str | None = None) -> tuple[PPOConfig, str, dict, dict | None]:
    """(config, run folder, checkpoint tensors, checkpoint state): a new run, or the run ``resume`` names
    (with ``total_timesteps``, extended to that many steps; with ``device``, on that device)."""
    if resume is not None:
        tensors, saved = load_checkpoint(resume)
        known = set(user_fields(config_class))
        values = {k: v for k, v in saved_config_values(saved["config"]).items() if k in known}
        if total_timesteps is not None:
            values["total_timesteps"] = total_timesteps
        if device is not None:
            values["device"] = device
        return (config_class(**values).validate(), os.path.dirname(os.path.dirname(resolve_checkpoint(resume))), tensors,
                saved)
    if total_timesteps is not None or device is not None:
        raise ValueError("total_timesteps= and device= are for resume=; a new run takes them from its config")
    if cfg is None:
        raise ValueError("train() needs a config or a run to resume")
    cfg.validate()
    return cfg, os.path.join(cfg.run_dir, run_name or default_run_name(cfg.env_id, cfg.exp_name, cfg.seed)), {}, None


def checkpoint_payload(cfg: PPOConfig, envs: gym.vector.VectorEnv, model: dict[str, Tensor],
                       optimizer_state: tuple[dict[str, Tensor], list[dict]], generators: dict[str, torch.Generator],
                       cursor: EnvCursor, policy_state: dict[str, Tensor], episodes: EpisodeLog, logger: RunLogger,
                       iteration: int, wall_time: float, torch_rng: Tensor | None = None, extra: dict | None = None
                       ) -> tuple[dict[str, dict[str, Tensor]], dict]:
    """(tensor files, JSON state) of a checkpoint, for rlkit.checkpoint.save_checkpoint.

    ``torch_rng``: the generator that samples this run's actions, when it is not torch's global one
    (batched seeds), saved where the global one would be so the checkpoint resumes alone too.
    """
    exact = supports_exact_state(envs)
    random_state, rng = rng_state(cursor.obs.device, generators)
    if torch_rng is not None:
        rng["torch"] = torch_rng
    rng["next_obs"] = cursor.obs
    if cursor.mask is not None:
        rng["next_mask"] = cursor.mask
    optimizer_files, groups = optimizer_state
    state = {
        "config": {k: getattr(cfg, k) for k in user_fields(type(cfg))},
        "global_step": cursor.global_step,
        "iteration": iteration,
        "wall_time": wall_time,
        **random_state,
        "env_exact": exact,
        "env_state": env_state(envs) if exact else None,
        "normalizers": normalizer_state(envs),
        "spaces": {"observation_shape": list(envs.single_observation_space.shape),
                   "action_space": str(envs.single_action_space)},
        "episodes": episodes.state(),
        "metrics_offset": logger.metrics_offset(),
        "optimizer_param_groups": groups,
        **(extra or {}),
    }
    files = {"model": model, "optimizer": optimizer_files, "rng": rng}
    if policy_state:
        files["policy_state"] = policy_state
    return files, state


def resume_reset_seed(cfg: PPOConfig, saved: dict) -> int:
    """The seed of the reset a resumed run restarts its envs from, when their state was not saved exactly."""
    return cfg.seed + 10_007 * saved["iteration"]


def restores_exactly(saved: dict, envs) -> bool:
    """Whether a checkpoint's env state is restored exactly into ``envs`` (else the envs restart from a seeded reset)."""
    return bool(saved["env_exact"]) and supports_exact_state(envs)


def restore_training_state(saved: dict, tensors: dict, agent: nn.Module, optimizer, generators: dict[str, torch.Generator],
                           envs, cursor: EnvCursor, policy: RolloutPolicy, cfg: PPOConfig, device: torch.device,
                           reset_envs: bool = True) -> str:
    """Load a checkpoint's weights, optimizer, RNG and env state into a run being built; returns a log note.

    Envs whose state cannot be restored exactly restart from a reset seeded ``resume_reset_seed``;
    ``reset_envs=False`` leaves that reset to the caller (batched seeds reset all seeds' envs at once)."""
    shape = list(envs.single_observation_space.shape)
    if saved["spaces"]["observation_shape"] == shape and "start=" in saved["spaces"]["action_space"] and \
            saved["spaces"]["action_space"] != str(envs.single_action_space):
        raise CheckpointError(
            f"checkpoint was made for actions {saved['spaces']['action_space']} by an rlkit that sent the agent's "
            "0-based actions to the env unshifted (now they are shifted to the space's start): its policy does not "
            "carry over; start a new run")
    if saved["spaces"]["observation_shape"] != shape or saved["spaces"]["action_space"] != str(envs.single_action_space):
        raise CheckpointError(
            f"checkpoint was made for observations {saved['spaces']['observation_shape']} / actions "
            f"{saved['spaces']['action_space']}, but {cfg.env_id} has {shape} / {envs.single_action_space}"
        )
    try:
        agent.load_state_dict(tensors["model"])
        if optimizer is not None:
            load_optimizer_tensors(optimizer, tensors["optimizer"], saved["optimizer_param_groups"])
    except (RuntimeError, KeyError, ValueError) as error:
        raise CheckpointError(f"checkpoint does not fit this agent's architecture: {error}") from None
    restore_rng_state(saved, tensors["rng"], device, generators)
    cursor.global_step = saved["global_step"]
    if restores_exactly(saved, envs):
        ignored = load_env_state(envs, saved["env_state"])  # an allow-list: a checkpoint cannot set gravity
        cursor.obs = tensors["rng"]["next_obs"].to(device)
        cursor.mask = tensors["rng"]["next_mask"].to(device) if "next_mask" in tensors["rng"] else None
        policy.load_state_tensors({k: v.to(device) for k, v in tensors.get("policy_state", {}).items()})
        return f"resumed at update {saved['iteration']}: exact env state restored" + (
            f" (not restored, as they are not the env's state: {', '.join(ignored)})" if ignored else "")
    load_normalizer_state(envs, saved["normalizers"])
    if reset_envs:
        fresh = EnvCursor.reset(envs, resume_reset_seed(cfg, saved), device)
        cursor.obs, cursor.mask = fresh.obs, fresh.mask
    policy.load_state_tensors(None)
    return (f"resumed at update {saved['iteration']}: {cfg.env_id}'s state cannot be saved exactly, so the envs restart "
            "from a seeded reset (weights, optimizer, normaliser statistics and RNGs are restored)")
