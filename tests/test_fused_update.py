"""The fused update (rlkit.fast.FusedMLPLoss, config update_backend) is the autograd update to float32
rounding: the same losses, statistics and gradients on every agent shape it takes, one seed or stacked
seeds, and the same training; it is refused by name where it cannot apply.  The fused rollout step
(rlkit.fast.FusedPolicyStep) draws the same samples as agent.get_action_and_value."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

from rlkit.fast import FusedMLPLoss, FusedPolicyStep, fused_update_support
from rlkit.ppo import (
    Batch,
    FeedForward,
    FusedLearner,
    FusedRolloutPolicy,
    Learner,
    PPOConfig,
    categorical_sample_and_score,
    make_agent,
    make_optimizer,
    minibatch_loss,
    normal_sample_and_score,
    train,
)

GRADIENT_RTOL = 1e-5
"""Stated tolerance: every gradient within 1e-5 of the autograd one, relative to that parameter's largest entry
(seen: <= 5e-7).  The forward is the same ops (the first minibatch's ratio is exactly 1), the loss and the
backward are summed in another order."""

OBS, N = 5, 256


def spaces(kind: str) -> tuple[gym.Space, gym.Space]:
    action = gym.spaces.Box(-1.0, 1.0, (3,)) if kind == "box" else gym.spaces.Discrete(4)
    return gym.spaces.Box(-np.inf, np.inf, (OBS,)), action


def perturbed_batch(agent, kind: str, masked: bool, seed: int) -> Batch:
    """A batch whose old log-probs and values are off the current ones, so clipping is active on both sides."""
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randn(N, OBS, generator=generator)
    masks = None
    if masked:
        masks = torch.rand(N, 4, generator=generator) > 0.3
        masks[:, 0] = True
    with torch.no_grad():
        action, log_prob, _, value = agent.get_action_and_value(obs, action_mask=masks)
    return Batch(obs, action, log_prob + 0.3 * torch.randn(N, generator=generator),
                 3.0 * torch.randn(N, generator=generator), torch.randn(N, generator=generator),
                 value + 0.5 * torch.randn(N, generator=generator), masks)


def assert_gradients_close(reference: torch.nn.Module, fused: torch.nn.Module) -> float:
    worst = 0.0
    for (name, p), (_, q) in zip(reference.named_parameters(), fused.named_parameters()):
        scale = p.grad.abs().max().clamp(min=1e-12)
        error = float((p.grad - q.grad).abs().max() / scale)
        assert error <= GRADIENT_RTOL, (name, error)
        worst = max(worst, error)
    return worst


CASES = [dict(kind=kind, shared=shared, masked=masked, clip_vloss=clip_vloss, norm_adv=norm_adv, ent_coef=ent_coef)
         for kind, masked in (("box", False), ("discrete", False), ("discrete", True))
         for shared in (False, True) for clip_vloss in (True, False) for norm_adv, ent_coef in ((True, 0.01), (False, 0.0))]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_fused_losses_statistics_and_gradients_match_autograd(case):
    kind, masked = case["kind"], case["masked"]
    cfg = PPOConfig(num_steps=N, num_minibatches=4, shared_network=case["shared"], clip_vloss=case["clip_vloss"],
                    norm_adv=case["norm_adv"], ent_coef=case["ent_coef"], hidden_size=32).validate()
    torch.manual_seed(0)
    agents = [make_agent(cfg, *spaces(kind)) for _ in range(2)]
    agents[1].load_state_dict(agents[0].state_dict())
    learners = [cls(agent, make_optimizer(agent, 1e-3, flat=True), cfg, torch.Generator().manual_seed(3))
                for cls, agent in zip((Learner, FusedLearner), agents)]
    batch = perturbed_batch(agents[0], kind, masked, seed=1)
    clipped_somewhere = False
    for plain_mb, fused_mb in zip(learners[0].minibatches(batch), learners[1].minibatches(batch)):
        plain = learners[0].loss_and_gradients(batch, plain_mb)
        fused = learners[1].loss_and_gradients(batch, fused_mb)
        for a, b in zip(plain[:4], fused[:4]):
            torch.testing.assert_close(b, a.detach(), rtol=1e-5, atol=1e-6)
        for key in plain[4]:
            torch.testing.assert_close(fused[4][key], plain[4][key], rtol=1e-5, atol=1e-6)
        clipped_somewhere |= bool(plain[4]["clipfrac"] > 0)
        assert_gradients_close(agents[0], agents[1])
    assert clipped_somewhere  # the test exercises the clipped branch, not only the identity one


@pytest.mark.parametrize("kind", ["box", "discrete"])
def test_stacked_seeds_fused_gradients_match_vmap_autograd(kind):
    """The batched-seed form: weights [seeds, ...], every statistic per seed, each seed's own gradient."""
    cfg = PPOConfig(num_steps=N, num_minibatches=4, ent_coef=0.01).validate()
    seeds = 3
    agents = []
    for s in range(seeds):
        torch.manual_seed(s)
        agents.append(make_agent(cfg, *spaces(kind)))
    template = make_agent(cfg, *spaces(kind)).to("meta")
    batches = [perturbed_batch(a, kind, False, seed=10 + s) for s, a in enumerate(agents)]
    stack = lambda name: torch.stack([getattr(b, name) for b in batches])  # noqa: E731
    obs, actions, log_probs, advantages, returns, values = (stack(k) for k in
                                                            ("obs", "actions", "log_probs", "advantages", "returns", "values"))
    mb = torch.stack([torch.randperm(N, generator=torch.Generator().manual_seed(s))[:64] for s in range(seeds)])
    rows = torch.arange(seeds).unsqueeze(1)
    targets = (log_probs[rows, mb], advantages[rows, mb], returns[rows, mb], values[rows, mb])

    params, buffers = stack_module_state(agents)

    def seed_loss(p, o, a, *t):
        out, value = functional_call(template, (p, buffers), (o,))
        if template.continuous:
            _, lp, ent = normal_sample_and_score(out, p["actor_logstd"], a)
        else:
            _, lp, ent = categorical_sample_and_score(out, None, a)
        loss, pg, v, e, stats = minibatch_loss(lp, ent, value, *t, True, 0.2, True, 0.01, 0.5)
        return loss, (pg, v, e, stats["approx_kl"], stats["clipfrac"])

    losses, plain_stats = vmap(seed_loss)(params, obs[rows, mb], actions[rows, mb], *targets)
    losses.sum().backward()
    plain_grads = {k: v.grad.clone() for k, v in params.items()}

    fused_params = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    loss, pg, v, e, stats = FusedMLPLoss(template, fused_params, cfg)(obs[rows, mb], actions[rows, mb], None, *targets)
    torch.testing.assert_close(loss, losses.sum().detach(), rtol=1e-5, atol=1e-6)
    for a, b in zip(plain_stats, (pg, v, e, stats["approx_kl"], stats["clipfrac"])):
        assert b.shape == (seeds,)
        torch.testing.assert_close(b, a.detach(), rtol=1e-5, atol=1e-6)
    for name, grad in plain_grads.items():
        for s in range(seeds):  # each seed's gradient relative to its own scale
            scale = grad[s].abs().max().clamp(min=1e-12)
            assert float((fused_params[name].grad[s] - grad[s]).abs().max() / scale) <= GRADIENT_RTOL, (name, s)


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_training_with_the_fused_update_follows_the_autograd_one(env_id):
    """Same seed, both backends, 4 updates: the weights agree to rounding growth and the returns are the same."""
    cfg = PPOConfig(env_id=env_id, num_envs=2, num_steps=128, total_timesteps=128 * 2 * 4, num_minibatches=4,
                    update_epochs=4, device="cpu")
    from dataclasses import replace

    plain = train(replace(cfg, update_backend="autograd"), log=False, progress=False)
    fused = train(replace(cfg, update_backend="fused"), log=False, progress=False)
    assert (plain.update_backend, fused.update_backend) == ("autograd", "fused")
    assert fused.last_update["first_ratio_error"] < 1e-6 and plain.last_update["first_ratio_error"] < 1e-6
    for name, value in plain.agent.state_dict().items():
        torch.testing.assert_close(fused.agent.state_dict()[name], value, atol=1e-4, rtol=0)
    assert fused.episode_returns == pytest.approx(plain.episode_returns, rel=1e-3)


def test_auto_picks_fused_for_the_mlp_and_autograd_elsewhere():
    box = spaces("box")
    cfg = PPOConfig().validate()
    assert fused_update_support(make_agent(cfg, *box)) is None
    image = gym.spaces.Box(0, 255, (3, 40, 40), dtype=np.uint8)
    assert "CNN" in fused_update_support(make_agent(PPOConfig(network="nature_cnn").validate(), image, box[1]))
    multi = make_agent(cfg, box[0], gym.spaces.MultiDiscrete([2, 3]))
    assert fused_update_support(multi) == "MultiDiscrete actions"
    result = train(PPOConfig(env_id="CartPole-v1", num_envs=2, num_steps=32, total_timesteps=64, num_minibatches=2,
                             update_epochs=1, device="cpu"), log=False, progress=False)
    assert result.update_backend == "fused"
    compiled_cfg = dict(env_id="CartPole-v1", num_envs=2, num_steps=32, total_timesteps=64, num_minibatches=2,
                        update_epochs=1, device="cpu", env_module=["rlkit.envs"])
    multi_cfg = PPOConfig(**{**compiled_cfg, "env_id": "rlkit/MultiDiscreteProbe-v0"})
    assert train(multi_cfg, log=False, progress=False).update_backend == "autograd"


def test_fused_is_refused_by_name_where_it_cannot_apply():
    cfg = PPOConfig(env_id="rlkit/MultiDiscreteProbe-v0", update_backend="fused", num_envs=2, num_steps=32,
                    total_timesteps=64, num_minibatches=2, device="cpu")
    with pytest.raises(ValueError, match="update_backend='fused' does not support MultiDiscrete actions"):
        train(cfg, log=False, progress=False)
    with pytest.raises(ValueError, match="update_backend must be one of"):
        PPOConfig(update_backend="fast").validate()


POLICY_STEP_TOL = 1e-5
"""Stated tolerance of the fused policy step: actions, log-probs and values within 1e-5 (absolute and relative) of
agent.get_action_and_value's with the same generator state (seen: <= 1.2e-6 with perturbed weights); Discrete
actions identical.  The actor's and critic's matmuls are stacked (another summation order) and a Normal sample's
log-prob is read off its noise."""


@pytest.mark.parametrize("kind", ["box", "box1", "discrete", "masked"])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("envs", [1, 8])
def test_fused_policy_step_draws_the_plain_steps_samples(kind, shared, envs):
    action_space = {"box": gym.spaces.Box(-1.0, 1.0, (3,)), "box1": gym.spaces.Box(-2.0, 2.0, (1,))}.get(
        kind, gym.spaces.Discrete(4))
    torch.manual_seed(0)
    agent = make_agent(PPOConfig(shared_network=shared, hidden_size=32).validate(), spaces("box")[0], action_space)
    with torch.no_grad():  # off the initialisation (0.01-gain heads), so every layer matters
        for p in agent.parameters():
            p.add_(0.3 * torch.randn_like(p))
    step = FusedPolicyStep(agent)
    obs = torch.randn(envs, OBS)
    mask = None
    if kind == "masked":
        mask = torch.rand(envs, 4) > 0.5
        mask[:, 1] = True
    for repeat in range(3):
        with torch.inference_mode():
            torch.manual_seed(repeat)
            action, log_prob, _, value = agent.get_action_and_value(obs, action_mask=mask)
            after_plain = torch.random.get_rng_state()
            torch.manual_seed(repeat)
            fused_action, fused_log_prob, _, fused_value = step(obs, mask)
        assert torch.equal(torch.random.get_rng_state(), after_plain)  # the same draws from the same generator
        if agent.continuous:
            torch.testing.assert_close(fused_action, action, rtol=POLICY_STEP_TOL, atol=POLICY_STEP_TOL)
        else:
            assert torch.equal(fused_action, action)
        torch.testing.assert_close(fused_log_prob, log_prob, rtol=POLICY_STEP_TOL, atol=POLICY_STEP_TOL)
        torch.testing.assert_close(fused_value, value, rtol=POLICY_STEP_TOL, atol=POLICY_STEP_TOL)


def test_fused_policy_step_acts_with_the_weights_of_the_last_update():
    """Its stacked weights are copies: the rollout policy re-reads them before every rollout."""
    cfg = PPOConfig(hidden_size=16).validate()
    torch.manual_seed(0)
    agent = make_agent(cfg, *spaces("box"))
    policy = FeedForward().rollout_policy(agent, cfg, 1)
    assert isinstance(policy, FusedRolloutPolicy)
    obs = torch.randn(2, OBS)
    with torch.no_grad():
        for p in agent.parameters():
            p.add_(0.5)
    with torch.inference_mode():
        stale = policy.act(obs, None)[2]
    policy.begin()
    with torch.inference_mode():
        fresh = policy.act(obs, None)[2]
        torch.testing.assert_close(fresh, agent.get_value(obs), rtol=POLICY_STEP_TOL, atol=POLICY_STEP_TOL)
    assert not torch.allclose(stale, fresh)
    autograd = PPOConfig(hidden_size=16, update_backend="autograd").validate()
    assert type(FeedForward().rollout_policy(agent, autograd, 1)) is not FusedRolloutPolicy


@pytest.mark.parametrize("kind", ["box", "discrete"])
@pytest.mark.parametrize("shared", [False, True])
def test_batched_seed_fused_policy_acts_as_each_seeds_own_agent(kind, shared):
    """All seeds' actors and critics in one chain: each seed's slice samples and scores as that seed's agent."""
    import copy

    from torch.func import stack_module_state

    from rlkit.ppo_multiseed import BatchedSeedPolicy

    cfg = PPOConfig(shared_network=shared, hidden_size=16).validate()
    seeds, per_seed = 3, 2
    agents = []
    for s in range(seeds):
        torch.manual_seed(s)
        agent = make_agent(cfg, *spaces(kind))
        with torch.no_grad():
            for p in agent.parameters():
                p.add_(0.3 * torch.randn_like(p))
        agents.append(agent)
    params, buffers = stack_module_state(agents)
    template = copy.deepcopy(agents[0]).to("meta")
    policies = [BatchedSeedPolicy(template, params, buffers, [torch.Generator().manual_seed(10 + s) for s in range(seeds)],
                                  per_seed, fused=fused) for fused in (False, True)]
    obs = torch.randn(seeds * per_seed, OBS)
    for policy in policies:
        policy.begin()
    with torch.inference_mode():
        for _ in range(2):
            plain, fused = (policy.act(obs, None) for policy in policies)
            for a, b in zip(plain, fused):
                torch.testing.assert_close(b, a, rtol=POLICY_STEP_TOL, atol=POLICY_STEP_TOL)
            for s, agent in enumerate(agents):  # the value of each seed's envs is its own critic's
                rows = slice(s * per_seed, (s + 1) * per_seed)
                torch.testing.assert_close(fused[2][rows], agent.get_value(obs[rows]), rtol=POLICY_STEP_TOL,
                                           atol=POLICY_STEP_TOL)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_the_written_out_gradient_clip_is_torchs_bit_for_bit(scale):
    from rlkit.fast import clip_grad_norm

    for size in (7, 4_673, 100_000):  # 4,673: the HalfCheetah agent's flat parameter
        grad = scale * torch.randn(size, generator=torch.Generator().manual_seed(size))
        ours, theirs = (torch.nn.Parameter(torch.zeros(size)) for _ in range(2))
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        assert torch.equal(clip_grad_norm([ours], 0.5), torch.nn.utils.clip_grad_norm_([theirs], 0.5))
        assert torch.equal(ours.grad, theirs.grad)
