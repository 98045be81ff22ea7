"""Fast checks of the RLHF implementation details (CPU, offline: every model is built from a config)."""

from __future__ import annotations

import math

import pytest
import torch
from rlkit.envs import text_task

from rlkit.config import ConfigError, config_from_dict
from rlkit.ppo import kl_estimators, masked_whiten
from rlkit.rlhf.config import RLHFConfig
from rlkit.rlhf.policy import (
    PolicyWithValue,
    forward_responses,
    last_token_index,
    load_policy,
    response_logprobs,
    save_policy_checkpoint,
)
from rlkit.rlhf.ppo_lm import AdaptiveKLController, FixedKLController, compute_advantages, k2_kl_loss, per_token_rewards
from rlkit.rlhf.reward import RewardModel, RewardModelPerCall, callable_reward, load_reward_model, sequence_scores
from rlkit.rlhf.rollout import apply_eos_trick, generate_samples, truncate_at_stop_string, truncate_responses


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> str:
    """A tiny GPT-2 from the synthetic task's config, 30 pretraining steps (about a second), saved to disk."""
    path = str(tmp_path_factory.mktemp("base"))
    torch.manual_seed(0)
    return text_task.pretrain_base_model(path, seed=0, steps=30, batch_size=32, log=None)


# ---------------------------------------------------------------------------------
# KL estimators: which ones give the gradient of KL(pi || ref)
# ---------------------------------------------------------------------------------


def _categorical():
    torch.manual_seed(0)
    theta = torch.randn(6, requires_grad=True)
    ref_logp = torch.log_softmax(torch.randn(6), -1)
    return theta, ref_logp


def _true_kl_grad(theta, ref_logp):
    logp = torch.log_softmax(theta, -1)
    kl = (logp.exp() * (logp - ref_logp)).sum()
    return torch.autograd.grad(kl, theta)[0]


def test_k1_in_reward_gives_kl_gradient():
    """Policy gradient with reward -k1 (exact expectation over all 6 actions) = -grad KL."""
    theta, ref_logp = _categorical()
    logp = torch.log_softmax(theta, -1)
    pi = logp.exp().detach()
    ones = torch.ones(6, 1)
    rewards, _ = per_token_rewards(logp.detach()[:, None], ref_logp[:, None], torch.zeros(6), ones, beta=1.0)
    surrogate_loss = -(pi * logp * rewards[:, 0]).sum()  # REINFORCE: E[-grad log pi * R]
    grad = torch.autograd.grad(surrogate_loss, theta)[0]
    assert torch.allclose(grad, _true_kl_grad(theta, ref_logp), atol=1e-6)


def test_k2_as_loss_gives_kl_gradient():
    theta, ref_logp = _categorical()
    logp = torch.log_softmax(theta, -1)
    pi = logp.exp().detach()
    loss = k2_kl_loss(logp, ref_logp, mask=pi)  # masked_mean with weights pi = the exact expectation under pi
    grad = torch.autograd.grad(loss, theta)[0]
    assert torch.allclose(grad, _true_kl_grad(theta, ref_logp), atol=1e-6)


def test_k1_as_loss_has_zero_expected_gradient_and_is_refused():
    theta, ref_logp = _categorical()
    logp = torch.log_softmax(theta, -1)
    k1, _, _ = kl_estimators(logp, ref_logp)
    grad = torch.autograd.grad((logp.exp().detach() * k1).sum(), theta)[0]
    assert torch.allclose(grad, torch.zeros(6), atol=1e-6)
    assert _true_kl_grad(theta, ref_logp).abs().max() > 1e-2  # while the true gradient is not zero
    with pytest.raises(ConfigError, match="zero expected gradient"):
        config_from_dict(RLHFConfig, {"kl_mode": "k1_loss"}, "test")


# ---------------------------------------------------------------------------------
# Reward model: score at the last real token, normalisation, callables
# ---------------------------------------------------------------------------------


def _tiny_reward_model() -> RewardModel:
    from transformers import GPT2ForSequenceClassification

    torch.manual_seed(0)
    tokenizer = text_task.make_tokenizer()
    config = text_task.model_config(tokenizer)
    config.num_labels = 1
    return RewardModel(GPT2ForSequenceClassification(config), tokenizer)


