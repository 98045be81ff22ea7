"""The probe suite: every probe is solved, and a broken agent is caught by the right probe."""

import pytest

import rlkit.ppo
from rlkit.doctor import print_report, run_probe, run_probe_suite


def test_every_probe_is_solved(capsys):
    results = run_probe_suite(seed=1)
    assert len(results) == 13
    assert print_report(results) == 0, capsys.readouterr().out
    assert all(r.passed for r in results)


def test_shared_network_agent_solves_the_policy_probes():
    for continuous in (False, True):
        assert run_probe("ObsAndActionDependentReward", continuous, shared_network=True).passed


def test_a_discounting_bug_is_caught_by_the_two_step_probe(monkeypatch, capsys):
    real_gae = rlkit.ppo.gae

    def gae_ignoring_gamma(rewards, values, dones, next_value, gamma, gae_lambda):
        return real_gae(rewards, values, dones, next_value, 1.0, gae_lambda)

    monkeypatch.setattr(rlkit.ppo, "gae", gae_ignoring_gamma)
    assert run_probe("ConstantReward", False).passed  # one-step probes cannot see it
    broken = run_probe("TwoStepDiscounted", False)
    assert not broken.passed
    assert print_report([broken]) == 1
    assert "discounting" in capsys.readouterr().out


def test_a_sign_flipped_policy_gradient_is_caught_by_the_action_probe(monkeypatch):
    real_loss = rlkit.ppo.clipped_policy_loss

    def flipped(new_log_prob, old_log_prob, advantages, clip_coef, mask=None):
        return real_loss(new_log_prob, old_log_prob, -advantages, clip_coef, mask)

    monkeypatch.setattr(rlkit.ppo, "clipped_policy_loss", flipped)
    assert run_probe("ConstantReward", False).passed
    assert not run_probe("ActionDependentReward", False).passed


@pytest.mark.parametrize("continuous", [False, True])
def test_a_sign_flipped_fused_gradient_is_caught_by_the_action_probe(monkeypatch, continuous):
    # The default update is the fused one (update_backend auto): the probes must catch a fault in it too.
    import rlkit.fast

    real = rlkit.fast.FusedMLPLoss._loss_and_gradients

    def flipped(self, obs, actions, action_mask, old_log_prob, advantages, *rest):
        return real(self, obs, actions, action_mask, old_log_prob, -advantages, *rest)

    assert run_probe("ActionDependentReward", continuous).passed
    monkeypatch.setattr(rlkit.fast.FusedMLPLoss, "_loss_and_gradients", flipped)
    assert not run_probe("ActionDependentReward", continuous).passed


@pytest.mark.parametrize("fault", ["log_prob", "stale_weights"])
def test_a_fault_in_the_fused_policy_step_is_caught_by_the_ratio_check(monkeypatch, fault):
    # The rollout's default step is rlkit.fast.FusedPolicyStep: a log-prob it computes differently from the
    # update, or weights it forgets to re-read after an update, make the first minibatch's ratio differ from 1.
    import rlkit.fast

    healthy = run_probe("ActionDependentReward", True)
    assert healthy.passed and healthy.checks[-1].learned < 1e-5
    if fault == "log_prob":
        real = rlkit.fast.FusedPolicyStep.normal_sample
        monkeypatch.setattr(rlkit.fast.FusedPolicyStep, "normal_sample",
                            lambda self, out, noise: (real(self, out, noise)[0], real(self, out, noise)[1] + 0.01))
    else:
        real = rlkit.fast.FusedPolicyStep.refresh

        def first_time_only(self):
            if not hasattr(self, "layers"):
                real(self)

        monkeypatch.setattr(rlkit.fast.FusedPolicyStep, "refresh", first_time_only)
    broken = run_probe("ActionDependentReward", True)
    assert not broken.passed and not broken.checks[-1].passed, broken.checks[-1]


def test_a_replaced_loss_function_is_what_trains_not_the_fused_update():
    from rlkit.ppo import PPOConfig, make_agent, use_fused_update

    import gymnasium as gym

    agent = make_agent(PPOConfig(), gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2))
    assert use_fused_update(PPOConfig(), agent)
    real = rlkit.ppo.clipped_value_loss
    try:
        rlkit.ppo.clipped_value_loss = lambda *a, **k: real(*a, **k)
        assert not use_fused_update(PPOConfig(), agent)
        with pytest.raises(ValueError, match="replaced rlkit.ppo.clipped_value_loss"):
            use_fused_update(PPOConfig(update_backend="fused"), agent)
    finally:
        rlkit.ppo.clipped_value_loss = real


def test_unknown_probe_name_is_refused():
    with pytest.raises(ValueError, match="unknown probe"):
        run_probe_suite(only=["NoSuchProbe"])
