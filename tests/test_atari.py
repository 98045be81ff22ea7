"""The Atari details [atari 1-9]: each wrapper's behaviour, the Nature CNN, and the
C++ fast path (ale_py AtariVectorEnv) against the python wrapper stack."""

from __future__ import annotations

import cv2
import gymnasium as gym
import numpy as np
import pytest
import torch

ale_py = pytest.importorskip("ale_py", reason="Atari needs the atari extra: pip install 'rlkit[atari]'")

from rlkit.envs.atari import (  # noqa: E402
    AtariEpisodes,
    ClipReward,
    EpisodicLife,
    FireReset,
    make_atari_env,
    make_atari_vector_env,
    rom_name,
)

from rlkit.ppo import NatureCNNAgent, PPOConfig, make_agent, train  # noqa: E402

gym.register_envs(ale_py)
BREAKOUT, PONG = "BreakoutNoFrameskip-v4", "PongNoFrameskip-v4"


def raw_env(env_id: str = BREAKOUT) -> gym.Env:
    return gym.make(env_id, frameskip=1, repeat_action_probability=0.0)


def test_rom_names():
    assert rom_name(BREAKOUT) == "breakout"
    assert rom_name("ALE/MsPacman-v5") == "ms_pacman"
    assert rom_name("SpaceInvadersNoFrameskip-v4") == "space_invaders"


def test_noop_reset_starts_at_random_frames():  # [atari 1]
    starts = set()
    for seed in range(8):
        env = make_atari_env(BREAKOUT, noop_max=30, fire_reset=False)
        env.reset(seed=seed)
        starts.add(env.unwrapped.ale.getEpisodeFrameNumber())
        env.close()
    assert len(starts) >= 4 and all(1 <= s <= 30 for s in starts)
    env = make_atari_env(BREAKOUT, noop_max=0, fire_reset=False)
    env.reset(seed=0)
    assert env.unwrapped.ale.getEpisodeFrameNumber() == 0


def test_max_and_skip_and_warp_frame():  # [atari 2, 5]
    """One step = 4 emulator frames with the action repeated; the observation is the pixel-wise
    max of the last two grey frames, resized to 84x84 with INTER_AREA."""
    env = make_atari_env(PONG, noop_max=0, fire_reset=False)
    reference = raw_env(PONG)
    obs, _ = env.reset(seed=0)
    reference.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    actions = [0, 2, 3, 2, 1, 3, 3, 0]
    for action in actions:
        frames = []
        for _ in range(4):
            reference.step(action)
            frames.append(reference.unwrapped.ale.getScreenGrayscale())
        expected = cv2.resize(np.maximum(frames[-2], frames[-1]), (84, 84), interpolation=cv2.INTER_AREA)
        obs, *_ = env.step(action)
        assert env.unwrapped.ale.getEpisodeFrameNumber() == reference.unwrapped.ale.getEpisodeFrameNumber()
        np.testing.assert_array_equal(obs[-1], expected)


def test_frame_stack_shifts_and_pads_with_zeros():  # [atari 7]
    env = make_atari_env(PONG, noop_max=0, fire_reset=False)
    obs, _ = env.reset(seed=0)
    assert not obs[:3].any() and obs[3].any()  # zero padding after a reset, newest frame last
    for _ in range(5):
        new, *_ = env.step(0)
        np.testing.assert_array_equal(new[:3], obs[1:])
        obs = new


def test_episodic_life_ends_the_episode_but_not_the_game():  # [atari 3]
    env = EpisodicLife(raw_env())
    env.reset(seed=0)
    lives = env.unwrapped.ale.lives()
    terminated, steps = False, 0
    while not terminated:
        _, _, terminated, _, _ = env.step(1 if steps % 40 == 0 else 0)  # FIRE now and then, never catch the ball
        steps += 1
    assert env.unwrapped.ale.lives() == lives - 1 > 0  # a life lost is terminal for the learner
    frame = env.unwrapped.ale.getEpisodeFrameNumber()
    env.reset()
    assert env.unwrapped.ale.lives() == lives - 1  # ... but reset continued the same game
    assert env.unwrapped.ale.getEpisodeFrameNumber() == frame + 1  # one no-op frame, no emulator reset


class ActionRecorder(gym.Wrapper):
    def __init__(self, env):
        super().__init__(env)
        self.actions: list[int] = []

    def step(self, action):
        self.actions.append(int(action))
        return self.env.step(action)


def test_fire_reset_presses_fire_then_action_2():  # [atari 4]
    recorder = ActionRecorder(raw_env())
    env = FireReset(recorder)
    env.reset(seed=0)
    assert recorder.actions == [1, 2]
    with pytest.raises(ValueError, match="FIRE"):
        FireReset(raw_env("FreewayNoFrameskip-v4"))  # Freeway has no FIRE action


class ScriptedRewards(gym.Env):
    observation_space = gym.spaces.Box(0, 255, shape=(1,), dtype=np.uint8)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, rewards):
        self.rewards, self.t = list(rewards), 0

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(1, np.uint8), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.uint8), self.rewards[self.t - 1], self.t == len(self.rewards), False, {}


def test_clip_reward_learns_from_the_sign_and_logs_the_raw_score():  # [atari 6]
    env = ClipReward(gym.wrappers.RecordEpisodeStatistics(ScriptedRewards([7.0, 0.0, -3.0, 4.0])))
    env.reset(seed=0)
    steps = [env.step(0) for _ in range(4)]
    assert [s[1] for s in steps] == [1.0, 0.0, -1.0, 1.0]
    assert steps[-1][4]["episode"]["r"] == pytest.approx(8.0)  # raw game score, not the clipped sum 1


