"""Observation adapters: every common gymnasium observation space as arrays the agent can take.

SB3's preprocessing, done in the env so the agent only ever sees float32 vectors or
channels-first uint8 images (the rollout stores both as float32):

==========================  =============================================================
observation space           what the agent sees
==========================  =============================================================
Box, 1-d                    unchanged (no wrapper at all: same bits as before)
Box image (see below)       (C, H, W) uint8, 0-255; HWC images transposed
Box, 0-, 2- or 3-d          flattened to float32 (a 3-d Box that is no image, too)
Discrete(n)                 one-hot float32 of size n
MultiDiscrete(nvec)         the one-hots of every component, concatenated (sum(nvec))
MultiBinary(n)              float32 0/1 vector
Tuple / Dict                one float32 vector: every part adapted as above, concatenated
                            in the space's order (nested Tuple/Dict too)
Tuple / Dict with images    the same packed vector, image parts included as CHW pixels;
                            its space (:class:`ObservationLayout`) says which slice is which
                            image, so rlkit.networks' multi-input network unpacks them
Graph, Sequence, Text,      refused up front with one line saying what to do
OneOf, Box with > 3 dims
==========================  =============================================================

An image is SB3's ``is_image_space(check_channels=True)``: a 3-d uint8 Box with bounds 0 and
255 whose smallest axis (channels-first) or else last axis (channels-last) has 1, 3 or 4
entries.

Adapters are sub-env wrappers (:func:`adapt_observations`, applied by
rlkit.envs.make_vector_env), so the last observation of an episode that gymnasium 1.x puts into
``info["final_obs"]`` on a same-step autoreset comes out adapted exactly like every other one:
the vector env stores whatever the wrapped sub-env returned.

Which entries may be normalised (:func:`real_valued_entries`): only the real-valued Box parts;
never one-hot or 0/1 parts, never pixels.  Nothing here imports the agent.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium import spaces

IMAGE_CHANNELS = (1, 3, 4)
"""Channel counts of an image observation (grey, RGB, RGBA or 4 stacked grey frames), as SB3."""


# ---------------------------------------------------------------------------------
# What is an image, what is refused
# ---------------------------------------------------------------------------------


def is_image_space(space: gym.Space) -> bool:
    """SB3's is_image_space(check_channels=True): 3-d uint8 Box, bounds 0 and 255, 1/3/4 channels."""
    if not isinstance(space, spaces.Box) or len(space.shape) != 3 or space.dtype != np.uint8:
        return False
    if np.any(space.low != 0) or np.any(space.high != 255):
        return False
    channels = space.shape[0] if image_channels_first(space) else space.shape[-1]
    return channels in IMAGE_CHANNELS


def image_channels_first(space: spaces.Box) -> bool:
    """SB3's rule: channels-first when the smallest axis is the first one, else channels-last."""
    return int(np.argmin(space.shape)) == 0


def chw_shape(space: spaces.Box) -> tuple[int, int, int]:
    """(channels, height, width) of an image space, whichever layout it has."""
    shape = tuple(int(n) for n in space.shape)
    return shape if image_channels_first(space) else (shape[2], shape[0], shape[1])


_ADVICE = {
    spaces.Text: "encode the text as fixed-size numbers (e.g. token ids in a Box or MultiDiscrete)",
    spaces.Graph: "turn the graph into fixed-size arrays (e.g. padded node and edge features in a Dict of Boxes)",
    spaces.Sequence: "pad or truncate it to a fixed length (a Box, or a Tuple of its elements)",
    spaces.OneOf: "give every alternative its own slot (a Dict with a Discrete saying which one is set)",
}


