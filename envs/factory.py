"""Vector-env factories: classic control, MuJoCo and the probes, with the
continuous-control wrapper stack of the PPO paper's code.

Each sub-env first gets the observation adapter its space needs
(rlkit.envs.observations: one-hot Discrete, flattened Tuple/Dict, channels-first
images; nothing for 1-d Box vectors), so every observation, ``final_obs``
included, reaches the wrappers below adapted.  Then, innermost first (CleanRL's
order, applied once to the vector env): RecordEpisodeStatistics (raw returns,
for logging) -> ClipAction (the agent stores the unclipped action) ->
NormalizeObservation + clip (real-valued entries only: never one-hot entries or
pixels) -> NormalizeReward + clip.  Sub-envs auto-reset in the SAME step that ends an episode; the last
observation is in ``info["final_obs"]`` for truncation bootstrapping, so no step
is ever trained on whose observation came from a reset rather than the action.
"""

from __future__ import annotations

import weakref
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from .observations import adapt_observations, real_valued_entries
from .probes import register_probes
from .wrappers import NormalizeObservation, NormalizeReward

VECTORIZATION_MODES = ("sync", "async")


def make_vector_env(
    env_id: str,
    num_envs: int,
    *,
    gamma: float = 0.99,
    clip_actions: bool = True,
    normalize_obs: bool = False,
    obs_clip: float = 10.0,
    normalize_reward: bool = False,
    reward_clip: float = 10.0,
    vectorization: str = "sync",
    env_kwargs: dict[str, Any] | None = None,
    sub_env_wrappers: list | None = None,
    groups: int | None = None,
) -> gym.vector.VectorEnv:
    """Build ``num_envs`` copies of ``env_id`` as one same-step-autoreset vector env [core 1].

    Box actions are clipped to their bounds here, in the env; the agent stores the unclipped
    sample [cont 5].

    Observations are adapted per sub-env (rlkit.envs.observations.adapt_observations, after
    ``sub_env_wrappers``); spaces rlkit cannot take are refused here, in one line.
    ``normalize_obs`` normalises the real-valued entries only: the whole vector for Box
    observations; only the Box slices of a flattened Tuple/Dict that also holds one-hot, 0/1 or
    pixel parts; nothing at all (no normaliser in the stack) when the observation is an image or
    only one-hot / 0/1 parts, whose scale is already fixed.

    Seeding is done by the caller through ``envs.reset(seed=...)`` (sub-env i gets
    seed + i) and ``envs.action_space.seed``.

    ``groups``: the ``num_envs`` envs are that many independent runs' envs, side by side
    (batched seeds): each run's normalisers keep statistics of their own, and :class:`EnvGroup`
    is one run's part, for its checkpoints.  One vector env instead of one stack per run: the
    wrappers' Python cost is paid once per step, not once per run (benchmarks/env_stack_groups.py).
    """
    register_probes()
    if vectorization not in VECTORIZATION_MODES:
        raise ValueError(f"vectorization must be one of {VECTORIZATION_MODES}, got {vectorization!r}")
    if env_id not in gym.registry:
        import difflib

        close = difflib.get_close_matches(env_id, list(gym.registry), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        mujoco = ("Ant", "HalfCheetah", "Hopper", "Humanoid", "HumanoidStandup", "InvertedPendulum",
                  "InvertedDoublePendulum", "Pusher", "Reacher", "Swimmer", "Walker2d")
        extra = " MuJoCo ids need `pip install rlkit[mujoco]`." if env_id.split("-v")[0] in mujoco else ""
        raise ValueError(f"unknown environment id {env_id!r}.{hint}{extra}")
    vector_kwargs: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP}
    if vectorization == "async":  # Ctrl-C is the parent's: it finishes the update and checkpoints
        vector_kwargs["worker"] = async_worker_ignoring_sigint
    envs = gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode=vectorization,
        vector_kwargs=vector_kwargs,
        wrappers=[*(sub_env_wrappers or []), adapt_observations, flat_discrete_actions, zero_based_actions],
        **(env_kwargs or {}),
    )
    if vectorization == "sync" and SameStepSyncVectorEnv.takes(envs):
        envs.__class__ = SameStepSyncVectorEnv  # gym.make_vec builds the SyncVectorEnv itself; only step differs
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    if isinstance(envs.single_action_space, gym.spaces.Box) and clip_actions:
        envs = clip_actions_to_bounds(envs)
    if normalize_obs:
        entries = real_valued_entries(envs.single_observation_space)
        if entries is None:
            envs = NormalizeObservation(envs, clip=obs_clip, groups=groups)
        elif entries.size:
            envs = NormalizeObservation(envs, clip=obs_clip, indices=entries, groups=groups)
    if normalize_reward:
        envs = NormalizeReward(envs, gamma=gamma, clip=reward_clip, groups=groups)
    return envs


