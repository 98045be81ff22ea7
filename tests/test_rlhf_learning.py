"""Learning test: on the synthetic task, PPO against the proxy reward model raises the gold reward.

The rlhf-synthetic recipe as shipped (60 updates x 64 prompts, beta 0.05, k1 in
reward), 3 PPO seeds sharing one base policy and one proxy RM.  Measured on
held-out prompts (256 samples) before and after training.  About 1.5 min on 2 CPU cores.
"""

from __future__ import annotations

import pytest

from rlkit.config import config_from_dict, read_recipe
from rlkit.rlhf.config import RLHFConfig
from rlkit.rlhf.ppo_lm import train

GOLD_MARGIN = 0.75  # gold reward (units: +1 per distinct positive adjective) must rise by at least this much
KL_BOUND = 8.0  # final KL(pi || ref), k1 estimate in nats per sequence, of the median seed
# Why the median: with a fixed beta the KL a seed ends at is sensitive to float rounding. Computing
# logits only at response positions (bitwise the same forward, a differently shaped weight-gradient
# sum) moved the three seeds from KL 4.3 / 4.1 / 3.3 to 14.5 / 3.8 / 3.9, with gold +1.22 / +1.32 /
# +1.40. Without the penalty (rlhf-synthetic-beta0) KL passes 20 on the typical seed.


@pytest.mark.slow
def test_ppo_raises_gold_reward_within_kl_bound(tmp_path):
    _, values, source = read_recipe("rlhf-synthetic")
    results = []
    for seed in (1, 2, 3):
        overrides = {"seed": seed, "artifacts_dir": str(tmp_path / "art"), "run_dir": str(tmp_path / "runs")}
        cfg = config_from_dict(RLHFConfig, {**values, **overrides}, source)
        result = train(cfg, progress=False, log=False)
        results.append((seed, result.initial, result.final))
        print(f"seed {seed}: gold {result.initial['gold']:+.3f} -> {result.final['gold']:+.3f}  "
              f"proxy {result.initial['score']:+.3f} -> {result.final['score']:+.3f}  KL k1 {result.final['kl_k1']:.2f}")
    for seed, initial, final in results:
        assert final["gold"] - initial["gold"] >= GOLD_MARGIN, (seed, initial, final)
        assert final["eos_frac"] >= 0.9, (seed, final)
    kls = sorted(final["kl_k1"] for _, _, final in results)
    assert kls[1] <= KL_BOUND, kls


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["rloo", "grpo"])
def test_critic_free_estimators_raise_gold_reward_within_kl_bound(tmp_path, estimator):
    """`rlkit rlhf rlhf-synthetic --advantage_estimator rloo` (or grpo): the same recipe, budget (3,840 episodes)
    and beta, 4 responses to each of 16 prompts per update, no value head; one seed, the PPO test's bounds.
    About 40 s each on 2 CPU cores."""
    _, values, source = read_recipe("rlhf-synthetic")
    overrides = {"advantage_estimator": estimator, "samples_per_prompt": 4, "artifacts_dir": str(tmp_path / "art"),
                 "run_dir": str(tmp_path / "runs")}
    result = train(config_from_dict(RLHFConfig, {**values, **overrides}, source), progress=False, log=False)
    initial, final = result.initial, result.final
    print(f"{estimator}: gold {initial['gold']:+.3f} -> {final['gold']:+.3f}  KL k1 {final['kl_k1']:.2f}")
    assert final["gold"] - initial["gold"] >= GOLD_MARGIN, (initial, final)
    assert final["eos_frac"] >= 0.9 and final["kl_k1"] <= KL_BOUND, final