def check_observation_space(space: gym.Space, where: str = "") -> None:
    """Raise a one-line EnvError (a ValueError; exit code 4) naming the first part of ``space`` rlkit cannot take, and what to do."""
    part = f"observation part {where!r}" if where else "the observation space"
    todo = "with a gymnasium.ObservationWrapper around the env"
    if isinstance(space, spaces.Box):
        if len(space.shape) > 3:
            raise _refused(f"rlkit cannot take {part} {space}: a Box with {len(space.shape)} dims is no image; "
                             f"reshape it to at most 3 dims (e.g. stack frames into the channel axis) {todo}")
        if not (np.issubdtype(space.dtype, np.number) or space.dtype == np.bool_):
            raise _refused(f"rlkit cannot take {part} {space}: dtype {space.dtype} is not numeric; cast it {todo}")
        return
    if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        return
    if isinstance(space, (spaces.Tuple, spaces.Dict)):
        children = _children(space)
        if not children:
            raise _refused(f"rlkit cannot take {part} {space}: it is empty; give it at least one part {todo}")
        for key, child in children:
            check_observation_space(child, f"{where}.{key}" if where else str(key))
        return
    advice = next((text for cls, text in _ADVICE.items() if isinstance(space, cls)), "express it as Box, Discrete, "
                  "MultiDiscrete, MultiBinary, Tuple or Dict")
    raise _refused(f"rlkit cannot take {part} {space}: {type(space).__name__} spaces are not supported; {advice} {todo}")


def _refused(message: str) -> Exception:
    from rlkit.errors import EnvError  # a leaf module: no agent code

    return EnvError(message)


def _children(space: spaces.Tuple | spaces.Dict) -> list[tuple[str, gym.Space]]:
    if isinstance(space, spaces.Dict):
        return [(str(k), s) for k, s in space.spaces.items()]
    return [(str(i), s) for i, s in enumerate(space.spaces)]


# ---------------------------------------------------------------------------------
# The packed vector and its layout
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One slice of a packed observation vector."""

    name: str
    """where it sits in the env's observation: "" for the whole, "0" (Tuple), "image" (Dict), "state.pos" (nested)"""
    kind: str
    """box (real values: the normaliser may touch them), onehot (Discrete, MultiDiscrete), binary (MultiBinary)
    or image (CHW pixels 0-255)"""
    start: int
    stop: int
    shape: tuple[int, ...]
    """(C, H, W) for an image, (stop - start,) otherwise"""


class ObservationLayout(spaces.Box):
    """A float32 vector Box that also says what each of its slices holds (:class:`Part`).

    It is the observation space of every flattened or packed observation, so the network
    (rlkit.networks) finds the images in it and the normaliser finds the real-valued entries.
    As a Box it batches, compares and samples like any other.
    """

    def __init__(self, parts: list[Part], low: np.ndarray, high: np.ndarray):
        super().__init__(low=low.astype(np.float32), high=high.astype(np.float32), dtype=np.float32)
        self.parts = tuple(parts)

    @property
    def images(self) -> tuple[Part, ...]:
        return tuple(p for p in self.parts if p.kind == "image")

    def __repr__(self) -> str:
        inside = ", ".join(f"{p.name or 'obs'}:{p.kind}{list(p.shape)}" for p in self.parts)
        return f"ObservationLayout({self.shape[0]}; {inside})"


def _leaves(space: gym.Space, path: tuple = ()) -> list[tuple[tuple, gym.Space]]:
    """(path into the observation, leaf space) in the order the packed vector holds them."""
    if isinstance(space, spaces.Dict):
        return [leaf for key, child in space.spaces.items() for leaf in _leaves(child, (*path, key))]
    if isinstance(space, spaces.Tuple):
        return [leaf for i, child in enumerate(space.spaces) for leaf in _leaves(child, (*path, i))]
    return [(path, space)]


def _leaf_part(space: gym.Space) -> tuple[str, tuple[int, ...], np.ndarray, np.ndarray]:
    """(kind, shape, low, high) of one leaf in the packed vector."""
    if isinstance(space, spaces.Discrete):
        n = int(space.n)
        return "onehot", (n,), np.zeros(n), np.ones(n)
    if isinstance(space, spaces.MultiDiscrete):
        n = int(np.sum(space.nvec))
        return "onehot", (n,), np.zeros(n), np.ones(n)
    if isinstance(space, spaces.MultiBinary):
        n = int(np.prod(space.n))
        return "binary", (n,), np.zeros(n), np.ones(n)
    if is_image_space(space):
        shape = chw_shape(space)
        n = int(np.prod(shape))
        return "image", shape, np.zeros(n), np.full(n, 255.0)
    n = int(np.prod(space.shape))
    return "box", (n,), np.asarray(space.low, dtype=np.float64).reshape(-1), np.asarray(space.high, dtype=np.float64).reshape(-1)