def test_score_read_at_last_real_token_left_and_right_padding():
    rm = _tiny_reward_model()
    texts = ["the cat is good", "a dog seems bad and ugly and sad", "my car is red and good"]
    single = torch.stack([sequence_scores(rm.model, **rm.tokenizer([t], return_tensors="pt"))[0] for t in texts])
    for side in ("left", "right"):
        batch = rm.tokenizer(texts, return_tensors="pt", padding=True, padding_side=side)
        assert (batch["attention_mask"] == 0).any()  # there is padding to get wrong
        with torch.no_grad():
            scores = sequence_scores(rm.model, batch["input_ids"], batch["attention_mask"])
        assert torch.allclose(scores, single.detach(), atol=1e-5), side
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [4, 2, 4]


def test_reward_normalisation_survives_save_and_load(tmp_path):
    rm = _tiny_reward_model()
    prompts = text_task.sample_prompts(64, seed=0)
    responses = [text_task.sample_response(__import__("random").Random(i)) for i in range(64)]
    rm.fit_normalization(prompts, responses)
    scores = rm(prompts, responses)
    assert abs(scores.mean().item()) < 1e-4 and abs(scores.std().item() - 1) < 1e-4
    rm.save_pretrained(str(tmp_path))
    loaded = load_reward_model(str(tmp_path))
    assert torch.allclose(loaded(prompts, responses), scores, atol=1e-5)  # gain and bias are not dropped on load


def test_reward_model_loaded_per_call_scores_like_the_resident_one(tmp_path):
    rm = _tiny_reward_model()
    prompts = text_task.sample_prompts(8, seed=0)
    responses = [text_task.sample_response(__import__("random").Random(i)) for i in range(8)]
    rm.fit_normalization(prompts, responses)
    rm.save_pretrained(str(tmp_path / "rm"))
    per_call = RewardModelPerCall(str(tmp_path / "rm"))
    assert torch.equal(per_call(prompts, responses), load_reward_model(str(tmp_path / "rm"))(prompts, responses))
    with pytest.raises(ConfigError, match="no such folder"):  # a wrong folder fails when the run starts, not at its first update
        RewardModelPerCall(str(tmp_path / "missing"))


def test_callable_reward_on_decoded_text():
    reward = callable_reward(text_task.gold_reward)
    scores = reward(["the cat is"] * 3, ["good and nice", "bad", "good and good"])
    assert scores.tolist() == [2.0, -1.0, 0.0]


# ---------------------------------------------------------------------------------
# Rollouts: truncation, EOS trick, temperature
# ---------------------------------------------------------------------------------


