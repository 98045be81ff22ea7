"""The critic-free advantage estimators (rloo, grpo, dr_grpo) next to PPO's gae, in the one RLHF loop.

Group baselines by hand; the advantages and losses of TRL 1.16's RLOOTrainer / GRPOTrainer restated
from their source on the same random tensors; k3 as a loss; gae unchanged; no value head where none
is needed; tiny runs of each estimator.
"""

from __future__ import annotations

import os

import pytest
import torch

from rlkit.config import ConfigError, config_from_dict
from rlkit.envs import text_task
from rlkit.ppo import clipped_policy_loss, clipped_value_loss
from rlkit.rlhf.config import RLHFConfig
from rlkit.rlhf.policy import forward_responses, load_policy
from rlkit.rlhf.ppo_lm import (
    collect,
    group_advantages,
    kl_loss,
    k2_kl_loss,
    loss_weights,
    policy_loss,
    ppo_update,
    sequence_rewards,
    train,
    trainable_tensors,
)

TIMINGS = ("generate_tokens_per_s", "train_tokens_per_s", "episodes_per_s", "peak_rss_mb")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("estimators_base"))
    torch.manual_seed(0)
    return text_task.pretrain_base_model(path, seed=0, steps=30, batch_size=32, log=None)


def _cfg(tmp_path, tiny_base: str, **overrides) -> RLHFConfig:
    values = dict(policy=tiny_base, reward="gold", batch_size=8, num_minibatches=2, ppo_epochs=2, num_updates=2,
                  max_new_tokens=6, eval_samples=8, learning_rate=1e-3, device="cpu", run_dir=str(tmp_path / "runs"),
                  artifacts_dir=str(tmp_path / "artifacts"))
    return RLHFConfig(**{**values, **overrides}).validate()


def _approx(value: float):  # the hand-computed values below have 6 decimals
    return pytest.approx(value, abs=1e-6)


# ---------------------------------------------------------------------------------
# Group baselines and loss aggregation, by hand
# ---------------------------------------------------------------------------------


def test_group_baselines_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]])
    # rloo: r - mean of the other three: 1 - 11/3, 2 - 10/3, 3 - 9/3, 6 - 6/3
    assert group_advantages(rewards, "rloo")[0].tolist() == [_approx(-2.666667), _approx(-1.333333), _approx(0.0), _approx(4.0)]
    # grpo: mean 3, unbiased std sqrt(14 / 3) = 2.160247, + 1e-4: (-2, -1, 0, 3) / 2.160347
    assert group_advantages(rewards, "grpo")[0].tolist() == [_approx(-0.925777), _approx(-0.462889), _approx(0.0), _approx(1.388666)]
    # dr_grpo: r - mean, no std
    assert group_advantages(rewards, "dr_grpo")[0].tolist() == [-2.0, -1.0, 0.0, 3.0]
    for estimator in ("rloo", "grpo", "dr_grpo"):  # a group of equal rewards carries no signal: all 0, not NaN
        assert group_advantages(rewards, estimator)[1].tolist() == [0.0] * 4
    with pytest.raises(ValueError, match="estimator must be rloo, grpo or dr_grpo"):
        group_advantages(rewards, "gae")


def test_sequence_rewards_take_the_summed_k1_off_the_score():
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-0.5, -1.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    # k1 sums: (0.5 - 1.0) = -0.5 (the padded token does not count), (0 + 0.5 + 1.5) = 2.0; beta 0.1
    got = sequence_rewards(torch.tensor([1.0, 1.0]), logp, ref, mask, beta=0.1)
    assert got.tolist() == [_approx(1.05), _approx(0.8)]
    assert sequence_rewards(torch.tensor([1.0, 1.0]), logp, ref, mask, 0.1, kl_in_reward=False).tolist() == [1.0, 1.0]


def test_loss_weights_give_each_aggregation():
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])  # lengths 1 and 3: N = 4 tokens, B = 2 responses
    x = torch.tensor([[2.0, 7.0, 7.0], [1.0, 2.0, 6.0]])  # per-token terms (7s on padding never count)
    mean_of = lambda w: float(((x * w) * mask).sum() / mask.sum())  # noqa: E731 - rlkit.ppo.masked_mean
    assert loss_weights(mask, "token_mean", 3) is None  # PPO's (2 + 1 + 2 + 6) / 4
    assert mean_of(loss_weights(mask, "sequence_mean", 3)) == _approx(2.5)  # (2/1 + 9/3) / 2
    assert mean_of(loss_weights(mask, "sequence_sum", 3)) == _approx(5.5)  # (2 + 9) / 2
    assert mean_of(loss_weights(mask, "constant_length", 3)) == _approx(11 / 6)  # (2 + 9) / (2 * 3)


