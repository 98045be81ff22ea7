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
    """Running mean and variance over a stream of batches (Chan et al. parallel update).

    ``groups``: G independent statistics side by side (batched seeds: one per seed), updated in one
    pass; mean and var are then [G, *shape] and a batch [G * B, *shape] holds group g's B rows at
    g*B:(g+1)*B.  The arithmetic is the same elementwise, so group g holds the very numbers that a
    RunningMeanStd fed only group g's rows holds (tested bit for bit).
    """

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4, groups: int | None = None):
        self.groups = groups
        lead = () if groups is None else (groups,)
        self.mean = np.zeros((*lead, *shape), dtype=np.float64)
        self.var = np.ones((*lead, *shape), dtype=np.float64)
        # epsilon as the initial count keeps the first update well defined,
        # the same choice as baselines / CleanRL / gymnasium.  Per group: [G, 1, ...] to broadcast.
        self.count = epsilon if groups is None else np.full((groups,) + (1,) * len(shape), epsilon)

    def update(self, batch: np.ndarray) -> None:
        batch = np.asarray(batch, dtype=np.float64)
        if self.groups is None:
            rows, axis = batch, 0
        else:
            rows, axis = batch.reshape(self.groups, -1, *self.mean.shape[1:]), 1
        batch_count = rows.shape[axis]
        if batch_count == 1:  # one env (per group): the same numbers with a third of the numpy calls
            delta = (rows[0] if axis == 0 else rows[:, 0]) - self.mean
            total = self.count + 1
            self.mean = self.mean + delta / total
            self.var = (self.var * self.count + delta**2 * self.count / total) / total
            self.count = total
            return
        # sum/square by hand: np.mean/np.var cost more in Python overhead than in
        # arithmetic at the sizes seen every env step.
        batch_mean = rows.sum(axis=axis) / batch_count
        batch_var = np.square(rows - (batch_mean if axis == 0 else batch_mean[:, None])).sum(axis=axis) / batch_count
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

    def state_dict(self, group: int | None = None) -> dict[str, np.ndarray]:
        """The statistics (of one group: the same form as an ungrouped RunningMeanStd's)."""
        mean, var, count = self._of(group)
        return {"mean": mean.copy(), "var": var.copy(), "count": np.array(count, dtype=np.float64)}

    def load_state_dict(self, state: dict[str, np.ndarray], group: int | None = None) -> None:
        mean, var = np.asarray(state["mean"], dtype=np.float64), np.asarray(state["var"], dtype=np.float64)
        shape = self._of(group)[0].shape
        if mean.shape != shape or var.shape != shape:
            raise ValueError(f"normaliser statistics have shape {mean.shape}, this environment needs {shape}")
        count = float(np.asarray(state["count"]))
        if self.groups is None:
            self.mean, self.var, self.count = mean.copy(), var.copy(), count
        else:
            self.mean[group], self.var[group], self.count[group] = mean, var, count

    def _of(self, group: int | None) -> tuple[np.ndarray, np.ndarray, float]:
        if (group is None) != (self.groups is None):
            raise ValueError("a grouped normaliser's state is read and written one group at a time" if group is None
                             else "this normaliser has no groups")
        if group is None:
            return self.mean, self.var, self.count
        return self.mean[group], self.var[group], float(self.count[group].reshape(()))


