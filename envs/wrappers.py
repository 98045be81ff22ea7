"""Vector-env wrappers for the continuous-control stack, with savable statistics.

gymnasium's own normalisation wrappers keep their statistics private and do not
touch ``info["final_obs"]``, which the agent needs (normalised like every other
observation) to bootstrap truncated episodes.  These two wrappers do both:
``state_dict()`` / ``load_state_dict()`` give plain numpy arrays that a
checkpoint stores as tensors, so a reloaded agent sees the inputs it was trained
on (the bug behind cleanrl#310 and #400).
"""

from __future__ import annotations

import math

import numpy as np
from gymnasium.vector import VectorEnv, VectorWrapper


def clip_in_place(x: np.ndarray, bound: float) -> np.ndarray:
    """np.clip(x, -bound, bound) into x: the same numbers (it is np.clip's definition) without np.clip's
    Python-level dispatch, which costs more than the arithmetic at one env's sizes, every step."""
    return np.minimum(np.maximum(x, -bound, out=x), bound, out=x)


class RunningMeanStd:
    """Running mean and variance over a stream of batches (Chan et al. parallel update)."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4):
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        # epsilon as the initial count keeps the first update well defined,
        # the same choice as baselines / CleanRL / gymnasium.
        self.count = epsilon

    def update(self, batch: np.ndarray) -> None:
        batch = np.asarray(batch, dtype=np.float64)
        batch_count = batch.shape[0]
        if batch_count == 1:  # one env: the same numbers with a third of the numpy calls
            delta = batch[0] - self.mean
            total = self.count + 1
            self.mean = self.mean + delta / total
            self.var = (self.var * self.count + delta**2 * self.count / total) / total
            self.count = total
            return
        # sum/square by hand: np.mean/np.var cost more in Python overhead than in
        # arithmetic at the sizes seen every env step.
        batch_mean = batch.sum(axis=0) / batch_count
        batch_var = np.square(batch - batch_mean).sum(axis=0) / batch_count
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var = m2 / total
        self.count = total

    def add_sample(self, x: float) -> None:
        """:meth:`update` with one scalar sample (shape () statistics), in Python floats: the one-sample branch's
        IEEE double arithmetic in the same order, so the same numbers, without numpy calls on 0-d arrays."""
        mean, var, count = float(self.mean), float(self.var), self.count
        delta = x - mean
        total = count + 1
        self.mean, self.var = np.array(mean + delta / total), np.array((var * count + delta * delta * count / total) / total)
        self.count = total

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": np.array(self.count, dtype=np.float64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        mean, var = np.asarray(state["mean"], dtype=np.float64), np.asarray(state["var"], dtype=np.float64)
        if mean.shape != self.mean.shape or var.shape != self.var.shape:
            raise ValueError(
                f"normaliser statistics have shape {mean.shape}, this environment needs {self.mean.shape}"
            )
        self.mean, self.var, self.count = mean.copy(), var.copy(), float(np.asarray(state["count"]))


class NormalizeObservation(VectorWrapper):
    """obs -> clip((obs - mean) / sqrt(var + eps), -clip, clip), statistics over all sub-envs [cont 6, 7].

    The returned observations (which include the first observations of episodes
    that were just auto-reset) update the statistics, as CleanRL's per-env wrapper
    does; ``info["final_obs"]`` is normalised with the same statistics but does not
    update them.  Set ``update_stats = False`` to freeze the statistics (evaluation).

    ``indices``: normalise (and keep statistics of) only these entries of the vector, e.g. the
    Box slices of a flattened Dict observation (rlkit.envs.observations.real_valued_entries).
    """

    def __init__(self, env: VectorEnv, clip: float = 10.0, epsilon: float = 1e-8, indices: np.ndarray | None = None):
        super().__init__(env)
        self.indices = None if indices is None else np.asarray(indices, dtype=np.intp)
        shape = self.single_observation_space.shape if self.indices is None else self.indices.shape
        self.obs_rms = RunningMeanStd(shape=shape)
        self.clip = clip
        self.epsilon = epsilon
        self.update_stats = True

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        if self.indices is not None:  # only these entries; one-hot / 0-1 / pixel entries pass unchanged
            out = np.array(obs, dtype=np.float32)
            out[..., self.indices] = self._normalize(out[..., self.indices])
            return out
        return self._normalize(obs)

    def _normalize(self, obs: np.ndarray) -> np.ndarray:
        normalized = (obs - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + self.epsilon)
        return clip_in_place(normalized, self.clip).astype(np.float32)

    def _update(self, obs: np.ndarray) -> None:
        self.obs_rms.update(obs if self.indices is None else obs[..., self.indices])

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if self.update_stats:
            self._update(obs)
        return self.normalize(obs), info

    def step(self, actions):
        obs, rewards, terminations, truncations, info = self.env.step(actions)
        if self.update_stats:
            self._update(obs)
        if "_final_obs" in info:
            final_obs = info["final_obs"].copy()
            for i in np.flatnonzero(info["_final_obs"]):
                final_obs[i] = self.normalize(np.asarray(final_obs[i]))
            info = {**info, "final_obs": final_obs}
        return self.normalize(obs), rewards, terminations, truncations, info

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.obs_rms.state_dict()

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.obs_rms.load_state_dict(state)


class NormalizeReward(VectorWrapper):
    """reward -> clip(reward / sqrt(var(discounted return) + eps), -clip, clip) [cont 8, 9].

    The reward is scaled, not centred: the "reward scaling" detail of the PPO paper's
    code (baselines VecNormalize, CleanRL).  The running discounted return restarts
    when an episode ends (terminated or truncated).
    """

    def __init__(self, env: VectorEnv, gamma: float = 0.99, clip: float = 10.0, epsilon: float = 1e-8):
        super().__init__(env)
        self.return_rms = RunningMeanStd(shape=())
        self.discounted_return = np.zeros(self.num_envs, dtype=np.float64)
        self.gamma = gamma
        self.clip = clip
        self.epsilon = epsilon
        self.update_stats = True
        self.batched_arithmetic = False
        """True: one env takes the numpy path too (the tests hold the two together)"""

    def step(self, actions):
        if self.num_envs == 1 and not self.batched_arithmetic:
            return self._step_one_env(actions)
        obs, rewards, terminations, truncations, info = self.env.step(actions)
        self.discounted_return = self.discounted_return * self.gamma + rewards
        if self.update_stats:
            self.return_rms.update(self.discounted_return)
        self.discounted_return[np.logical_or(terminations, truncations)] = 0.0
        scaled = rewards / np.sqrt(self.return_rms.var + self.epsilon)
        return obs, clip_in_place(scaled, self.clip), terminations, truncations, info

    def _step_one_env(self, actions):
        """:meth:`step` for one env in Python floats: the same IEEE double arithmetic in the same order (so the same
        numbers, tested), without ~20 numpy calls on one-element arrays every env step (benchmarks/sps_vs_peers.py)."""
        obs, rewards, terminations, truncations, info = self.env.step(actions)
        reward = float(rewards[0])
        discounted = float(self.discounted_return[0]) * self.gamma + reward
        if self.update_stats:
            self.return_rms.add_sample(discounted)
        self.discounted_return[0] = 0.0 if (terminations[0] or truncations[0]) else discounted
        scaled = reward / math.sqrt(float(self.return_rms.var) + self.epsilon)
        return obs, np.array([min(max(scaled, -self.clip), self.clip)]), terminations, truncations, info

    def state_dict(self) -> dict[str, np.ndarray]:
        return {**self.return_rms.state_dict(), "discounted_return": self.discounted_return.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.return_rms.load_state_dict(state)
        if "discounted_return" in state and np.shape(state["discounted_return"]) == self.discounted_return.shape:
            self.discounted_return = np.asarray(state["discounted_return"], dtype=np.float64).copy()