def test_k3_as_a_loss_gives_the_gradient_of_the_reverse_kl():
    """GRPO's k3 loss: its expected gradient is grad KL(ref || pi), exact over a 6-way categorical."""
    torch.manual_seed(0)
    theta, ref_logp = torch.randn(6, requires_grad=True), torch.log_softmax(torch.randn(6), -1)
    logp = torch.log_softmax(theta, -1)
    pi = logp.exp().detach()
    grad = torch.autograd.grad(kl_loss(logp, ref_logp, pi, "k3_loss"), theta)[0]  # weights pi: the expectation
    reverse = (ref_logp.exp() * (ref_logp - torch.log_softmax(theta, -1))).sum()
    forward = (pi * (torch.log_softmax(theta, -1) - ref_logp)).sum()
    assert torch.allclose(grad, torch.autograd.grad(reverse, theta)[0], atol=1e-6)
    assert not torch.allclose(grad, torch.autograd.grad(forward, theta)[0], atol=1e-3)  # not KL(pi || ref)'s
    assert torch.equal(kl_loss(logp, ref_logp, pi, "k2_loss"), k2_kl_loss(logp, ref_logp, pi))


# ---------------------------------------------------------------------------------
# TRL 1.16's formulas on the same tensors.  Their trainers compute advantages and losses
# inside methods that need a model and generation, so the lines are restated from
# site-packages/trl/trainer/{rloo,grpo}_trainer.py (cited by method and line), with TRL's
# own nanstd; rlkit's functions must give the same numbers and gradients.
# ---------------------------------------------------------------------------------


def _random_rollout(prompts: int = 3, k: int = 4, length: int = 7, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    rows = prompts * k
    lengths = torch.randint(1, length + 1, (rows,), generator=generator)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).float()
    old = -torch.rand(rows, length, generator=generator) * 3
    new = (old + 0.3 * torch.randn(rows, length, generator=generator)).requires_grad_(True)  # some ratios clipped
    ref = old + 0.5 * torch.randn(rows, length, generator=generator)
    scores = torch.randn(rows, generator=generator)
    return scores, new, old, ref, mask


def test_rloo_advantages_and_loss_match_trl():
    nanstd = pytest.importorskip("trl.trainer.utils").nanstd
    k, beta, epsilon = 4, 0.05, 0.2
    scores, new, old, ref, mask = _random_rollout(k=k)
    # TRL RLOOTrainer._generate_and_score_completions (rloo_trainer.py L1664-1699): k1 summed per sequence
    # off the reward, leave-one-out baseline, normalize_advantages False (the default)
    kl = ((old - ref) * mask).sum(-1)
    rewards = scores - beta * kl
    grouped = rewards.view(-1, k)
    baselines = ((torch.nansum(grouped, 1, keepdim=True) - grouped) / (k - 1)).view(-1)
    trl_advantages = rewards - baselines
    assert torch.isfinite(nanstd(grouped, dim=1)).all()  # (TRL computes it for logging only)
    # TRL RLOOTrainer._compute_loss (L1823-1833): sequence log-prob ratio, clipped, mean over sequences
    coef_1 = torch.exp((new * mask).sum(1) - (old * mask).sum(1))
    coef_2 = torch.clamp(coef_1, 1 - epsilon, 1 + epsilon)
    trl_loss = -torch.min(coef_1 * trl_advantages, coef_2 * trl_advantages).mean()

    cfg = RLHFConfig(advantage_estimator="rloo", samples_per_prompt=k, batch_size=12, num_minibatches=1,
                     cliprange=epsilon, kl_coef=beta).validate()
    advantages = group_advantages(sequence_rewards(scores, old, ref, mask, beta).view(-1, k), "rloo").view(-1)
    torch.testing.assert_close(advantages, trl_advantages)
    loss, stats, _ = policy_loss(cfg, new, old, advantages[:, None] * mask, mask)
    assert 0 < stats["clipfrac"] < 1  # both branches of the clip are exercised
    torch.testing.assert_close(loss, trl_loss)
    torch.testing.assert_close(torch.autograd.grad(loss, new)[0], torch.autograd.grad(trl_loss, new)[0])


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo"])
def test_grpo_and_dr_grpo_advantages_and_loss_match_trl(loss_type):
    nanstd = pytest.importorskip("trl.trainer.utils").nanstd
    k, beta, epsilon = 4, 0.04, 0.2
    scores, new, old, ref, mask = _random_rollout(k=k, seed=1)
    max_completion_length = mask.shape[1]
    # TRL GRPOTrainer._generate_and_score_completions (grpo_trainer.py L2765-2787): scale_rewards "group"
    # for GRPO; "none" for Dr. GRPO (what TRL's docs pair with loss_type "dr_grpo")
    grouped = scores.view(-1, k)
    mean = grouped.mean(1).repeat_interleave(k)
    std = nanstd(grouped, dim=1).repeat_interleave(k)
    trl_advantages = scores - mean
    if loss_type == "grpo":
        trl_advantages = trl_advantages / (std + 1e-4)
    # TRL GRPOTrainer._compute_loss (L3099-3165): per-token ratio, k3 KL added per token, then aggregated
    per_token_kl = torch.exp(ref - new) - (ref - new) - 1
    coef_1 = torch.exp(new - old)
    coef_2 = torch.clamp(coef_1, 1 - epsilon, 1 + epsilon)
    advantage = trl_advantages.unsqueeze(1)
    per_token_loss = -torch.min(coef_1 * advantage, coef_2 * advantage) + beta * per_token_kl
    if loss_type == "grpo":
        trl_loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    else:
        trl_loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_completion_length)

    cfg = RLHFConfig(advantage_estimator=loss_type, samples_per_prompt=k, batch_size=12, num_minibatches=1,
                     cliprange=epsilon, kl_coef=beta, kl_mode="k3_loss", max_new_tokens=max_completion_length).validate()
    advantages = group_advantages(sequence_rewards(scores, old, ref, mask, beta, kl_in_reward=False).view(-1, k),
                                  loss_type).view(-1)
    torch.testing.assert_close(advantages, trl_advantages)
    pg_loss, stats, weights = policy_loss(cfg, new, old, advantages[:, None] * mask, mask)
    assert 0 < stats["clipfrac"] < 1
    loss = pg_loss + beta * kl_loss(new, ref, mask, cfg.kl_mode, weights)
    torch.testing.assert_close(loss, trl_loss)
    torch.testing.assert_close(torch.autograd.grad(loss, new)[0], torch.autograd.grad(trl_loss, new)[0])


