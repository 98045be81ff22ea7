"""The agent's initialisation, the update loop's invariants, and the train loop's env handling."""

import copy
import math
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch
from rlkit.envs import make_vector_env

from rlkit.ppo import Agent, Batch, Learner, PPOConfig, make_optimizer, ppo_update, train

BOX = gym.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
QUICK = PPOConfig(
    env_id="CartPole-v1", total_timesteps=1024, num_envs=4, num_steps=64, num_minibatches=4, update_epochs=2,
    normalize_obs=False, normalize_reward=False, device="cpu",
)


def _singular_values(layer):
    return torch.linalg.svdvals(layer.weight.detach())


@pytest.mark.parametrize("shared", [False, True])
def test_orthogonal_init_gains_and_zero_bias(shared):
    torch.manual_seed(0)
    agent = Agent(BOX, gym.spaces.Discrete(4), hidden_size=64, shared=shared)
    linears = [m for m in agent.modules() if isinstance(m, torch.nn.Linear)]
    for layer in linears:
        assert torch.all(layer.bias == 0)
    heads = (agent.actor_head, agent.critic_head) if shared else (agent.actor[-1], agent.critic[-1])
    torch.testing.assert_close(_singular_values(heads[0]), torch.full((4,), 0.01), atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(_singular_values(heads[1]), torch.ones(1), atol=1e-6, rtol=1e-4)
    hidden = [layer for layer in linears if layer not in heads]
    assert len(hidden) == (2 if shared else 4)
    for layer in hidden:
        sv = _singular_values(layer)
        torch.testing.assert_close(sv, torch.full_like(sv, math.sqrt(2)), atol=1e-5, rtol=1e-4)


def test_continuous_policy_log_std_starts_at_zero_and_is_state_independent():
    agent = Agent(BOX, gym.spaces.Box(-2, 2, shape=(2,)), hidden_size=16)
    assert torch.all(agent.actor_logstd == 0)
    obs = torch.randn(5, 3)
    _, _, entropy, _ = agent.get_action_and_value(obs)
    # Normal(., 1) entropy per dim is 0.5 * log(2 pi e), the same for every state
    torch.testing.assert_close(entropy, torch.full((5,), 2 * 0.5 * math.log(2 * math.pi * math.e)))


def test_fresh_discrete_agent_entropy_is_near_maximum():
    torch.manual_seed(0)
    agent = Agent(BOX, gym.spaces.Discrete(6), hidden_size=64)
    _, _, entropy, _ = agent.get_action_and_value(torch.randn(256, 3) * 3)
    assert entropy.min().item() > 0.999 * math.log(6)


def test_continuous_log_prob_matches_torch_normal():
    torch.manual_seed(0)
    agent = Agent(BOX, gym.spaces.Box(-2, 2, shape=(2,)), hidden_size=16)
    with torch.no_grad():
        agent.actor_logstd.fill_(-0.3)
    obs = torch.randn(7, 3)
    action, log_prob, entropy, _ = agent.get_action_and_value(obs)
    mean, _ = agent(obs)
    dist = torch.distributions.Normal(mean, torch.full_like(mean, math.exp(-0.3)))
    torch.testing.assert_close(log_prob, dist.log_prob(action).sum(-1))
    torch.testing.assert_close(entropy, dist.entropy().sum(-1))


def test_unsupported_spaces_are_refused_with_the_supported_ones_named():
    with pytest.raises(ValueError, match="MultiBinary \\(as MultiDiscrete, through rlkit.envs.make_vector_env\\) or 1-d Box"):
        Agent(BOX, gym.spaces.MultiBinary(3))
    with pytest.raises(ValueError, match="adapted observations of rlkit.envs.make_vector_env"):
        Agent(gym.spaces.Dict({"a": BOX}), gym.spaces.Discrete(2))


def test_adam_epsilon_is_1e_5():
    agent = Agent(BOX, gym.spaces.Discrete(2), hidden_size=8)
    optimizer = make_optimizer(agent, 3e-4)
    assert optimizer.param_groups[0]["eps"] == 1e-5 and optimizer.param_groups[0]["lr"] == 3e-4


def _fresh_batch(cfg, seed=0):
    """A rollout-shaped batch from a fresh agent, with its log-probs from inference."""
    torch.manual_seed(seed)
    agent = Agent(BOX, gym.spaces.Discrete(3), hidden_size=16)
    obs = torch.randn(cfg.batch_size, 3)
    with torch.inference_mode():
        actions, log_probs, _, values = agent.get_action_and_value(obs)
    advantages = torch.randn(cfg.batch_size)
    returns = values + advantages
    return agent, obs, actions.clone(), log_probs.clone(), advantages, returns, values.clone()


def test_first_minibatch_ratio_is_one_and_approx_kl_zero():
    cfg = replace(QUICK).validate()
    agent, obs, actions, log_probs, adv, ret, val = _fresh_batch(cfg)
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3, eps=1e-5)
    stats = ppo_update(Batch(obs, actions, log_probs, adv, ret, val), Learner(agent, optimizer, cfg, torch.Generator().manual_seed(0)), cfg)
    assert stats["first_ratio_error"] < 1e-6
    # and in the full train loop, on a continuous env with normalisation on
    result = train(replace(QUICK, env_id="Pendulum-v1", normalize_obs=True, normalize_reward=True), log=False, progress=False)
    assert result.last_update["first_ratio_error"] < 1e-5
    assert result.last_update["approx_kl"] >= 0


