"""Rollouts: batched sampling, truncation at EOS / a stop string, and the EOS trick.

The queries are left-padded (so every row's last query token sits at the same
column and generation continues from it); responses are right-padded.  After
truncation everything past the first EOS (or stop string) is PAD and masked out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rlkit.rlhf.policy import PolicyWithValue


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


@torch.no_grad()
def generate_samples(
    policy: PolicyWithValue,
    tokenizer,
    prompts: list[str],
    temperature: float,
    max_new_tokens: int,
    stop_string: str = "",
) -> Samples:
    """Sample one response per prompt: pure sampling (top_k 0, top_p 1) at ``temperature``."""
    device = next(policy.parameters()).device
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(device)
    output = policy.lm.generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    queries = batch["input_ids"]
    responses = output[:, queries.shape[1] :]
    responses, mask, ended = truncate_responses(responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
    if stop_string:
        responses, mask, ended = truncate_at_stop_string(responses, mask, ended, tokenizer, stop_string, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    return Samples(queries, batch["attention_mask"], responses, mask, ended, list(prompts), texts)
