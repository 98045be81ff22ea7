"""The LM policy: any causal LM + a zero-initialised value head, LoRA and the reference policy.

* Dropout is off everywhere (config probabilities set to 0 and eval mode): with
  dropout, the log-probs of the rollout and of the update differ for no reason
  and the PPO ratio is not 1 at the first minibatch.
* The value head is a Linear on the last hidden state, zero-initialised, so the
  first values are 0 and the first advantages are the plain returns.
* With LoRA (peft) the reference policy is the same model with the adapter
  disabled (``with lm.disable_adapter():``): one frozen base in memory, not two.
  Without LoRA the reference is a frozen copy.
* Log-probs always come from ``logits / temperature`` (the distribution that
  was sampled), in the rollout and in the update alike.
"""

from __future__ import annotations

import copy
import json
import os

import torch
import torch.nn as nn
from torch import Tensor

VALUE_HEAD_FILE = "value_head.safetensors"
CONFIG_FILE = "rlhf_config.json"
DROPOUT_KEYS = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout", "dropout", "attention_dropout",
                "hidden_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")


def disable_dropout(model: nn.Module) -> nn.Module:
    """Zero every dropout probability (module and config) and switch to eval mode."""
    config = getattr(model, "config", None)
    for key in DROPOUT_KEYS:
        if config is not None and isinstance(getattr(config, key, None), float):
            setattr(config, key, 0.0)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model.eval()


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only, so left padding does not shift absolute positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last real (mask = 1) token of each row; right, left or no padding alike."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


def check_tokenizer_fits(tokenizer, model: nn.Module, what: str) -> None:
    """A tokenizer whose ids reach past the model's embedding rows is not the model's (a generate or forward
    would fail inside torch with 'index out of range'): one line saying so."""
    from rlkit.errors import ConfigError

    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ConfigError(f"{what}: its tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} rows, "
                          f"so they do not belong together (save the model with its own tokenizer, or resize the "
                          "embeddings with model.resize_token_embeddings(len(tokenizer)) and save both)")


def ensure_pad_token(tokenizer, model: nn.Module | None = None) -> None:
    """Give a tokenizer without PAD one from its own vocabulary; never add a token.

    Adding ``<|pad|>`` would resize the embeddings: a LoRA adapter then stores the whole
    embedding matrix and ``PeftModel.from_pretrained(base, checkpoint)`` no longer fits the base,
    and a reward model built from the same folder indexes past its table.  So PAD becomes UNK
    when the tokenizer has one distinct from EOS (PAD != EOS, the RLHF detail), else EOS itself.
    PAD == EOS is safe because nothing in rlkit finds a row's end by token equality: the
    attention / response masks do (rollout.truncate_responses keeps the *first* EOS by position,
    reward.sequence_scores reads the last real token of the mask).
    """
    eos, unk = tokenizer.eos_token_id, getattr(tokenizer, "unk_token_id", None)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == eos:
        if unk is not None and unk != eos:
            tokenizer.pad_token = tokenizer.unk_token
        elif tokenizer.pad_token_id is None:
            if eos is None:
                raise ValueError("the tokenizer has no pad, unk or eos token: set tokenizer.pad_token and save it with the model")
            tokenizer.pad_token = tokenizer.eos_token
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str):
    """from_pretrained's dtype for a recipe's ``dtype``: 'auto' (the checkpoint's own) or a torch dtype."""
    if name in ("auto", ""):
        return "auto"
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


class PolicyWithValue(nn.Module):
    """A causal LM (optionally a peft LoRA model) plus a scalar value head on its last hidden state.

    ``value_head=False`` (the critic-free estimators rloo / grpo / dr_grpo): no head, no hidden
    states requested from the LM, and the values returned are None.
    """

    def __init__(self, lm: nn.Module, reference: nn.Module | None = None, value_head: bool = True):
        super().__init__()
        self.lm = lm
        self.value_head: nn.Linear | None = None
        if value_head:
            config = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
            self.value_head = nn.Linear(config.hidden_size, 1, dtype=torch.float32)  # float32 whatever the LM's dtype
            nn.init.zeros_(self.value_head.weight)  # zero init: V = 0 before any value update
            nn.init.zeros_(self.value_head.bias)
        self.is_lora = hasattr(lm, "disable_adapter")
        # Without LoRA, the reference is a frozen copy (kept out of self.parameters()).
        self._reference = [reference] if reference is not None else []
        self.eval()  # dropout stays off, also during PPO updates (gradients flow in eval mode)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, logits_to_keep: int | Tensor = 0
                ) -> tuple[Tensor, Tensor | None]:
        """Logits [B, T, V] and values [B, T] (None without a value head); ``logits_to_keep``: only the
        last N positions (N > 0) or the positions in a 1-D index tensor (transformers' own argument)."""
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            output_hidden_states=self.value_head is not None,  # every layer's states: only the value head reads them
            logits_to_keep=logits_to_keep,
        )
        if self.value_head is None:
            return out.logits, None
        values = self.value_head(out.hidden_states[-1].float()).squeeze(-1)  # explicit cast: bf16 / fp16 LMs
        return out.logits, values

    @torch.no_grad()
    def reference_logits(self, input_ids: Tensor, attention_mask: Tensor, logits_to_keep: int | Tensor = 0) -> Tensor:
        """Logits of the reference policy: the adapter disabled (LoRA) or the frozen copy."""
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
                      logits_to_keep=logits_to_keep)
        if self.is_lora:
            with self.lm.disable_adapter():
                return self.lm(**kwargs).logits
        return self._reference[0](**kwargs).logits


