"""Every common gymnasium observation space, SB3-style: adapters (rlkit.envs.observations), the
network "auto" picks (rlkit.networks), where the normaliser applies, refusals, and learning runs."""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from rlkit.envs import NormalizeObservation, make_vector_env, normalizes_observations
from rlkit.envs.factory import env_state, load_env_state, supports_exact_state
from rlkit.envs.observations import ObservationLayout, adapted_space, is_image_space, real_valued_entries
from rlkit.evaluate import evaluate, export
from rlkit.networks import MultiInputAgent, SmallCNNAgent, resolve_network
from rlkit.ppo import Agent, NatureCNNAgent, PPOConfig, make_agent, train
from rlkit.ppo_lstm import LSTMAgent

FROZEN_LAKE = "rlkit-test/FrozenLakeDet-v1"
SPACE_ENV = "rlkit-test/AnySpace-v0"
OWN_SPACE_ENV = "rlkit-test/AnyOwnSpace-v0"
IMAGE_PROBE = "rlkit/HWCImageProbe-v0"
DICT_PROBE = "rlkit/DictImageVectorProbe-v0"


class AnySpace(gym.Env):
    """One-step env with the observation space it is given (samples it)."""

    metadata = {"render_modes": []}
    action_space = spaces.Discrete(2)

    def __init__(self, space: gym.Space):
        self.observation_space = space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(int(self.np_random.integers(2**31)))
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}


