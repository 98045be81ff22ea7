"""Networks for image and multi-input observations, and what ``network = "auto"`` picks.

rlkit.ppo holds the MLP (:class:`rlkit.ppo.Agent`) and the Nature CNN
(:class:`rlkit.ppo.NatureCNNAgent`); this module adds the two networks that other
observation spaces need, on the same :class:`rlkit.ppo.ActorCriticBase`:

- ``small_cnn`` (:class:`SmallCNNAgent`): images smaller than 36 x 36, which the Nature CNN's
  8/4 - 4/2 - 3/1 kernels cannot take: three 3x3 convolutions (32, 64, 64 channels; strides
  1, 2, 2; padding 1, so any size from 1 x 1 works), a 256-unit ReLU layer, shared torso.
- ``multi_input`` (:class:`MultiInputAgent`): Tuple / Dict observations with image parts, SB3's
  MultiInputPolicy / CombinedExtractor: every image through its own CNN (Nature for >= 36 x 36,
  the small one below), the vector parts through a tanh MLP, features concatenated, one
  256-unit ReLU layer, then the heads.

Pixels are scaled by 1/255 inside every CNN; every layer is orthogonal with gain sqrt(2) and
bias 0, the policy head 0.01, the value head 1 [core 2].  Observations arrive adapted by
rlkit.envs.observations (channels-first images, packed vectors), which is where the layout
of a packed vector comes from.

This module builds on rlkit.ppo; rlkit.ppo imports it lazily, inside make_agent.
"""

from __future__ import annotations

import gymnasium as gym
import torch
import torch.nn as nn
from torch import Tensor

from rlkit.envs.observations import ObservationLayout, Part, image_channels_first, is_image_space
from rlkit.ppo import NETWORKS, ActorCriticBase, layer_init

NATURE_MIN_SIZE = 36
"""The smallest height and width the Nature CNN's kernels take (8/4 -> 4/2 -> 3/1 leaves 1 x 1)."""

SMALL_CNN_FEATURES = 256
NATURE_CNN_FEATURES = 512
JOINT_FEATURES = 256


def resolve_network(observation_space: gym.Space) -> str:
    """The network ``auto`` means for an (adapted) observation space.

    multi_input for a packed vector with images, nature_cnn for images of at least 36 x 36,
    small_cnn for smaller images, mlp for everything else (vectors, one-hot, flattened Tuple/Dict).
    """
    if isinstance(observation_space, ObservationLayout) and observation_space.images:
        return "multi_input"
    if is_image_space(observation_space):
        _, height, width = observation_space.shape
        return "nature_cnn" if min(height, width) >= NATURE_MIN_SIZE else "small_cnn"
    return "mlp"


def check_network(network: str, observation_space: gym.Space) -> None:
    """Refuse, in one line, a network that cannot take these observations."""
    if network not in NETWORKS or network == "auto":
        raise ValueError(f"network must be one of {NETWORKS}, got {network!r}")
    shape = tuple(observation_space.shape)
    if is_image_space(observation_space) and not image_channels_first(observation_space):
        raise ValueError(f"image observations {shape} must reach the network channels-first: build the env with "
                         "rlkit.envs.make_vector_env, which transposes HWC images")
    packed = isinstance(observation_space, ObservationLayout) and bool(observation_space.images)
    frames = len(shape) == 3  # [channels, height, width]; explicit CNN choices take any 3-d Box, as before
    fits = {"mlp": len(shape) == 1 and not packed, "nature_cnn": frames and min(shape[1:]) >= NATURE_MIN_SIZE,
            "small_cnn": frames, "multi_input": packed}[network]
    if not fits:
        what = ("packed Tuple/Dict observations with images" if packed else
                f"{shape[1]}x{shape[2]} images (the Nature CNN needs at least {NATURE_MIN_SIZE}x{NATURE_MIN_SIZE})"
                if frames and network == "nature_cnn" else f"observations of shape {shape}")
        raise ValueError(f"network = {network!r} cannot take {what}; use network = 'auto', which picks "
                         f"{resolve_network(observation_space)!r} here")


def nature_cnn(channels: int, height: int, width: int) -> nn.Sequential:
    """The Nature DQN torso (Mnih et al. 2015), as rlkit.ppo.NatureCNNAgent's: -> 512 ReLU features."""
    torso = nn.Sequential(
        layer_init(nn.Conv2d(channels, 32, 8, stride=4)), nn.ReLU(),
        layer_init(nn.Conv2d(32, 64, 4, stride=2)), nn.ReLU(),
        layer_init(nn.Conv2d(64, 64, 3, stride=1)), nn.ReLU(),
        nn.Flatten(),
    )
    return _with_linear(torso, channels, height, width, NATURE_CNN_FEATURES)


