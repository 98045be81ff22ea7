"""The object face, for users who know Stable-Baselines3:

    from rlkit import PPO
    model = PPO("CartPole-v1", recipe="cartpole").learn(50_000)
    action, _ = model.predict(obs, deterministic=True)
    model.save("agents/cartpole"); model = PPO.load("agents/cartpole")

``env`` is a registered id, a ``"module:Id"`` string, a ``gymnasium.Env`` instance, a
zero-argument env factory or a gymnasium vector env (rlkit rebuilds its sub-envs with same-step
autoreset and its own wrappers; ``num_envs`` becomes its size).  Training is ``rlkit.ppo.train`` (or its recurrent variant): every run
writes a run folder with checkpoints, and a second ``learn`` continues the same run from its newest
checkpoint (SB3's ``reset_num_timesteps=False``).  ``predict`` works on raw observations: the
saved normaliser statistics are applied and Box actions clipped to their bounds.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rlkit.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from rlkit.config import config_from_dict, read_recipe
from rlkit.envs.observations import ObservationLayout, Part, adapt_observations, real_valued_entries
from rlkit.envs.sources import register_env_object, resolve_env_id
from rlkit.evaluate import (
    agent_spaces,
    build_agent,
    freeze_normalizer,
    load_agent,
    make_eval_envs,
    run_episodes,
    variant_of,
    write_agent_folder,
)
from rlkit.ppo import PPOConfig, TrainResult, empty_mask_components, mask_sizes, resolve_device
from rlkit.runtime import Callback

TABLES = {"ppo": PPOConfig}


def _config_class(table: str):
    if table == "ppo_lstm":
        from rlkit.ppo_lstm import RecurrentPPOConfig

        return RecurrentPPOConfig
    if table not in TABLES:
        raise ValueError(f"PPO takes [ppo] or [ppo_lstm] recipes, not [{table}]")
    return TABLES[table]


def spaces_from_json(spaces: dict) -> tuple[gym.Space, gym.Space]:
    """The (observation, action) spaces an agent folder records, rebuilt without the env."""
    shape, layout = tuple(spaces["observation_shape"]), spaces.get("observation_layout")
    if layout == "image":
        observation = gym.spaces.Box(0, 255, shape=shape, dtype=np.uint8)
    elif layout is not None:
        parts = [Part(p["name"], p["kind"], p["start"], p["stop"], tuple(p["shape"])) for p in layout]
        observation = ObservationLayout(parts, np.full(shape, -np.inf), np.full(shape, np.inf))
    else:
        observation = gym.spaces.Box(-np.inf, np.inf, shape=shape, dtype=np.float32)
    action = spaces["action"]
    if action["type"] == "Discrete":
        return observation, gym.spaces.Discrete(action["n"], start=action.get("start", 0))
    if action["type"] == "MultiDiscrete":  # the agent's: 1-d (a MultiBinary env's too: env_action_space)
        return observation, gym.spaces.MultiDiscrete(action["nvec"], start=action.get("start"))
    return observation, gym.spaces.Box(np.asarray(action["low"], dtype=np.float32),
                                       np.asarray(action["high"], dtype=np.float32), dtype=np.float32)


def env_action_space(spaces: dict) -> gym.Space:
    """The env's own action space an agent folder records: the agent's, except where rlkit.envs' FlatDiscreteActions
    flattened a MultiBinary or many-dimensional MultiDiscrete one."""
    agent = spaces_from_json(spaces)[1]
    action = spaces["action"]
    if action.get("env_type") == "MultiBinary":
        return gym.spaces.MultiBinary(action["env_shape"])
    if action.get("env_type") == "MultiDiscrete":
        shape = tuple(action["env_shape"])
        return gym.spaces.MultiDiscrete(np.reshape(agent.nvec, shape), start=np.reshape(agent.start, shape))
    return agent


class PPO:
    """PPO on one environment, with SB3's names: ``learn``, ``predict``, ``save``, ``load``, ``evaluate``.

    ``recipe``: a shipped recipe name or a .toml path (``[ppo]``, or ``[ppo_lstm]`` for the recurrent
    agent); ``overrides``: any config key (``rlkit train RECIPE --help`` lists them).
    """

    def __init__(self, env: str | gym.Env | gym.vector.VectorEnv | Callable[[], gym.Env], recipe: str | None = None, *,
                 run_name: str | None = None, **overrides: Any):
        table, values, source = read_recipe(recipe) if recipe is not None else ("ppo", {}, "defaults")
        cls = _config_class(table)
        num_envs = overrides.get("num_envs", values.get("num_envs", 1))
        if isinstance(env, gym.vector.VectorEnv):  # its sub-envs are rebuilt (rlkit.envs.sources.register_vector_env)
            if overrides.get("num_envs", env.num_envs) != env.num_envs:
                raise ValueError(f"num_envs = {overrides['num_envs']} but the vector env holds {env.num_envs} envs")
            num_envs = overrides["num_envs"] = env.num_envs
        env_id = env if isinstance(env, str) else register_env_object(env, num_envs)
        if not isinstance(env, str) and overrides.get("vectorization", values.get("vectorization")) == "async":
            raise ValueError("an env object cannot be sent to async worker processes; use vectorization = 'sync' or a "
                             "registered id")
        self.config: PPOConfig = config_from_dict(cls, {**values, **overrides, "env_id": env_id},
                                                  source=f"{source} + PPO(...)")
        self.run_name = run_name
        self.run_dir: str | None = None
        self.agent = None
        self.normalizer: dict[str, np.ndarray] = {}
        self.spaces: dict | None = None
        self.result: TrainResult | None = None
        self.num_timesteps = 0

    # -- training --------------------------------------------------------------------------------

    def learn(self, total_timesteps: int, callbacks: list[Callback] = (), progress: bool = True,
              log: bool = True) -> PPO:
        """Train for ``total_timesteps`` more env steps (the first call starts the run, later calls continue it).

        ``log=False`` keeps the run folder in a temporary directory (checkpoints are still how a run continues).
        """
        from rlkit.ppo import train

        if isinstance(total_timesteps, (float, np.floating)) and float(total_timesteps).is_integer():
            total_timesteps = int(total_timesteps)  # learn(1e5), as SB3 takes it
        if isinstance(total_timesteps, bool) or not isinstance(total_timesteps, (int, np.integer)):
            raise ValueError(f"total_timesteps must be a whole number of env steps, got {total_timesteps!r}")
        if total_timesteps <= 0:
            raise ValueError(f"total_timesteps must be > 0, got {total_timesteps}")
        if self.agent is not None and self.run_dir is None:  # PPO.load of an agent folder that names no run
            raise ValueError("this model was loaded from an agent folder, which holds weights but no run to continue "
                             "(optimizer, steps, env state): learn() would start a new agent from scratch; load the run "
                             "folder instead (PPO.load(RUN_DIR)), or build a new PPO(...) to train from scratch")
        if self.run_dir is None:
            config = replace(self.config, total_timesteps=total_timesteps,
                             run_dir=self.config.run_dir if log else tempfile.mkdtemp(prefix="rlkit-"))
            variant = variant_of(config)
            self.result = train(config, self.run_name, progress=progress, callbacks=list(callbacks), variant=variant)
        else:
            target = self.num_timesteps + total_timesteps
            self.result = train(resume=self.run_dir, progress=progress, callbacks=list(callbacks), total_timesteps=target)
        self.run_dir = self.result.run_dir
        self.agent, self.normalizer = self.result.agent.eval(), self.result.normalizer
        self.spaces = self.spaces or agent_spaces(self.config)
        self.num_timesteps = self.result.global_step
        self.config = replace(self.config, total_timesteps=self.num_timesteps)
        return self

    # -- acting ----------------------------------------------------------------------------------

    def _require_agent(self) -> None:
        if self.agent is None:
            raise ValueError("this PPO has no trained agent yet: call learn() first, or PPO.load(path)")

    def _normalize(self, obs: np.ndarray) -> np.ndarray:
        """What the training env's observation normaliser did, with its saved statistics, frozen.

        Only the entries the normaliser touched in training (rlkit.envs.observations.real_valued_entries):
        never one-hot, 0/1 or pixel entries; nothing when no statistics were saved.
        """
        obs = obs.astype(np.float64)
        if not self.config.normalize_obs or "obs.mean" not in self.normalizer:
            return obs.astype(np.float32)
        mean, var = self.normalizer["obs.mean"], self.normalizer["obs.var"]
        entries = real_valued_entries(spaces_from_json(self.spaces)[0])
        where = slice(None) if entries is None else entries
        out = obs.copy()
        normalized = (obs[..., where] - mean) / np.sqrt(var + 1e-8)
        out[..., where] = np.clip(normalized, -self.config.obs_clip, self.config.obs_clip)
        return out.astype(np.float32)

    def _raw_observation_space(self) -> gym.Space | None:
        """The env's own observation space (before rlkit's adapters), or None when the env cannot be made here."""
        if not hasattr(self, "_raw_space"):
            try:
                env = gym.make(resolve_env_id(self.config.env_id, self.config.env_module), **dict(self.config.env_kwargs))
                self._raw_space = env.observation_space
                env.close()
            except Exception:  # an env that is gone (another process's object): adapted observations only
                self._raw_space = None
        return self._raw_space

    def _adapt(self, observation: Any) -> tuple[np.ndarray, bool]:
        """(batch of agent-ready observations, whether one observation was given).

        Takes what the env returns, one observation or a batch (an array for Box spaces, a list for
        the others), or what rlkit's own vector env returns (already adapted).
        """
        shape = tuple(self.spaces["observation_shape"])
        as_array = None if isinstance(observation, (dict, tuple, list)) else np.asarray(observation)
        own = self._raw_observation_space()
        if isinstance(own, gym.spaces.Box) and tuple(own.shape) != shape and as_array is not None and as_array.dtype != object:
            # the env's own shape decides, as SB3's: one (1, 4) observation is not a batch of one adapted (4,)
            adapter = _adapter_for(own)
            if as_array.shape == tuple(own.shape):
                return adapter(as_array)[None], True
            if as_array.ndim == len(own.shape) + 1 and as_array.shape[1:] == tuple(own.shape):
                return np.stack([adapter(item) for item in as_array]), False
        adapted = as_array is not None and as_array.dtype != object and as_array.shape[-len(shape):] == shape \
            and as_array.ndim in (len(shape), len(shape) + 1)
        # integers where the env's own space is not a Box (Discrete, MultiDiscrete, ...) are its observations:
        # rlkit's adapted ones are float32, and np.array([0, 1, 2, 3]) of a Discrete(4) env is 4 of them
        raw = self._raw_observation_space() if not adapted or as_array.dtype.kind in "biu" else None
        if raw is not None and not (adapted and isinstance(raw, gym.spaces.Box)):
            adapter = _adapter_for(raw)
            if _is_one(raw, observation):
                return adapter(observation)[None], True
            if isinstance(raw, (gym.spaces.Dict, gym.spaces.Tuple)) and isinstance(observation, (dict, tuple)):
                items = _unbatched(raw, observation)  # a gymnasium vector env's batch: arrays with a leading dim
            elif isinstance(observation, (list, tuple)):
                items = list(observation)
            else:
                items = list(observation) if isinstance(observation, np.ndarray) and observation.ndim else []
            if items and all(_is_one(raw, item) for item in items):
                return np.stack([adapter(item) for item in items]), False
        if adapted:
            single = as_array.ndim == len(shape)
            return (as_array[None] if single else as_array), single  # already what the agent takes
        raw = raw if raw is not None else self._raw_observation_space()
        raise ValueError(f"observation {_describe(observation)} does not fit this agent: it takes {shape} "
                         f"(or a batch of them)" + (f", or the env's own {raw} observations" if raw is not None else ""))

    def predict(self, observation: np.ndarray, state: tuple | None = None, episode_start: np.ndarray | None = None,
                deterministic: bool = True, action_mask: np.ndarray | None = None) -> tuple[np.ndarray, tuple | None]:
        """(action, next state) for a raw observation or a batch of them, like SB3's ``predict``.

        Box actions are clipped to the action bounds (as the env clipped them in training; not with
        ``clip_actions = false``).  The recurrent agent takes and returns its LSTM
        ``state`` (None at the start) and ``episode_start`` (1 where an episode begins), as
        sb3-contrib's RecurrentPPO; the feed-forward agent returns None as the state.
        """
        self._require_agent()
        obs, single = self._adapt(observation)
        device = next(self.agent.parameters()).device
        x = torch.as_tensor(self._normalize(obs), device=device)
        mask = None if action_mask is None else torch.as_tensor(self._checked_mask(action_mask, x.shape[0]), device=device)
        with torch.inference_mode():
            if hasattr(self.agent, "lstm"):
                n = x.shape[0]
                hidden = self.agent.initial_state(n, device) if state is None else tuple(
                    torch.as_tensor(np.asarray(s), dtype=torch.float32, device=device) for s in state)
                expected = tuple(self.agent.initial_state(n, device)[0].shape)
                if any(tuple(h.shape) != expected for h in hidden):
                    raise ValueError(f"state holds LSTM states of shape {[tuple(h.shape) for h in hidden]} but "
                                     f"{n} observation(s) need {expected}: pass the state predict returned for "
                                     "this batch, or None at the start")
                starts = torch.as_tensor(np.zeros(n) if episode_start is None else np.atleast_1d(episode_start),
                                         dtype=torch.float32, device=device)
                action, _, _, _, hidden = self.agent.get_action_and_value(x, hidden, starts, deterministic=deterministic,
                                                                          action_mask=mask)
                state = tuple(h.cpu().numpy() for h in hidden)
            else:
                action, _, _, _ = self.agent.get_action_and_value(x, deterministic=deterministic, action_mask=mask)
        action = action.cpu().numpy()
        space = self.action_space()
        if isinstance(space, gym.spaces.Box):
            if self.config.clip_actions:  # what the env got in training; unclipped there, unclipped here
                action = np.clip(action, space.low, space.high)
        else:  # the agent's actions start at 0, the env's at its space's start (rlkit.envs.factory.ZeroBasedActions)
            action = action + np.asarray(space.start, dtype=action.dtype)
            if "env_type" in self.spaces["action"]:  # MultiBinary or a many-dimensional MultiDiscrete: its shape, dtype
                env_space = env_action_space(self.spaces)
                action = action.reshape(len(action), *env_space.shape).astype(env_space.dtype)
        return (action[0] if single else action), state

    def _checked_mask(self, action_mask, n: int) -> np.ndarray:
        """The mask as [n, number of action logits] booleans; one line when it does not fit or allows nothing."""
        space = self.action_space()
        if isinstance(space, gym.spaces.Box):
            raise ValueError("action_mask is for Discrete / MultiDiscrete actions; this agent's are Box")
        width = sum(mask_sizes(space))
        mask = np.atleast_2d(np.asarray(action_mask, dtype=bool))
        if mask.shape != (n, width):
            raise ValueError(f"action_mask has shape {np.shape(action_mask)}; {n} observation(s) of this agent take "
                             f"{(width,) if n == 1 else (n, width)} (one entry per action"
                             f"{'' if isinstance(space, gym.spaces.Discrete) else ', the components side by side'})")
        empty = empty_mask_components(mask, mask_sizes(space)).any(axis=1)
        if empty.any():
            raise ValueError(f"action_mask allows no action for observation {int(np.flatnonzero(empty)[0])}")
        return mask

    def action_space(self) -> gym.Space:
        return spaces_from_json(self.spaces)[1]

    def evaluate(self, episodes: int = 10, deterministic: bool = True, seed: int = 10_000) -> dict:
        """Mean / std / min / max return over ``episodes`` episodes on a fresh env, normaliser frozen."""
        self._require_agent()
        if episodes <= 0:
            raise ValueError(f"episodes must be > 0, got {episodes}")
        envs = make_eval_envs(self.config)
        try:
            freeze_normalizer(envs, self.config, self.normalizer, "this model")
            return run_episodes(self.agent, self.config, envs, episodes, deterministic, seed,
                                next(self.agent.parameters()).device)
        finally:
            envs.close()

    # -- files -----------------------------------------------------------------------------------

    def save(self, path: str) -> str:
        """An agent folder (config.json, model.safetensors, normalizer.json): what ``PPO.load`` and ``rlkit eval`` read."""
        self._require_agent()
        write_agent_folder(path, self.config, self.agent.state_dict(), self.normalizer, self.spaces)
        if self.run_dir is not None:
            with open(os.path.join(path, "config.json")) as f:
                saved = json.load(f)
            saved["run_dir"] = self.run_dir
            with open(os.path.join(path, "config.json"), "w") as f:
                json.dump(saved, f, indent=2)
        return os.path.abspath(path)

    @classmethod
    def load(cls, path: str, env: str | gym.Env | Callable[[], gym.Env] | None = None, device: str = "cpu") -> PPO:
        """A model from an agent folder (``save`` / ``rlkit export``) or a run / checkpoint folder.

        ``env``: give the env again when the model was trained on a Python env object (its id does not
        outlive the process), or to evaluate on another env with the same spaces.
        """
        config, weights, normalizer = load_agent(path)
        model = cls.__new__(cls)
        if isinstance(env, str):
            config = replace(config, env_id=env)
        elif env is not None:  # the object is the whole env: the saved id's kwargs and modules are not its
            config = replace(config, env_id=register_env_object(env, 1), env_kwargs={}, env_module=[])
        model.config, model.run_name, model.result = config, None, None
        model.normalizer = normalizer
        model.spaces = _saved_spaces(path) or agent_spaces(config)
        observation_space, action_space = spaces_from_json(model.spaces)
        fake_envs = SimpleNamespace(single_observation_space=observation_space, single_action_space=action_space)
        model.agent = build_agent(config, weights, fake_envs, resolve_device(device))
        model.run_dir = _saved_run_dir(path)
        model.num_timesteps = _reached_steps(model.run_dir, config.total_timesteps)
        return model

    def __repr__(self) -> str:
        return f"PPO(env={self.config.env_id!r}, num_timesteps={self.num_timesteps}, run_dir={self.run_dir!r})"


def _saved_spaces(path: str) -> dict | None:
    config_path = os.path.join(path, "config.json")
    if os.path.isfile(config_path) and os.path.isfile(os.path.join(path, "model.safetensors")):
        with open(config_path) as f:
            saved = json.load(f)
        return {key: saved[key] for key in ("observation_shape", "observation_layout", "action") if key in saved}
    return None


def _saved_run_dir(path: str) -> str | None:
    if _saved_spaces(path) is not None:
        with open(os.path.join(path, "config.json")) as f:
            return json.load(f).get("run_dir")
    try:
        return os.path.dirname(os.path.dirname(resolve_checkpoint(path)))
    except CheckpointError:
        return None


def _reached_steps(run_dir: str | None, configured: int) -> int:
    """The steps of the checkpoint ``learn`` continues from (the run's newest): a run stopped early (a signal, a
    callback, stop_at_return) reached fewer than it was configured for.  ``configured`` without a run."""
    if run_dir is None:
        return configured
    try:
        _, state = load_checkpoint(run_dir)
    except (CheckpointError, OSError):
        return configured
    return int(state.get("global_step", configured))


def _is_one(space: gym.Space, observation: Any) -> bool:
    """Whether ``observation`` is one observation of ``space`` (tolerant of dtype, e.g. float64 for float32)."""
    try:
        if isinstance(space, gym.spaces.Box):
            return np.asarray(observation).shape == space.shape
        return space.contains(observation) or space.contains(np.asarray(observation, dtype=space.dtype))
    except Exception:
        return False


def _unbatched(space: gym.Space, observation: Any) -> list:
    """A batch of Dict / Tuple observations as gymnasium's vector envs return it (one array per leaf, with a
    leading batch dimension) -> the list of single observations; [] when it is not one."""
    def size(value):
        if isinstance(value, dict):
            return size(next(iter(value.values()))) if value else None
        if isinstance(value, tuple):
            return size(value[0]) if value else None
        array = np.asarray(value)
        return array.shape[0] if array.ndim else None

    n = size(observation)
    if not n:
        return []
    try:
        return list(gym.vector.utils.iterate(gym.vector.utils.batch_space(space, n), observation))
    except Exception:  # noqa: BLE001 - not a batch of this space: the caller says what it takes
        return []


def _adapter_for(space: gym.Space) -> Callable[[Any], np.ndarray]:
    """One raw observation -> what the agent takes, by the same wrapper the training envs use."""

    class _Stub(gym.Env):
        observation_space = space
        action_space = gym.spaces.Discrete(1)

    wrapped = adapt_observations(_Stub())
    if isinstance(wrapped, gym.ObservationWrapper):
        return lambda observation: np.asarray(wrapped.observation(observation))
    return np.asarray


def _describe(observation: Any) -> str:
    if isinstance(observation, np.ndarray):
        return f"of shape {observation.shape}"
    return f"{type(observation).__name__} {str(observation)[:60]}"
