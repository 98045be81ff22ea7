"""Rewards: a Bradley-Terry reward model, its gain/bias normalisation, or a plain Python callable.

Reward model = a transformer backbone with a one-output head
(``AutoModelForSequenceClassification``, ``num_labels=1``).  For decoder
backbones the head is applied to every position and the score is read at the
last *real* token (right or left padding alike), never at a PAD.  Training
minimises the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected).  After
training, a gain and bias are fitted so that samples of the initial policy score
mean 0 and std 1; they are stored in the model's config.json
(``rlkit_reward_gain`` / ``rlkit_reward_bias``) so they survive save / load.
"""

from __future__ import annotations

import importlib
import math
import os
import random
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from rlkit.rlhf.policy import disable_dropout, ensure_pad_token, last_token_index, position_ids_from_mask

RewardFn = Callable[[list[str], list[str]], Tensor]  # (prompts, responses) -> scores [B]


def join_text(prompt: str, response: str) -> str:
    """prompt + response with one space between them unless one side already has it."""
    if not prompt or not response or prompt[-1].isspace() or response[0].isspace():
        return prompt + response
    return f"{prompt} {response}"


def sequence_scores(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Raw scalar score of each sequence, read at its last real token.

    Decoder backbones (a ``score`` head, e.g. GPT-2, Llama): per-token scores,
    gathered at :func:`last_token_index`, with positions counted over real tokens.
    Encoder backbones (BERT-style ``classifier``) use their own [CLS] pooling.
    """
    if hasattr(model, "score"):
        hidden = model.base_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
        ).last_hidden_state
        per_token = model.score(hidden).squeeze(-1)  # [B, T]
        return per_token.gather(1, last_token_index(attention_mask)[:, None]).squeeze(1)
    return model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1)


class RewardModel(nn.Module):
    """A sequence-classification model + tokenizer + the normalising gain / bias."""

    def __init__(self, model: nn.Module, tokenizer):
        super().__init__()
        self.model = disable_dropout(model)
        self.tokenizer = tokenizer
        ensure_pad_token(tokenizer, model)

    @property
    def gain(self) -> float:
        return float(getattr(self.model.config, "rlkit_reward_gain", 1.0))

    @property
    def bias(self) -> float:
        return float(getattr(self.model.config, "rlkit_reward_bias", 0.0))

    def raw_scores(self, prompts: list[str], responses: list[str]) -> Tensor:
        device = next(self.model.parameters()).device
        batch = self.tokenizer([join_text(p, r) for p, r in zip(prompts, responses)], return_tensors="pt",
                               padding=True, padding_side="right").to(device)
        return sequence_scores(self.model, batch["input_ids"], batch["attention_mask"])

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        """Normalised scores: gain * raw + bias."""
        return self.gain * self.raw_scores(prompts, responses) + self.bias

    @torch.no_grad()
    def fit_normalization(self, prompts: list[str], responses: list[str], batch_size: int = 256) -> tuple[float, float]:
        """Set gain / bias so that these (initial-policy) samples score mean 0 and std 1."""
        raw = torch.cat([self.raw_scores(prompts[i : i + batch_size], responses[i : i + batch_size])
                         for i in range(0, len(prompts), batch_size)])
        mean, std = raw.mean().item(), raw.std().item()
        gain = 1.0 / max(std, 1e-8)
        self.model.config.rlkit_reward_gain = gain
        self.model.config.rlkit_reward_bias = -mean * gain
        return gain, -mean * gain

    def save_pretrained(self, out_dir: str) -> str:
        os.makedirs(out_dir, exist_ok=True)
        self.model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        return out_dir


def load_reward_model(path: str, device: torch.device | str = "cpu") -> RewardModel:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    return RewardModel(model.to(device), AutoTokenizer.from_pretrained(path))


class RewardModelPerCall:
    """A reward model loaded from its folder for each scoring call and freed right after.

    For memory-bound runs: the PPO update (the memory peak) then never holds the reward
    model's weights. The scores are those of :func:`load_reward_model` (same weights, same
    code); the cost is one load per call (~0.15 s for MiniLM on CPU, from the page cache).
    """

    def __init__(self, path: str, device: torch.device | str = "cpu"):
        self.path, self.device = path, device
        load_reward_model(path, device)  # fail now, not at the first update, if the folder is not a reward model

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        from transformers.utils import logging

        bar_was_on = logging.is_progress_bar_enabled()
        logging.disable_progress_bar()  # one "Loading weights" bar per update is noise
        try:
            return load_reward_model(self.path, self.device)(prompts, responses)
        finally:
            if bar_was_on:
                logging.enable_progress_bar()


def bradley_terry_loss(chosen: Tensor, rejected: Tensor) -> Tensor:
    """-log P(chosen > rejected) under Bradley-Terry: -log sigmoid(r_c - r_r)."""
    return -F.logsigmoid(chosen - rejected).mean()


def pairwise_accuracy(rm: RewardModel, triples: list[tuple[str, str, str]], batch_size: int = 256) -> float:
    """Fraction of (prompt, chosen, rejected) triples where the chosen response scores higher."""
    if not triples:
        return float("nan")
    correct = 0
    for i in range(0, len(triples), batch_size):
        chunk = triples[i : i + batch_size]
        prompts = [t[0] for t in chunk]
        chosen = rm(prompts, [t[1] for t in chunk])
        rejected = rm(prompts, [t[2] for t in chunk])
        correct += int((chosen > rejected).sum())
    return correct / len(triples)


def train_reward_model(
    rm: RewardModel,
    train: list[tuple[str, str, str]],
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: bool = True,
) -> list[float]:
    """Bradley-Terry training on (prompt, chosen, rejected) triples; returns the loss per step."""
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(rm.model.parameters(), lr=lr, weight_decay=0.0)
    steps = epochs * math.ceil(len(train) / batch_size)
    losses: list[float] = []
    bar = tqdm(total=steps, desc="reward model", disable=not progress, dynamic_ncols=True)
    for _ in range(epochs):
        order = list(range(len(train)))
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            chunk = [train[j] for j in order[i : i + batch_size]]
            prompts = [t[0] for t in chunk]
            # one forward over chosen + rejected so both see the same weights
            scores = rm.raw_scores(prompts + prompts, [t[1] for t in chunk] + [t[2] for t in chunk])
            loss = bradley_terry_loss(scores[: len(chunk)], scores[len(chunk) :])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            bar.update(1)
    bar.close()
    return losses


def load_callable(spec: str) -> Callable[[str, str], float]:
    """'package.module:function' -> the function fn(prompt, response) -> float."""
    module_name, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"reward {spec!r}: cannot import {attr!r} from {module_name!r} ({error})") from None


def callable_reward(fn: Callable[[str, str], float]) -> RewardFn:
    """Wrap a plain Python fn(prompt, response) -> float on decoded text as a batched reward."""

    def reward(prompts: list[str], responses: list[str]) -> Tensor:
        return torch.tensor([float(fn(p, r)) for p, r in zip(prompts, responses)], dtype=torch.float32)

    return reward


# ---------------------------------------------------------------------------------
# The synthetic task's proxy reward model (Gao et al. 2022 in miniature)
# ---------------------------------------------------------------------------------


def build_synthetic_reward_model(cfg, policy_path: str, out_dir: str, progress: bool = True, log=print) -> dict:
    """Sample pairs from the initial policy, label them with the gold reward + Bradley-Terry noise,
    train a proxy RM initialised from the policy's weights, fit gain/bias, save to out_dir.

    Returns a report (also written to ``out_dir/reward_model_report.json``) with the
    held-out accuracy on the noisy labels and the agreement with the noiseless gold order.
    """
    import json
    import time

    from transformers import AutoModelForSequenceClassification

    from rlkit.envs import text_task
    from rlkit.ppo import seed_everything
    from rlkit.rlhf.policy import load_policy
    from rlkit.rlhf.rollout import generate_samples

    start = time.time()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.task_seed)
    policy, tokenizer = load_policy(policy_path)

    def sample(prompts: list[str]) -> list[str]:
        texts = []
        for i in range(0, len(prompts), 256):
            s = generate_samples(policy, tokenizer, prompts[i : i + 256], cfg.temperature, cfg.max_new_tokens, cfg.stop_string)
            texts += s.texts
        return texts

    prompts = text_task.sample_prompts(cfg.rm_pairs, seed=cfg.task_seed + 1)
    responses_a, responses_b = sample(prompts), sample(prompts)
    triples = text_task.label_preferences(prompts, responses_a, responses_b, seed=cfg.task_seed + 2,
                                          temperature=cfg.rm_label_temperature)
    n_test = max(1, len(triples) // 10)
    train, test = triples[n_test:], triples[:n_test]
    # noiseless gold order of the held-out pairs (ties dropped): how well the proxy tracks gold
    gold_test = [(p, a, b) if text_task.gold_reward(p, a) > text_task.gold_reward(p, b) else (p, b, a)
                 for p, a, b in test if text_task.gold_reward(p, a) != text_task.gold_reward(p, b)]

    rm = RewardModel(AutoModelForSequenceClassification.from_pretrained(policy_path, num_labels=1), tokenizer)
    losses = train_reward_model(rm, train, cfg.rm_epochs, cfg.rm_batch_size, cfg.rm_learning_rate, cfg.task_seed, progress)
    norm_prompts = text_task.sample_prompts(cfg.rm_norm_samples, seed=cfg.task_seed + 3)
    gain, bias = rm.fit_normalization(norm_prompts, sample(norm_prompts))
    report = {
        "pairs_train": len(train),
        "pairs_heldout": len(test),
        "heldout_accuracy": pairwise_accuracy(rm, test),
        "heldout_gold_agreement": pairwise_accuracy(rm, gold_test),
        "label_noise_ceiling": _label_ceiling(test, cfg.rm_label_temperature),
        "final_train_loss": sum(losses[-10:]) / len(losses[-10:]),
        "gain": gain,
        "bias": bias,
        "seconds": time.time() - start,
        "policy": policy_path,
    }
    rm.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "reward_model_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def _label_ceiling(test: list[tuple[str, str, str]], temperature: float) -> float:
    """Expected accuracy of the gold reward itself on Bradley-Terry-noisy labels (the best any RM can do)."""
    from rlkit.envs import text_task

    total = 0.0
    for p, c, r in test:
        diff = abs(text_task.gold_reward(p, c) - text_task.gold_reward(p, r))
        total += 0.5 if diff == 0 else (1.0 / (1.0 + math.exp(-diff / temperature)) if temperature > 0 else 1.0)
    return total / max(1, len(test))


# ---------------------------------------------------------------------------------
# The sentiment task's proxy reward model (fresh preferred over rotten; VADER is the gold judge)
# ---------------------------------------------------------------------------------


def build_sentiment_reward_model(cfg, policy_path: str, out_dir: str, progress: bool = True, log=print,
                                 device: torch.device | str = "cpu") -> dict:
    """Train a Bradley-Terry RM on (fresh, rotten) snippet pairs, fit gain/bias on initial-policy samples, save.

    Backbone: cfg.rm_backbone ('' : offline:minilm, the packaged all-MiniLM-L6-v2) with a
    fresh one-output head.  Reports the held-out pairwise accuracy on pairs of the test
    split, VADER's own accuracy on those pairs (the gold judge is a different judge), and
    the correlation of proxy and gold on the initial-policy samples.
    """
    import json
    import time

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlkit.envs import sentiment_task
    from rlkit.ppo import seed_everything
    from rlkit.rlhf.offline import resolve
    from rlkit.rlhf.policy import load_policy
    from rlkit.rlhf.rollout import generate_samples

    start = time.time()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.task_seed)
    backbone = resolve(cfg.rm_backbone or "offline:minilm", cfg.cache_dir, log=log)
    train = sentiment_task.preference_pairs(cfg.rm_pairs, seed=cfg.task_seed + 1, split="train")
    test = sentiment_task.preference_pairs(max(32, cfg.rm_pairs // 10), seed=cfg.task_seed + 2, split="test")
    log(f"training the sentiment proxy reward model on {len(train)} fresh-vs-rotten pairs ({backbone})")
    model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1).to(device)
    rm = RewardModel(model, AutoTokenizer.from_pretrained(backbone))
    accuracy_before = pairwise_accuracy(rm, test)
    losses = train_reward_model(rm, train, cfg.rm_epochs, cfg.rm_batch_size, cfg.rm_learning_rate, cfg.task_seed, progress)

    policy, tokenizer = load_policy(policy_path, device=device)
    prompts = sentiment_task.sample_prompts(cfg.rm_norm_samples, seed=cfg.task_seed + 3, split="train")
    texts: list[str] = []
    for i in range(0, len(prompts), 64):
        texts += generate_samples(policy, tokenizer, prompts[i : i + 64], cfg.temperature, cfg.max_new_tokens, cfg.stop_string).texts
    del policy
    gain, bias = rm.fit_normalization(prompts, texts)
    proxy = torch.cat([rm(prompts[i : i + 256], texts[i : i + 256]).cpu() for i in range(0, len(prompts), 256)])
    gold = torch.tensor([sentiment_task.gold_reward(p, r) for p, r in zip(prompts, texts)])
    report = {
        "pairs_train": len(train),
        "pairs_heldout": len(test),
        "heldout_accuracy": pairwise_accuracy(rm, test),
        "heldout_accuracy_before_training": accuracy_before,
        "heldout_gold_accuracy": sentiment_task.gold_pair_accuracy(test),
        "proxy_gold_correlation": float(torch.corrcoef(torch.stack([proxy, gold]))[0, 1]) if len(prompts) > 2 else float("nan"),
        "final_train_loss": sum(losses[-10:]) / len(losses[-10:]),
        "gain": gain,
        "bias": bias,
        "seconds": time.time() - start,
        "backbone": backbone,
        "policy": policy_path,
    }
    rm.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "reward_model_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report
