"""Batched multi-seed training (rlkit/ppo_multiseed.py): every seed learns, seeds are
independent of what they are batched with, per-seed gradient clipping."""

from __future__ import annotations

from dataclasses import replace

import gymnasium as gym
import pytest
import torch
from rlkit.envs import probe_id

from rlkit.doctor import PROBE_CONFIG, _policy_checks, _value_checks
from rlkit.ppo import PPOConfig, make_agent
from rlkit.ppo_multiseed import clip_per_seed, train_seeds


@pytest.mark.slow
@pytest.mark.parametrize("continuous", [False, True])
def test_every_batched_seed_solves_the_probes(continuous):
    for name in ("ObsAndActionDependentReward", "TwoStepDiscounted"):
        cfg = replace(PROBE_CONFIG, env_id=probe_id(name, continuous))
        results = train_seeds(cfg, [1, 2, 3], progress=False, log=False)
        for result in results:
            checks = _policy_checks(result.agent, name, continuous) if "Action" in name else _value_checks(result.agent, name)
            assert all(c.passed for c in checks), (name, result.run_dir, checks)


def test_a_seed_does_not_depend_on_the_seeds_batched_with_it():
    cfg = PPOConfig(env_id="Pendulum-v1", num_envs=2, num_steps=64, total_timesteps=512, num_minibatches=4,
                    update_epochs=2)
    alone = train_seeds(cfg, [7], progress=False, log=False)[0]
    batched = train_seeds(cfg, [3, 7, 11], progress=False, log=False)
    within = batched[1]
    assert within.episode_returns == pytest.approx(alone.episode_returns, rel=1e-5)
    for name, value in alone.agent.state_dict().items():
        torch.testing.assert_close(within.agent.state_dict()[name], value, atol=1e-4, rtol=1e-4)
    # ... and the seeds are different runs
    assert batched[0].episode_returns != pytest.approx(batched[2].episode_returns)


def test_initial_weights_are_those_of_a_single_run():
    cfg = PPOConfig(env_id="CartPole-v1", num_envs=1, num_steps=8, total_timesteps=8, num_minibatches=1,
                    update_epochs=1, learning_rate=1e-12, anneal_lr=False)
    result = train_seeds(cfg, [5, 6], progress=False, log=False)[0]
    torch.manual_seed(5)
    import gymnasium as gym

    reference = make_agent(cfg, gym.spaces.Box(-5, 5, (4,)), gym.spaces.Discrete(2))
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(result.agent.state_dict()[name], value, atol=1e-6, rtol=0)


def test_gradient_clip_is_per_seed():
    params = {"w": torch.zeros(2, 3, requires_grad=True), "b": torch.zeros(2, 1, requires_grad=True)}
    params["w"].grad = torch.tensor([[3.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    params["b"].grad = torch.tensor([[4.0], [0.0]])
    norms = clip_per_seed(params, max_norm=0.5)
    torch.testing.assert_close(norms, torch.tensor([5.0, 0.1]))
    torch.testing.assert_close(params["w"].grad[0], torch.tensor([0.3, 0.0, 0.0]), atol=1e-6, rtol=0)  # 5 -> 0.5
    torch.testing.assert_close(params["w"].grad[1], torch.tensor([0.1, 0.0, 0.0]))  # under the limit: untouched


def test_unsupported_settings_are_refused():
    with pytest.raises(ValueError, match="target_kl"):
        train_seeds(PPOConfig(env_id="CartPole-v1", target_kl=0.01), [1, 2], progress=False, log=False)
    with pytest.raises(ValueError, match="distinct"):
        train_seeds(PPOConfig(env_id="CartPole-v1"), [1, 1], progress=False, log=False)


@pytest.mark.parametrize("shared", [False, True])
def test_stacked_forward_of_the_rollout_matches_vmap_of_the_agent(shared):
    """The rollout's batched-matmul forward computes what vmap(functional_call(agent)) computes."""
    import copy

    from torch.func import functional_call, stack_module_state, vmap

    from rlkit.ppo import Agent
    from rlkit.fast import stacked_mlp_forward

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(5,))
    torch.manual_seed(0)
    agents = [Agent(observation_space, gym.spaces.Discrete(3), hidden_size=16, shared=shared) for _ in range(4)]
    params, buffers = stack_module_state(agents)
    template = copy.deepcopy(agents[0]).to("meta")
    obs = torch.randn(4, 7, 5)
    with torch.no_grad():
        expected = vmap(lambda p, b, o: functional_call(template, (p, b), (o,)))(params, buffers, obs)
        got = stacked_mlp_forward(template, params, obs)
    for e, g in zip(expected, got):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    for i, agent in enumerate(agents):  # and each seed's slice is that seed's own network
        with torch.no_grad():
            torch.testing.assert_close(got[0][i], agent(obs[i])[0], rtol=1e-5, atol=1e-6)




def test_one_seed_of_one_env_trains_batched():
    """One seed of one env (the mujoco recipe's shape, a bench with one seed left to run): the grouped reward
    normaliser of one group of one env takes the array path."""
    cfg = PPOConfig(env_id="Pendulum-v1", num_envs=1, num_steps=32, total_timesteps=64, num_minibatches=2,
                    update_epochs=1, normalize_obs=True, normalize_reward=True)
    (result,) = train_seeds(cfg, [5], progress=False, log=False)
    assert result.global_step == 64 and result.normalizer["reward.count"] > 64


def test_bench_batched_refuses_the_settings_it_cannot_use(tmp_path, capsys):
    """Bug: --batched silently ignored --workers, --backend and every --devices entry but the first."""
    from rlkit.cli import main

    for extra in (["--workers", "2"], ["--backend", "ray"], ["--devices", "cpu", "cuda:0"]):
        code = main(["bench", "cartpole", "--seeds", "1", "2", "--batched", "--out", str(tmp_path / "b"), *extra,
                     "--", "--total_timesteps", "64"])
        assert code == 2 and "would do nothing" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()  # refused before any run folder was claimed


def test_a_refused_batched_run_claims_no_run_folder(tmp_path):
    """Bug: check_batchable ran after the seeds' folders were claimed, leaving seed_k/rlkit.lock behind."""
    from rlkit.ppo import PPOConfig
    from rlkit.ppo_multiseed import train_seeds

    cfg = PPOConfig(env_id="CartPole-v1", num_envs=2, num_steps=16, num_minibatches=2, total_timesteps=64,
                    target_kl=0.01, device="cpu", run_dir=str(tmp_path))
    with pytest.raises(ValueError, match="target_kl"):
        train_seeds(cfg, [1, 2], run_dirs=[str(tmp_path / "s1"), str(tmp_path / "s2")], progress=False)
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()
