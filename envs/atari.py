"""The Atari stack of the PPO paper's code (Mnih et al. 2015 preprocessing), two ways.

Details [atari 1-6] of the ICLR blog's list, innermost first:

1. NoopReset(30): 1-30 random no-op frames after every reset, so start states differ.
2. MaxAndSkip(4): repeat each action 4 frames, observe the max of the last two
   (Atari sprites flicker between frames).
3. EpisodicLife: a lost life ends the episode for learning (value target 0), but the
   game goes on; only game over resets the emulator.
4. FireReset: press FIRE after a reset in games that need it to start.
5. WarpFrame: 84x84 greyscale.
6. ClipReward: the sign of the reward (-1, 0, +1) for learning; episode returns
   are logged in raw game score.
7. FrameStack(4): the last 4 frames are the observation, uint8 [4, 84, 84].

``python``: gymnasium + ale_py per-env wrappers in a gymnasium vector env.
NoopReset, MaxAndSkip and WarpFrame are gymnasium's ``AtariPreprocessing``
(ALE's own greyscale, cv2 INTER_AREA resize); EpisodicLife, FireReset and
ClipReward are the small wrappers below, because gymnasium's
``terminal_on_life_loss`` resets the emulator at every lost life.

``ale_vector``: ale_py's C++ ``AtariVectorEnv`` (threads, no Python per step), with
``life_loss_info`` for EpisodicLife; :class:`AtariEpisodes` adds the sign clip and
the raw game-score episode statistics.  Where they differ (tested in
tests/test_atari.py): the C++ env presses FIRE only at game start, not after a lost
life (the agent learns to press it), and pads the frame stack with zeros after a
reset, which the python stack does as well (``padding_type="zero"``) so that
both see the same observations.

Both auto-reset in the same step (gymnasium's SAME_STEP mode; ``info["final_obs"]``).
"""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

ATARI_BACKENDS = ("ale_vector", "python")
MAX_FRAMES_PER_EPISODE = 108_000  # 30 minutes of play at 60 Hz (Machado et al. 2018)
FRAME_SKIP = 4  # [atari 2]: the agent acts on every 4th frame
VIDEO_FPS = 60 // FRAME_SKIP  # a recorded frame per agent step plays in real time


def _require_ale():
    try:
        import ale_py
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError("Atari needs ale-py and OpenCV: pip install 'rlkit[atari]'") from error
    gym.register_envs(ale_py)
    return ale_py


def is_atari_id(env_id: str) -> bool:
    """BreakoutNoFrameskip-v4, ALE/Breakout-v5, ... (ids ale_py registers)."""
    return env_id.startswith("ALE/") or "NoFrameskip" in env_id


def rom_name(env_id: str) -> str:
    """'BreakoutNoFrameskip-v4' -> 'breakout', 'ALE/MsPacman-v5' -> 'ms_pacman' (ale_py ROM names)."""
    name = env_id.split("/")[-1].split("-")[0].replace("NoFrameskip", "")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class EpisodicLife(gym.Wrapper):
    """[atari 3] A lost life is `terminated` for the learner; the emulator is reset only at game over.

    After a lost life, ``reset()`` takes one no-op step instead of resetting, so the
    game continues from where it was.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.lives = 0
        self.game_over = True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = self.env.unwrapped.ale.lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs):
        if self.game_over:
            obs, info = self.env.reset(**kwargs)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:  # the no-op lost the last life
                obs, info = self.env.reset(**kwargs)
        self.lives = self.env.unwrapped.ale.lives()
        self.game_over = False
        return obs, info


class FireReset(gym.Wrapper):
    """[atari 4] Press FIRE (then action 2) after every reset, in games whose action 1 is FIRE."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        meanings = env.unwrapped.get_action_meanings()
        if len(meanings) < 3 or meanings[1] != "FIRE":
            raise ValueError(f"FireReset needs a game with FIRE as action 1, got {meanings}")

    def reset(self, **kwargs):
        self.env.reset(**kwargs)
        obs, _, terminated, truncated, info = self.env.step(1)
        if terminated or truncated:
            self.env.reset(**kwargs)
        obs, _, terminated, truncated, info = self.env.step(2)
        if terminated or truncated:
            obs, info = self.env.reset(**kwargs)
        return obs, info


class ClipReward(gym.RewardWrapper):
    """[atari 6] Learn from the sign of the reward; RecordEpisodeStatistics (inside) keeps the raw score."""

    def reward(self, reward):
        return float(np.sign(reward))


