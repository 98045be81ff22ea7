"""A user's own environment, outside rlkit: importing this module registers mymod:PointMass-v0 /
PointMass-v0 (a 1-D point mass pushed back to the origin; Box actions in [-2, 2])."""

import gymnasium as gym
import numpy as np


class PointMass(gym.Env):
    """x'' = action (clipped to [-2, 2]), dt 0.1; reward -x^2 - 0.01 action^2; 50 steps from x in [-1, 1].

    Doing nothing scores about -17 (x stays where it started, E[x^2] = 1/3 over 50 steps); driving x to
    0 quickly scores about -2.  The optimum depends on both position and velocity."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
    action_space = gym.spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float32)

    def __init__(self, mass: float = 1.0):
        self.mass = mass

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.v = float(self.np_random.uniform(-1, 1)), 0.0
        return np.array([self.x, self.v], dtype=np.float32), {}

    def step(self, action):
        a = float(np.clip(np.asarray(action).reshape(-1)[0], -2.0, 2.0))
        self.v += 0.1 * a / self.mass
        self.x += 0.1 * self.v
        reward = -(self.x**2) - 0.01 * a**2
        return np.array([self.x, self.v], dtype=np.float32), reward, False, False, {}


gym.register("PointMass-v0", entry_point=PointMass, max_episode_steps=50)