# ---------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------


def test_estimator_errors_name_the_key_and_the_valid_values():
    with pytest.raises(ConfigError, match="advantage_estimator must be one of gae, rloo, grpo, dr_grpo, got 'ppo'"):
        config_from_dict(RLHFConfig, {"advantage_estimator": "ppo"}, "test")
    with pytest.raises(ConfigError, match="advantage_estimator 'grpo' needs samples_per_prompt >= 2"):
        config_from_dict(RLHFConfig, {"advantage_estimator": "grpo", "samples_per_prompt": 1}, "test")
    with pytest.raises(ConfigError, match=r"samples_per_prompt \(3\) must divide batch_size \(64\)"):
        config_from_dict(RLHFConfig, {"advantage_estimator": "rloo", "samples_per_prompt": 3}, "test")
    with pytest.raises(ConfigError, match="whiten_rewards .* set whiten_rewards = false"):
        config_from_dict(RLHFConfig, {"advantage_estimator": "rloo", "whiten_rewards": True}, "test")
    with pytest.raises(ConfigError, match="kl_mode 'k1_loss' is refused"):
        config_from_dict(RLHFConfig, {"advantage_estimator": "grpo", "kl_mode": "k1_loss"}, "test")
    # the group estimators have no value head and no GAE: these were taken and changed nothing (identical runs)
    for key, value in (("gamma", 0.9), ("lam", 0.0), ("vf_coef", 1.0), ("cliprange_value", 0.5)):
        with pytest.raises(ConfigError, match=f"{key} = {value}: GAE / value-head settings, and advantage_estimator 'grpo'"):
            config_from_dict(RLHFConfig, {"advantage_estimator": "grpo", key: value}, "test")
    config_from_dict(RLHFConfig, {"advantage_estimator": "rloo", "gamma": 1.0, "vf_coef": 0.1}, "test")  # the defaults
    # held-out files and the prompt-length limit were ignored with the task's own prompts / preferences
    for key, value in (("eval_prompts", "held_out.jsonl"), ("max_prompt_tokens", 8), ("eval_preferences", "p.jsonl")):
        with pytest.raises(ConfigError, match=f"{key} = .* apply to your own prompts / preferences file, and none is set"):
            config_from_dict(RLHFConfig, {key: value}, "test")
    with pytest.raises(ConfigError, match="kl_mode must be one of k1_in_reward, k2_loss, k3_loss"):
        config_from_dict(RLHFConfig, {"kl_mode": "k4_loss"}, "test")
    defaults = {e: config_from_dict(RLHFConfig, {"advantage_estimator": e}, "test").group_size
                for e in ("gae", "rloo", "grpo", "dr_grpo")}
    assert defaults["gae"] == 1 and all(defaults[e] >= 2 for e in ("rloo", "grpo", "dr_grpo"))


# ---------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------


