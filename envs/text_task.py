"""A synthetic text task for RLHF in CI: tiny vocabulary, tiny GPT-2, programmatic gold reward.

The Gao et al. 2022 ("Scaling Laws for Reward Model Overoptimization") setup in
miniature:

* a generated corpus of sentences ``the cat is good and red`` (a prompt
  ``the cat is`` followed by 1-4 distinct adjectives joined by ``and``);
* a GPT-2-style model built from a config and pretrained on that corpus for a
  few seconds: the initial policy;
* a programmatic **gold** reward on the response text: +1 per distinct positive
  adjective, -1 per negative adjective, -1 per repeated word (the corpus never
  repeats one, so a proxy trained on policy samples has never seen the penalty);
* pairwise preferences between two policy samples, labelled by the gold reward
  with Bradley-Terry noise: P(a preferred) = sigmoid((gold_a - gold_b) / temperature).

A proxy reward model learns from those pairs; RL against the proxy raises the
gold reward at first, and with no KL penalty it finds what the proxy over-rates.
Nothing here knows about the agent: this module never imports rlkit.ppo or rlkit.rlhf.
"""

from __future__ import annotations

import math
import os
import random
import time

import torch

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
DETERMINERS = ["the", "a", "my", "your"]
NOUNS = ["cat", "dog", "bird", "fish", "house", "tree", "car", "book"]
VERBS = ["is", "looks", "seems", "feels"]
POSITIVE = ["good", "great", "nice", "happy", "bright", "kind"]
NEGATIVE = ["bad", "sad", "awful", "ugly", "dark", "cruel"]
NEUTRAL = ["big", "small", "old", "new", "red", "blue"]
ADJECTIVES = POSITIVE + NEGATIVE + NEUTRAL
WORDS = DETERMINERS + NOUNS + VERBS + ADJECTIVES + ["and"]
MAX_ADJECTIVES = 4
PROMPT_TOKENS = 4  # <bos> det noun verb
MAX_RESPONSE_TOKENS = 2 * MAX_ADJECTIVES  # "a and b and c and d <eos>"
GOLD_NO_EOS = -1.0  # gold score of a response that never emitted EOS: rambling to the length cap is bad


# ---------------------------------------------------------------------------------
# Tokenizer and corpus
# ---------------------------------------------------------------------------------


def make_tokenizer():
    """Word-level fast tokenizer with PAD distinct from EOS; prepends <bos> to every text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([PAD, BOS, EOS, UNK] + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, padding_side="left"
    )


def sample_prompt(rng: random.Random) -> str:
    return f"{rng.choice(DETERMINERS)} {rng.choice(NOUNS)} {rng.choice(VERBS)}"


def sample_response(rng: random.Random) -> str:
    """1-4 distinct adjectives joined by 'and' (the corpus never repeats an adjective)."""
    k = rng.randint(1, MAX_ADJECTIVES)
    return " and ".join(rng.sample(ADJECTIVES, k))


def sample_prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [sample_prompt(rng) for _ in range(n)]


def make_corpus(n: int, seed: int) -> list[str]:
    """n sentences ``prompt response`` (no special tokens; the tokenizer adds <bos>, training adds <eos>)."""
    rng = random.Random(seed)
    return [f"{sample_prompt(rng)} {sample_response(rng)}" for _ in range(n)]


# ---------------------------------------------------------------------------------
# Gold reward and noisy preferences
# ---------------------------------------------------------------------------------


def gold_reward(prompt: str, response: str) -> float:
    """+1 per distinct positive adjective, -1 per negative adjective, -1 per repeated word."""
    words = response.split()
    seen: set[str] = set()
    score = 0.0
    for word in words:
        if word in seen and word != "and":
            score -= 1.0
            continue
        seen.add(word)
        if word in POSITIVE:
            score += 1.0
        elif word in NEGATIVE:
            score -= 1.0
    return score


def label_preferences(
    prompts: list[str], responses_a: list[str], responses_b: list[str], seed: int, temperature: float = 1.0
) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) triples: a is chosen with probability sigmoid((gold_a - gold_b) / temperature).

    ``temperature = 0`` gives noiseless labels (ties broken by a coin flip).
    """
    rng = random.Random(seed)
    triples = []
    for prompt, a, b in zip(prompts, responses_a, responses_b):
        diff = gold_reward(prompt, a) - gold_reward(prompt, b)
        if temperature > 0:
            p_a = 1.0 / (1.0 + math.exp(-diff / temperature))
        else:
            p_a = 1.0 if diff > 0 else 0.0 if diff < 0 else 0.5
        triples.append((prompt, a, b) if rng.random() < p_a else (prompt, b, a))
    return triples


# ---------------------------------------------------------------------------------
# Tiny GPT-2 built from a config, pretrained for seconds
# ---------------------------------------------------------------------------------


def model_config(tokenizer, n_layer: int = 2, n_embd: int = 64, n_head: int = 4):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=32,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,  # dropout off everywhere: RLHF needs deterministic log-probs
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def pretrain_base_model(
    out_dir: str, seed: int = 0, steps: int = 300, batch_size: int = 64, lr: float = 3e-3, log=print
) -> str:
    """Build a tiny GPT-2, fit it to the corpus (next-token loss), save model + tokenizer to out_dir.

    Takes a few seconds on one CPU core.  Returns out_dir, loadable with
    AutoModelForCausalLM.from_pretrained / AutoTokenizer.from_pretrained.
    """
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    model = GPT2LMHeadModel(model_config(tokenizer))
    corpus = [text + f" {EOS}" for text in make_corpus(steps * batch_size, seed)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    start = time.time()
    model.train()
    for step in range(steps):
        batch = tokenizer(corpus[step * batch_size : (step + 1) * batch_size], padding=True, padding_side="right", return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if log and (step + 1) % 100 == 0:
            log(f"  pretrain step {step + 1}/{steps}  loss {loss.item():.3f}")
    model.eval()
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if log:
        log(f"  pretrained tiny GPT-2 ({sum(p.numel() for p in model.parameters()):,} params) in {time.time() - start:.1f} s -> {out_dir}")
    return out_dir

