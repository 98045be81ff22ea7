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
import inspect
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from rlkit.errors import RewardFunctionError
from rlkit.rlhf.policy import (check_fits_context, disable_dropout, ensure_pad_token, last_token_index, position_ids_from_mask,
                               torch_dtype)

RewardFn = Callable[[list[str], list[str]], Tensor]  # (prompts, responses) -> scores [B]


def join_text(prompt: str, response: str) -> str:
    """prompt + response with one space between them unless one side already has it."""
    if not prompt or not response or prompt[-1].isspace() or response[0].isspace():
        return prompt + response
    return f"{prompt} {response}"


def sequence_scores(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, label_index: int = 0) -> Tensor:
    """Raw scalar score of each sequence, read at its last real token (float32).

    Decoder backbones (a ``score`` head, e.g. GPT-2, Llama): per-token scores,
    gathered at :func:`last_token_index`, with positions counted over real tokens.
    The attention mask, never token equality, says where a row ends, so PAD may equal EOS.
    Encoder backbones (BERT-style ``classifier``) use their own [CLS] pooling.
    ``label_index``: the label read from a several-label head (0 for a 1-label reward model).
    """
    if hasattr(model, "score"):
        hidden = model.base_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
        ).last_hidden_state
        per_token = model.score(hidden)[..., label_index]  # [B, T]
        return per_token.gather(1, last_token_index(attention_mask)[:, None]).squeeze(1).float()
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, label_index].float()


def label_index_of(model: nn.Module, label: str, where: str) -> int:
    """0 for a 1-label model; the index of ``label`` in a several-label classifier (e.g. 'POSITIVE')."""
    num_labels = int(getattr(model.config, "num_labels", 1))
    names = dict(getattr(model.config, "id2label", {}) or {})
    if num_labels == 1:
        if label and names and str(names.get(0, names.get("0", ""))) != label:
            raise ValueError(f"{where} has one label ({names.get(0, names.get('0'))!r}), not reward_label {label!r}")
        return 0
    listed = ", ".join(str(names[k]) for k in sorted(names, key=int)) if names else f"{num_labels} unnamed labels"
    if not label:
        raise ValueError(f"{where} has {num_labels} labels ({listed}): set reward_label to the one to reward, "
                         f"e.g. reward_label = {str(names.get(num_labels - 1, names.get(str(num_labels - 1), ''))) or 'LABEL'!r}")
    for key, name in names.items():
        if str(name) == label:
            return int(key)
    raise ValueError(f"{where}: reward_label {label!r} is not one of its labels ({listed})")