def test_python_stack_episode_return_is_the_raw_game_score():
    envs = make_atari_vector_env(PONG, 1, "python", noop_max=0, fire_reset=False)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    total = 0.0
    for _ in range(2000):
        _, reward, _, _, info = envs.step(rng.integers(0, 6, size=1))
        total += float(reward[0])
        if "_episode" in info and info["_episode"][0]:
            assert info["episode"]["r"][0] == pytest.approx(total) and total < 0  # Pong: every point lost is -1
            return
    pytest.fail("no Pong game ended in 2000 random steps")


@pytest.mark.parametrize("game", [PONG, BREAKOUT])
def test_fast_path_matches_the_python_stack(game):
    """Same actions, same frames: with no-op starts and FIRE off both stacks are deterministic and
    must agree pixel for pixel, reward for reward, until Breakout's first lost life, where the
    python stack's EpisodicLife reset (a no-op step, a fresh frame stack) shifts the game; the
    C++ env flags the same life loss as terminated and plays on."""
    python = make_atari_vector_env(game, 1, "python", noop_max=0, fire_reset=False)
    fast = make_atari_vector_env(game, 1, "ale_vector", noop_max=0, fire_reset=False)
    assert isinstance(fast, AtariEpisodes)
    obs_py, _ = python.reset(seed=0)
    obs_fast, _ = fast.reset(seed=0)
    np.testing.assert_array_equal(obs_py, obs_fast)
    rng = np.random.default_rng(0)
    for step in range(600):
        action = rng.integers(0, python.single_action_space.n, size=1)
        obs_py, r_py, term_py, trunc_py, info_py = python.step(action)
        obs_fast, r_fast, term_fast, trunc_fast, info_fast = fast.step(action)
        assert (r_py[0], term_py[0], trunc_py[0]) == (r_fast[0], term_fast[0], trunc_fast[0]), step
        if term_py[0]:
            assert game == BREAKOUT and step > 10  # Pong has no lives: 600 steps are one game
            assert info_fast["lives"][0] == 4 and "_episode" not in info_fast  # life lost, game goes on
            return
        np.testing.assert_array_equal(obs_py, obs_fast)
    assert game == PONG


def test_fast_path_reports_whole_games_in_raw_score():
    fast = make_atari_vector_env(PONG, 2, "ale_vector", noop_max=0, fire_reset=False)
    fast.reset(seed=0)
    rng = np.random.default_rng(0)
    totals = np.zeros(2)
    for _ in range(2000):
        _, reward, terminated, _, info = fast.step(rng.integers(0, 6, size=2))
        assert set(np.unique(reward)) <= {-1.0, 0.0, 1.0}
        totals += reward
        if "_episode" in info:
            done = np.flatnonzero(info["_episode"])
            assert terminated[done].all()
            np.testing.assert_allclose(info["episode"]["r"][done], totals[done])
            return
    pytest.fail("no Pong game ended in 2000 steps")


def test_nature_cnn_scales_pixels_and_is_orthogonal():  # [atari 8, 9]
    space = gym.spaces.Box(0, 255, shape=(4, 84, 84), dtype=np.uint8)
    agent = NatureCNNAgent(space, gym.spaces.Discrete(4))
    conv = agent.torso[0]
    flat = conv.weight.detach().reshape(conv.weight.shape[0], -1)
    np.testing.assert_allclose((flat @ flat.T).numpy(), 2.0 * np.eye(32), atol=1e-4)  # orthogonal rows, gain sqrt(2)
    assert not conv.bias.any()
    head = agent.actor_head.weight.detach()
    np.testing.assert_allclose((head @ head.T).numpy(), 1e-4 * np.eye(4), atol=1e-8)  # gain 0.01
    pixels = torch.randint(0, 256, (3, 4, 84, 84)).float()
    logits, value = agent(pixels)
    hidden = agent.torso((pixels / 255.0).contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(logits, agent.actor_head(hidden))
    torch.testing.assert_close(value, agent.critic_head(hidden).squeeze(-1))
    cfg = PPOConfig(env_id=BREAKOUT, network="nature_cnn", normalize_obs=False, normalize_reward=False)
    assert isinstance(make_agent(cfg.validate(), space, gym.spaces.Discrete(4)), NatureCNNAgent)


def test_atari_config_refuses_normalisation():
    with pytest.raises(ValueError, match="normalize_obs and normalize_reward must be false for Atari"):
        PPOConfig(env_id=BREAKOUT, network="nature_cnn").validate()
    with pytest.raises(ValueError, match="atari_backend"):
        PPOConfig(atari_backend="envpool").validate()
    plain = dict(env_id=BREAKOUT, network="nature_cnn", normalize_obs=False, normalize_reward=False)
    # both were accepted and never reached the game (the Atari stack builds its own envs)
    with pytest.raises(ValueError, match="env_kwargs are not used for Atari ids"):
        PPOConfig(**plain, env_kwargs={"repeat_action_probability": 0.25}).validate()
    with pytest.raises(ValueError, match="vectorization are not used for Atari ids"):
        PPOConfig(**plain, vectorization="async").validate()


@pytest.mark.parametrize("backend", ["ale_vector", "python"])
def test_atari_training_smoke(tmp_path, backend):
    cfg = PPOConfig(env_id=PONG, network="nature_cnn", atari_backend=backend, normalize_obs=False,
                    normalize_reward=False, total_timesteps=256, num_envs=2, num_steps=64, num_minibatches=2,
                    update_epochs=1, run_dir=str(tmp_path))
    result = train(cfg, run_name="smoke", progress=False)
    assert result.global_step == 256 and np.isfinite(result.last_update["policy_loss"])
