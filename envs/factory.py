"""Vector-env factories: classic control, MuJoCo and the probes, with the
continuous-control wrapper stack of the PPO paper's code.

Stack, innermost first (CleanRL's order, applied once to the vector env):
RecordEpisodeStatistics (raw returns, for logging) -> ClipAction (the agent
stores the unclipped action) -> NormalizeObservation + clip -> NormalizeReward +
clip.  Sub-envs auto-reset in the SAME step that ends an episode; the last
observation is in ``info["final_obs"]`` for truncation bootstrapping, so no step
is ever trained on whose observation came from a reset rather than the action.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

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
) -> gym.vector.VectorEnv:
    """Build ``num_envs`` copies of ``env_id`` as one same-step-autoreset vector env.

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
        **(env_kwargs or {}),
    )
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    if isinstance(envs.single_action_space, gym.spaces.Box) and clip_actions:
        envs = gym.wrappers.vector.ClipAction(envs)
    if normalize_obs:
        envs = NormalizeObservation(envs, clip=obs_clip)
    if normalize_reward:
        envs = NormalizeReward(envs, gamma=gamma, clip=reward_clip)
    return envs


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


def set_normalizer_updates(envs: gym.vector.VectorEnv, update: bool) -> None:
    """Freeze (False) or unfreeze (True) every normaliser's statistics, e.g. for evaluation."""
    for wrapper in _wrappers(envs):
        if isinstance(wrapper, (NormalizeObservation, NormalizeReward)):
            wrapper.update_stats = update