class RewardModel(nn.Module):
    """A sequence-classification model + tokenizer + the normalising gain / bias + how text is written.

    Text scored for (prompt, completion), the same in training and in scoring:
    a conversational prompt (messages) with a completion is rendered with this tokenizer's chat
    template (prompt + an assistant turn); a string prompt is joined to the completion with
    :func:`join_text`, plus the tokenizer's EOS when ``append_eos`` (TRL RewardTrainer's convention).
    """

    def __init__(self, model: nn.Module, tokenizer, append_eos: bool = False, label_index: int = 0):
        super().__init__()
        self.model = disable_dropout(model)
        self.tokenizer = tokenizer
        ensure_pad_token(tokenizer, model)
        self.model.config.rlkit_append_eos = bool(getattr(model.config, "rlkit_append_eos", append_eos))
        self.label_index = label_index

    @property
    def gain(self) -> float:
        return float(getattr(self.model.config, "rlkit_reward_gain", 1.0))

    @property
    def bias(self) -> float:
        return float(getattr(self.model.config, "rlkit_reward_bias", 0.0))

    @property
    def append_eos(self) -> bool:
        return bool(self.model.config.rlkit_append_eos)

    def text(self, prompt, completion) -> str:
        """The text this model scores for one (prompt, completion); see the class docstring."""
        from rlkit.rlhf.data import is_conversation, render_chat, split_prefill

        if isinstance(completion, list) or isinstance(prompt, list):
            prompt, prefill = split_prefill(prompt)  # a prefilled answer and its continuation: one assistant message
            answer = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
            if prefill and answer and answer[0].get("role") == "assistant":
                answer = [{**answer[0], "content": prefill + str(answer[0].get("content", ""))}, *answer[1:]]
            messages = (list(prompt) if is_conversation(prompt) else []) + list(answer)
            return render_chat(self.tokenizer, messages, add_generation_prompt=False, who="the reward model's tokenizer")
        text = join_text(prompt or "", completion)
        eos = self.tokenizer.eos_token
        if self.append_eos and eos and not text.endswith(eos):
            text += eos
        return text

    def raw_scores(self, prompts: list, responses: list) -> Tensor:
        device = next(self.model.parameters()).device
        batch = self.tokenizer([self.text(p, r) for p, r in zip(prompts, responses)], return_tensors="pt",
                               padding=True, padding_side="right").to(device)
        check_fits_context(self.model, int(batch["attention_mask"].sum(1).max()) if len(prompts) else 0,
                           "a text the reward model scores (prompt + response)",
                           "shorten the preference texts (or max_prompt_tokens / max_new_tokens), or use a backbone "
                           "with a longer context (rm_backbone)")
        return sequence_scores(self.model, batch["input_ids"], batch["attention_mask"], self.label_index)

    @torch.no_grad()
    def __call__(self, prompts: list, responses: list, **columns) -> Tensor:
        """Normalised scores: gain * raw + bias.  Prompts as strings or conversations (extra columns ignored)."""
        return self.gain * self.raw_scores(prompts, responses) + self.bias

    @torch.no_grad()
    def fit_normalization(self, prompts: list, responses: list, batch_size: int = 256) -> tuple[float, float]:
        """Set gain / bias so that these (initial-policy) samples score mean 0 and std 1."""
        raw = torch.cat([self.raw_scores(prompts[i : i + batch_size], responses[i : i + batch_size])
                         for i in range(0, len(prompts), batch_size)])
        mean, std = raw.mean().item(), raw.std().item() if len(raw) > 1 else 1.0
        gain = 1.0 / max(std, 1e-8)
        self.model.config.rlkit_reward_gain = gain
        self.model.config.rlkit_reward_bias = -mean * gain
        return gain, -mean * gain

    def save_pretrained(self, out_dir: str) -> str:
        os.makedirs(out_dir, exist_ok=True)
        self.model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        return out_dir