def _encoder(space: gym.Space):
    """fn(value, out) writing one leaf's adapted value into its slice ``out`` of the packed vector."""
    if isinstance(space, spaces.Discrete):
        start = int(space.start)

        def onehot(value, out):
            out[:] = 0.0
            out[int(value) - start] = 1.0
        return onehot
    if isinstance(space, spaces.MultiDiscrete):
        nvec, starts = space.nvec.reshape(-1), space.start.reshape(-1)
        offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]]).astype(np.intp)

        def onehots(value, out):
            out[:] = 0.0
            out[offsets + (np.asarray(value).reshape(-1) - starts).astype(np.intp)] = 1.0
        return onehots
    if is_image_space(space) and not image_channels_first(space):
        def transposed(value, out):
            out[:] = np.transpose(value, (2, 0, 1)).reshape(-1)
        return transposed

    def flat(value, out):  # Box, image already CHW, MultiBinary
        out[:] = np.asarray(value).reshape(-1)
    return flat


def _get(observation, path: tuple):
    for key in path:
        observation = observation[key]
    return observation


class FlattenObservation(gym.ObservationWrapper):
    """Any supported non-vector observation -> one float32 vector whose space is an :class:`ObservationLayout`."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        parts, lows, highs, self._writers = [], [], [], []
        offset = 0
        for path, leaf in _leaves(env.observation_space):
            kind, shape, low, high = _leaf_part(leaf)
            size = int(low.size)
            parts.append(Part(".".join(str(k) for k in path), kind, offset, offset + size, shape))
            lows.append(low)
            highs.append(high)
            self._writers.append((path, slice(offset, offset + size), _encoder(leaf)))
            offset += size
        self.observation_space = ObservationLayout(parts, np.concatenate(lows), np.concatenate(highs))

    def observation(self, observation) -> np.ndarray:
        out = np.empty(self.observation_space.shape, dtype=np.float32)
        for path, where, write in self._writers:
            write(_get(observation, path), out[where])
        return out


class ImageToChannelsFirst(gym.ObservationWrapper):
    """(H, W, C) uint8 images -> (C, H, W), SB3's VecTransposeImage; pixels stay 0-255 (the network scales them)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        self.observation_space = spaces.Box(0, 255, shape=chw_shape(space), dtype=np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.transpose(observation, (2, 0, 1))


def adapt_observations(env: gym.Env) -> gym.Env:
    """``env`` with the adapter its observation space needs (the table at the top of this module).

    Returns ``env`` itself where nothing is needed (1-d Box vectors, channels-first images);
    raises a one-line ValueError for spaces rlkit cannot take.
    """
    space = env.observation_space
    check_observation_space(space)
    if is_image_space(space):
        return env if image_channels_first(space) else ImageToChannelsFirst(env)
    if isinstance(space, spaces.Box) and len(space.shape) == 1:
        return env
    return FlattenObservation(env)


def adapted_space(space: gym.Space) -> gym.Space:
    """The observation space :func:`adapt_observations` turns ``space`` into (no env needed)."""

    class _Stub(gym.Env):
        observation_space = space
        action_space = spaces.Discrete(1)

    return adapt_observations(_Stub()).observation_space


def real_valued_entries(space: gym.Space) -> np.ndarray | None:
    """The entries of an adapted observation that observation normalisation may touch.

    None: all of them (a plain vector Box, or a packed vector of Box parts only).  An index
    array: only these (the Box slices of a packed vector that also holds one-hot, 0/1 or pixel
    parts).  An empty array: none (an image, or only one-hot / 0/1 / pixel parts).
    """
    if is_image_space(space):
        return np.zeros(0, dtype=np.intp)
    if not isinstance(space, ObservationLayout):
        return None
    boxes = [np.arange(p.start, p.stop) for p in space.parts if p.kind == "box"]
    if all(p.kind == "box" for p in space.parts):
        return None
    return np.concatenate(boxes).astype(np.intp) if boxes else np.zeros(0, dtype=np.intp)
