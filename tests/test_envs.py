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


def _same(a, b) -> bool:
    """Bitwise equality of nested checkpoint structures (dicts, lists, arrays, numbers)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.asarray(a).shape == np.asarray(b).shape and np.array_equal(a, b)
    return a == b


def _without_clock(state: dict) -> dict:
    """An env_state without RecordEpisodeStatistics' episode start times (wall-clock readings) and
    episode count (one counter for the whole vector env; rlkit reads neither)."""
    return {**state, "vector_wrappers": [{k: v for k, v in w.items() if k not in ("episode_start_times", "episode_count")}
                                         for w in state["vector_wrappers"]]}


@pytest.mark.parametrize("per_seed", [1, 3])
@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_grouped_env_stack_is_each_runs_own_stack_bit_for_bit(env_id, per_seed):
    """Batched seeds step all seeds' envs as one vector env with per-run normaliser groups: each run's
    observations, rewards, final observations, normaliser statistics and exact env state are those of
    that run's own stack (the same arithmetic, elementwise per group)."""
    from rlkit.envs import EnvGroup, env_state

    seeds, kwargs = [5, 11, 17], {"normalize_obs": True, "normalize_reward": True, "obs_clip": 1.5, "gamma": 0.9}
    alone = [make_vector_env(env_id, per_seed, **kwargs) for _ in seeds]
    grouped = make_vector_env(env_id, per_seed * len(seeds), groups=len(seeds), **kwargs)
    parts = [EnvGroup(grouped, k, len(seeds)) for k in range(len(seeds))]
    obs, _ = grouped.reset(seed=[s + j for s in seeds for j in range(per_seed)])
    for k, (envs, seed) in enumerate(zip(alone, seeds)):
        assert np.array_equal(envs.reset(seed=seed)[0], obs[parts[k].rows])
    rng = np.random.default_rng(0)
    finals = 0
    for _ in range(450):  # past Pendulum's 200-step time limit twice: final observations
        actions = np.stack([alone[0].action_space.sample() for _ in seeds])  # [seeds, E, ...]
        actions = rng.uniform(-2, 2, actions.shape).astype(np.float32) if env_id == "Pendulum-v1" else actions
        obs, rewards, terms, truncs, info = grouped.step(actions.reshape(-1, *actions.shape[2:]))
        for k, envs in enumerate(alone):
            rows = parts[k].rows
            o, r, te, tr, i = envs.step(actions[k])
            assert np.array_equal(o, obs[rows]) and np.array_equal(r, rewards[rows]) and r.dtype == rewards.dtype
            assert np.array_equal(te, terms[rows]) and np.array_equal(tr, truncs[rows])
            if "_final_obs" in i:
                finals += int(i["_final_obs"].sum())
                for j in np.flatnonzero(i["_final_obs"]):
                    assert np.array_equal(i["final_obs"][j], info["final_obs"][rows][j])
    assert finals > 0
    for k, envs in enumerate(alone):
        assert _same(normalizer_state(parts[k]), normalizer_state(envs))
        assert _same(_without_clock(env_state(parts[k])), _without_clock(env_state(envs)))


def test_a_grouped_env_stack_restores_one_runs_state_from_its_own_stack():
    """What one run's stack saved (a checkpoint of a seed run alone) loads into that run's group, and back."""
    from rlkit.envs import EnvGroup, env_state, load_env_state

    kwargs = {"normalize_obs": True, "normalize_reward": True}
    alone = make_vector_env("Pendulum-v1", 2, **kwargs)
    alone.reset(seed=4)
    for _ in range(30):
        alone.step(alone.action_space.sample())
    grouped = make_vector_env("Pendulum-v1", 6, groups=3, **kwargs)
    grouped.reset(seed=0)
    part, other = EnvGroup(grouped, 1, 3), EnvGroup(grouped, 2, 3)
    untouched = env_state(other)
    load_env_state(part, env_state(alone))
    assert _same(_without_clock(env_state(part)), _without_clock(env_state(alone)))
    assert _same(env_state(other), untouched)
    actions = np.stack([alone.action_space.sample() for _ in range(3)])
    obs, rewards, *_ = grouped.step(actions.reshape(6, 1))
    o, r, *_ = alone.step(actions[1])
    assert np.array_equal(o, obs[part.rows]) and np.array_equal(r, rewards[part.rows])
    with pytest.raises(ValueError, match="one group at a time"):
        normalizer_state(grouped)
    with pytest.raises(ValueError, match="must divide"):
        make_vector_env("Pendulum-v1", 5, groups=2, **kwargs)