class NormalizeObservation(VectorWrapper):
    """obs -> clip((obs - mean) / sqrt(var + eps), -clip, clip), statistics over all sub-envs [cont 6, 7].

    The returned observations (which include the first observations of episodes
    that were just auto-reset) update the statistics, as CleanRL's per-env wrapper
    does; ``info["final_obs"]`` is normalised with the same statistics but does not
    update them.  Set ``update_stats = False`` to freeze the statistics (evaluation).

    ``indices``: normalise (and keep statistics of) only these entries of the vector, e.g. the
    Box slices of a flattened Dict observation (rlkit.envs.observations.real_valued_entries).
    ``groups``: the sub-envs are G runs' envs side by side (batched seeds), num_envs / G each in
    order; each run's envs get statistics of their own (:class:`RunningMeanStd` groups).
    """

    def __init__(self, env: VectorEnv, clip: float = 10.0, epsilon: float = 1e-8, indices: np.ndarray | None = None,
                 groups: int | None = None):
        super().__init__(env)
        self.indices = None if indices is None else np.asarray(indices, dtype=np.intp)
        shape = self.single_observation_space.shape if self.indices is None else self.indices.shape
        self.groups = check_groups(self.num_envs, groups)
        self.obs_rms = RunningMeanStd(shape=shape, groups=groups)
        self.clip = clip
        self.epsilon = epsilon
        self.update_stats = True

    def normalize(self, obs: np.ndarray, env_index: int | None = None) -> np.ndarray:
        """All envs' observations [num_envs, ...], or one env's (``env_index``: which env, for its group)."""
        if self.indices is not None:  # only these entries; one-hot / 0-1 / pixel entries pass unchanged
            out = np.array(obs, dtype=np.float32)
            out[..., self.indices] = self._normalize(out[..., self.indices], env_index)
            return out
        return self._normalize(obs, env_index)

    def _normalize(self, obs: np.ndarray, env_index: int | None) -> np.ndarray:
        mean, var = self.obs_rms.mean, self.obs_rms.var
        if self.groups is not None:
            if env_index is not None:
                group = env_index // (self.num_envs // self.groups)
                mean, var = mean[group], var[group]
            else:  # [G * E, ...] as [G, E, ...] against [G, 1, ...]
                shape, obs = obs.shape, obs.reshape(self.groups, -1, *obs.shape[1:])
                normalized = (obs - mean[:, None]) / np.sqrt(var[:, None] + self.epsilon)
                return clip_in_place(normalized, self.clip).astype(np.float32).reshape(shape)
        normalized = (obs - mean) / np.sqrt(var + self.epsilon)
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
                final_obs[i] = self.normalize(np.asarray(final_obs[i]), i)
            info = {**info, "final_obs": final_obs}
        return self.normalize(obs), rewards, terminations, truncations, info

    def state_dict(self, group: int | None = None) -> dict[str, np.ndarray]:
        return self.obs_rms.state_dict(group)

    def load_state_dict(self, state: dict[str, np.ndarray], group: int | None = None) -> None:
        self.obs_rms.load_state_dict(state, group)


class NormalizeReward(VectorWrapper):
    """reward -> clip(reward / sqrt(var(discounted return) + eps), -clip, clip) [cont 8, 9].

    The reward is scaled, not centred: the "reward scaling" detail of the PPO paper's
    code (baselines VecNormalize, CleanRL).  The running discounted return restarts
    when an episode ends (terminated or truncated).  ``groups``: as NormalizeObservation's.
    """

    def __init__(self, env: VectorEnv, gamma: float = 0.99, clip: float = 10.0, epsilon: float = 1e-8,
                 groups: int | None = None):
        super().__init__(env)
        self.groups = check_groups(self.num_envs, groups)
        self.return_rms = RunningMeanStd(shape=(), groups=groups)
        self.discounted_return = np.zeros(self.num_envs, dtype=np.float64)
        self.gamma = gamma
        self.clip = clip
        self.epsilon = epsilon
        self.update_stats = True
        self.batched_arithmetic = False
        """True: one env takes the numpy path too (the tests hold the two together)"""

    def step(self, actions):
        if self.num_envs == 1 and self.groups is None and not self.batched_arithmetic:
            return self._step_one_env(actions)
        obs, rewards, terminations, truncations, info = self.env.step(actions)
        self.discounted_return = self.discounted_return * self.gamma + rewards
        if self.update_stats:
            self.return_rms.update(self.discounted_return)
        self.discounted_return[np.logical_or(terminations, truncations)] = 0.0
        if self.groups is None:
            scaled = rewards / np.sqrt(self.return_rms.var + self.epsilon)
        else:  # each group's envs by their group's statistics
            scaled = (rewards.reshape(self.groups, -1) / np.sqrt(self.return_rms.var + self.epsilon)[:, None]).reshape(-1)
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

    def state_dict(self, group: int | None = None) -> dict[str, np.ndarray]:
        return {**self.return_rms.state_dict(group), "discounted_return": self.discounted_return[self._rows(group)].copy()}

    def load_state_dict(self, state: dict[str, np.ndarray], group: int | None = None) -> None:
        self.return_rms.load_state_dict(state, group)
        rows = self._rows(group)
        if "discounted_return" in state and np.shape(state["discounted_return"]) == self.discounted_return[rows].shape:
            self.discounted_return[rows] = np.asarray(state["discounted_return"], dtype=np.float64)

    def _rows(self, group: int | None) -> slice:
        size = self.num_envs if group is None else self.num_envs // self.groups
        return slice(0, size) if group is None else slice(group * size, (group + 1) * size)


def check_groups(num_envs: int, groups: int | None) -> int | None:
    if groups is not None and (groups < 1 or num_envs % groups):
        raise ValueError(f"groups={groups} must divide the {num_envs} envs into equal runs")
    return groups
