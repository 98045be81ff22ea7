"""Probe environments: the five classic one-question tests for an RL agent.

After Andy Jones, "Debugging RL, Without the Agonizing Pain" (2021). Each probe
isolates one part of the agent, so the first probe that fails says where the bug
is:

1. ConstantReward: one step, obs 0, reward +1.  Tests the value loss: V(obs) -> 1.
2. ObsDependentReward: one step, obs is +-1, reward = obs.  Tests that the value
   net reads the observation: V(+1) -> +1, V(-1) -> -1.
3. TwoStepDiscounted: obs 0 then obs 1, reward +1 only at the end.  Tests
   discounting and bootstrapping: V(0) -> gamma, V(1) -> 1.
4. ActionDependentReward: one step, obs 0, reward depends on the action only.
   Tests the policy gradient: the agent learns the best action.
5. ObsAndActionDependentReward: one step, obs is +-1, the best action depends on
   the observation.  Tests that policy and value learn together.

Each has a Discrete(2) and a Box(-1, 1) action version.  For the continuous
versions the reward is 1 - (a - target)^2 with target 0.5 (probe 4) or
0.5 * obs (probe 5), so the learned mean action must reach the target.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

CONTINUOUS_TARGET = 0.5
"""Best continuous action of probe 4, and the multiplier of obs in probe 5."""


class _Probe(gym.Env):
    """Shared plumbing: a 1-d observation in [-1, 1] and a Discrete(2) or Box action."""

    metadata = {"render_modes": []}

    def __init__(self, continuous: bool = False):
        self.continuous = continuous
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        if continuous:
            self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        else:
            self.action_space = spaces.Discrete(2)
        self._obs = 0.0

    def _observation(self) -> np.ndarray:
        return np.array([self._obs], dtype=np.float32)

    def _continuous_action(self, action) -> float:
        return float(np.asarray(action, dtype=np.float64).reshape(-1)[0])


class ConstantReward(_Probe):
    """Probe 1: one step, obs 0, reward +1 whatever the action."""

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._obs = 0.0
        return self._observation(), {}

    def step(self, action):
        return self._observation(), 1.0, True, False, {}


class ObsDependentReward(_Probe):
    """Probe 2: one step, obs is -1 or +1 at random, reward = obs."""

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._obs = float(self.np_random.choice([-1.0, 1.0]))
        return self._observation(), {}

    def step(self, action):
        return self._observation(), self._obs, True, False, {}


class TwoStepDiscounted(_Probe):
    """Probe 3: obs 0, then obs 1, then the episode ends with reward +1."""

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._obs = 0.0
        return self._observation(), {}

    def step(self, action):
        if self._obs == 0.0:
            self._obs = 1.0
            return self._observation(), 0.0, False, False, {}
        return self._observation(), 1.0, True, False, {}


class ActionDependentReward(_Probe):
    """Probe 4: one step, obs 0; discrete: action 1 pays +1, action 0 pays -1;
    continuous: reward 1 - (a - 0.5)^2."""

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._obs = 0.0
        return self._observation(), {}

    def step(self, action):
        if self.continuous:
            reward = 1.0 - (self._continuous_action(action) - CONTINUOUS_TARGET) ** 2
        else:
            reward = 1.0 if int(action) == 1 else -1.0
        return self._observation(), reward, True, False, {}


class ObsAndActionDependentReward(_Probe):
    """Probe 5: one step, obs is -1 or +1; discrete: +1 for the action that matches
    the obs (1 for +1, 0 for -1), else -1; continuous: 1 - (a - 0.5 * obs)^2."""

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._obs = float(self.np_random.choice([-1.0, 1.0]))
        return self._observation(), {}

    def step(self, action):
        if self.continuous:
            target = CONTINUOUS_TARGET * self._obs
            reward = 1.0 - (self._continuous_action(action) - target) ** 2
        else:
            matching_action = 1 if self._obs > 0 else 0
            reward = 1.0 if int(action) == matching_action else -1.0
        return self._observation(), reward, True, False, {}


PROBES: dict[str, type[_Probe]] = {
    "ConstantReward": ConstantReward,
    "ObsDependentReward": ObsDependentReward,
    "TwoStepDiscounted": TwoStepDiscounted,
    "ActionDependentReward": ActionDependentReward,
    "ObsAndActionDependentReward": ObsAndActionDependentReward,
}


def probe_id(name: str, continuous: bool) -> str:
    """The gymnasium id of a probe, e.g. rlkit/ConstantReward-Discrete-v0."""
    return f"rlkit/{name}-{'Continuous' if continuous else 'Discrete'}-v0"


def register_probes() -> None:
    """Register every probe under rlkit/<Name>-{Discrete,Continuous}-v0 (idempotent)."""
    for name, cls in PROBES.items():
        for continuous in (False, True):
            env_id = probe_id(name, continuous)
            if env_id not in gym.registry:
                gym.register(
                    id=env_id,
                    entry_point=cls,
                    kwargs={"continuous": continuous},
                    max_episode_steps=10,
                )