def test_truncation_and_eos_trick():
    eos, pad = 2, 0
    responses = torch.tensor([[5, 6, eos, 7, eos], [5, 5, 5, 5, 5], [eos, 9, 9, 9, 9]])
    out, mask, ended = truncate_responses(responses, eos, pad)
    assert out.tolist() == [[5, 6, eos, pad, pad], [5, 5, 5, 5, 5], [eos, pad, pad, pad, pad]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert ended.tolist() == [True, False, True]
    scores = apply_eos_trick(torch.tensor([3.0, 3.0, 3.0]), ended, -1.0)
    assert scores.tolist() == [3.0, -1.0, 3.0]
    assert apply_eos_trick(torch.tensor([3.0, 3.0, 3.0]), ended, None).tolist() == [3.0, 3.0, 3.0]


def test_stop_string_truncation():
    tokenizer = text_task.make_tokenizer()
    ids = tokenizer(["good and bad and red"], add_special_tokens=False, return_tensors="pt")["input_ids"]
    mask, ended = torch.ones_like(ids), torch.tensor([False])
    out, mask, ended = truncate_at_stop_string(ids, mask, ended, tokenizer, "bad", tokenizer.pad_token_id)
    assert tokenizer.decode(out[0], skip_special_tokens=True) == "good and bad"
    assert mask.tolist() == [[1, 1, 1, 0, 0]] and ended.tolist() == [True]


def test_temperature_scaling_of_logprobs():
    torch.manual_seed(0)
    logits, tokens = torch.randn(2, 3, 7), torch.randint(0, 7, (2, 3))
    for temperature in (0.5, 0.7, 1.0, 2.0):
        logp, entropy = response_logprobs(logits, tokens, temperature)
        expected = torch.log_softmax(logits / temperature, -1)
        assert torch.allclose(logp, expected.gather(-1, tokens[..., None])[..., 0])
        assert torch.allclose(entropy, -(expected.exp() * expected).sum(-1), atol=1e-6)
    assert not torch.allclose(response_logprobs(logits, tokens, 0.7)[0], response_logprobs(logits, tokens, 1.0)[0])


# ---------------------------------------------------------------------------------
# Policy: value head, dropout, LoRA reference, checkpoints
# ---------------------------------------------------------------------------------


def test_value_head_zero_init_and_rollout_logprobs_match_update(tiny_base):
    policy, tokenizer = load_policy(tiny_base)
    assert all(not m.training for m in policy.modules())  # dropout off: eval mode everywhere
    torch.manual_seed(1)
    s = generate_samples(policy, tokenizer, text_task.sample_prompts(16, 0), temperature=0.7, max_new_tokens=10)
    logp, _, values = forward_responses(policy, s.queries, s.query_mask, s.responses, s.response_mask, 0.7)
    assert torch.count_nonzero(values) == 0 and torch.count_nonzero(policy.value_head.weight) == 0
    again, _, _ = forward_responses(policy, s.queries, s.query_mask, s.responses, s.response_mask, 0.7)
    assert torch.equal(logp, again)  # deterministic: the first PPO ratio is exactly 1
    ref, _, _ = forward_responses(policy, s.queries, s.query_mask, s.responses, s.response_mask, 0.7, reference=True)
    assert torch.allclose(logp, ref)  # before training, policy == reference


def test_response_scoring_matches_full_logits_in_chunks_and_without_entropy(tiny_base):
    policy, tokenizer = load_policy(tiny_base)
    torch.manual_seed(2)
    with torch.no_grad():
        policy.value_head.weight.normal_()
    s = generate_samples(policy, tokenizer, text_task.sample_prompts(6, 0), temperature=0.7, max_new_tokens=8)
    with torch.no_grad():  # the plain way: logits at every position, then the response slice
        ids = torch.cat([s.queries, s.responses], 1)
        logits, values = policy(ids, torch.cat([s.query_mask, s.response_mask], 1))
        start, length = s.queries.shape[1] - 1, s.responses.shape[1]
        expected_logp, expected_entropy = response_logprobs(logits[:, start : start + length], s.responses, 0.7)
        logp, entropy, v = forward_responses(policy, s.queries, s.query_mask, s.responses, s.response_mask, 0.7)
        chunked = forward_responses(policy, s.queries, s.query_mask, s.responses, s.response_mask, 0.7,
                                    chunk_size=4, with_entropy=False)
    assert torch.allclose(logp, expected_logp, atol=1e-6) and torch.allclose(entropy, expected_entropy, atol=1e-5)
    assert torch.allclose(v, values[:, start : start + length], atol=1e-6)
    assert torch.equal(chunked[0], logp) and chunked[1] is None and torch.equal(chunked[2], v)


def test_lora_adapter_disabled_equals_base_model(tiny_base, tmp_path):
    from transformers import AutoModelForCausalLM

    policy, tokenizer = load_policy(tiny_base, lora=True, lora_r=4, lora_alpha=8)
    assert policy.is_lora and not policy._reference  # no second copy of the base
    for name, param in policy.lm.named_parameters():  # make the adapter do something
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    batch = tokenizer(["the cat is good", "a dog"], return_tensors="pt", padding=True)
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        base_logits = base(**batch, position_ids=positions).logits
        policy_logits, _ = policy(batch["input_ids"], batch["attention_mask"])
    ref_logits = policy.reference_logits(batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert torch.allclose(ref_logits[real], base_logits[real], atol=1e-5)
    assert not torch.allclose(policy_logits[real], base_logits[real], atol=1e-3)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("value_head") for n in trainable)

    # the checkpoint is an adapter folder peft loads directly onto the base
    from peft import PeftModel

    save_policy_checkpoint(policy, tokenizer, {"lora": True}, str(tmp_path))
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch, position_ids=positions).logits[real], policy_logits[real], atol=1e-5)