def load_reward_model(path: str, device: torch.device | str = "cpu", append_eos: bool = True, label: str = "",
                      dtype: str = "auto") -> RewardModel:
    """An existing AutoModelForSequenceClassification folder used as it is: 1 label, or the logit of ``label``.

    A model rlkit trained carries its gain / bias and its EOS convention (``rlkit_append_eos``; rlkit's
    models from before that setting were trained without EOS); any other is scored with ``append_eos``.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from rlkit.rlhf.policy import check_tokenizer_fits, checked_model_source, loading_model

    path = checked_model_source(path, "reward model")
    with loading_model("reward model", path):
        config = AutoConfig.from_pretrained(path)
    architectures = getattr(config, "architectures", None) or []
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ValueError(f"reward model {path} is a {architectures[0]}, not a sequence classifier "
                         "(train one with `rlkit reward-model`, or name it as rm_backbone to train a head on it)")
    if not hasattr(config, "rlkit_append_eos"):
        config.rlkit_append_eos = False if hasattr(config, "rlkit_reward_gain") else append_eos
    model = AutoModelForSequenceClassification.from_pretrained(path, config=config, dtype=torch_dtype(dtype))
    tokenizer = AutoTokenizer.from_pretrained(path)
    check_tokenizer_fits(tokenizer, model, f"reward model {path!r}")
    return RewardModel(model.to(device), tokenizer, label_index=label_index_of(model, label, path))


class RewardModelPerCall:
    """A reward model loaded from its folder for each scoring call and freed right after.

    For memory-bound runs: the PPO update (the memory peak) then never holds the reward
    model's weights. The scores are those of :func:`load_reward_model` (same weights, same
    code); the cost is one load per call (~0.15 s for MiniLM on CPU, from the page cache).
    """

    def __init__(self, path: str, device: torch.device | str = "cpu", **load_kwargs):
        self.path, self.device, self.load_kwargs = path, device, load_kwargs
        load_reward_model(path, device, **load_kwargs)  # fail now, not at the first update, if the folder is not a reward model

    @torch.no_grad()
    def __call__(self, prompts: list, responses: list, **columns) -> Tensor:
        from transformers.utils import logging

        bar_was_on = logging.is_progress_bar_enabled()
        logging.disable_progress_bar()  # one "Loading weights" bar per update is noise
        try:
            return load_reward_model(self.path, self.device, **self.load_kwargs)(prompts, responses)
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

    from rlkit.runtime import NonFiniteError

    refuse_float16_training(rm.model.parameters(), "the reward model")
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
            if not math.isfinite(loss.item()):  # a NaN model would be saved and cached, and fail later, far from here
                raise NonFiniteError(f"the reward model's loss is {loss.item()} at step {len(losses) + 1}; nothing was "
                                     "saved: lower rm_learning_rate, or use dtype = 'float32'")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            bar.update(1)
    bar.close()
    return losses


def refuse_float16_training(params, what: str, lora_hint: bool = False) -> None:
    """float16 weights trained by Adam: its epsilon (1e-8, 1e-5) and small second moments underflow, so steps are
    ~100x too large and the weights soon NaN (measured: a reward model all NaN after 2 steps).  Refused, in one line."""
    from rlkit.errors import ConfigError

    if any(p.requires_grad and p.dtype == torch.float16 for p in params):
        raise ConfigError(f"dtype = 'float16' cannot train {what}: Adam's epsilon and second moments underflow in "
                          "float16 (steps ~100x too large, then NaN); use dtype = 'bfloat16' or 'float32'"
                          + (", or lora = true (the adapter trains in float32)" if lora_hint else ""))


def load_callable(spec: str) -> Callable:
    """'package.module:function' -> the function (batched or per sample, see :func:`is_batched`)."""
    from rlkit.envs.sources import current_folder_importable

    module_name, _, attr = spec.partition(":")
    current_folder_importable()  # a module beside the recipe, as `python -m` finds it
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"reward {spec!r}: cannot import {attr!r} from {module_name!r} ({error})") from None
    if not callable(fn):
        raise ValueError(f"reward {spec!r}: {attr!r} is not callable")
    return fn


def callable_reward(fn: Callable[[str, str], float]) -> RewardFn:
    """Wrap a plain Python fn(prompt, response) -> float on decoded text as a batched reward."""

    def reward(prompts: list[str], responses: list[str]) -> Tensor:
        return torch.tensor([float(fn(p, r)) for p, r in zip(prompts, responses)], dtype=torch.float32)

    reward.__qualname__ = getattr(fn, "__qualname__", reward.__qualname__)  # messages name the function itself
    return reward


# ---------------------------------------------------------------------------------
# Reward functions in both forms, and several rewards combined with weights
# ---------------------------------------------------------------------------------


def is_batched(fn: Callable) -> bool:
    """The rule that tells the two forms of a reward function apart, by signature:

    * batched (TRL's convention) when it takes ``**kwargs``, names a parameter ``completions`` or names its first
      parameter ``prompts`` (called by :func:`call_batched`):
      ``fn(prompts, completions, **columns) -> list[float]``;
    * otherwise per sample: ``fn(prompt, response) -> float``.
    """
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: called per sample
        return False
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters) or any(p.name == "completions" for p in parameters):
        return True
    positional = [p for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    return bool(positional) and positional[0].name == "prompts"


def _as_scores(values, n: int, name: str, strict: bool = False) -> Tensor:
    """A reward's output as float32 [n]; None (TRL: 'does not apply to this sample') becomes NaN.
    Anything else (a wrong count, a value that is not a number, text) is a RewardFunctionError naming the
    reward; ``strict`` (a user's function): so is a NaN or inf it returns itself (None is how to leave one out)."""
    if isinstance(values, Tensor):
        out = values.detach().float().cpu().reshape(-1)
        given = None
    else:
        try:
            given = list(values)
            if any(isinstance(v, (str, bytes)) for v in given):
                raise TypeError("text is not a score")
            out = torch.tensor([float("nan") if v is None else float(v) for v in given], dtype=torch.float32)
        except (TypeError, ValueError):
            if isinstance(values, (list, tuple)):
                shown = next((v for v in values if not _is_number(v) or isinstance(v, (str, bytes))), values)
                what = f"{_short(shown)} ({type(shown).__name__}) among its values"
            else:
                what = f"{_short(values)} ({type(values).__name__})"
            raise RewardFunctionError(f"reward {name} must return one float (or None) per completion, got "
                                      f"{what}") from None
    if out.numel() != n:
        raise RewardFunctionError(f"reward {name} returned {out.numel()} scores for {n} completions: it must "
                                  "return one score per completion")
    if strict and given is not None:
        bad = [i for i, v in enumerate(given) if v is not None and not math.isfinite(float(out[i]))]
        if bad:
            raise RewardFunctionError(f"reward {name} returned {float(out[bad[0]])} for completion {bad[0]} ({len(bad)} "
                                      "of them): return None to leave a completion out of this reward")
    return out


def _is_number(value) -> bool:
    if value is None:
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _short(value, limit: int = 60) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def reward_label(name: str, fn: Callable) -> str:
    """How a message names a reward: its name, and the function's own when that differs ('reward_fn' (my_reward))."""
    qualname = (getattr(fn, "__qualname__", None) or type(fn).__qualname__).rpartition("<locals>.")[2]
    return repr(name) if qualname in (name, None) else f"{name!r} ({qualname})"


@dataclass
class RewardComponent:
    """One reward of a (weighted) sum.  ``kind`` says how it is called:

    * 'model': a reward model, ``fn(prompts_as_in_the_file, completions)`` (conversations rendered with its own template);
    * 'batched': TRL's ``fn(prompts, completions, **columns)``: prompts as in the file (strings or messages),
      completions as strings, or ``[{"role": "assistant", "content": text}]`` when the prompts are conversations;
    * 'per_sample': ``fn(prompt, response) -> float`` on the rendered prompt and the decoded response;
    * 'text': ``fn(rendered_prompts, responses) -> scores`` (the task's gold, train()'s reward_fn argument),
      with the columns too if it takes ``**kwargs``.
    """

    name: str
    fn: Callable
    weight: float = 1.0
    kind: str = "batched"

    def __call__(self, texts: list[str], raw: list, columns: dict[str, list], completions: list[str],
                 completion_ids: list[list[int]] | None = None) -> Tensor:
        n = len(completions)
        label = reward_label(self.name, self.fn)
        if self.kind == "model":  # rlkit's own reward model: its errors (a device, a file) keep their class
            return _as_scores(self.fn(raw, completions), n, label)
        try:  # a user's function: whatever it raises is a RewardFunctionError naming it (exit code 10)
            if self.kind == "per_sample":
                values = [self.fn(p, c) for p, c in zip(texts, completions)]
            elif self.kind == "text":
                kwargs = columns if is_batched(self.fn) and _takes_kwargs(self.fn) else {}
                values = self.fn(texts, completions, **kwargs)
            else:
                conversational = bool(raw) and isinstance(raw[0], list)
                prompts, shaped = list(raw), list(completions)
                if conversational:  # as TRL's GRPOTrainer: a prefill leaves the prompt and starts the completion
                    from rlkit.rlhf.data import split_prefill

                    split = [split_prefill(p) for p in raw]
                    prompts = [p for p, _ in split]
                    shaped = [[{"role": "assistant", "content": prefill + c}] for (_, prefill), c in zip(split, completions)]
                extra = {**columns, **({"completion_ids": completion_ids} if completion_ids is not None else {})}
                values = call_batched(self.fn, prompts, shaped, extra)
        except RewardFunctionError:
            raise
        except Exception as error:
            text = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise RewardFunctionError(f"reward {label} raised {type(error).__name__}{': ' + text if text else ''} "
                                      f"(scoring {n} completions): fix the function, or rerun with --debug for the "
                                      "traceback") from error
        return _as_scores(values, n, label, strict=True)


def _takes_kwargs(fn: Callable) -> bool:
    try:
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False


def call_batched(fn: Callable, prompts: list, completions: list, extra: dict[str, list]):
    """A batched reward function called as TRL's GRPOTrainer calls it, every argument by keyword
    (``fn(prompts=..., completions=..., completion_ids=..., **columns)``), so ``f(completions, **kwargs)`` and
    keyword-only forms get what they name; a function that names neither ``completions`` nor nothing positional
    (rlkit's own ``f(prompts, responses)``) gets the two by position."""
    parameters = inspect.signature(fn).parameters
    positional = [name for name, p in parameters.items()
                  if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if "completions" in parameters or not positional:
        kwargs = {"prompts": prompts, "completions": completions, **extra}
        if not _takes_kwargs(fn):
            kwargs = {k: v for k, v in kwargs.items() if k in parameters}
        return fn(**kwargs)
    return fn(prompts, completions, **_keyword_columns(fn, {k: v for k, v in extra.items() if k not in positional[:2]}))


def _keyword_columns(fn: Callable, columns: dict[str, list]) -> dict[str, list]:
    """All columns for a ``**kwargs`` function, else only those it names."""
    if _takes_kwargs(fn):
        return dict(columns)
    names = set(inspect.signature(fn).parameters)
    return {k: v for k, v in columns.items() if k in names}


class CombinedReward:
    """sum_i weight_i * reward_i, each component kept for logging (reward/<name>).

    A component's NaN (a batched function's None) is left out of that sample's sum, as TRL does; a sample
    every reward function returned None for scores 0 (TRL's too, with a warning); a NaN of a reward model (or
    of train()'s reward_fn) stays NaN, and the run's finite guard stops on it.
    """

    def __init__(self, components: list[RewardComponent]):
        if not components:
            raise ValueError("no reward")
        self.components = components

    @classmethod
    def of(cls, fn, name: str = "reward_fn") -> CombinedReward:
        """A CombinedReward as it is, a RewardModel, a TRL-style function (it names ``completions`` or takes
        ``**kwargs``: called as reward_funcs' are, :func:`call_batched`), or a plain fn(rendered_prompts, responses)."""
        if isinstance(fn, CombinedReward):
            return fn
        if isinstance(fn, (RewardModel, RewardModelPerCall)):
            return cls([RewardComponent("model", fn, 1.0, "model")])
        try:
            parameters = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            parameters = []
        trl_style = any(p.kind is inspect.Parameter.VAR_KEYWORD or p.name == "completions" for p in parameters)
        return cls([RewardComponent(name, fn, 1.0, "batched" if trl_style else "text")])

    def score(self, texts: list[str], raw: list | None = None, columns: dict[str, list] | None = None,
              completions: list[str] | None = None, completion_ids: list[list[int]] | None = None
              ) -> tuple[Tensor, dict[str, Tensor]]:
        """(total [B], {name: component [B]}) for rendered prompts ``texts`` (``raw``: as in the file)."""
        raw = list(texts) if raw is None else raw
        parts = {c.name: c(texts, raw, columns or {}, completions, completion_ids) for c in self.components}
        stacked = torch.stack(list(parts.values()))
        weights = torch.tensor([c.weight for c in self.components], dtype=torch.float32)[:, None]
        total = torch.nansum(weights * stacked, 0)
        unscored = torch.isnan(stacked).all(0)
        if unscored.any() and all(c.kind in ("batched", "per_sample") for c in self.components):
            # every function returned None for these completions: 0, with a warning, as TRL's GRPOTrainer does
            import warnings

            warnings.warn("every reward function returned None for some completions; they score 0 (TRL's convention)",
                          stacklevel=2)
        else:
            total[unscored] = float("nan")  # a reward model's (or reward_fn's) NaN: the run's finite guard stops on it
        return total, parts

    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        return self.score(prompts, completions=responses)[0]

    def describe(self) -> str:
        return " + ".join(f"{c.weight:g} * {c.name}" for c in self.components)


def component_name(spec: str, taken: set[str]) -> str:
    name = spec if spec in ("model", "gold") else (spec.rpartition(":")[2] if ":" in spec else os.path.basename(os.path.normpath(spec)))
    unique, k = name, 2
    while unique in taken:
        unique, k = f"{name}_{k}", k + 1
    taken.add(unique)
    return unique


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


# ---------------------------------------------------------------------------------
# A reward model from your own preference file (TRL's RewardTrainer conventions)
# ---------------------------------------------------------------------------------


def build_preference_reward_model(cfg, policy_path: str, out_dir: str, progress: bool = True, log=print,
                                  device: torch.device | str = "cpu") -> dict:
    """Train a Bradley-Terry reward model on cfg.preferences, fit gain/bias on initial-policy samples, save.

    Backbone: cfg.rm_backbone (any AutoModelForSequenceClassification name_or_path, or 'offline:minilm';
    '' : the policy) with a fresh one-output head.  Text: :meth:`RewardModel.text` (EOS appended to
    non-conversational text when cfg.reward_append_eos, recorded in the saved config so scoring does the
    same).  Gain / bias: on policy samples for cfg.prompts (else the preference prompts; else the chosen
    and rejected texts themselves).  Reports the held-out pairwise accuracy before and after training.
    """
    import json
    import time

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlkit.ppo import seed_everything
    from rlkit.rlhf.data import PromptSet, load_preferences, load_prompt_sets, render_chat
    from rlkit.rlhf.offline import resolve
    from rlkit.rlhf.policy import load_policy
    from rlkit.rlhf.rollout import generate_samples

    start = time.time()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.task_seed)
    train, test, held_from = load_preferences(cfg, log=log)
    backbone = cfg.rm_backbone or policy_path
    if backbone.startswith("offline:"):
        backbone = resolve(backbone, cfg.cache_dir, log=log)
    from rlkit.rlhf.policy import checked_model_source, loading_model

    key = "rm_backbone" if cfg.rm_backbone else "policy (the reward model's backbone)"
    backbone = checked_model_source(backbone, key)
    log(f"training a Bradley-Terry reward model on {len(train)} preference pairs ({backbone})")
    with loading_model(key, backbone):
        model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1, ignore_mismatched_sizes=True,
                                                                   dtype=torch_dtype(cfg.dtype))
    for key in ("rlkit_reward_gain", "rlkit_reward_bias"):  # a backbone that was itself an rlkit reward model
        if hasattr(model.config, key):
            delattr(model.config, key)
    model.config.rlkit_append_eos = cfg.reward_append_eos
    rm = RewardModel(model.to(device), AutoTokenizer.from_pretrained(backbone), append_eos=cfg.reward_append_eos)
    rm.text(*train[0][:2])  # a conversational file needs a chat template: fail before training, not after
    accuracy_before = pairwise_accuracy(rm, test)
    losses = train_reward_model(rm, train, cfg.rm_epochs, cfg.rm_batch_size, cfg.rm_learning_rate, cfg.task_seed, progress)

    policy, tokenizer = load_policy(policy_path, device=device, dtype=cfg.dtype)
    if cfg.prompts:
        prompts, normalised_on = load_prompt_sets(cfg, tokenizer, log=None)[0], f"policy samples for {cfg.prompts}"
    else:
        raw = [t[0] for t in train if t[0]]
        texts = [render_chat(tokenizer, r, True, "the policy's tokenizer") if isinstance(r, list) else r for r in raw]
        prompts, normalised_on = PromptSet(texts, raw), f"policy samples for the prompts of {cfg.preferences}"
    if len(prompts):
        sample = prompts.sample(cfg.rm_norm_samples, seed=cfg.task_seed + 3)
        responses: list[str] = []
        for i in range(0, len(sample), 64):
            responses += generate_samples(policy, tokenizer, sample.texts[i : i + 64], cfg.temperature, cfg.max_new_tokens,
                                          cfg.stop_string).texts
        gain, bias = rm.fit_normalization(sample.raw, responses)
    else:  # implicit string prompts with nothing shared: the preference texts themselves
        normalised_on = f"the chosen and rejected texts of {cfg.preferences}"
        gain, bias = rm.fit_normalization([t[0] for t in train] * 2, [t[1] for t in train] + [t[2] for t in train])
    del policy
    report = {
        "pairs_train": len(train),
        "pairs_heldout": len(test),
        "heldout_from": held_from,
        "heldout_accuracy": pairwise_accuracy(rm, test),
        "heldout_accuracy_before_training": accuracy_before,
        "final_train_loss": sum(losses[-10:]) / len(losses[-10:]),
        "gain": gain,
        "bias": bias,
        "normalised_on": normalised_on,
        "append_eos": rm.append_eos,
        "seconds": time.time() - start,
        "backbone": backbone,
        "preferences": os.path.abspath(cfg.preferences),
        "policy": policy_path,
    }
    rm.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "reward_model_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report