def checked_model_source(name_or_path: str, key: str) -> str:
    """``name_or_path`` for ``from_pretrained``, refused in one line (naming ``key``) when it is meant as a local
    folder and is none: a missing path, a file, or a folder without config.json.  A bare name ('gpt2',
    'org/model') is left to the model hub."""
    from rlkit.errors import ConfigError

    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            found = ", ".join(sorted(os.listdir(path))[:5]) or "nothing"
            raise ConfigError(f"{key} {name_or_path!r} is a folder but not a model folder (no config.json; it holds "
                              f"{found})")
        return path
    if os.path.exists(path):
        raise ConfigError(f"{key} {name_or_path!r} is a file; give the model's folder (save_pretrained's output)")
    local = os.path.isabs(path) or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1 or \
        name_or_path.endswith("/") or os.sep != "/" and os.sep in name_or_path
    if local:
        raise ConfigError(f"{key} {name_or_path!r}: no such folder")
    return name_or_path


def context_length(config) -> int | None:
    """The most positions a transformers model config takes (GPT-2's learned positions fail past it with an
    IndexError); None when the config does not say."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_fits_context(model, length: int, what: str, fix: str) -> None:
    """One line (a ConfigError) instead of an IndexError deep in the model when ``length`` tokens do not fit."""
    limit = context_length(getattr(model, "config", None))
    if limit is not None and length > limit:
        from rlkit.errors import ConfigError

        raise ConfigError(f"{what} is {length} tokens, more than the model's context of {limit} positions: {fix}")


class loading_model:
    """``with loading_model(key, name):`` an OSError of from_pretrained (not a local folder, and the hub did
    not give it) becomes one ConfigError line naming the setting."""

    def __init__(self, key: str, name_or_path: str):
        self.key, self.name = key, name_or_path

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if error is not None and isinstance(error, OSError):
            from rlkit.errors import ConfigError

            text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(f"{self.key} {self.name!r} could not be loaded: not a local model folder, and the "
                              f"model hub did not give it ({text})") from error
        return False


def load_policy(
    name_or_path: str,
    lora: bool = False,
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_target_modules: str = "all-linear",
    device: torch.device | str = "cpu",
    dtype: str = "auto",
    value_head: bool = True,
):
    """(PolicyWithValue, tokenizer) from any ``AutoModelForCausalLM`` name or folder.

    ``dtype``: the LM's weights ('auto': the checkpoint's own); the value head stays float32
    and log-probs are computed in float32 (:func:`response_logprobs`).  With LoRA, peft keeps
    the adapter weights in float32 on a bf16 / fp16 base.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name_or_path = checked_model_source(name_or_path, "policy")
    with loading_model("policy", name_or_path):
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        lm = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype(dtype))
    check_tokenizer_fits(tokenizer, lm, f"policy {name_or_path!r}")
    ensure_pad_token(tokenizer, lm)
    disable_dropout(lm)
    reference = None
    if lora:
        from peft import LoraConfig, get_peft_model
        from transformers.pytorch_utils import Conv1D

        targets = lora_target_modules if lora_target_modules == "all-linear" else [m.strip() for m in lora_target_modules.split(",")]
        if targets != "all-linear":  # peft adapts the names that match and says nothing of one that matches nothing
            leaves = {name.rsplit(".", 1)[-1] for name, _ in lm.named_modules() if name}
            unknown = [t for t in targets if t not in leaves and not any(n == t or n.endswith("." + t)
                                                                          for n, _ in lm.named_modules())]
            if unknown:
                from rlkit.errors import ConfigError

                layers = sorted({name.rsplit(".", 1)[-1] for name, m in lm.named_modules()
                                 if isinstance(m, (nn.Linear, Conv1D))})
                raise ConfigError(f"lora_target_modules names {', '.join(map(repr, unknown))}, which no module of "
                                  f"{name_or_path!r} is called; its linear layers: {', '.join(layers)} (or 'all-linear')")
        gpt2_style = any(isinstance(m, Conv1D) for m in lm.modules())  # GPT-2 stores weights transposed
        lm = get_peft_model(lm, LoraConfig(task_type="CAUSAL_LM", r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0,
                                           target_modules=targets, fan_in_fan_out=gpt2_style))
        disable_dropout(lm)
    else:
        reference = copy.deepcopy(lm).requires_grad_(False).eval().to(device)
    policy = PolicyWithValue(lm, reference, value_head=value_head).to(device)
    return policy, tokenizer