def test_full_checkpoint_loads_with_transformers(tiny_base, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlkit.rlhf.policy import load_value_head

    policy, tokenizer = load_policy(tiny_base)
    torch.nn.init.normal_(policy.value_head.weight)
    save_policy_checkpoint(policy, tokenizer, {"lora": False}, str(tmp_path))
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    ids = tokenizer(["the cat is"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, policy.lm(ids).logits, atol=1e-6)
    fresh = PolicyWithValue(reloaded)
    load_value_head(str(tmp_path), fresh)
    assert torch.equal(fresh.value_head.weight, policy.value_head.weight)


# ---------------------------------------------------------------------------------
# Rewards, GAE, whitening, KL control
# ---------------------------------------------------------------------------------


def test_per_token_rewards_score_on_last_real_token():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-2.0, -2.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    rewards, k1 = per_token_rewards(logp, ref, torch.tensor([10.0, 20.0]), mask, beta=0.1)
    assert torch.allclose(k1, torch.tensor([[0.5, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 10.0, 0.0], [-0.1, -0.1, 19.9]]))
    no_kl, _ = per_token_rewards(logp, ref, torch.tensor([10.0, 20.0]), mask, beta=0.1, kl_in_reward=False)
    assert torch.allclose(no_kl, torch.tensor([[0.0, 10.0, 0.0], [0.0, 0.0, 20.0]]))


def test_gae_returns_are_reward_to_go_with_gamma_and_lambda_one():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 0.0], [0.5, 0.0, 0.0, 0.0]])
    values = torch.tensor([[0.3, 0.2, 0.1, 9.0], [0.4, 9.0, 9.0, 9.0]])  # 9 = garbage on padding
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    _, returns = compute_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(returns * mask, torch.tensor([[6.0, 5.0, 3.0, 0.0], [0.5, 0.0, 0.0, 0.0]]))


def test_masked_whitening_ignores_padding():
    torch.manual_seed(0)
    x, mask = torch.randn(4, 6), torch.ones(4, 6)
    mask[:, 4:] = 0
    garbage = x.clone()
    garbage[:, 4:] = 1e6
    assert torch.allclose(masked_whiten(x, mask)[:, :4], masked_whiten(garbage, mask)[:, :4])
    real = masked_whiten(x, mask)[mask.bool()]
    assert abs(real.mean().item()) < 1e-5 and abs(real.std().item() - 1) < 1e-4
    # end to end: padding content never changes the advantages of real tokens
    rewards, values = torch.randn(4, 6), torch.randn(4, 6)
    adv_a, _ = compute_advantages(rewards * mask, values * mask, mask, 1.0, 0.95)
    adv_b, _ = compute_advantages(torch.where(mask.bool(), rewards, 5.0), torch.where(mask.bool(), values, -7.0), mask, 1.0, 0.95)
    assert torch.allclose(adv_a, adv_b, atol=1e-6) and torch.count_nonzero(adv_a[:, 4:]) == 0


def test_adaptive_kl_controller_moves_beta_toward_target():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(12.0, n_steps=100)  # KL above target: clipped error +0.2 -> beta * (1 + 0.2 * 100 / 10000)
    assert math.isclose(ctl.value, 0.1 * 1.002)
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(3.0, n_steps=100)  # below: error -0.5 clipped to -0.2
    assert math.isclose(ctl.value, 0.1 * 0.998)
    ctl.update(6.0, n_steps=100)  # on target: unchanged
    assert math.isclose(ctl.value, 0.1 * 0.998)
    # closed loop on a toy "KL = 1 / beta" system: beta converges to the value that gives the target
    ctl = AdaptiveKLController(1.0, target=6.0, horizon=1000)
    for _ in range(2000):
        ctl.update(1.0 / ctl.value, n_steps=100)
    assert abs(1.0 / ctl.value - 6.0) < 0.1
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 100)
    assert fixed.value == 0.05


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="num_minibatches"):
        config_from_dict(RLHFConfig, {"batch_size": 10, "num_minibatches": 4}, "test")
    with pytest.raises(ConfigError, match="kl_mode"):
        config_from_dict(RLHFConfig, {"kl_mode": "k3"}, "test")
    with pytest.raises(ConfigError, match="unknown key 'kl_cof'.*kl_coef"):
        config_from_dict(RLHFConfig, {"kl_cof": 0.1}, "test")


