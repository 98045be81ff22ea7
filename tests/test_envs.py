"""Probe envs, the vector-env factory and the savable normalisers."""

import gymnasium as gym
import numpy as np
import pytest
from rlkit.envs import (
    PROBES,
    RunningMeanStd,
    load_normalizer_state,
    make_vector_env,
    normalizer_state,
    probe_id,
)


def test_running_mean_std_matches_numpy_over_batches():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(1000, 4))
    rms = RunningMeanStd(shape=(4,), epsilon=0.0 + 1e-12)
    for chunk in np.array_split(data, 17):
        rms.update(chunk)
    np.testing.assert_allclose(rms.mean, data.mean(0), rtol=1e-9)
    np.testing.assert_allclose(rms.var, data.var(0), rtol=1e-9)


@pytest.mark.parametrize("shape", [(4,), ()])
def test_running_mean_std_one_sample_at_a_time_matches_numpy(shape):
    """One env feeds batches of one sample: the fast path must give numpy's statistics too."""
    rng = np.random.default_rng(1)
    data = rng.normal(-5.0, 30.0, size=(2000, *shape))
    rms = RunningMeanStd(shape=shape, epsilon=1e-12)
    for sample in data:
        rms.update(sample[None])
    np.testing.assert_allclose(rms.mean, data.mean(0), rtol=1e-9)
    np.testing.assert_allclose(rms.var, data.var(0), rtol=1e-9)
    assert rms.count == pytest.approx(2000)


def test_observation_normaliser_matches_numpy_statistics_of_what_it_saw():
    # Two identical envs, same seed and actions: one raw, one normalised.
    raw = make_vector_env("Pendulum-v1", 3)
    wrapped = make_vector_env("Pendulum-v1", 3, normalize_obs=True)
    raw_obs, _ = raw.reset(seed=0)
    wrapped.reset(seed=0)
    seen = [raw_obs]
    actions = np.random.default_rng(0).uniform(-2, 2, size=(250, 3, 1)).astype(np.float32)
    for action in actions:  # 250 steps cross the 200-step time limit and its autoreset
        raw_obs, *_ = raw.step(action)
        normalised, *_ = wrapped.step(action)
        seen.append(raw_obs)
    everything = np.concatenate(seen)
    rms = wrapped.obs_rms
    np.testing.assert_allclose(rms.mean, everything.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rms.var, everything.var(0), rtol=1e-5, atol=1e-6)
    expected = (raw_obs - everything.mean(0)) / np.sqrt(everything.var(0) + 1e-8)
    np.testing.assert_allclose(normalised, expected, rtol=1e-4, atol=1e-4)
    raw.close()
    wrapped.close()


def test_final_obs_is_normalised_like_the_others_and_clipped():
    envs = make_vector_env("Pendulum-v1", 2, normalize_obs=True, obs_clip=0.5)
    envs.reset(seed=1)
    for _ in range(200):
        obs, _, _, truncated, info = envs.step(envs.action_space.sample())
    assert truncated.all()
    assert np.abs(obs).max() <= 0.5
    for final in info["final_obs"]:
        assert np.abs(final).max() <= 0.5 and final.dtype == np.float32
    envs.close()


def test_normaliser_state_round_trip_and_mismatch_error():
    envs = make_vector_env("Pendulum-v1", 2, normalize_obs=True, normalize_reward=True)
    envs.reset(seed=0)
    for _ in range(30):
        envs.step(envs.action_space.sample())
    state = normalizer_state(envs)
    assert set(state) >= {"obs.mean", "obs.var", "obs.count", "reward.mean", "reward.var", "reward.count"}
    fresh = make_vector_env("Pendulum-v1", 2, normalize_obs=True, normalize_reward=True)
    load_normalizer_state(fresh, state)
    for key, value in normalizer_state(fresh).items():
        np.testing.assert_array_equal(value, state[key])
    other = make_vector_env("CartPole-v1", 2, normalize_obs=True)
    with pytest.raises(ValueError, match="shape"):
        load_normalizer_state(other, state)
    with pytest.raises(ValueError, match="no reward normaliser"):
        load_normalizer_state(fresh, {k: v for k, v in state.items() if k.startswith("obs.")})
    for e in (envs, fresh, other):
        e.close()


def test_reward_scaling_divides_by_discounted_return_std_and_clips():
    envs = make_vector_env("Pendulum-v1", 2, normalize_reward=True, reward_clip=0.3)
    envs.reset(seed=0)
    for _ in range(50):
        _, reward, *_ = envs.step(envs.action_space.sample())
    assert np.abs(reward).max() <= 0.3
    envs.close()


def test_actions_are_clipped_in_the_env():
    envs = make_vector_env("Pendulum-v1", 1)
    envs.reset(seed=0)
    envs.step(np.array([[100.0]]))  # must not raise or apply a torque of 100
    assert envs.unwrapped.envs[0].unwrapped.last_u == pytest.approx(2.0)
    envs.close()


@pytest.mark.parametrize("name", list(PROBES))
@pytest.mark.parametrize("continuous", [False, True])
def test_probe_envs_are_registered_and_pass_the_env_checker(name, continuous):
    env = gym.make(probe_id(name, continuous))
    from gymnasium.utils.env_checker import check_env

    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    env.close()


def test_unknown_env_id_suggests_close_matches():
    with pytest.raises(ValueError, match="Did you mean.*CartPole-v1"):
        make_vector_env("CartPol-v1", 1)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_one_env_reward_scaling_in_floats_is_the_numpy_path_bit_for_bit(env_id):
    """NormalizeReward's one-env step does its arithmetic in Python floats; the numbers are the array path's."""
    stacks = [make_vector_env(env_id, 1, normalize_reward=True, reward_clip=0.5, gamma=0.9) for _ in range(2)]
    stacks[1].batched_arithmetic = True
    actions = [stacks[0].action_space.sample() for _ in range(600)]
    for envs in stacks:
        envs.reset(seed=3)
    largest = 0.0
    for step, action in enumerate(actions):
        if step == 400:  # frozen statistics (evaluation) take the same path
            for envs in stacks:
                envs.update_stats = False
        (_, fast, term, trunc, _), (_, plain, *_) = (envs.step(action) for envs in stacks)
        assert fast.dtype == plain.dtype and np.array_equal(fast, plain), step
        largest = max(largest, float(np.abs(plain).max()))
    assert largest == 0.5  # the clip was reached
    for key, value in stacks[1].state_dict().items():
        assert np.array_equal(stacks[0].state_dict()[key], value), key
