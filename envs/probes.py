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

Two observation probes test the adapters and networks for other spaces:
HWCImageProbe (an (H, W, 3) uint8 image whose lit colour channel names the
best action: image detection, HWC -> CHW, the CNN) and DictImageVectorProbe (a
Dict of an image and a vector whose combination, xor-like, names the best
action: the multi-input network).
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


class MultiDiscreteProbe(gym.Env):
    """One step, obs is -1 or +1, actions MultiDiscrete([2, 3]).  Reward 0.5 when the
    first component matches the obs (1 for +1, 0 for -1) plus 0.5 when the second is
    2 for +1 and 0 for -1: both independent categoricals must read the obs."""

    metadata = {"render_modes": []}
    observation_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
    action_space = spaces.MultiDiscrete([2, 3])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._obs = float(self.np_random.choice([-1.0, 1.0]))
        return np.array([self._obs], dtype=np.float32), {}

    def step(self, action):
        positive = self._obs > 0
        reward = 0.5 * (int(action[0]) == int(positive)) + 0.5 * (int(action[1]) == (2 if positive else 0))
        return np.array([self._obs], dtype=np.float32), float(reward), True, False, {}


class MaskedActionProbe(gym.Env):
    """One step, obs 0, Discrete(3) with ``info["action_mask"] = [1, 1, 0]``.  Action 1
    pays +1, action 0 pays 0, and the masked action 2 would pay +10: a masked agent must
    learn action 1 and never take action 2 (an episode return of 10 shows it did)."""

    metadata = {"render_modes": []}
    observation_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
    action_space = spaces.Discrete(3)
    MASK = np.array([1, 1, 0], dtype=np.int8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, dtype=np.float32), {"action_mask": self.MASK.copy()}

    def step(self, action):
        reward = {0: 0.0, 1: 1.0, 2: 10.0}[int(action)]
        return np.zeros(1, dtype=np.float32), reward, True, False, {"action_mask": self.MASK.copy()}


class MemoryProbe(gym.Env):
    """Two steps.  Step 0 shows a cue (obs [cue, 0], cue = -1 or +1), any action, reward 0;
    step 1 shows [0, 1] and pays +1 for the action matching the cue (1 for +1), else -1.
    At step 1 the observation carries nothing about the cue, so a memoryless policy earns
    exactly 0 in expectation; a recurrent one can earn +1."""

    metadata = {"render_modes": []}
    observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._cue, self._t = float(self.np_random.choice([-1.0, 1.0])), 0
        return np.array([self._cue, 0.0], dtype=np.float32), {}

    def step(self, action):
        if self._t == 0:
            self._t = 1
            return np.array([0.0, 1.0], dtype=np.float32), 0.0, False, False, {}
        reward = 1.0 if int(action) == int(self._cue > 0) else -1.0
        return np.array([0.0, 1.0], dtype=np.float32), reward, True, False, {}


class HWCImageProbe(gym.Env):
    """One step, an (H, W, 3) uint8 image, channels last, with one colour channel lit (255) and the
    others dark; Discrete(3): the action naming the lit channel pays +1, any other -1.  Tests image
    detection, the HWC -> CHW transpose and the CNN: only the pixels say what to do (random: -1/3)."""

    metadata = {"render_modes": []}
    action_space = spaces.Discrete(3)

    def __init__(self, size: int = 10):
        self.observation_space = spaces.Box(0, 255, shape=(size, size, 3), dtype=np.uint8)
        self._lit = 0

    def _image(self) -> np.ndarray:
        image = np.zeros(self.observation_space.shape, dtype=np.uint8)
        image[:, :, self._lit] = 255
        return image

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._lit = int(self.np_random.integers(3))
        return self._image(), {}

    def step(self, action):
        return self._image(), 1.0 if int(action) == self._lit else -1.0, True, False, {}


class DictImageVectorProbe(gym.Env):
    """One step, Dict observation {"image": (H, W, 1) uint8 with its left or right half bright,
    "vector": Box(-1, 1, (1,)) holding -1 or +1}; Discrete(2): action 1 pays +1 when
    (right half bright) xor (vector < 0), action 0 pays +1 otherwise, the other action -1.
    Neither part alone says what to do (each alone earns 0 in expectation): the multi-input
    network must read the image (CNN) and the vector (MLP) and combine them."""

    metadata = {"render_modes": []}
    action_space = spaces.Discrete(2)

    def __init__(self, size: int = 8):
        self.observation_space = spaces.Dict({
            "image": spaces.Box(0, 255, shape=(size, size, 1), dtype=np.uint8),
            "vector": spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32),
        })
        self._right, self._sign = False, 1.0

    def _observation(self) -> dict:
        image = np.zeros(self.observation_space["image"].shape, dtype=np.uint8)
        half = image.shape[1] // 2
        if self._right:
            image[:, half:] = 255
        else:
            image[:, :half] = 255
        return {"image": image, "vector": np.array([self._sign], dtype=np.float32)}

    def best_action(self) -> int:
        return int(self._right != (self._sign < 0))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._right = bool(self.np_random.integers(2))
        self._sign = float(self.np_random.choice([-1.0, 1.0]))
        return self._observation(), {}

    def step(self, action):
        return self._observation(), 1.0 if int(action) == self.best_action() else -1.0, True, False, {}


class HideVelocity(gym.ObservationWrapper):
    """CartPole without its velocities: keeps cart position and pole angle (obs[0], obs[2]).

    The standard partially observed control task: velocities must be inferred from
    successive observations, which a recurrent agent can do and a feed-forward one cannot.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        low, high = env.observation_space.low[[0, 2]], env.observation_space.high[[0, 2]]
        self.observation_space = spaces.Box(low, high, dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation[[0, 2]].astype(np.float32)


def make_cartpole_no_velocity(**kwargs) -> gym.Env:
    from gymnasium.envs.classic_control.cartpole import CartPoleEnv

    return HideVelocity(CartPoleEnv(**kwargs))


EXTRA_PROBES: dict[str, type[gym.Env]] = {
    "rlkit/MultiDiscreteProbe-v0": MultiDiscreteProbe,
    "rlkit/MaskedActionProbe-v0": MaskedActionProbe,
    "rlkit/MemoryProbe-v0": MemoryProbe,
}
"""Probes with their own action spaces: MultiDiscrete, masked Discrete, and memory (recurrent agents)."""

OBSERVATION_PROBES: dict[str, type[gym.Env]] = {
    "rlkit/HWCImageProbe-v0": HWCImageProbe,
    "rlkit/DictImageVectorProbe-v0": DictImageVectorProbe,
}
"""Probes with image and Dict observations (rlkit.envs.observations adapts them; rlkit.networks encodes them)."""


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
    """Register every probe under rlkit/<Name>-{Discrete,Continuous}-v0, the extra and observation probes as
    rlkit/<Name>-v0 (idempotent)."""
    for env_id, cls in {**EXTRA_PROBES, **OBSERVATION_PROBES}.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=cls, max_episode_steps=10)
    if "rlkit/CartPoleNoVelocity-v1" not in gym.registry:
        gym.register(id="rlkit/CartPoleNoVelocity-v1", entry_point=make_cartpole_no_velocity, max_episode_steps=500,
                     reward_threshold=475.0)
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