def test_advantages_are_normalised_per_minibatch():
    cfg = replace(QUICK, num_minibatches=2, update_epochs=1).validate()
    agent, obs, actions, log_probs, adv, ret, val = _fresh_batch(cfg)
    permutation = torch.randperm(cfg.batch_size, generator=torch.Generator().manual_seed(7))
    first_minibatch = permutation[: cfg.minibatch_size]
    shifted = adv.clone()
    shifted[first_minibatch] = shifted[first_minibatch] * 10.0 + 3.0  # affine change of one minibatch only

    def update(advantages, norm_adv):
        a = copy.deepcopy(agent)
        opt = torch.optim.Adam(a.parameters(), lr=1e-2, eps=1e-5)
        update_cfg = replace(cfg, norm_adv=norm_adv, vf_coef=0.0)
        ppo_update(Batch(obs, actions, log_probs, advantages, ret, val), Learner(a, opt, update_cfg, torch.Generator().manual_seed(7)),
                   update_cfg)
        return torch.cat([p.detach().flatten() for p in a.actor.parameters()])

    # per-minibatch whitening makes the update blind to an affine change of one minibatch
    torch.testing.assert_close(update(adv, True), update(shifted, True), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(update(adv, False), update(shifted, False), atol=1e-4)


def test_target_kl_stops_epochs_early():
    cfg = replace(QUICK, update_epochs=10, target_kl=1e-9).validate()
    agent, obs, actions, log_probs, adv, ret, val = _fresh_batch(cfg)
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-2, eps=1e-5)
    batch = Batch(obs, actions, log_probs, adv, ret, val)
    stats = ppo_update(batch, Learner(agent, optimizer, cfg), cfg)
    assert stats["epochs"] == 1
    no_stop = replace(cfg, target_kl=None)
    stats = ppo_update(batch, Learner(agent, optimizer, no_stop), no_stop)
    assert stats["epochs"] == 10


def test_same_seed_gives_identical_metrics():
    cfg = replace(QUICK, env_id="Pendulum-v1", normalize_obs=True, normalize_reward=True, total_timesteps=2048)
    first = train(replace(cfg), log=False, progress=False)
    second = train(replace(cfg), log=False, progress=False)
    assert first.episode_returns == second.episode_returns and first.episode_returns
    drop = {"SPS"}
    assert {k: v for k, v in first.last_update.items() if k not in drop} == {
        k: v for k, v in second.last_update.items() if k not in drop
    }
    for a, b in zip(first.agent.parameters(), second.agent.parameters()):
        assert torch.equal(a, b)
    third = train(replace(cfg, seed=2), log=False, progress=False)
    assert third.episode_returns != first.episode_returns