def make_atari_env(env_id: str, noop_max: int = 30, frame_skip: int = FRAME_SKIP, fire_reset: bool = True,
                   render_mode: str | None = None, game_wrapper=None) -> gym.Env:
    """One Atari env with the python wrapper stack, innermost first.

    ``game_wrapper(env)`` wraps the preprocessed game below EpisodicLife, so it sees whole games: with
    RecordVideo and ``render_mode="rgb_array"``, one file per game of full-colour 210x160 frames (the
    emulator's render), one per agent step, at 60 / frame_skip fps (every frame_skip-th emulator frame:
    a 100k-frame game holds 25k frames in memory until it is written, not 100k)."""
    _require_ale()
    env = gym.make(env_id, frameskip=1, repeat_action_probability=0.0, full_action_space=False,
                   max_num_frames_per_episode=MAX_FRAMES_PER_EPISODE, render_mode=render_mode)
    env = gym.wrappers.RecordEpisodeStatistics(env)  # raw game score, whole games (outside EpisodicLife's view)
    env = gym.wrappers.AtariPreprocessing(env, noop_max=noop_max, frame_skip=frame_skip, screen_size=84,
                                          terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False)  # [atari 1, 2, 5]
    if game_wrapper is not None:
        env = game_wrapper(env)
    env = EpisodicLife(env)
    if fire_reset and "FIRE" in env.unwrapped.get_action_meanings():
        env = FireReset(env)
    env = ClipReward(env)
    return gym.wrappers.FrameStackObservation(env, 4, padding_type="zero")  # [atari 7]


class AtariEpisodes(gym.vector.VectorWrapper):
    """Sign-clipped rewards [atari 6] and RecordEpisodeStatistics-style ``info["episode"]`` over
    whole games (raw score; length in frames, agent steps x 4) for ale_py's AtariVectorEnv run
    with ``life_loss_info``."""

    def __init__(self, env: gym.vector.VectorEnv):
        super().__init__(env)
        self.returns = np.zeros(self.num_envs)
        self.lengths = np.zeros(self.num_envs, dtype=np.int64)
        self.frame_numbers = np.zeros(self.num_envs, dtype=np.int64)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.returns[:] = 0
        self.lengths[:] = 0
        self.frame_numbers = info["episode_frame_number"].astype(np.int64)
        return obs, info

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        self.returns += reward
        self.lengths += 1
        frame_numbers = info["episode_frame_number"].astype(np.int64)
        # A lost life (terminated, game goes on) keeps counting frames; a game over resets them.
        game_over = (terminated | truncated) & (frame_numbers < self.frame_numbers)
        self.frame_numbers = frame_numbers
        if game_over.any():
            info = dict(info)
            frames = self.lengths * 4  # emulator frames, as the python stack's RecordEpisodeStatistics counts them
            info["episode"] = {"r": np.where(game_over, self.returns, 0.0), "l": np.where(game_over, frames, 0),
                               "_r": game_over, "_l": game_over}
            info["_episode"] = game_over
            self.returns[game_over] = 0
            self.lengths[game_over] = 0
        return obs, np.sign(reward).astype(np.float32), terminated, truncated, info


class FinalEpisodeInfo(gym.vector.VectorWrapper):
    """Moves the sub-envs' RecordEpisodeStatistics ``episode`` out of ``info["final_info"]`` (where a
    same-step autoreset puts it) to the top level, where the vector RecordEpisodeStatistics puts it."""

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        final = info.get("final_info", {})
        if "_episode" in final:
            info = dict(info)
            info["episode"] = final["episode"]
            info["_episode"] = final["_episode"] & info["_final_info"]
        return obs, reward, terminated, truncated, info


def make_atari_vector_env(env_id: str, num_envs: int, backend: str = "ale_vector", noop_max: int = 30,
                          fire_reset: bool = True, num_threads: int = 0, render_mode: str | None = None,
                          game_wrapper=None) -> gym.vector.VectorEnv:
    """``num_envs`` Atari games with the full stack, SAME_STEP autoreset, uint8 [N, 4, 84, 84] observations.

    backend ``ale_vector`` (C++ threads) or ``python`` (gymnasium wrappers, one process; the two agree pixel
    for pixel, tested). ``render_mode`` / ``game_wrapper`` (see make_atari_env) need the python backend,
    whose games can be rendered: the C++ env hands out only the agent's 84x84 frames.
    """
    if backend not in ATARI_BACKENDS:
        raise ValueError(f"atari_backend must be one of {ATARI_BACKENDS}, got {backend!r}")
    _require_ale()
    if env_id not in gym.registry:
        raise ValueError(f"unknown Atari id {env_id!r}; use e.g. BreakoutNoFrameskip-v4 or PongNoFrameskip-v4")
    if (render_mode is not None or game_wrapper is not None) and backend != "python":
        raise ValueError("rendering an Atari game needs atari_backend = 'python' (ale_vector has no rgb frames)")
    if backend == "python":
        envs = gym.vector.SyncVectorEnv([lambda: make_atari_env(env_id, noop_max, fire_reset=fire_reset, render_mode=render_mode,
                                                                game_wrapper=game_wrapper) for _ in range(num_envs)],
                                        autoreset_mode=AutoresetMode.SAME_STEP)
        return FinalEpisodeInfo(envs)
    from ale_py.vector_env import AtariVectorEnv

    envs = AtariVectorEnv(rom_name(env_id), num_envs, num_threads=num_threads, autoreset_mode="SameStep",
                          max_num_frames_per_episode=MAX_FRAMES_PER_EPISODE, repeat_action_probability=0.0,
                          frameskip=FRAME_SKIP, maxpool=True, noop_max=noop_max, grayscale=True, stack_num=4,
                          img_height=84, img_width=84, episodic_life=False, life_loss_info=True,
                          reward_clipping=False, use_fire_reset=fire_reset)
    return AtariEpisodes(envs)