class SameStepSyncVectorEnv(gym.vector.SyncVectorEnv):
    """gymnasium's SyncVectorEnv with a shorter same-step-autoreset ``step`` for array observations and actions.

    Why: at one env gymnasium's step spends ~10 µs a call on machinery these spaces do not need
    (iterating the batched action space, concatenating through the observation space, deep-copying
    the output, calling ``_add_info`` on empty infos); this step returns the same arrays and infos
    (tests/test_envs.py, against gymnasium's over thousands of steps), and its own cost above the
    sub-envs' steps is ~2-6 µs instead of ~10-15 µs at one env (benchmarks/sync_vector_step.py).
    Everything else is gymnasium's."""

    @staticmethod
    def takes(envs: gym.vector.SyncVectorEnv) -> bool:
        array = (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)
        return (type(envs) is gym.vector.SyncVectorEnv and envs.autoreset_mode == AutoresetMode.SAME_STEP
                and isinstance(envs.single_observation_space, gym.spaces.Box)
                and isinstance(envs.single_action_space, array) and envs.copy)

    def step(self, actions):
        infos: dict[str, Any] = {}
        for i, env in enumerate(self.envs):
            obs, self._rewards[i], terminated, truncated, env_info = env.step(actions[i])
            self._terminations[i], self._truncations[i] = terminated, truncated
            if terminated or truncated:
                infos = self._add_info(infos, {"final_obs": obs, "final_info": env_info}, i)
                obs, env_info = env.reset()
            try:
                self._observations[i] = obs
            except ValueError:
                raise _wrong_observation(self, i, obs) from None
            self._env_obs[i] = obs
            if env_info:
                infos = self._add_info(infos, env_info, i)
        self._autoreset_envs = np.logical_or(self._terminations, self._truncations)
        return self._observations.copy(), self._rewards.copy(), self._terminations.copy(), self._truncations.copy(), infos


def _wrong_observation(envs: gym.vector.SyncVectorEnv, index: int, obs) -> Exception:
    from rlkit.errors import EnvError  # a leaf module: no agent code

    return EnvError(f"sub-env {index} returned an observation of shape {np.shape(obs)} and dtype "
                    f"{np.asarray(obs).dtype}, but its observation_space is {envs.single_observation_space}")


class EnvGroup:
    """Run ``index``'s envs within a vector env made with ``groups`` (batched seeds): what a one-run
    checkpoint saves and restores of them (:func:`normalizer_state`, :func:`env_state` and their
    loaders take it), in the form a vector env of those envs alone gives, so the checkpoint resumes
    alone too.  It does not step: the whole vector env does.  A wrapper's counter over all envs
    (RecordEpisodeStatistics.episode_count, which rlkit does not read) stays the whole env's."""

    def __init__(self, envs: gym.vector.VectorEnv, index: int, groups: int):
        self.envs, self.index, self.groups = envs, index, groups
        self.num_envs = envs.num_envs // groups
        self.rows = slice(index * self.num_envs, (index + 1) * self.num_envs)
        self.single_observation_space, self.single_action_space = envs.single_observation_space, envs.single_action_space

    OWN = {"num_envs": lambda group: group.num_envs, "groups": lambda group: None}
    # The vector wrappers' per-env arrays (gymnasium's SyncVectorEnv and RecordEpisodeStatistics, rlkit's
    # NormalizeReward), named rather than guessed from their length: NormalizeObservation.indices may be as long.
    PER_ENV = frozenset({"_observations", "_rewards", "_terminations", "_truncations", "_autoreset_envs",
                         "episode_returns", "episode_lengths", "episode_start_times", "prev_dones", "discounted_return"})

    def sub_envs(self) -> list:
        return self.envs.unwrapped.envs[self.rows]

    def sliced(self, key: str, value):
        """A vector wrapper's attribute as the run's stack alone has it: a per-env array (leading dimension
        num_envs) -> this run's rows; the number of envs and of groups -> those of the run alone."""
        if key in self.OWN:
            return self.OWN[key](self)
        return value[self.rows] if self._per_env(key, value) else value

    def placed(self, key: str, current, value):
        """:meth:`sliced` undone: this run's rows ``value`` written into a copy of the per-env array ``current``."""
        if key in self.OWN:
            return current
        if self._per_env(key, current) and isinstance(value, np.ndarray) and value.shape == current[self.rows].shape:
            current = current.copy()
            current[self.rows] = value
            return current
        return value

    def _per_env(self, key: str, value) -> bool:
        return key in self.PER_ENV and isinstance(value, np.ndarray) and value.ndim > 0 and len(value) == self.envs.num_envs

    def state_fields(self) -> dict[tuple, set[str]]:
        """:func:`state_fields` of the whole vector env, worked out once for all its groups (it steps a copy of it)."""
        if self.envs not in _GROUP_STATE_FIELDS:
            _GROUP_STATE_FIELDS[self.envs] = state_fields(self.envs)
        return _GROUP_STATE_FIELDS[self.envs]


