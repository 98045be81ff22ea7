"""A complete "RLHF on your own data" example, small enough for a laptop CPU (about a minute in all).

    python -m rlkit.rlhf.example demo      # writes the four things below into demo/
    rlkit reward-model demo/my.toml         # Bradley-Terry reward model on demo/preferences.jsonl
    rlkit rlhf demo/my.toml                 # PPO on demo/prompts.jsonl against it
    rlkit rlhf-export demo/runs/<run> demo/export --merge

* ``tiny-chat/``: a model folder like any on the hub: a 2-layer Llama (~57k parameters) with a
  byte-level BPE tokenizer, a chat template, EOS ``<|im_end|>`` and *no pad token*; pretrained for a
  few seconds on generated chats ("Describe the cat." -> "The cat is old and red.").
* ``prompts.jsonl``: conversational prompts (``{"prompt": [{"role": "user", "content": ...}], "noun": ...}``;
  the extra ``noun`` column reaches batched reward functions as a keyword).
* ``preferences.jsonl``: explicit-prompt conversational pairs; the chosen answer says "great", the
  rejected one does not: a preference a reward model can learn, and PPO can then push.
* ``my.toml``: the [rlhf] recipe tying them together.
"""

from __future__ import annotations

import json
import os
import random
import sys

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NOUNS = ["cat", "dog", "bird", "fish", "tree", "car", "book", "house", "lamp", "song"]
ADJECTIVES = ["great", "good", "nice", "big", "small", "old", "red", "blue", "bad", "dull", "sad", "new"]
KEYWORD = "great"
QUESTIONS = ["Describe the {}.", "Tell me about the {}.", "What is the {} like?", "How is the {}?"]


def _question(rng: random.Random, noun: str) -> str:
    return rng.choice(QUESTIONS).format(noun)


def _answer(rng: random.Random, noun: str, with_keyword: bool | None = None) -> str:
    """'The cat is old and red.'; with_keyword True / False forces 'great' in / out (None: as it comes)."""
    pool = [a for a in ADJECTIVES if a != KEYWORD] if with_keyword is False else list(ADJECTIVES)
    words = rng.sample(pool, rng.randint(1, 2))
    if with_keyword and KEYWORD not in words:
        words[rng.randrange(len(words))] = KEYWORD
    return f"The {noun} is {' and '.join(words)}."


def build_tiny_chat_model(out_dir: str, seed: int = 0, steps: int = 150, batch_size: int = 32, lr: float = 3e-3,
                          dtype: torch.dtype = torch.float32, log=print) -> str:
    """Write a tiny pretrained chat model folder (no pad token, chat template, EOS <|im_end|>); returns out_dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(seed)
    torch.manual_seed(seed)
    chats = []
    for _ in range(steps * batch_size):
        noun = rng.choice(NOUNS)
        chats.append([{"role": "user", "content": _question(rng, noun)}, {"role": "assistant", "content": _answer(rng, noun)}])
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|im_start|>", "<|im_end|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>")  # no pad, no unk, no bos
    tokenizer.chat_template = CHAT_TEMPLATE
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in chats]
    core.train_from_iterator(texts[:2000], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None, pad_token_id=None)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for step in range(steps):
        batch = texts[step * batch_size : (step + 1) * batch_size]
        ids = [tokenizer(t)["input_ids"] for t in batch]
        width = max(map(len, ids))
        input_ids = torch.tensor([x + [tokenizer.eos_token_id] * (width - len(x)) for x in ids])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=input_ids.masked_fill(mask == 0, -100)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.to(dtype).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if log:
        log(f"tiny chat model ({sum(p.numel() for p in model.parameters()):,} params, final loss {loss.item():.3f}) -> {out_dir}")
    return out_dir


def write_prompts(path: str, n: int = 200, seed: int = 1) -> str:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            noun = rng.choice(NOUNS)
            f.write(json.dumps({"prompt": [{"role": "user", "content": _question(rng, noun)}], "noun": noun}) + "\n")
    return path


def write_preferences(path: str, n: int = 400, seed: int = 2) -> str:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            noun = rng.choice(NOUNS)
            row = {"prompt": [{"role": "user", "content": _question(rng, noun)}],
                   "chosen": [{"role": "assistant", "content": _answer(rng, noun, with_keyword=True)}],
                   "rejected": [{"role": "assistant", "content": _answer(rng, noun, with_keyword=False)}]}
            f.write(json.dumps(row) + "\n")
    return path


def mentions_noun(prompts, completions, noun, **kwargs) -> list[float]:
    """A TRL-style batched reward: 1 when the answer names the prompt's noun (the file's 'noun' column)."""
    return [1.0 if n in c[0]["content"] else 0.0 for c, n in zip(completions, noun)]


RECIPE = """\
# RLHF on your own data: `rlkit reward-model {folder}/my.toml`, then `rlkit rlhf {folder}/my.toml`.
[rlhf]
task = "custom"                          # your files; no built-in prompts, no gold reward
policy = "{folder}/tiny-chat"            # any AutoModelForCausalLM folder or hub name
prompts = "{folder}/prompts.jsonl"       # 'prompt' column: conversations -> the policy's chat template
eval_fraction = 0.1                      # 10% of the prompts (and of the preferences) held out
max_prompt_tokens = 64                   # longer prompts are dropped (the count is printed)
preferences = "{folder}/preferences.jsonl"
rm_backbone = ""                         # "" : a 1-label head on the policy's own weights
reward_funcs = ["model", "rlkit.rlhf.example:mentions_noun"]   # the reward model + a batched function, summed
reward_weights = [1.0, 2.0]              # each is logged as reward/<name>; reward = "model" for the model alone
artifacts_dir = "{folder}/artifacts"
run_dir = "{folder}/runs"
rm_epochs = 2
rm_batch_size = 16
rm_learning_rate = 3e-3
rm_norm_samples = 64
batch_size = 32
num_minibatches = 2
ppo_epochs = 4
num_updates = 25
learning_rate = 3e-4
max_new_tokens = 16
temperature = 0.7
kl_coef = 0.05
eval_samples = 20
checkpoint_interval = 0
device = "cpu"
torch_threads = 1
"""


def write_example(folder: str, seed: int = 0, pretrain_steps: int = 150, log=print) -> dict[str, str]:
    """tiny-chat/, prompts.jsonl, preferences.jsonl and my.toml in folder; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    paths = {"model": os.path.join(folder, "tiny-chat"), "prompts": os.path.join(folder, "prompts.jsonl"),
             "preferences": os.path.join(folder, "preferences.jsonl"), "recipe": os.path.join(folder, "my.toml")}
    build_tiny_chat_model(paths["model"], seed=seed, steps=pretrain_steps, log=log)
    write_prompts(paths["prompts"])
    write_preferences(paths["preferences"])
    with open(paths["recipe"], "w") as f:
        f.write(RECIPE.format(folder=folder.rstrip("/")))
    if log:
        log(f"wrote {paths['prompts']}, {paths['preferences']}, {paths['recipe']}")
    return paths


if __name__ == "__main__":
    write_example(sys.argv[1] if len(sys.argv) > 1 else "demo")
