"""Rollouts: batched sampling, truncation at EOS / a stop string, and the EOS trick.

The queries are left-padded (so every row's last query token sits at the same
column and generation continues from it); responses are right-padded.  After
truncation everything past the first EOS (or stop string) is PAD and masked out.
Where PAD == EOS (a tokenizer without a pad token), the end is still the *first*
EOS by position and the response mask, not token equality, says what is real.

Sampling uses an explicit ``transformers.GenerationConfig`` built from the recipe
alone (:func:`sampling_config`): nothing comes from the model folder's
generation_config.json (a repetition_penalty there would make the sampled
distribution differ from softmax(logits / T), the one PPO's log-probs describe).
"""

from __future__ import annotations

import contextlib

from dataclasses import dataclass

import torch
from torch import Tensor

from rlkit.rlhf.policy import PolicyWithValue, check_fits_context


@dataclass
class Samples:
    """One batch of episodes: left-padded queries, right-padded truncated responses."""

    queries: Tensor  # [B, Q] token ids, left-padded
    query_mask: Tensor  # [B, Q] 1 on real tokens
    responses: Tensor  # [B, R] token ids, PAD after the end
    response_mask: Tensor  # [B, R] 1 on real response tokens (EOS included)
    ended: Tensor  # [B] bool: the response produced EOS (or the stop string)
    prompts: list[str]
    texts: list[str]  # decoded responses (special tokens skipped)
    sampler_logp: Tensor | None = None  # [B, R] log-prob of each token under the distribution it was sampled from


def truncate_responses(responses: Tensor, eos_token_id: int, pad_token_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Keep each response up to and including its first EOS; PAD the rest.

    Returns (responses, mask, ended) where ``ended[b]`` says whether row b produced EOS.
    """
    is_eos = responses == eos_token_id
    ended = is_eos.any(-1)
    length = responses.shape[1]
    first_eos = torch.where(ended, is_eos.float().argmax(-1), torch.full_like(ended, length, dtype=torch.long))
    positions = torch.arange(length, device=responses.device)
    mask = (positions[None, :] <= first_eos[:, None]).long()
    return responses.masked_fill(mask == 0, pad_token_id), mask, ended


def truncate_at_stop_string(
    responses: Tensor, mask: Tensor, ended: Tensor, tokenizer, stop_string: str, pad_token_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Also end a response at the first token whose decoded prefix contains ``stop_string``."""
    responses, mask, ended = responses.clone(), mask.clone(), ended.clone()
    for b in range(responses.shape[0]):
        length = int(mask[b].sum())
        for t in range(length):
            if stop_string in tokenizer.decode(responses[b, : t + 1], skip_special_tokens=True):
                mask[b, t + 1 :] = 0
                responses[b, t + 1 :] = pad_token_id
                ended[b] = True
                break
    return responses, mask, ended


def apply_eos_trick(scores: Tensor, ended: Tensor, no_eos_score: float | None) -> Tensor:
    """The EOS trick: a response that never ended gets a fixed (low) score instead of its reward."""
    if no_eos_score is None:
        return scores
    return torch.where(ended, scores, torch.full_like(scores, no_eos_score))


def sampling_config(tokenizer, temperature: float, max_new_tokens: int):
    """The GenerationConfig of every rollout, from the recipe alone: pure sampling (top_k 0, top_p 1) at
    ``temperature``, every other logits processor at its neutral value, the tokenizer's EOS / PAD."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=True, temperature=temperature, top_k=0, top_p=1.0, min_p=None, typical_p=1.0,
        repetition_penalty=1.0, no_repeat_ngram_size=0, num_beams=1, bad_words_ids=None, sequence_bias=None,
        suppress_tokens=None, begin_suppress_tokens=None, forced_bos_token_id=None, forced_eos_token_id=None,
        min_new_tokens=None, renormalize_logits=False, max_new_tokens=max_new_tokens, stop_strings=None,
        num_return_sequences=1, use_cache=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )


@contextlib.contextmanager
def only_this_generation_config(lm, config):
    """transformers fills every value a GenerationConfig leaves unset from ``model.generation_config``
    (the folder's generation_config.json); for the call, that is this config too, so nothing is inherited."""
    models = [m for m in {id(m): m for m in (lm, getattr(lm, "get_base_model", lambda: lm)())}.values()
              if hasattr(m, "generation_config")]
    saved = [m.generation_config for m in models]
    for m in models:
        m.generation_config = config
    try:
        yield
    finally:
        for m, old in zip(models, saved):
            m.generation_config = old


@torch.no_grad()
def generate_samples(
    policy: PolicyWithValue,
    tokenizer,
    prompts: list[str],
    temperature: float,
    max_new_tokens: int,
    stop_string: str = "",
    with_sampler_logprobs: bool = False,
) -> Samples:
    """Sample one response per prompt with :func:`sampling_config`.

    ``with_sampler_logprobs``: also keep the log-prob of each sampled token under the processed
    scores the sampler drew it from (a check that they equal PPO's softmax(logits / T) log-probs).
    """
    device = next(policy.parameters()).device
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(device)
    longest = int(batch["attention_mask"].sum(1).max()) if len(prompts) else 0
    check_fits_context(policy.lm, longest + max_new_tokens, f"a prompt ({longest} tokens) with max_new_tokens {max_new_tokens}",
                       "set max_prompt_tokens (it drops longer prompts and says how many) or lower max_new_tokens")
    config = sampling_config(tokenizer, temperature, max_new_tokens)
    with only_this_generation_config(policy.lm, config):
        output = policy.lm.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    generation_config=config, return_dict_in_generate=True,
                                    output_scores=with_sampler_logprobs)
    queries = batch["input_ids"]
    responses = output.sequences[:, queries.shape[1] :]
    sampler_logp = None
    if with_sampler_logprobs:
        scores = torch.stack(output.scores, dim=1).float()  # [B, R, V]: what the sampler drew from
        sampler_logp = torch.log_softmax(scores, -1).gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    responses, mask, ended = truncate_responses(responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
    if stop_string:
        responses, mask, ended = truncate_at_stop_string(responses, mask, ended, tokenizer, stop_string, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    return Samples(queries, batch["attention_mask"], responses, mask, ended, list(prompts), texts,
                   None if sampler_logp is None else sampler_logp * mask)