_GROUP_STATE_FIELDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _stack_and_group(envs) -> tuple[gym.vector.VectorEnv, int | None]:
    return (envs.envs, envs.index) if isinstance(envs, EnvGroup) else (envs, None)


def async_worker_ignoring_sigint(index, env_fn, pipe, parent_pipe, shared_memory, error_queue, autoreset_mode,
                                 semaphore=None) -> None:
    """gymnasium's AsyncVectorEnv worker, with SIGINT ignored in the worker process.

    A Ctrl-C in a terminal reaches the whole process group; without this every worker dies with a
    KeyboardInterrupt traceback and the parent, which handles SIGINT by finishing the update and
    writing a checkpoint, finds its envs gone.  The parent still stops the workers (close())."""
    import signal

    from gymnasium.vector.async_vector_env import _async_worker

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _async_worker(index, env_fn, pipe, parent_pipe, shared_memory, error_queue, autoreset_mode, semaphore)


class ZeroBasedActions(gym.ActionWrapper):
    """A Discrete / MultiDiscrete action space with ``start`` != 0 as the same space from 0: the agent's
    categorical samples 0..n-1 are sent to the env as ``start + a``.  ``start`` is what rlkit.api's
    ``predict`` adds back (the agent folder records it)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.action_space
        self.start = np.asarray(space.start)
        self.action_space = (gym.spaces.Discrete(int(space.n)) if isinstance(space, gym.spaces.Discrete)
                             else gym.spaces.MultiDiscrete(space.nvec, dtype=space.dtype))

    def action(self, action):
        return action + self.start


def zero_based_actions(env: gym.Env) -> gym.Env:
    """``env`` with :class:`ZeroBasedActions` when its Discrete / MultiDiscrete actions do not start at 0."""
    space = env.action_space
    if isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)) and np.any(np.asarray(space.start) != 0):
        return ZeroBasedActions(env)
    return env


class FlatDiscreteActions(gym.ActionWrapper):
    """MultiBinary actions (of any shape) and MultiDiscrete actions of more than one dimension as the 1-d
    MultiDiscrete the agent samples: MultiBinary(shape) is MultiDiscrete([2] * size) (a categorical over {0, 1}
    per entry is a Bernoulli: the softmax of two logits is the sigmoid of their difference, as SB3's MultiBinary
    policy), a [k, m] MultiDiscrete its k * m entries in row-major order.  The env gets its own shape and dtype
    back; rlkit.api's ``predict`` does the same (the agent folder records ``env_shape``)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.action_space
        self.binary = isinstance(space, gym.spaces.MultiBinary)
        self.env_shape, self.env_dtype = tuple(space.shape), space.dtype
        if self.binary:
            self.action_space = gym.spaces.MultiDiscrete(np.full(int(np.prod(space.shape)), 2), dtype=np.int64)
        else:
            self.action_space = gym.spaces.MultiDiscrete(space.nvec.reshape(-1), dtype=space.dtype,
                                                         start=np.asarray(space.start).reshape(-1))

    def action(self, action):
        return np.asarray(action).reshape(self.env_shape).astype(self.env_dtype, copy=False)