# ---------------------------------------------------------------------------------
# The loop and the CLI, tiny sizes
# ---------------------------------------------------------------------------------


def test_train_smoke_and_cli(tmp_path, capsys):
    from rlkit.rlhf.cli import cmd_reward, cmd_rlhf

    common = ["--artifacts_dir", str(tmp_path / "art"), "--run_dir", str(tmp_path / "runs"), "--pretrain_steps", "20",
              "--rm_pairs", "64", "--rm_norm_samples", "64", "--rm_epochs", "1", "--no-progress"]
    assert cmd_reward(["rlhf-synthetic", *common]) == 0
    assert "held-out pairwise accuracy" in capsys.readouterr().out
    assert cmd_rlhf(["rlhf-synthetic", *common, "--num_updates", "2", "--batch_size", "16", "--lora", "true",
                     "--run-name", "smoke", "--adaptive_kl", "true", "--kl_mode", "k2_loss"]) == 0
    out = capsys.readouterr().out
    assert "gold" in out and "checkpoint:" in out
    run = tmp_path / "runs" / "smoke"
    assert (run / "metrics.jsonl").exists() and (run / "checkpoint" / "adapter_config.json").exists()
    assert (run / "checkpoint" / "value_head.safetensors").exists() and (run / "checkpoint" / "rlhf_config.json").exists()
    assert cmd_rlhf(["--help"]) == 0
    with pytest.raises(ConfigError):
        cmd_rlhf([])


def test_gradient_checkpointing_gives_the_same_update_and_keeps_generation_cached(tiny_base):
    """Recomputing activations in the backward pass must change memory only: the same samples
    and the same ppo_update give bitwise the same LoRA weights, and generation is back in eval
    mode (KV cache on) afterwards."""
    from rlkit.rlhf.ppo_lm import collect, enable_activation_checkpointing, ppo_update

    cfg = RLHFConfig(batch_size=4, num_minibatches=2, ppo_epochs=1, max_new_tokens=6, lora=True, lora_r=4, lora_alpha=8,
                     learning_rate=1e-2).validate()
    weights = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        policy, tokenizer = load_policy(tiny_base, lora=True, lora_r=4, lora_alpha=8)
        if checkpointing:
            enable_activation_checkpointing(policy.lm)
        cfg.gradient_checkpointing = checkpointing
        trainable = [p for p in policy.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(trainable, lr=cfg.learning_rate, eps=1e-5)
        batch = collect(policy, tokenizer, ["the cat", "a dog is", "good", "the"],
                        lambda prompts, texts: torch.arange(len(texts), dtype=torch.float32), cfg, beta=0.05)
        ppo_update(policy, optimizer, batch, cfg, 0.05, torch.Generator().manual_seed(0))
        assert not policy.lm.training  # eval mode again: generation keeps its KV cache
        weights.append({n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad})
    assert weights[0].keys() == weights[1].keys()
    changed = [n for n in weights[0] if "lora_B" in n and weights[0][n].abs().sum() > 0]
    assert changed  # the update did move the adapter
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name


def test_the_python_api_names_survive_every_submodule_import():
    """A package function named like a submodule (``rlkit.rlhf.export``) is replaced by the module as soon as that
    submodule is imported (CI: "'module' object is not callable" after a run); every public name stays callable."""
    import importlib
    import pkgutil
    import types

    import rlkit.rlhf as rlhf

    for info in pkgutil.iter_modules(rlhf.__path__):
        importlib.import_module(f"rlkit.rlhf.{info.name}")
    for name in rlhf.__all__:
        assert not isinstance(getattr(rlhf, name), types.ModuleType), f"rlkit.rlhf.{name} is shadowed by a submodule"