class _ConstantRewardForever(gym.Env):
    """Reward 1 every step, never terminates: only a time limit ends episodes."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        return np.zeros(1, dtype=np.float32), 1.0, False, False, {}


gym.register("rlkit-test/ConstantRewardForever-v0", entry_point=_ConstantRewardForever, max_episode_steps=5)


@pytest.mark.parametrize("bootstrap, expected", [(True, 2.0), (False, (1 + 1.5 + 1.75 + 1.875 + 1.9375) / 5)])
def test_truncation_bootstrap_learns_the_infinite_horizon_value(bootstrap, expected):
    # gamma 0.5: the true value of this never-ending task is 1 / (1 - 0.5) = 2.  A time
    # limit that is treated as termination (CleanRL) teaches the average over the 5
    # positions of the truncated return instead, because the obs carries no time.
    cfg = replace(QUICK, env_id="rlkit-test/ConstantRewardForever-v0", gamma=0.5, total_timesteps=8192,
                  learning_rate=3e-3, anneal_lr=False, bootstrap_truncation=bootstrap)
    agent = train(cfg, log=False, progress=False).agent
    value = agent.get_value(torch.zeros(1, 1)).item()
    assert value == pytest.approx(expected, abs=0.08)


def test_same_step_autoreset_never_trains_on_reset_transitions():
    # After a sub-env ends, the obs it returns is already the reset obs and the ended
    # step carries the last real transition; the next stored step starts the new episode.
    envs = make_vector_env("rlkit/TwoStepDiscounted-Discrete-v0", 2)
    obs, _ = envs.reset(seed=0)
    seen = []
    for _ in range(6):
        next_obs, reward, terminated, truncated, info = envs.step(np.array([0, 1]))
        seen.append((obs[:, 0].tolist(), reward.tolist(), terminated.tolist()))
        obs = next_obs
    # every stored (obs, reward) pair is (0 -> 0) or (1 -> 1): no (1 -> 0) reset step with reward 0
    for observations, rewards, dones in seen:
        for o, r, d in zip(observations, rewards, dones):
            assert (o, r, d) in [(0.0, 0.0, False), (1.0, 1.0, True)]
    envs.close()


@pytest.mark.slow
def test_torch_compile_gives_the_same_update_up_to_float_rounding():
    cfg = replace(QUICK, env_id="Pendulum-v1", total_timesteps=256, num_steps=64, num_minibatches=2, update_epochs=1)
    eager = train(replace(cfg), log=False, progress=False)
    compiled = train(replace(cfg, torch_compile=True), log=False, progress=False)
    # one update from the same seed: equal weights up to float rounding, and the update did move them
    for a, b in zip(eager.agent.parameters(), compiled.agent.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert compiled.last_update["approx_kl"] == pytest.approx(eager.last_update["approx_kl"], rel=1e-3, abs=1e-7)
    assert eager.last_update["approx_kl"] > 0


def _adam_steps(agent, optimizer, batches):
    for obs in batches:
        optimizer.zero_grad(set_to_none=False)
        policy_out, value = agent(obs)
        (policy_out.pow(2).sum() + value.pow(2).sum() + agent.actor_logstd.sum()).backward()
        optimizer.step()


def test_flat_parameters_step_exactly_like_per_parameter_adam():
    """make_optimizer(flat=True) views every weight in one tensor: Adam's arithmetic is elementwise,
    so a flat step must equal the per-parameter step bit for bit, and the state_dict is unchanged."""
    torch.manual_seed(0)
    per_parameter = Agent(BOX, gym.spaces.Box(-1.0, 1.0, shape=(2,)), hidden_size=8)
    flat = copy.deepcopy(per_parameter)
    optimizers = make_optimizer(per_parameter, 1e-2), make_optimizer(flat, 1e-2, flat=True)
    assert len(optimizers[1].param_groups[0]["params"]) == 1
    batches = [torch.randn(5, 3) for _ in range(4)]
    _adam_steps(per_parameter, optimizers[0], batches)
    _adam_steps(flat, optimizers[1], batches)
    assert list(flat.state_dict()) == list(per_parameter.state_dict())
    for (name, a), b in zip(per_parameter.named_parameters(), flat.parameters()):
        assert torch.equal(a, b), name
        assert torch.equal(a.grad, b.grad), name
    assert not torch.equal(per_parameter.actor[0].weight, Agent(BOX, gym.spaces.Box(-1.0, 1.0, shape=(2,)), 8).actor[0].weight)


def test_a_per_parameter_adam_checkpoint_resumes_into_the_flat_optimizer(tmp_path):
    """Checkpoints written before the MLP's parameters were flattened hold one Adam state per
    parameter; loaded into the flat optimizer, the next step is the one the old optimizer takes."""
    from rlkit.checkpoint import load_checkpoint, load_optimizer_tensors, optimizer_tensors, save_checkpoint

    torch.manual_seed(0)
    old = Agent(BOX, gym.spaces.Box(-1.0, 1.0, shape=(2,)), hidden_size=8)
    old_optimizer = make_optimizer(old, 1e-2)
    _adam_steps(old, old_optimizer, [torch.randn(5, 3) for _ in range(3)])
    tensors, groups = optimizer_tensors(old_optimizer)
    save_checkpoint(str(tmp_path), 1, {"model": old.state_dict(), "optimizer": tensors}, {"groups": groups})
    loaded, state = load_checkpoint(str(tmp_path))
    new = Agent(BOX, gym.spaces.Box(-1.0, 1.0, shape=(2,)), hidden_size=8)
    new_optimizer = make_optimizer(new, 1e-2, flat=True)
    new.load_state_dict(loaded["model"])
    load_optimizer_tensors(new_optimizer, loaded["optimizer"], state["groups"])
    last = [torch.randn(5, 3)]
    _adam_steps(old, old_optimizer, last)
    _adam_steps(new, new_optimizer, last)
    for a, b in zip(old.parameters(), new.parameters()):
        assert torch.equal(a, b)
    smaller = make_optimizer(Agent(BOX, gym.spaces.Box(-1.0, 1.0, shape=(2,)), hidden_size=4), 1e-2, flat=True)
    with pytest.raises(ValueError, match="different number of elements"):
        load_optimizer_tensors(smaller, loaded["optimizer"], state["groups"])