def flat_discrete_actions(env: gym.Env) -> gym.Env:
    """``env`` with :class:`FlatDiscreteActions` when its actions are MultiBinary or a MultiDiscrete of ndim > 1."""
    space = env.action_space
    if isinstance(space, gym.spaces.MultiBinary) or (isinstance(space, gym.spaces.MultiDiscrete) and space.nvec.ndim > 1):
        return FlatDiscreteActions(env)
    return env


def env_action_shape(envs: gym.vector.VectorEnv) -> tuple[str, list[int]] | None:
    """("MultiBinary" or "MultiDiscrete", the env's own action shape) where :class:`FlatDiscreteActions` flattens
    it (None: the agent's actions are the env's, or not knowable from this process: async sub-envs)."""
    subs = getattr(envs.unwrapped, "envs", None)
    env = subs[0] if subs else None
    while isinstance(env, gym.Wrapper):
        if isinstance(env, FlatDiscreteActions):
            return ("MultiBinary" if env.binary else "MultiDiscrete"), list(env.env_shape)
        env = env.env
    return None


def action_start(envs: gym.vector.VectorEnv) -> list[int] | int | None:
    """The ``start`` of the env's own Discrete / MultiDiscrete actions where it is not 0 (None: 0, or not knowable
    from this process: async sub-envs)."""
    subs = getattr(envs.unwrapped, "envs", None)
    env = subs[0] if subs else None
    while isinstance(env, gym.Wrapper):
        if isinstance(env, ZeroBasedActions):
            return env.start.tolist()
        env = env.env
    return None


def clip_actions_to_bounds(envs: gym.vector.VectorEnv) -> gym.vector.VectorEnv:
    """Clip each batch of Box actions to the bounds; the agent may then sample anywhere (the action
    space becomes +-inf, as with gymnasium's ClipAction).  One clip over the batch: gymnasium's
    vector ClipAction clips env by env and stacks the results again, ~10 µs more per step; and
    np.minimum(np.maximum()) is np.clip's definition without its ~1.5 µs of Python dispatch."""
    single = envs.single_action_space
    low, high = single.low, single.high
    unbounded = gym.spaces.Box(-np.inf, np.inf, shape=single.shape, dtype=single.dtype)
    return gym.wrappers.vector.TransformAction(
        envs, lambda actions: np.minimum(np.maximum(actions, low), high),
        action_space=gym.vector.utils.batch_space(unbounded, envs.num_envs), single_action_space=unbounded,
    )


def _wrappers(envs: gym.vector.VectorEnv):
    while True:
        yield envs
        if not hasattr(envs, "env"):
            return
        envs = envs.env


def normalizer_state(envs: gym.vector.VectorEnv | EnvGroup) -> dict[str, np.ndarray]:
    """Statistics of every normaliser in the stack (or of one :class:`EnvGroup`), keyed "obs.mean", "reward.var", ..."""
    envs, group = _stack_and_group(envs)
    state: dict[str, np.ndarray] = {}
    for wrapper in _wrappers(envs):
        if isinstance(wrapper, NormalizeObservation):
            state.update({f"obs.{k}": v for k, v in wrapper.state_dict(group).items()})
        elif isinstance(wrapper, NormalizeReward):
            state.update({f"reward.{k}": v for k, v in wrapper.state_dict(group).items()})
    return state


def load_normalizer_state(envs: gym.vector.VectorEnv | EnvGroup, state: dict[str, np.ndarray]) -> None:
    """Restore what :func:`normalizer_state` returned; a missing normaliser is an error."""
    envs, group = _stack_and_group(envs)
    for wrapper in _wrappers(envs):
        for kind, cls in (("obs", NormalizeObservation), ("reward", NormalizeReward)):
            if isinstance(wrapper, cls):
                sub = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(kind + ".")}
                if not sub:
                    raise ValueError(f"the checkpoint has no {kind} normaliser statistics, but this env normalises {kind}")
                wrapper.load_state_dict(sub, group)


def normalizes_observations(envs: gym.vector.VectorEnv) -> bool:
    """Whether the stack holds an observation normaliser (make_vector_env leaves it out for
    images and one-hot-only observations even when ``normalize_obs`` is set)."""
    return any(isinstance(wrapper, NormalizeObservation) for wrapper in _wrappers(envs))


