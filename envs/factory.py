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
    """
    register_probes()
    if vectorization not in VECTORIZATION_MODES:
        raise ValueError(f"vectorization must be one of {VECTORIZATION_MODES}, got {vectorization!r}")
    if env_id not in gym.registry:
        import difflib

        close = difflib.get_close_matches(env_id, list(gym.registry), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        extra = " MuJoCo ids need `pip install rlkit[mujoco]`." if "-v" in env_id else ""
        raise ValueError(f"unknown environment id {env_id!r}.{hint}{extra}")
    envs = gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode=vectorization,
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        wrappers=[*(sub_env_wrappers or []), adapt_observations],
        **(env_kwargs or {}),
    )
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    if isinstance(envs.single_action_space, gym.spaces.Box) and clip_actions:
        envs = clip_actions_to_bounds(envs)
    if normalize_obs:
        entries = real_valued_entries(envs.single_observation_space)
        if entries is None:
            envs = NormalizeObservation(envs, clip=obs_clip)
        elif entries.size:
            envs = NormalizeObservation(envs, clip=obs_clip, indices=entries)
    if normalize_reward:
        envs = NormalizeReward(envs, gamma=gamma, clip=reward_clip)
    return envs


def clip_actions_to_bounds(envs: gym.vector.VectorEnv) -> gym.vector.VectorEnv:
    """Clip each batch of Box actions to the bounds; the agent may then sample anywhere (the action
    space becomes +-inf, as with gymnasium's ClipAction).  One np.clip over the batch: gymnasium's
    vector ClipAction clips env by env and stacks the results again, ~10 µs more per step."""
    single = envs.single_action_space
    low, high = single.low, single.high
    unbounded = gym.spaces.Box(-np.inf, np.inf, shape=single.shape, dtype=single.dtype)
    return gym.wrappers.vector.TransformAction(
        envs, lambda actions: np.clip(actions, low, high),
        action_space=gym.vector.utils.batch_space(unbounded, envs.num_envs), single_action_space=unbounded,
    )


def _wrappers(envs: gym.vector.VectorEnv):
    while True:
        yield envs
        if not hasattr(envs, "env"):
            return
        envs = envs.env


def normalizer_state(envs: gym.vector.VectorEnv) -> dict[str, np.ndarray]:
    """Statistics of every normaliser in the stack, keyed "obs.mean", "reward.var", ..."""
    state: dict[str, np.ndarray] = {}
    for wrapper in _wrappers(envs):
        if isinstance(wrapper, NormalizeObservation):
            state.update({f"obs.{k}": v for k, v in wrapper.state_dict().items()})
        elif isinstance(wrapper, NormalizeReward):
            state.update({f"reward.{k}": v for k, v in wrapper.state_dict().items()})
    return state


def load_normalizer_state(envs: gym.vector.VectorEnv, state: dict[str, np.ndarray]) -> None:
    """Restore what :func:`normalizer_state` returned; a missing normaliser is an error."""
    for wrapper in _wrappers(envs):
        for kind, cls in (("obs", NormalizeObservation), ("reward", NormalizeReward)):
            if isinstance(wrapper, cls):
                sub = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(kind + ".")}
                if not sub:
                    raise ValueError(f"the checkpoint has no {kind} normaliser statistics, but this env normalises {kind}")
                wrapper.load_state_dict(sub)


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


def _simple_attributes(obj) -> dict[str, Any]:
    out = {}
    for key, value in vars(obj).items():
        if isinstance(value, np.ndarray) and value.dtype.kind in "SU":  # JSON holds str, not bytes
            out[key] = {"text_array": value.astype(str).tolist(), "dtype": str(value.dtype)}
        elif _is_simple(value):
            out[key] = {"tuple": list(value)} if isinstance(value, tuple) else value
    return out


def _restore_attributes(obj, attributes: dict[str, Any]) -> None:
    for key, value in attributes.items():
        if isinstance(value, dict) and set(value) == {"tuple"}:
            value = tuple(value["tuple"])
        elif isinstance(value, dict) and set(value) == {"text_array", "dtype"}:
            value = np.array(value["text_array"], dtype=value["dtype"])
        elif isinstance(value, np.ndarray) and isinstance(getattr(obj, key, None), np.generic):
            value = value.dtype.type(value)  # a numpy scalar came back as a 0-d array
        setattr(obj, key, value)


def _sub_env_chain(env: gym.Env) -> list:
    chain = [env]
    while hasattr(chain[-1], "env"):
        chain.append(chain[-1].env)
    return chain


def supports_exact_state(envs: gym.vector.VectorEnv) -> bool:
    """True when every piece of env state is plain data (classic control, the probes):
    then :func:`env_state` captures it completely.  Simulators holding state in native
    objects (MuJoCo's MjData) or sub-processes (async vector envs) return False."""
    base = envs.unwrapped
    if not isinstance(base, gym.vector.SyncVectorEnv):
        return False
    for env in base.envs:
        for key, value in vars(env.unwrapped).items():
            if not (_is_simple(value) or isinstance(value, _HARMLESS)):
                return False
    return True


def env_state(envs: gym.vector.VectorEnv) -> dict[str, Any]:
    """Everything needed to continue a SyncVectorEnv exactly: each sub-env's plain
    attributes and RNG, every wrapper's counters, the normalisers' statistics."""
    if not supports_exact_state(envs):
        raise ValueError("this environment's state is not plain data; it cannot be saved exactly")
    vector_wrappers = list(_wrappers(envs))
    state = {"vector_wrappers": [_simple_attributes(w) for w in vector_wrappers], "sub_envs": []}
    for env in envs.unwrapped.envs:
        chain = _sub_env_chain(env)
        state["sub_envs"].append({
            "chain": [_simple_attributes(link) for link in chain],
            "np_random": env.unwrapped.np_random.bit_generator.state,
        })
    state["normalizers"] = normalizer_state(envs)
    return state


def load_env_state(envs: gym.vector.VectorEnv, state: dict[str, Any]) -> None:
    """Restore what :func:`env_state` captured into freshly made, identical envs."""
    vector_wrappers = list(_wrappers(envs))
    if len(vector_wrappers) != len(state["vector_wrappers"]) or len(envs.unwrapped.envs) != len(state["sub_envs"]):
        raise ValueError("the saved environment state is from a different env stack or number of envs")
    for wrapper, attributes in zip(vector_wrappers, state["vector_wrappers"]):
        _restore_attributes(wrapper, attributes)
    for env, saved in zip(envs.unwrapped.envs, state["sub_envs"]):
        for link, attributes in zip(_sub_env_chain(env), saved["chain"]):
            _restore_attributes(link, attributes)
        env.unwrapped.np_random.bit_generator.state = saved["np_random"]
    load_normalizer_state(envs, state["normalizers"])