def _same_infos(a, b) -> bool:
    """Infos equal key by key, in order, arrays (object arrays of final observations / infos too) bit for bit."""
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same_infos(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray) and a.dtype == object:
        return isinstance(b, np.ndarray) and b.dtype == object and len(a) == len(b) and all(
            _same_infos(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.asarray(a).dtype == np.asarray(b).dtype and _same(a, b)
    return a == b or (a is None and b is None)


@pytest.mark.parametrize("env_id,num_envs,steps", [("CartPole-v1", 1, 600), ("CartPole-v1", 3, 600),
                                                   ("Pendulum-v1", 2, 450), ("FrozenLake-v1", 2, 300),
                                                   ("HalfCheetah-v5", 1, 1100)])
def test_the_sync_vector_env_step_is_gymnasiums(env_id, num_envs, steps):
    """rlkit's shorter SyncVectorEnv.step returns what gymnasium's returns: observations, rewards,
    terminations, truncations and infos (final observations and infos at autoresets, MuJoCo's reward
    terms) bit for bit, dtypes included, over episodes ending by termination and by time limit."""
    from gymnasium.vector import SyncVectorEnv

    from rlkit.envs.factory import SameStepSyncVectorEnv

    if env_id.startswith("HalfCheetah"):
        pytest.importorskip("mujoco")
    ours = make_vector_env(env_id, num_envs)
    theirs = make_vector_env(env_id, num_envs)
    theirs.unwrapped.__class__ = SyncVectorEnv
    assert type(ours.unwrapped) is SameStepSyncVectorEnv
    (obs_a, info_a), (obs_b, info_b) = ours.reset(seed=9), theirs.reset(seed=9)
    assert _same(obs_a, obs_b) and _same_infos(info_a, info_b)
    ours.action_space.seed(1)
    ends = 0
    for step in range(steps):
        actions = ours.action_space.sample()
        a, b = ours.step(actions), theirs.step(actions)
        for x, y in zip(a[:4], b[:4]):
            assert x.dtype == y.dtype and np.array_equal(x, y), step
        for infos in (a[4], b[4]):  # an episode's wall-clock duration is no output of the env
            infos.get("episode", {}).pop("t", None)
        assert _same_infos(a[4], b[4]), (step, a[4], b[4])
        ends += int(np.sum(a[2] | a[3]))
    assert ends > 0


def test_an_untouched_checkpoint_resumes_without_a_not_restored_note(tmp_path, capsys):
    """Bug: a Pendulum resume said '(not restored, as they are not the env's state:
    RecordEpisodeStatistics.episode_count)': the allow-list probe stepped 64 steps, too few for an episode to
    end, so the episode counters looked like constants."""
    from rlkit.ppo import PPOConfig, train

    cfg = PPOConfig(env_id="Pendulum-v1", num_envs=1, num_steps=256, num_minibatches=2, update_epochs=1,
                    total_timesteps=256, device="cpu", run_dir=str(tmp_path))
    run = train(cfg, run_name="p", progress=False).run_dir
    capsys.readouterr()
    train(resume=run, progress=False, total_timesteps=512)
    out = capsys.readouterr().out
    assert "exact env state restored" in out and "not restored" not in out