def set_normalizer_updates(envs: gym.vector.VectorEnv, update: bool) -> None:
    """Freeze (False) or unfreeze (True) every normaliser's statistics, e.g. for evaluation."""
    for wrapper in _wrappers(envs):
        if isinstance(wrapper, (NormalizeObservation, NormalizeReward)):
            wrapper.update_stats = update


# ---------------------------------------------------------------------------------
# Exact environment state, for bit-for-bit resume
# ---------------------------------------------------------------------------------

_NUMBERS = (bool, int, float, str, type(None), np.ndarray, np.generic)
_HARMLESS = (gym.Space, np.random.Generator, gym.envs.registration.EnvSpec, dict)


def _is_simple(value) -> bool:
    if isinstance(value, (tuple, list)):
        return all(isinstance(v, (bool, int, float, np.generic)) for v in value)
    if isinstance(value, np.ndarray):  # numbers, or text such as FrozenLake's map (no objects)
        return value.dtype.kind in "biufcSU"
    return isinstance(value, _NUMBERS)


def _simple_attributes(obj, rows=lambda key, value: value) -> dict[str, Any]:
    """``obj``'s plain attributes, JSON-ready; ``rows(key, value)``: what to keep of each (EnvGroup.sliced)."""
    out = {}
    for key, value in vars(obj).items():
        value = rows(key, value)
        if isinstance(value, np.ndarray) and value.dtype.kind in "SU":  # JSON holds str, not bytes
            out[key] = {"text_array": value.astype(str).tolist(), "dtype": str(value.dtype)}
        elif _is_simple(value):
            out[key] = {"tuple": list(value)} if isinstance(value, tuple) else value
    return out


def _restore_attributes(obj, attributes: dict[str, Any], allowed: set[str] | None = None) -> list[str]:
    """Set the saved ``attributes`` named in ``allowed`` (all when None) after a type check against
    the current values; returns the "Class.name" of each saved field that was not allowed."""
    if not isinstance(attributes, dict):
        raise _state_error(f"the saved attributes of {type(obj).__name__} are not a mapping")
    ignored = []
    for key, value in attributes.items():
        if allowed is not None and key not in allowed:
            current = getattr(obj, key, None)
            # a setting that differs from this env's own (arrays: scratch buffers, rewritten every step)
            if not isinstance(current, np.ndarray) and _frozen(_decoded(value, obj, key)) != _frozen(current):
                ignored.append(f"{type(obj).__name__}.{key}")
            continue
        value = _decoded(value, obj, key)
        if hasattr(obj, key):
            _check_type(obj, key, getattr(obj, key), value)
        setattr(obj, key, value)
    return ignored


def _decoded(value, obj, key: str):
    if isinstance(value, dict) and set(value) == {"tuple"}:
        return tuple(value["tuple"])
    if isinstance(value, dict) and set(value) == {"text_array", "dtype"}:
        return np.array(value["text_array"], dtype=value["dtype"])
    if isinstance(value, np.ndarray) and isinstance(getattr(obj, key, None), np.generic):
        return value.dtype.type(value)  # a numpy scalar came back as a 0-d array
    return value


