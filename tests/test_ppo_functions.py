"""The pure functions of rlkit.ppo against hand-computed and closed-form answers."""

import math

import pytest
import torch

from rlkit.ppo import clipped_policy_loss, clipped_value_loss, explained_variance, gae, kl_estimators, masked_whiten


def test_gae_hand_computed_with_truncation_and_termination():
    # One env, 4 steps.  Step 1 ends by truncation: its bootstrap gamma * V(final obs)
    # = 0.5 * 4 = 2 was folded into the reward by the rollout (1 + 2 = 3).
    # Step 2 ends by termination (no bootstrap).  Step 3 continues into next_value.
    gamma, lam = 0.5, 0.5
    rewards = torch.tensor([1.0, 3.0, 1.0, 1.0]).unsqueeze(1)
    values = torch.tensor([1.0, 2.0, 3.0, 4.0]).unsqueeze(1)
    dones = torch.tensor([0.0, 1.0, 1.0, 0.0]).unsqueeze(1)
    next_value = torch.tensor([8.0])
    advantages, returns = gae(rewards, values, dones, next_value, gamma, lam)
    # by hand:
    d3 = 1 + 0.5 * 8 - 4  # = 1, continues into next_value
    a3 = d3
    d2 = 1 - 3  # terminated: no future
    a2 = d2
    d1 = 3 - 2  # truncated: bootstrap already in the reward, trace cut
    a1 = d1
    d0 = 1 + 0.5 * 2 - 1  # = 1
    a0 = d0 + gamma * lam * a1  # = 1.25
    expected = torch.tensor([a0, a1, a2, a3]).unsqueeze(1)
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected + values)


def test_gae_lambda_one_gives_discounted_returns_minus_values():
    torch.manual_seed(0)
    rewards, values = torch.rand(6, 3), torch.rand(6, 3)
    dones = torch.zeros(6, 3)
    next_value = torch.zeros(3)
    _, returns = gae(rewards, values, dones, next_value, 0.9, 1.0)
    expected = torch.zeros(3)
    for t in reversed(range(6)):
        expected = rewards[t] + 0.9 * expected
        torch.testing.assert_close(returns[t], expected)


def test_masked_whiten_ignores_padding():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 1.0]])
    whitened = masked_whiten(x, mask)
    real = x[mask.bool()]
    expected = (real - real.mean()) / real.std()
    torch.testing.assert_close(whitened[mask.bool()], expected, atol=1e-5, rtol=1e-5)
    # changing what sits under the padding changes nothing
    x2 = x.clone()
    x2[~mask.bool()] = 1e6
    torch.testing.assert_close(masked_whiten(x2, mask)[mask.bool()], whitened[mask.bool()])


def test_masked_whiten_without_shift_keeps_mean():
    x = torch.tensor([2.0, 4.0, 6.0, 8.0])
    out = masked_whiten(x, shift_mean=False)
    assert out.mean().item() == pytest.approx(5.0, abs=1e-5)
    assert out.std().item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_clipped_surrogate_gradient_zero_past_the_clip_in_the_favoured_direction(advantage):
    clip = 0.2
    old_log_prob = torch.zeros(3)
    # ratios: inside the range, past the range in the favoured direction, past it in the other
    favoured, other = (1.5, 0.5) if advantage > 0 else (0.5, 1.5)
    new_log_prob = torch.tensor([1.05, favoured, other]).log().requires_grad_(True)
    loss, _ = clipped_policy_loss(new_log_prob, old_log_prob, torch.full((3,), advantage), clip)
    loss.backward()
    grad = new_log_prob.grad
    assert grad[0] != 0  # inside the trust region: gradient flows
    assert grad[1] == 0  # already past the clip where the advantage pushes: no more push
    assert grad[2] != 0  # moved the wrong way: the unclipped term keeps its gradient


def test_clipped_policy_loss_stats():
    old = torch.zeros(4)
    new = torch.tensor([0.0, 0.0, 0.5, -0.5])
    _, stats = clipped_policy_loss(new, old, torch.ones(4), 0.2)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert stats["max_ratio_error"].item() == pytest.approx(math.exp(0.5) - 1, rel=1e-5)
    # approx_kl is k3 of KL(old || new): ((r - 1) - log r) with r = new / old
    r = new.exp()
    assert stats["approx_kl"].item() == pytest.approx(((r - 1) - r.log()).mean().item(), rel=1e-5)


def test_value_loss_clipping():
    old = torch.tensor([0.0, 0.0])
    returns = torch.tensor([1.0, 1.0])
    new = torch.tensor([0.5, 0.1], requires_grad=True)
    loss = clipped_value_loss(new, old, returns, clip_coef=0.2)
    # element 0: unclipped (0.5-1)^2 = .25; clipped (0.2-1)^2 = .64 -> max .64 (constant in new)
    # element 1: inside the clip: (0.1-1)^2 = .81 both
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81) / 2)
    loss.backward()
    assert new.grad[0] == 0 and new.grad[1] != 0
    unclipped = clipped_value_loss(new.detach(), old, returns, clip_coef=None)
    assert unclipped.item() == pytest.approx(0.5 * (0.25 + 0.81) / 2)


def test_kl_estimators_on_known_gaussians():
    # p = N(0, 1), ref = N(0.5, 1.2^2): KL(p || ref) in closed form
    torch.manual_seed(0)
    p = torch.distributions.Normal(0.0, 1.0)
    ref = torch.distributions.Normal(0.5, 1.2)
    true_kl = torch.distributions.kl_divergence(p, ref).item()
    x = p.sample((400_000,))
    k1, k2, k3 = kl_estimators(p.log_prob(x), ref.log_prob(x))
    assert k1.mean().item() == pytest.approx(true_kl, rel=0.03)
    assert k3.mean().item() == pytest.approx(true_kl, rel=0.03)
    assert (k3 >= 0).all()
    assert (k1 < 0).any()  # k1 is unbiased but single samples can be negative
    assert k2.mean().item() > 0 and torch.allclose(k2, 0.5 * k1**2)


def test_kl_estimators_zero_for_identical_distributions():
    log_p = torch.log(torch.tensor([0.2, 0.3, 0.5]))
    for k in kl_estimators(log_p, log_p.clone()):
        assert torch.all(k == 0)


def test_explained_variance():
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(y, y) == pytest.approx(1.0)
    assert explained_variance(torch.full((4,), 2.5), y) == pytest.approx(0.0)
    assert math.isnan(explained_variance(y, torch.ones(4)))