def test_gae_update_is_the_ppo_formula_of_the_core(tiny_base):
    """advantage_estimator 'gae' (the default) must stay PPO: one ppo_update step equals, bitwise, the step
    assembled here from rlkit.ppo's clipped policy and value losses and k2 (kl_mode 'k2_loss')."""
    cfg = RLHFConfig(batch_size=4, num_minibatches=1, ppo_epochs=1, max_new_tokens=6, learning_rate=1e-2,
                     kl_mode="k2_loss", kl_coef=0.1).validate()
    assert cfg.advantage_estimator == "gae" and cfg.group_size == 1
    weights = []
    for by_hand in (False, True):
        torch.manual_seed(0)
        policy, tokenizer = load_policy(tiny_base)
        torch.nn.init.normal_(policy.value_head.weight, std=0.1)  # non-zero values: the value loss matters
        optimizer = torch.optim.Adam(trainable_tensors(policy).values(), lr=cfg.learning_rate, eps=1e-5)
        batch = collect(policy, tokenizer, ["the cat", "a dog is", "good", "the"],
                        lambda prompts, texts: torch.arange(len(texts), dtype=torch.float32), cfg, beta=0.1)
        if not by_hand:
            stats = ppo_update(policy, optimizer, batch, cfg, 0.1, torch.Generator().manual_seed(0))
            assert "value_loss" in stats
        else:
            idx = torch.randperm(4, generator=torch.Generator().manual_seed(0))
            s, mask = batch.samples, batch.mask[idx]
            logp, _, values = forward_responses(policy, s.queries[idx], s.query_mask[idx], s.responses[idx],
                                                s.response_mask[idx], cfg.temperature)
            pg, _ = clipped_policy_loss(logp, batch.logp[idx], batch.advantages[idx], cfg.cliprange, mask)
            vf = clipped_value_loss(values, batch.values[idx], batch.returns[idx], cfg.cliprange_value, mask)
            loss = pg + cfg.vf_coef * vf + 0.1 * k2_kl_loss(logp, batch.ref_logp[idx], mask)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()
        weights.append({n: p.detach().clone() for n, p in trainable_tensors(policy).items()})
    assert any(not torch.equal(weights[0][n], p) for n, p in load_policy(tiny_base)[0].named_parameters()
               if n in weights[0] and "value_head" not in n)  # the step moved the policy
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name


def test_gae_unset_and_explicit_train_alike(tiny_base, tmp_path):
    unset = train(_cfg(tmp_path, tiny_base), run_name="unset", progress=False, log=False)
    explicit = train(_cfg(tmp_path, tiny_base, advantage_estimator="gae", samples_per_prompt=1), run_name="gae",
                     progress=False, log=False)
    for a, b in zip(unset.history, explicit.history, strict=True):
        assert {k: v for k, v in a.items() if k not in TIMINGS} == {k: v for k, v in b.items() if k not in TIMINGS}
        assert "value_loss" in a
    assert unset.final == explicit.final


@pytest.mark.parametrize("estimator,kl_mode", [("rloo", "k1_in_reward"), ("grpo", "k3_loss"), ("dr_grpo", "k2_loss")])
def test_group_estimators_train_without_a_value_head(tiny_base, tmp_path, estimator, kl_mode):
    from rlkit.checkpoint import load_checkpoint

    seen = []

    def reward(prompts, responses):
        seen.append(list(prompts))
        return torch.tensor([float(len(r.split())) for r in responses])

    cfg = _cfg(tmp_path, tiny_base, advantage_estimator=estimator, kl_mode=kl_mode, samples_per_prompt=4, eval_samples=4)
    result = train(cfg, run_name=estimator, progress=False, reward_fn=reward)
    batches = [p for p in seen if len(p) == cfg.batch_size]  # the training batches (evaluation has eval_samples)
    assert len(batches) == cfg.num_updates
    for prompts in batches:  # two prompts, each four times in a row
        assert prompts[::4] == prompts[1::4] == prompts[3::4] and len(set(prompts)) == cfg.batch_size // 4
    assert all("value_loss" not in h and "policy_loss" in h and "frac_reward_zero_std" in h for h in result.history)
    tensors, state = load_checkpoint(result.run_dir)
    assert tensors["model"] and not any(k.startswith("value_head") for k in tensors["model"])
    assert len(state["optimizer_param_groups"][0]["params"]) == len(tensors["model"])  # Adam holds no value head
    assert not os.path.exists(os.path.join(result.checkpoint_dir, "value_head.safetensors"))
    start = load_policy(tiny_base)[0]
    moved = [n for n, p in start.lm.named_parameters() if not torch.equal(p, tensors["model"][f"lm.{n}"])]
    assert moved  # the policy did train

    policy, _ = load_policy(tiny_base, value_head=False)
    assert policy.value_head is None and not any("value_head" in n for n, _ in policy.named_parameters())