def _check_type(obj, key: str, current, value) -> None:
    """A restored value must be of the current value's kind (None stands in for any; a 0-d array for a number)."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and not isinstance(current, np.ndarray):
        value = value[()]  # a numpy scalar saved as a 0-d array, beside a Python number now
    if current is None or value is None:
        if value is None or _is_simple(value):
            return
    elif isinstance(current, np.ndarray):
        if isinstance(value, np.ndarray) and value.shape == current.shape and value.dtype.kind == current.dtype.kind:
            return
    elif isinstance(current, bool) or isinstance(current, np.bool_):
        if isinstance(value, (bool, np.bool_)):
            return
    elif isinstance(current, (int, np.integer)):
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return
    elif isinstance(current, (float, np.floating)):
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            return
    elif isinstance(current, (tuple, list)):
        if isinstance(value, (tuple, list)) and len(value) == len(current):
            return
    elif type(value) is type(current):
        return
    shape = f" shape {value.shape}" if isinstance(value, np.ndarray) else ""
    raise _state_error(f"{type(obj).__name__}.{key} must be like {type(current).__name__}, got "
                       f"{type(value).__name__}{shape}")


def _sub_env_chain(env: gym.Env) -> list:
    chain = [env]
    while hasattr(chain[-1], "env"):
        chain.append(chain[-1].env)
    return chain


def supports_exact_state(envs: gym.vector.VectorEnv | EnvGroup) -> bool:
    """True when every piece of env state is plain data (classic control, the probes):
    then :func:`env_state` captures it completely.  Simulators holding state in native
    objects (MuJoCo's MjData) or sub-processes (async vector envs) return False."""
    base = _stack_and_group(envs)[0].unwrapped
    if not isinstance(base, gym.vector.SyncVectorEnv):
        return False
    for env in base.envs:
        chain = _sub_env_chain(env)
        for link in chain:  # the wrappers too: a frame stack's deque, a wrapper's own generator, a lock
            if isinstance(link, gym.wrappers.PassiveEnvChecker):
                continue  # its flags and the last outputs it compared: checks, not the env's state
            for key, value in vars(link).items():
                if link is chain[-1] and isinstance(value, np.random.Generator):
                    continue  # the env's own generators: env_state saves them
                if not (_is_simple(value) or isinstance(value, _HARMLESS_IN_CHAIN) or link is not chain[-1] and _is_code(value)):
                    return False
    return not _dicts_change(base)


_HARMLESS_IN_CHAIN = (gym.Env, gym.Space, gym.envs.registration.EnvSpec, dict)
"""what a sub-env's wrappers and env may hold besides plain data: the next link, spaces (checked for a
generator the env draws from), its spec, dicts (both checked by :func:`_dicts_change`); wrappers may hold
functions too, and gymnasium's PassiveEnvChecker its check flags"""


def _is_code(value) -> bool:
    """A wrapper's functions (a transform, rlkit's observation writers): how it works, not state it keeps."""
    if isinstance(value, (list, tuple)):
        return all(_is_simple(v) or isinstance(v, (gym.Space, slice)) or _is_code(v) for v in value)
    return callable(value) and not isinstance(value, np.random.Generator)


def _space_generators(space: gym.Space) -> list:
    """The generator states of ``space`` and its parts (None where a part has none yet)."""
    generator = getattr(space, "_np_random", None)
    states = [None if generator is None else generator.bit_generator.state]
    parts = space.spaces.values() if isinstance(getattr(space, "spaces", None), dict) else getattr(space, "spaces", ())
    for part in parts:
        if isinstance(part, gym.Space):
            states += _space_generators(part)
    return states


_DICTS_CHANGE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _dicts_change(base: gym.vector.SyncVectorEnv, steps: int = 64) -> bool:
    """Whether a sub-env keeps state that :func:`env_state` does not save: a dict attribute that changes over a
    seeded reset and ``steps`` random steps of a copy (FrozenLake's transition table does not; a dict of positions
    does), or the generator of a space it holds (an env drawing observations from ``observation_space.sample()``).
    Once per vector env."""
    import copy

    if base in _DICTS_CHANGE:
        return _DICTS_CHANGE[base]

    def dicts(env):
        return {key: value for key, value in vars(env.unwrapped).items() if isinstance(value, dict)}

    def space_generators(env):  # of every space a link of the sub-env holds: an env that samples its own space
        held = {(k, key): _space_generators(value) for k, link in enumerate(_sub_env_chain(env))
                for key, value in vars(link).items() if isinstance(value, gym.Space)}
        for key in ("observation_space", "action_space"):  # class attributes too (not in vars)
            held[("env", key)] = _space_generators(getattr(env.unwrapped, key))
        return held

    changed, before = False, None
    try:
        probe = copy.deepcopy(base.envs[0])
    except Exception:  # noqa: BLE001  (a lock, a socket, a simulator handle in there: not plain data)
        _DICTS_CHANGE[base] = True
        return True

    def observe() -> bool:
        nonlocal changed, before
        now = (dicts(probe), space_generators(probe))
        if before is None:
            before = copy.deepcopy(now)
        changed = now[0].keys() != before[0].keys() or any(not _equal(before[0][k], now[0][k]) for k in now[0]) \
            or now[1] != before[1]
        return changed

    _random_steps(probe, steps, observe)
    _DICTS_CHANGE[base] = changed
    return changed


def _random_steps(probe, steps: int, observe, until_an_episode_ends: int = 0) -> None:
    """A seeded reset and ``steps`` random steps of ``probe`` (a copy: an env or a vector env), ``observe()`` after
    each until it returns True; with ``until_an_episode_ends``, on past ``steps`` until an episode has ended (so
    the episode counters change too), at most that many steps.  An env that refuses random actions ends it early.
    The probe is closed."""
    import copy

    try:
        actions = copy.deepcopy(probe.action_space)  # its own generator: the env's spaces' stay as the env leaves them
        actions.seed(12345)
        probe.reset(seed=12345)
        if observe():
            return
        ended, step = False, 0
        while step < steps or (not ended and step < until_an_episode_ends):
            step += 1
            _, _, terminated, truncated, _ = probe.step(actions.sample())
            ended = ended or bool(np.any(terminated) or np.any(truncated))
            if observe():
                return
            if not isinstance(probe, gym.vector.VectorEnv) and (terminated or truncated):
                probe.reset()
    except Exception:  # noqa: BLE001  (what was seen so far)
        pass
    finally:
        try:
            probe.close()
        except Exception:  # noqa: BLE001
            pass


def _equal(a, b) -> bool:
    """Deep equality of attribute values (dicts, lists, tuples, arrays, numbers)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.shape(a) == np.shape(b) and bool(np.array_equal(a, b, equal_nan=np.asarray(a).dtype.kind in "fc"))
    try:
        return bool(a == b) or (a != a and b != b)  # NaN equals NaN here: unchanged
    except Exception:  # noqa: BLE001
        return a is b


def env_state(envs: gym.vector.VectorEnv | EnvGroup) -> dict[str, Any]:
    """Everything needed to continue a SyncVectorEnv exactly: each sub-env's plain
    attributes and RNG, every wrapper's counters, the normalisers' statistics.
    Of an :class:`EnvGroup`: its envs' rows of the wrappers' per-env arrays and its sub-envs."""
    if not supports_exact_state(envs):
        raise ValueError("this environment's state is not plain data; it cannot be saved exactly")
    group = envs if isinstance(envs, EnvGroup) else None
    stack = _stack_and_group(envs)[0]
    rows = group.sliced if group is not None else (lambda key, value: value)
    state = {"vector_wrappers": [_simple_attributes(w, rows) for w in _wrappers(stack)], "sub_envs": []}
    for env in (group.sub_envs() if group is not None else stack.unwrapped.envs):
        chain = _sub_env_chain(env)
        state["sub_envs"].append({
            "chain": [_simple_attributes(link) for link in chain],
            "np_random": env.unwrapped.np_random.bit_generator.state,
            # the env's own generators (self.rng = np.random.default_rng(...)), by attribute name
            "generators": {key: value.bit_generator.state for key, value in vars(env.unwrapped).items()
                           if isinstance(value, np.random.Generator) and key != "_np_random"},
        })
    state["normalizers"] = normalizer_state(envs)
    return state


def load_env_state(envs: gym.vector.VectorEnv | EnvGroup, state: dict[str, Any]) -> list[str]:
    """Restore what :func:`env_state` captured into freshly made, identical envs.

    Only through an allow-list: the fields a copy of these envs changes when it is reset and
    stepped (positions, counters, flags: the env's state), each with the type the fresh env
    has.  A saved field outside it (gravity, a time limit: a constant of the env's
    construction) is not set; their names are returned.  A wrong type or shape is an error.
    Into an :class:`EnvGroup`: its rows of the wrappers' per-env arrays and its sub-envs."""
    group = envs if isinstance(envs, EnvGroup) else None
    stack = _stack_and_group(envs)[0]
    vector_wrappers = list(_wrappers(stack))
    sub_envs = group.sub_envs() if group is not None else stack.unwrapped.envs
    if not isinstance(state, dict) or not all(isinstance(state.get(k), list) for k in ("vector_wrappers", "sub_envs")):
        raise _state_error("the saved environment state is not the structure rlkit writes")
    if len(vector_wrappers) != len(state["vector_wrappers"]) or len(sub_envs) != len(state["sub_envs"]):
        raise _state_error("the saved environment state is from a different env stack or number of envs")
    allowed = group.state_fields() if group is not None else state_fields(stack)
    first = group.rows.start if group is not None else 0  # sub-env j of the state is sub-env first + j of the stack
    ignored: list[str] = []
    for i, (wrapper, attributes) in enumerate(zip(vector_wrappers, state["vector_wrappers"])):
        if group is not None and isinstance(attributes, dict):
            attributes = {key: group.placed(key, getattr(wrapper, key, None), _decoded(value, wrapper, key))
                          for key, value in attributes.items()}
        ignored += _restore_attributes(wrapper, attributes, allowed[("vector", i)])
    for j, (env, saved) in enumerate(zip(sub_envs, state["sub_envs"])):
        if not isinstance(saved, dict) or not isinstance(saved.get("chain"), list) or not isinstance(saved.get("np_random"), dict):
            raise _state_error(f"the saved state of sub-env {j} is not the structure rlkit writes")
        for k, (link, attributes) in enumerate(zip(_sub_env_chain(env), saved["chain"])):
            ignored += _restore_attributes(link, attributes, allowed[("sub", first + j, k)])
        generator = env.unwrapped.np_random.bit_generator
        if saved["np_random"].get("bit_generator") != generator.state.get("bit_generator"):
            raise _state_error(f"sub-env {j}'s saved random generator is not a {generator.state.get('bit_generator')}")
        try:
            generator.state = saved["np_random"]
        except (TypeError, ValueError, KeyError) as error:
            raise _state_error(f"sub-env {j}'s saved random generator state is invalid ({error})") from None
        for key, generator_state in (saved.get("generators") or {}).items():
            own = getattr(env.unwrapped, key, None)
            kind = generator_state.get("bit_generator") if isinstance(generator_state, dict) else None
            if own is None and kind in ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"):  # made at reset, not yet
                own = np.random.Generator(getattr(np.random, kind)())
                setattr(env.unwrapped, key, own)
            if not isinstance(own, np.random.Generator) or not isinstance(generator_state, dict) or \
                    generator_state.get("bit_generator") != own.bit_generator.state.get("bit_generator"):
                raise _state_error(f"sub-env {j}'s saved generator {key!r} does not match this env's")
            try:
                own.bit_generator.state = generator_state
            except (TypeError, ValueError, KeyError) as error:
                raise _state_error(f"sub-env {j}'s saved generator {key!r} is invalid ({error})") from None
    load_normalizer_state(envs, state["normalizers"])
    return sorted(set(ignored))


def _state_error(message: str) -> Exception:
    from rlkit.errors import CheckpointError  # a leaf module: no agent code

    return CheckpointError(f"checkpoint env_state: {message}")


def state_fields(envs: gym.vector.VectorEnv, steps: int = 64) -> dict[tuple, set[str]]:
    """The allow-list of :func:`load_env_state`: per object of the stack (("vector", i): the i-th
    vector wrapper; ("sub", j, k): link k of sub-env j), the plain attributes that a copy of the
    envs changes over a seeded reset and ``steps`` random steps, plus those it adds."""
    import copy

    probe = copy.deepcopy(envs)

    def objects(vector):
        out = {("vector", i): w for i, w in enumerate(_wrappers(vector))}
        for j, env in enumerate(vector.unwrapped.envs):
            out.update({("sub", j, k): link for k, link in enumerate(_sub_env_chain(env))})
        return out

    def snapshot():
        return {key: {name: _frozen(value) for name, value in _simple_attributes(obj).items()}
                for key, obj in objects(probe).items()}

    before = snapshot()
    changed: dict[tuple, set[str]] = {key: set() for key in before}

    def compare() -> bool:
        for key, now in snapshot().items():
            was = before.get(key, {})
            changed.setdefault(key, set()).update(name for name, value in now.items() if name not in was or was[name] != value)
        return False

    _random_steps(probe, steps, compare, until_an_episode_ends=2000)
    for key in [k for k in changed if k[0] == "sub"]:  # every copy of the env has the same fields
        changed[key] = set().union(*(v for k, v in changed.items() if k[0] == "sub" and k[2] == key[2]))
    return changed


def _frozen(value) -> Any:
    """A comparable copy of a simple attribute value."""
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, dict):
        return repr(value)
    if isinstance(value, list):
        return tuple(value)
    return value
