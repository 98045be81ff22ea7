"""The last six details: recurrent PPO (5 LSTM details), MultiDiscrete actions, and action masking."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlkit.doctor import run_extra_probe
from rlkit.ppo import Agent, PPOConfig, categorical_sample_and_score, train
from rlkit.ppo_lstm import LSTMAgent, RecurrentPPOConfig
from rlkit.ppo_lstm import train as train_recurrent

OBS = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
PROBE = dict(total_timesteps=4096, num_envs=8, num_steps=16, num_minibatches=4, update_epochs=4, learning_rate=3e-3,
             anneal_lr=False, gamma=0.5, normalize_obs=False, normalize_reward=False, device="cpu")


def test_lstm_weights_orthogonal_and_biases_zero():
    agent = LSTMAgent(OBS, gym.spaces.Discrete(2), hidden_size=8, lstm_hidden_size=4)
    for name, param in agent.lstm.named_parameters():
        if "bias" in name:
            assert torch.all(param == 0)
        else:  # [4 gates * H, in]: orthogonal columns with gain 1
            gram = param.T @ param
            torch.testing.assert_close(gram, torch.eye(gram.shape[0]), atol=1e-5, rtol=1e-5)


def test_initial_state_is_zero():
    agent = LSTMAgent(OBS, gym.spaces.Discrete(2), hidden_size=8, lstm_hidden_size=4)
    h, c = agent.initial_state(3)
    assert h.shape == c.shape == (1, 3, 4) and not h.any() and not c.any()


def test_state_is_reset_where_an_episode_starts():
    torch.manual_seed(0)
    agent = LSTMAgent(OBS, gym.spaces.Discrete(2), hidden_size=8, lstm_hidden_size=4)
    obs = torch.randn(3, 2)  # 3 steps, 1 env
    state = (torch.randn(1, 1, 4), torch.randn(1, 1, 4))
    # a start flag at step 1: the outputs from step 1 on equal a fresh run from step 1 with zero state
    out, _ = agent.get_states(obs, state, torch.tensor([0.0, 1.0, 0.0]))
    fresh, _ = agent.get_states(obs[1:], agent.initial_state(1), torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(out[1:], fresh)
    carried, _ = agent.get_states(obs, state, torch.zeros(3))
    assert not torch.allclose(carried[1:], fresh)


def test_memory_probe_recurrent_solves_it_feed_forward_cannot():
    recurrent = train_recurrent(RecurrentPPOConfig(env_id="rlkit/MemoryProbe-v0", **PROBE), progress=False, log=False)
    feed_forward = train(PPOConfig(env_id="rlkit/MemoryProbe-v0", **{**PROBE, "total_timesteps": 8192}),
                         progress=False, log=False)
    assert np.mean(recurrent.episode_returns[-100:]) >= 0.9
    # at the answer step a memoryless policy sees no cue: its expected return is exactly 0
    assert abs(np.mean(feed_forward.episode_returns[-200:])) <= 0.25
    # states rebuilt from the stored rollout-start states reproduce the rollout's log-probs [lstm 5]
    assert recurrent.last_update["first_ratio_error"] < 1e-5


def test_minibatches_are_whole_env_sequences(monkeypatch):
    import rlkit.ppo_lstm as module

    seen = []
    real_minibatches = module.SequenceLearner.minibatches

    def spy(self, batch):
        minibatches = real_minibatches(self, batch)
        seen.extend(minibatches)
        return minibatches

    monkeypatch.setattr(module.SequenceLearner, "minibatches", spy)
    cfg = RecurrentPPOConfig(env_id="rlkit/MemoryProbe-v0", **{**PROBE, "total_timesteps": 128})
    train_recurrent(cfg, progress=False, log=False)
    steps, envs = cfg.num_steps, cfg.num_envs
    for mb in seen:
        grid = mb.reshape(steps, -1)  # time-major: row t holds step t of each env in the minibatch
        env_ids = grid[0] % envs
        assert len(env_ids) == envs // cfg.num_minibatches
        for t in range(steps):
            assert torch.equal(grid[t], t * envs + env_ids)  # every step of those envs, in order
    assert sorted(torch.cat([mb.reshape(steps, -1)[0] for mb in seen[: cfg.num_minibatches]]).tolist()) == list(range(envs))


def test_recurrent_config_requires_whole_envs_per_minibatch():
    with pytest.raises(ValueError, match="must divide num_envs"):
        RecurrentPPOConfig(num_envs=6, num_steps=16, num_minibatches=4).validate()


def test_multidiscrete_log_probs_and_entropies_are_summed_over_dimensions():
    torch.manual_seed(0)
    logits = torch.randn(5, 2 + 3)
    action, log_prob, entropy = categorical_sample_and_score(logits, [2, 3])
    assert action.shape == (5, 2)
    first = torch.distributions.Categorical(logits=logits[:, :2])
    second = torch.distributions.Categorical(logits=logits[:, 2:])
    torch.testing.assert_close(log_prob, first.log_prob(action[:, 0]) + second.log_prob(action[:, 1]))
    torch.testing.assert_close(entropy, first.entropy() + second.entropy())


def test_multidiscrete_agent_and_probe():
    agent = Agent(OBS, gym.spaces.MultiDiscrete([2, 3]), hidden_size=8)
    action, _, _, _ = agent.get_action_and_value(torch.zeros(4, 2))
    assert action.shape == (4, 2) and (action[:, 1] < 3).all()
    assert run_extra_probe("MultiDiscreteProbe").passed


def test_masked_actions_are_never_sampled_and_carry_no_probability_or_entropy():
    logits = torch.zeros(1000, 3)
    mask = torch.tensor([[True, True, False]]).expand(1000, 3)
    action, log_prob, entropy = categorical_sample_and_score(logits, None, action_mask=mask)
    assert (action != 2).all()
    torch.testing.assert_close(log_prob, torch.full((1000,), float(np.log(0.5))))
    torch.testing.assert_close(entropy, torch.full((1000,), float(np.log(2))))
    # MultiDiscrete: the mask covers the concatenated logits
    md_mask = torch.tensor([[True, False, True, True, False]])
    action, _, entropy = categorical_sample_and_score(torch.zeros(1, 5), [2, 3], action_mask=md_mask)
    assert action[0, 0] == 0 and action[0, 1] != 2
    assert torch.isfinite(entropy).all()


def test_masked_probe_learns_the_best_allowed_action_and_never_takes_the_masked_one():
    result = run_extra_probe("MaskedActionProbe")
    assert result.passed, result.checks
    feed_forward = train(PPOConfig(env_id="rlkit/MaskedActionProbe-v0", **PROBE), progress=False, log=False)
    assert max(feed_forward.episode_returns) <= 1.0  # the masked action (pays 10) never happened


def test_cartpole_without_velocity_hides_them():
    env = gym.make("rlkit/CartPoleNoVelocity-v1")
    obs, _ = env.reset(seed=0)
    full = gym.make("CartPole-v1")
    full_obs, _ = full.reset(seed=0)
    np.testing.assert_array_equal(obs, full_obs[[0, 2]])
    assert env.observation_space.shape == (2,)