def small_cnn(channels: int, height: int, width: int) -> nn.Sequential:
    """Three 3x3 convolutions (strides 1, 2, 2, padding 1) for images of any size: -> 256 ReLU features."""
    torso = nn.Sequential(
        layer_init(nn.Conv2d(channels, 32, 3, stride=1, padding=1)), nn.ReLU(),
        layer_init(nn.Conv2d(32, 64, 3, stride=2, padding=1)), nn.ReLU(),
        layer_init(nn.Conv2d(64, 64, 3, stride=2, padding=1)), nn.ReLU(),
        nn.Flatten(),
    )
    return _with_linear(torso, channels, height, width, SMALL_CNN_FEATURES)


def image_encoder(channels: int, height: int, width: int) -> tuple[nn.Sequential, int]:
    """(CNN, its feature size): the Nature CNN when the image is large enough for it, else the small one."""
    if min(height, width) >= NATURE_MIN_SIZE:
        return nature_cnn(channels, height, width), NATURE_CNN_FEATURES
    return small_cnn(channels, height, width), SMALL_CNN_FEATURES


def _with_linear(torso: nn.Sequential, channels: int, height: int, width: int, features: int) -> nn.Sequential:
    with torch.no_grad():
        flat = torso(torch.zeros(1, channels, height, width)).shape[1]
    torso.append(layer_init(nn.Linear(flat, features)))
    torso.append(nn.ReLU())
    return torso


class _SharedTorsoAgent(ActorCriticBase):
    """features(obs) -> policy head (gain 0.01) and value head (gain 1); log-std for Box actions."""

    def _heads(self, features: int) -> None:
        self.actor_head = layer_init(nn.Linear(features, self.action_dim), std=0.01)
        self.critic_head = layer_init(nn.Linear(features, 1), std=1.0)
        if self.continuous:
            self.actor_logstd = nn.Parameter(torch.zeros(1, self.action_dim))

    def features(self, obs: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.features(obs)
        return self.actor_head(hidden), self.critic_head(hidden).squeeze(-1)

    def get_value(self, obs: Tensor) -> Tensor:
        return self.critic_head(self.features(obs)).squeeze(-1)


class SmallCNNAgent(_SharedTorsoAgent):
    """Actor-critic for channels-first images smaller than the Nature CNN takes (any size works)."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space):
        super().__init__(observation_space, action_space)
        check_network("small_cnn", observation_space)
        self.torso = small_cnn(*observation_space.shape)
        self._heads(SMALL_CNN_FEATURES)

    def features(self, obs: Tensor) -> Tensor:
        """Pixels 0-255 -> [0, 1] inside the network, then the torso."""
        return self.torso(obs / 255.0)


class MultiInputAgent(_SharedTorsoAgent):
    """Actor-critic for packed Tuple / Dict observations with images (SB3's CombinedExtractor, shared by both heads).

    The observation is one float32 vector (rlkit.envs.observations.ObservationLayout): each image
    slice is reshaped to (C, H, W), scaled by 1/255 and encoded by its own CNN; the other slices
    (Box, one-hot, 0/1 parts) go, concatenated, through a two-layer tanh MLP ``hidden_size`` wide.
    The features are concatenated and pass one 256-unit ReLU layer before the heads.
    """

    def __init__(self, observation_space: ObservationLayout, action_space: gym.Space, hidden_size: int = 64):
        super().__init__(observation_space, action_space)
        check_network("multi_input", observation_space)
        self.image_parts: tuple[Part, ...] = observation_space.images
        self.image_encoders = nn.ModuleList()
        features = 0
        for part in self.image_parts:
            encoder, size = image_encoder(*part.shape)
            self.image_encoders.append(encoder)
            features += size
        vector = [i for p in observation_space.parts if p.kind != "image" for i in range(p.start, p.stop)]
        self.register_buffer("vector_index", torch.tensor(vector, dtype=torch.long), persistent=False)
        self.vector_encoder = None
        if vector:
            self.vector_encoder = nn.Sequential(
                layer_init(nn.Linear(len(vector), hidden_size)), nn.Tanh(),
                layer_init(nn.Linear(hidden_size, hidden_size)), nn.Tanh(),
            )
            features += hidden_size
        self.joint = nn.Sequential(layer_init(nn.Linear(features, JOINT_FEATURES)), nn.ReLU())
        self._heads(JOINT_FEATURES)

    def features(self, obs: Tensor) -> Tensor:
        lead, flat = obs.shape[:-1], obs.reshape(-1, obs.shape[-1])
        encoded = [encoder(flat[:, part.start:part.stop].reshape(-1, *part.shape) / 255.0)
                   for part, encoder in zip(self.image_parts, self.image_encoders)]
        if self.vector_encoder is not None:
            encoded.append(self.vector_encoder(flat.index_select(1, self.vector_index)))
        return self.joint(torch.cat(encoded, dim=1)).reshape(*lead, JOINT_FEATURES)