def response_logprobs(
    logits: Tensor, responses: Tensor, temperature: float, with_entropy: bool = True
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of each response token and the entropy, both under softmax(logits / temperature).

    logits: [B, R, V], the logits that predicted responses [B, R]. The [B, R, V] tensors
    dominate memory (SmolLM2: 49k vocab), so each is dropped as soon as the next is made
    (log_softmax keeps only its output for backward); when the caller hands over its only
    reference to ``logits`` (forward_responses does), they are freed after scaling too.
    ``with_entropy=False`` skips the entropy (returned as None) where nobody reads it.
    """
    scaled = logits.float() / temperature
    del logits
    log_probs = torch.log_softmax(scaled, dim=-1)
    del scaled
    logp = log_probs.gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    return logp, entropy_of(log_probs) if with_entropy else None


@torch.no_grad()  # a statistic, never in a loss: no [B, R, V] tensors kept for backward
def entropy_of(log_probs: Tensor) -> Tensor:
    """-sum p log p over the last dimension, with one [B, R, V] temporary (the multiply is in place)."""
    return -log_probs.exp().mul_(log_probs).sum(-1)


def forward_responses(
    policy: PolicyWithValue,
    queries: Tensor,
    query_mask: Tensor,
    responses: Tensor,
    response_mask: Tensor,
    temperature: float,
    reference: bool = False,
    chunk_size: int | None = None,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Score [query | response] in one pass: (logp, entropy, values) per response token, each [B, R].

    The logits and value at position t predict / evaluate response token t, so they
    are read one position earlier (the last query token predicts the first response token).
    With ``reference=True``, or without a value head, the values are zeros.
    ``chunk_size`` rows at a time bounds the [rows, R, vocab] logits in memory (no-grad scoring);
    ``with_entropy``: see :func:`response_logprobs`.
    """
    if chunk_size is not None and queries.shape[0] > chunk_size:
        parts = [forward_responses(policy, queries[i : i + chunk_size], query_mask[i : i + chunk_size],
                                   responses[i : i + chunk_size], response_mask[i : i + chunk_size], temperature,
                                   reference, with_entropy=with_entropy)
                 for i in range(0, queries.shape[0], chunk_size)]
        return tuple(None if tensors[0] is None else torch.cat(tensors) for tensors in zip(*parts))
    input_ids = torch.cat([queries, responses], dim=1)
    attention_mask = torch.cat([query_mask, response_mask], dim=1)
    start, length = queries.shape[1] - 1, responses.shape[1]
    keep = torch.arange(start, start + length, device=input_ids.device)  # logits only where they predict response tokens
    if reference:
        outputs = [policy.reference_logits(input_ids, attention_mask, logits_to_keep=keep), None]
    else:
        outputs = list(policy(input_ids, attention_mask, logits_to_keep=keep))
    values = outputs[1]
    # pop: this frame keeps no reference to the logits, so response_logprobs frees them early
    logp, entropy = response_logprobs(outputs.pop(0), responses, temperature, with_entropy)
    if values is None:  # the reference, or a policy without a value head
        return logp, entropy, torch.zeros_like(logp)
    return logp, entropy, values[:, start : start + length]


def save_policy_checkpoint(policy: PolicyWithValue, tokenizer, config: dict, out_dir: str) -> str:
    """One folder that transformers / peft load directly.

    * full fine-tune: ``AutoModelForCausalLM.from_pretrained(out_dir)``
    * LoRA: ``PeftModel.from_pretrained(base, out_dir)`` or ``AutoPeftModelForCausalLM.from_pretrained(out_dir)``
    * plus ``value_head.safetensors`` (load with :func:`load_value_head`), the tokenizer and ``rlhf_config.json``.
    """
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    policy.lm.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if policy.value_head is not None:  # the critic-free estimators train none
        save_file({k: v.detach().cpu().contiguous() for k, v in policy.value_head.state_dict().items()},
                  os.path.join(out_dir, VALUE_HEAD_FILE))
    with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2)
    return out_dir


def load_value_head(folder: str, policy: PolicyWithValue) -> None:
    from safetensors.torch import load_file

    policy.value_head.load_state_dict(load_file(os.path.join(folder, VALUE_HEAD_FILE)))