class DictFromRng(gym.Env):
    """A Dict of a Discrete and a Box part, drawn from np_random (state env_state saves)."""

    metadata = {"render_modes": []}
    observation_space = spaces.Dict({"d": spaces.Discrete(3), "x": spaces.Box(-5, 5, (2,))})
    action_space = spaces.Discrete(2)

    def _draw(self):
        return {"d": int(self.np_random.integers(3)), "x": self.np_random.uniform(-5, 5, 2).astype(np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._draw(), {}

    def step(self, action):
        return self._draw(), 0.0, True, False, {}


DICT_FROM_RNG = "rlkit-test/DictFromRng-v0"

if FROZEN_LAKE not in gym.registry:
    gym.register(FROZEN_LAKE, entry_point="gymnasium.envs.toy_text.frozen_lake:FrozenLakeEnv",
                 kwargs={"is_slippery": False}, max_episode_steps=100)
if SPACE_ENV not in gym.registry:
    gym.register(SPACE_ENV, entry_point=AnySpace)


# ---------------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------------


def test_discrete_multidiscrete_multibinary_become_one_hot_and_float():
    space = spaces.Tuple((spaces.Discrete(3, start=-1), spaces.MultiDiscrete([2, 3], start=[1, 0]), spaces.MultiBinary(2)))
    envs = make_vector_env(SPACE_ENV, 1, env_kwargs={"space": space})
    layout = envs.single_observation_space
    assert isinstance(layout, ObservationLayout) and layout.shape == (3 + 5 + 2,)
    assert [(p.kind, p.start, p.stop) for p in layout.parts] == [("onehot", 0, 3), ("onehot", 3, 8), ("binary", 8, 10)]
    adapter = envs.unwrapped.envs[0]  # the sub-env wrapper
    obs = adapter.observation((0, np.array([2, 1]), np.array([1, 0], dtype=np.int8)))
    assert obs.dtype == np.float32
    np.testing.assert_array_equal(obs, [0, 1, 0, 0, 1, 0, 1, 0, 1, 0])  # 0 - (-1) = 1; (2-1, 1-0) -> 1 and 2 + 1
    assert adapted_space(spaces.Discrete(4)).shape == (4,)
    envs = make_vector_env(FROZEN_LAKE, 2)
    obs, _ = envs.reset(seed=0)
    np.testing.assert_array_equal(obs, np.eye(16, dtype=np.float32)[[0, 0]])


def test_tuple_and_dict_flatten_to_one_vector_in_space_order():
    envs = make_vector_env("Blackjack-v1", 3)
    assert isinstance(envs.single_observation_space, ObservationLayout)
    assert [p.name for p in envs.single_observation_space.parts] == ["0", "1", "2"]
    obs, _ = envs.reset(seed=1)
    assert obs.shape == (3, 32 + 11 + 2) and obs.dtype == np.float32
    np.testing.assert_array_equal(obs.sum(axis=1), 3.0)  # one one-hot per part
    raw = gym.make("Blackjack-v1")
    raw_obs, _ = raw.reset(seed=1)
    assert obs[0, raw_obs[0]] == 1 and obs[0, 32 + raw_obs[1]] == 1 and obs[0, 43 + raw_obs[2]] == 1

    space = spaces.Dict({"b": spaces.Box(-2, 2, (2, 2)), "a": spaces.Dict({"k": spaces.Discrete(2)}), "c": spaces.Box(0, 1)})
    layout = adapted_space(space)
    assert [(p.name, p.kind, p.stop - p.start) for p in layout.parts] == [("a.k", "onehot", 2), ("b", "box", 4),
                                                                           ("c", "box", 1)]
    np.testing.assert_array_equal(layout.low, [0, 0, -2, -2, -2, -2, 0])
    envs = make_vector_env(SPACE_ENV, 1, env_kwargs={"space": space})
    value = {"a": {"k": 1}, "b": np.array([[0.5, -1.0], [2.0, 0.0]], dtype=np.float32), "c": np.array([0.25], np.float32)}
    np.testing.assert_array_equal(envs.unwrapped.envs[0].observation(value), [0, 1, 0.5, -1, 2, 0, 0.25])
    assert adapted_space(spaces.Box(0, 1, (2, 3))).shape == (6,)  # a 2-d Box is flattened, as SB3 does


def test_1d_box_observations_are_not_wrapped_at_all():
    envs = make_vector_env("CartPole-v1", 2, normalize_obs=True)
    sub_env = envs.unwrapped.envs[0]
    assert type(sub_env.observation_space) is spaces.Box
    assert type(sub_env).__name__ == "TimeLimit"  # gymnasium's own outermost wrapper: no adapter on top
    assert real_valued_entries(envs.single_observation_space) is None


def test_hwc_images_are_transposed_to_chw_and_stay_uint8():
    envs = make_vector_env(IMAGE_PROBE, 2)
    assert envs.single_observation_space == spaces.Box(0, 255, (3, 10, 10), np.uint8)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (2, 3, 10, 10) and obs.dtype == np.uint8
    raw = gym.make(IMAGE_PROBE)
    raw_obs, _ = raw.reset(seed=0)
    np.testing.assert_array_equal(obs[0], raw_obs.transpose(2, 0, 1))
    chw = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    assert adapted_space(chw) is chw  # channels-first already: untouched (Atari frames)


@pytest.mark.parametrize("space, image", [
    (spaces.Box(0, 255, (84, 84, 3), np.uint8), True),
    (spaces.Box(0, 255, (3, 10, 10), np.uint8), True),
    (spaces.Box(0, 255, (4, 84, 84), np.uint8), True),
    (spaces.Box(0, 255, (7, 7, 1), np.uint8), True),
    (spaces.Box(0, 255, (84, 84, 2), np.uint8), False),  # 2 channels
    (spaces.Box(0, 1, (84, 84, 3), np.float32), False),  # not uint8
    (spaces.Box(0, 100, (84, 84, 3), np.uint8), False),  # bounds not 0-255
    (spaces.Box(0, 255, (84, 84), np.uint8), False),  # 2-d
])
def test_image_detection_is_sb3s(space, image):
    assert is_image_space(space) is image


def test_final_obs_is_adapted_like_every_other_observation():
    envs = make_vector_env(FROZEN_LAKE, 1)
    envs.reset(seed=0)
    envs.step(np.array([1]))  # down: state 4
    obs, _, terminated, _, info = envs.step(np.array([2]))  # right: the hole at 5
    assert terminated[0] and info["_final_obs"][0]
    np.testing.assert_array_equal(info["final_obs"][0], np.eye(16, dtype=np.float32)[5])
    np.testing.assert_array_equal(obs[0], np.eye(16, dtype=np.float32)[0])  # the next episode's first obs

    envs = make_vector_env(DICT_PROBE, 2, normalize_obs=True)  # pixels raw, the vector slice normalised
    envs.reset(seed=0)
    normalizer = envs
    assert isinstance(normalizer, NormalizeObservation)
    obs, _, _, _, info = envs.step(np.array([0, 1]))
    for i in range(2):
        final = info["final_obs"][i]
        assert final.dtype == np.float32 and final.shape == envs.single_observation_space.shape
        pixels = final[:64]
        assert set(np.unique(pixels)) == {0.0, 255.0}  # not normalised
        assert np.all(np.abs(final[64:]) <= normalizer.clip)
    assert normalizer.indices.tolist() == [64]


def test_batched_seeds_grouped_normaliser_takes_only_the_real_valued_entries_of_each_seed():
    """A Dict of one-hot and Box parts, grouped as batched seeds' envs: each seed's observations (final ones
    included) are those of its own stack, bit for bit; the one-hot entries pass unchanged."""
    import copy

    from rlkit.envs import EnvGroup, normalizer_state

    if OWN_SPACE_ENV not in gym.registry:  # AnySpace with a space (and so a sampling stream) of each env's own
        gym.register(OWN_SPACE_ENV, entry_point=lambda space: AnySpace(copy.deepcopy(space)))
    space = spaces.Dict({"d": spaces.Discrete(3), "x": spaces.Box(-5, 5, (2,))})
    kwargs = {"normalize_obs": True, "env_kwargs": {"space": space}}
    alone = [make_vector_env(OWN_SPACE_ENV, 2, **kwargs) for _ in range(3)]
    grouped = make_vector_env(OWN_SPACE_ENV, 6, groups=3, **kwargs)
    assert grouped.indices.tolist() == [3, 4] and grouped.obs_rms.mean.shape == (3, 2)
    obs, _ = grouped.reset(seed=[10 * k + j for k in range(3) for j in range(2)])
    for k, envs in enumerate(alone):
        assert np.array_equal(envs.reset(seed=10 * k)[0], obs[2 * k:2 * k + 2])
    for _ in range(20):  # every step ends an episode: final observations, normalised by their own seed's statistics
        obs, _, _, _, info = grouped.step(np.zeros(6, dtype=np.int64))
        for k, envs in enumerate(alone):
            o, _, _, _, i = envs.step(np.zeros(2, dtype=np.int64))
            assert np.array_equal(o, obs[2 * k:2 * k + 2])
            assert all(np.array_equal(a, b) for a, b in zip(i["final_obs"], info["final_obs"][2 * k:2 * k + 2]))
    assert set(np.unique(obs[:, :3])) <= {0.0, 1.0}
    for k, envs in enumerate(alone):
        assert all(np.array_equal(v, normalizer_state(envs)[key])
                   for key, v in normalizer_state(EnvGroup(grouped, k, 3)).items())
    # 2 seeds of 1 env: the 2 normalised entries' indices are as long as the env count, and are no per-env array
    # (an env whose state env_state saves: its draws come from its np_random, not from its space's generator)
    if DICT_FROM_RNG not in gym.registry:
        gym.register(DICT_FROM_RNG, entry_point=DictFromRng)
    kwargs = {"normalize_obs": True}
    pair = make_vector_env(DICT_FROM_RNG, 2, groups=2, **kwargs)
    pair.reset(seed=[0, 10])
    one = make_vector_env(DICT_FROM_RNG, 1, **kwargs)
    one.reset(seed=10)
    saved, own = env_state(EnvGroup(pair, 1, 2)), env_state(one)
    indices = lambda state: [np.asarray(w["indices"]).tolist() for w in state["vector_wrappers"] if "indices" in w]  # noqa: E731
    assert indices(saved) == indices(own) == [[3, 4]]
    assert [sorted(w) for w in saved["vector_wrappers"]] == [sorted(w) for w in own["vector_wrappers"]]


def test_normaliser_only_where_it_makes_sense():
    assert not normalizes_observations(make_vector_env(FROZEN_LAKE, 1, normalize_obs=True))  # one-hot only
    assert not normalizes_observations(make_vector_env("Blackjack-v1", 1, normalize_obs=True))
    assert not normalizes_observations(make_vector_env(IMAGE_PROBE, 1, normalize_obs=True))  # pixels
    full = make_vector_env("CartPole-v1", 1, normalize_obs=True)
    assert isinstance(full, NormalizeObservation) and full.indices is None
    mixed = make_vector_env(DICT_PROBE, 1, normalize_obs=True)
    assert isinstance(mixed, NormalizeObservation) and mixed.obs_rms.mean.shape == (1,)
    space = spaces.Dict({"d": spaces.Discrete(3), "x": spaces.Box(-5, 5, (2,))})
    mixed = make_vector_env(SPACE_ENV, 2, normalize_obs=True, env_kwargs={"space": space})
    assert mixed.indices.tolist() == [3, 4]
    obs, _ = mixed.reset(seed=0)
    for _ in range(20):
        obs, *_ = mixed.step(np.zeros(2, dtype=np.int64))
    assert set(np.unique(obs[:, :3])) <= {0.0, 1.0} and obs[:, :3].sum() == 2  # one-hot untouched
    x = np.array([[0, 1, 0, 2.0, -3.0]], dtype=np.float32)
    y = mixed.normalize(x)
    np.testing.assert_array_equal(y[:, :3], x[:, :3])
    np.testing.assert_allclose(y[:, 3:], (x[:, 3:] - mixed.obs_rms.mean) / np.sqrt(mixed.obs_rms.var + 1e-8), rtol=1e-5)


@pytest.mark.parametrize("space, words", [
    (spaces.Text(5), "Text spaces are not supported; encode the text"),
    (spaces.Graph(spaces.Box(0, 1, (2,)), None), "Graph spaces are not supported; turn the graph"),
    (spaces.Sequence(spaces.Discrete(2)), "Sequence spaces are not supported; pad or truncate"),
    (spaces.Box(0, 1, (2, 2, 2, 2)), "a Box with 4 dims is no image; reshape it"),
    (spaces.Dict({"ok": spaces.Discrete(2), "bad": spaces.Tuple((spaces.Text(3),))}), "observation part 'bad.0'"),
    (spaces.OneOf((spaces.Discrete(2), spaces.Box(0, 1))), "OneOf spaces are not supported; give every alternative"),
])
def test_unsupported_spaces_are_refused_up_front_in_one_line(space, words):
    with pytest.raises(ValueError, match="rlkit cannot take") as error:
        make_vector_env(SPACE_ENV, 1, env_kwargs={"space": space})
    assert words in str(error.value) and "\n" not in str(error.value)
    assert "ObservationWrapper" in str(error.value)


# ---------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------


def test_auto_builds_the_same_mlp_as_mlp_for_vector_observations():
    envs = make_vector_env("CartPole-v1", 1)
    agents = []
    for network in ("auto", "mlp"):
        torch.manual_seed(0)
        agents.append(make_agent(PPOConfig(network=network).validate(), envs.single_observation_space,
                                 envs.single_action_space))
    assert type(agents[0]) is Agent
    first, second = agents[0].state_dict(), agents[1].state_dict()
    assert list(first) == list(second)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_auto_picks_cnn_small_cnn_and_multi_input():
    cfg = PPOConfig().validate()
    action = spaces.Discrete(3)
    assert resolve_network(spaces.Box(0, 255, (4, 84, 84), np.uint8)) == "nature_cnn"
    assert isinstance(make_agent(cfg, spaces.Box(0, 255, (3, 36, 36), np.uint8), action), NatureCNNAgent)
    small = make_agent(cfg, spaces.Box(0, 255, (3, 35, 35), np.uint8), action)
    assert isinstance(small, SmallCNNAgent)
    logits, value = small(torch.full((2, 3, 35, 35), 255.0))
    assert logits.shape == (2, 3) and value.shape == (2,)
    layout = make_vector_env(DICT_PROBE, 1).single_observation_space
    multi = make_agent(cfg, layout, action)
    assert isinstance(multi, MultiInputAgent) and len(multi.image_encoders) == 1
    assert "vector_index" not in multi.state_dict()  # a layout detail, not a weight
    logits, value = multi(torch.zeros(5, layout.shape[0]))
    assert logits.shape == (5, 3) and value.shape == (5,)
    assert isinstance(make_agent(cfg, make_vector_env("Blackjack-v1", 1).single_observation_space, action), Agent)


def test_networks_that_cannot_take_the_observations_are_refused():
    action = spaces.Discrete(2)
    with pytest.raises(ValueError, match="the Nature CNN needs at least 36x36.*picks 'small_cnn'"):
        make_agent(PPOConfig(network="nature_cnn").validate(), spaces.Box(0, 255, (3, 10, 10), np.uint8), action)
    with pytest.raises(ValueError, match="network = 'mlp' cannot take observations of shape \\(3, 10, 10\\)"):
        make_agent(PPOConfig(network="mlp").validate(), spaces.Box(0, 255, (3, 10, 10), np.uint8), action)
    with pytest.raises(ValueError, match="channels-first"):
        make_agent(PPOConfig().validate(), spaces.Box(0, 255, (10, 10, 3), np.uint8), action)
    with pytest.raises(ValueError, match="make_vector_env"):
        make_agent(PPOConfig().validate(), spaces.Discrete(4), action)
    with pytest.raises(ValueError, match="network must be one of"):
        PPOConfig(network="resnet").validate()
    with pytest.raises(ValueError, match="ppo_lstm.*without images"):
        LSTMAgent(make_vector_env(DICT_PROBE, 1).single_observation_space, action)


def test_network_settings_a_network_cannot_honour_are_refused_not_ignored():
    action = spaces.Discrete(2)
    image, small_image = spaces.Box(0, 255, (3, 36, 36), np.uint8), spaces.Box(0, 255, (3, 10, 10), np.uint8)
    layout = make_vector_env(DICT_PROBE, 1).single_observation_space
    for space, name in ((image, "nature_cnn"), (small_image, "small_cnn"), (layout, "multi_input")):
        with pytest.raises(ValueError, match=f"{name} \\(network = 'auto' picks it.*cannot take shared_network = false"):
            make_agent(PPOConfig(shared_network=False).validate(), space, action)
        make_agent(PPOConfig(shared_network=True).validate(), space, action)  # what they are: accepted
    for space, name in ((image, "nature_cnn"), (small_image, "small_cnn")):
        with pytest.raises(ValueError, match=f"cannot take hidden_size = 128 \\({name}'s layers are fixed"):
            make_agent(PPOConfig(network=name, hidden_size=128).validate(), space, action)
    wide = make_agent(PPOConfig(hidden_size=128).validate(), layout, action)  # multi_input's MLP honours it
    images_only = adapted_space(spaces.Dict({"a": spaces.Box(0, 255, (8, 8, 3), np.uint8),
                                             "b": spaces.Box(0, 255, (8, 8, 3), np.uint8)}))
    make_agent(PPOConfig().validate(), images_only, action)
    with pytest.raises(ValueError, match="hidden_size = 999 \\(it sizes the MLP for the non-image parts, and these"):
        make_agent(PPOConfig(hidden_size=999).validate(), images_only, action)
    assert any(p.shape[0] == 128 for p in wide.parameters())
    mlp = make_agent(PPOConfig(hidden_size=32, shared_network=True).validate(), spaces.Box(-1, 1, (3,)), action)
    assert mlp.shared and mlp.actor_head.in_features == 32
    with pytest.raises(ValueError, match="ppo_lstm.*shared_network = false"):
        from rlkit.ppo_lstm import RecurrentPPOConfig
        RecurrentPPOConfig(shared_network=False).validate()


def test_a_checkpoint_of_an_image_agent_saved_with_the_old_defaults_still_loads(tmp_path):
    """Earlier versions wrote shared_network = false and hidden_size = 64 into every config; for a CNN that meant
    nothing set, and it must still resume and evaluate rather than be refused as an explicit false."""
    import json

    from rlkit.checkpoint import load_checkpoint, resolve_checkpoint

    cfg = PPOConfig(env_id=IMAGE_PROBE, seed=1, total_timesteps=256, run_dir=str(tmp_path), **PROBE)
    result = train(cfg, run_name="image", progress=False)
    checkpoint = resolve_checkpoint(result.run_dir)
    state_file = os.path.join(checkpoint, "state.json")
    state = json.loads(open(state_file).read())
    assert state["config"]["shared_network"] is None and state["config"]["hidden_size"] is None
    state["config"].update(shared_network=False, hidden_size=64)
    open(state_file, "w").write(json.dumps(state))
    _, saved = load_checkpoint(checkpoint)
    assert saved["config"]["shared_network"] is False
    assert evaluate(result.run_dir, episodes=2, deterministic=True)["episodes"] == 2
    resumed = train(resume=result.run_dir, total_timesteps=512, progress=False)
    assert isinstance(resumed.agent, SmallCNNAgent)


def test_frozen_lake_env_state_round_trips_through_json(tmp_path):
    """FrozenLake's map is a bytes array: the exact env state (checkpoints, resume) must survive JSON."""
    import json

    from rlkit.checkpoint import from_json, to_json

    envs = make_vector_env(FROZEN_LAKE, 1)
    envs.reset(seed=0)
    envs.step(np.array([1]))
    assert supports_exact_state(envs)
    state = from_json(json.loads(json.dumps(to_json(env_state(envs)))))
    again = make_vector_env(FROZEN_LAKE, 1)
    again.reset(seed=5)
    load_env_state(again, state)
    assert again.unwrapped.envs[0].unwrapped.s == 4
    assert again.unwrapped.envs[0].unwrapped.desc.dtype == np.dtype("S1")


# ---------------------------------------------------------------------------------
# Learning (fixed seeds)
# ---------------------------------------------------------------------------------

PROBE = dict(num_envs=8, num_steps=32, num_minibatches=4, update_epochs=4, learning_rate=1e-3, ent_coef=0.0,
             normalize_reward=False, device="cpu", checkpoint_interval=0)


def test_frozen_lake_deterministic_is_solved_and_evaluates_and_exports(tmp_path):
    cfg = PPOConfig(env_id=FROZEN_LAKE, seed=1, total_timesteps=10_240, num_envs=8, num_steps=128, num_minibatches=4,
                    update_epochs=4, learning_rate=2.5e-3, ent_coef=0.01, device="cpu", run_dir=str(tmp_path),
                    checkpoint_interval=0)  # normalize_obs stays on: skipped for one-hot observations
    result = train(cfg, run_name="lake", progress=False)
    assert type(result.agent) is Agent and not any(k.startswith("obs.") for k in result.normalizer)
    evaluation = evaluate(result.run_dir, episodes=10, deterministic=True)
    assert evaluation["mean"] == 1.0  # success rate: every episode reaches the goal (measured: 1.0)
    exported = export(result.run_dir, str(tmp_path / "export"), episodes=10)
    assert exported["mean"] == 1.0 and not os.path.exists(tmp_path / "export" / "normalizer.json")


@pytest.mark.slow
def test_blackjack_beats_the_random_policy(tmp_path):
    episodes, seed = 2000, 10_000
    env = gym.make("Blackjack-v1")
    rng, returns = np.random.default_rng(0), []
    env.reset(seed=seed)
    for _ in range(episodes):
        done, total = False, 0.0
        while not done:
            _, reward, terminated, truncated, _ = env.step(int(rng.integers(2)))
            total, done = total + reward, terminated or truncated
        returns.append(total)
        env.reset()
    random_mean = float(np.mean(returns))  # measured: -0.377
    cfg = PPOConfig(env_id="Blackjack-v1", seed=1, total_timesteps=20_480, num_envs=8, num_steps=128, num_minibatches=4,
                    update_epochs=4, learning_rate=2.5e-3, ent_coef=0.01, device="cpu", run_dir=str(tmp_path),
                    checkpoint_interval=0)
    result = train(cfg, run_name="blackjack", progress=False)
    learned = evaluate(result.run_dir, episodes=episodes, deterministic=True, seed=seed)["mean"]  # measured: -0.068
    assert random_mean < -0.3
    assert learned > random_mean + 0.2, (learned, random_mean)


def test_hwc_image_probe_is_solved(tmp_path):
    cfg = PPOConfig(env_id=IMAGE_PROBE, seed=1, total_timesteps=3072, run_dir=str(tmp_path), **PROBE)
    result = train(cfg, run_name="image", progress=False)
    assert isinstance(result.agent, SmallCNNAgent)
    assert np.mean(result.episode_returns[-100:]) > 0.9  # random: -1/3; measured: 1.0
    assert evaluate(result.run_dir, episodes=50, deterministic=True)["mean"] == 1.0


def test_dict_image_and_vector_probe_is_solved(tmp_path):
    cfg = PPOConfig(env_id=DICT_PROBE, seed=1, total_timesteps=6144, run_dir=str(tmp_path), **PROBE)
    result = train(cfg, run_name="dict", progress=False)
    assert isinstance(result.agent, MultiInputAgent) and result.normalizer["obs.mean"].shape == (1,)
    assert np.mean(result.episode_returns[-100:]) > 0.9  # random or one part alone: 0; measured: 1.0
    assert evaluate(result.run_dir, episodes=100, deterministic=True)["mean"] > 0.95
