"""PPO for language models, top to bottom: rollout -> rewards -> GAE -> clipped updates -> KL control.

Each response token is one step of an episode; the prompt is the first state.
Data flow per update (Huang et al. 2024, "The N Implementation Details of RLHF with PPO"):

1. sample prompts, generate with temperature (top_k 0, top_p 1), truncate at EOS;
2. score each (prompt, response) with the reward model / callable; EOS trick;
3. log-probs of the policy and the reference (adapter disabled), from logits / T;
4. per-token reward = -beta * k1 on every response token, the score added on the last one;
5. GAE (gamma 1, lambda 0.95) over response tokens via rlkit.ppo.gae, padding masked;
6. advantage whitening over real tokens only;
7. ppo_epochs x minibatches (with gradient accumulation) of rlkit.ppo's clipped
   policy and value losses (+ beta * k2 as a loss in kl_mode 'k2_loss');
8. KL controller: fixed beta or Ziegler et al.'s adaptive one.

GAE, whitening, the losses and the KL estimators are rlkit.ppo's, not copies.
Under ``torchrun --nproc_per_node N`` the same loop runs data parallel
(rlkit.rlhf.distributed: per-rank seeds, averaged gradients, reduced metrics,
rank 0 the only writer).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rlkit.logger import RunLogger
from rlkit.ppo import (
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_estimators,
    masked_mean,
    masked_whiten,
    resolve_device,
    seed_everything,
)
from rlkit.rlhf import distributed
from rlkit.rlhf.config import RLHFConfig
from rlkit.rlhf.policy import PolicyWithValue, forward_responses, last_token_index, load_policy, save_policy_checkpoint
from rlkit.rlhf.reward import (
    RewardFn,
    RewardModelPerCall,
    build_sentiment_reward_model,
    build_synthetic_reward_model,
    callable_reward,
    load_callable,
    load_reward_model,
)
from rlkit.rlhf.rollout import Samples, apply_eos_trick, generate_samples

# ---------------------------------------------------------------------------------
# KL controllers
# ---------------------------------------------------------------------------------


class FixedKLController:
    """beta stays where it was set."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Ziegler et al. 2019: beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon.

    KL above target raises beta (pull the policy back), below lowers it; the clip
    bounds the change per episode so one noisy batch cannot swing it.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon


# ---------------------------------------------------------------------------------
# Rewards and advantages (pure functions over [B, R] tensors + a response mask)
# ---------------------------------------------------------------------------------


def per_token_rewards(
    logp: Tensor, ref_logp: Tensor, scores: Tensor, mask: Tensor, beta: float, kl_in_reward: bool = True
) -> tuple[Tensor, Tensor]:
    """-beta * k1 on every response token (k1 = logp - ref_logp), the score added on the last real token.

    Returns (rewards, k1), both zero on padding.  With ``kl_in_reward=False``
    (kl_mode 'k2_loss') the reward is the score alone and the KL goes into the loss.
    """
    k1, _, _ = kl_estimators(logp, ref_logp)
    k1 = k1 * mask
    rewards = -beta * k1 if kl_in_reward else torch.zeros_like(k1)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_token_index(mask)] += scores
    return rewards, k1


def compute_advantages(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float, whiten_rewards: bool = False
) -> tuple[Tensor, Tensor]:
    """GAE over response tokens with rlkit.ppo.gae; padding contributes nothing.

    The episode ends at the last real token (done = 1 there), values and rewards
    on padding are zeroed, so nothing leaks across the end.  Advantages are
    whitened over real tokens only.  Returns (advantages, returns), [B, R].
    """
    mask = mask.float()
    if whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    rewards, values = rewards * mask, values * mask
    dones = torch.zeros_like(rewards)
    dones[torch.arange(rewards.shape[0], device=rewards.device), last_token_index(mask)] = 1.0
    # rlkit.ppo.gae runs over time on dim 0: [B, R] -> [R, B] and back
    advantages, returns = gae(rewards.T, values.T, dones.T, torch.zeros_like(rewards[:, 0]), gamma, lam)
    advantages, returns = advantages.T, returns.T
    advantages = masked_whiten(advantages, mask) * mask
    return advantages, returns


def k2_kl_loss(logp: Tensor, ref_logp: Tensor, mask: Tensor) -> Tensor:
    """k2 = (logp - ref_logp)^2 / 2 as a loss: its gradient (on-policy) is the gradient of KL(pi || ref)."""
    _, k2, _ = kl_estimators(logp, ref_logp)
    return masked_mean(k2, mask)


def sequence_kl(logp: Tensor, ref_logp: Tensor, mask: Tensor) -> dict[str, float]:
    """Mean over sequences of the summed per-token k1 / k2 / k3 estimates of KL(pi || ref)."""
    k1, k2, k3 = kl_estimators(logp, ref_logp)
    return {f"kl_k{i}": float((k * mask).sum(-1).mean()) for i, k in enumerate((k1, k2, k3), start=1)}


# ---------------------------------------------------------------------------------
# Rewards and task plumbing
# ---------------------------------------------------------------------------------


def _build_once(path: str, build):
    """Run ``build(folder)`` into a private temporary folder, then rename it into place:
    seeds launched in parallel never read a half-written model, and the first to finish wins."""
    temporary = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    result = build(temporary)
    try:
        os.rename(temporary, path)
    except OSError:  # another process put its (equivalent) copy there first
        shutil.rmtree(temporary, ignore_errors=True)
    return result


def task_module(cfg: RLHFConfig):
    """The task's module in rlkit.envs: sample_prompts(n, seed[, split]), gold_reward(prompt, response), GOLD_NO_EOS."""
    if cfg.task == "sentiment":
        from rlkit.envs import sentiment_task

        return sentiment_task
    from rlkit.envs import text_task

    return text_task


def resolve_policy_path(cfg: RLHFConfig, log=print) -> str:
    """cfg.policy ('offline:smollm2' converted once into the cache), or the synthetic task's tiny GPT-2."""
    if cfg.policy.startswith("offline:"):
        from rlkit.rlhf.offline import resolve

        return resolve(cfg.policy, cfg.cache_dir, log=log)
    if cfg.policy:  # a local folder becomes absolute, so a LoRA checkpoint's base path works from anywhere
        return os.path.abspath(cfg.policy) if os.path.isdir(cfg.policy) else cfg.policy
    if cfg.task != "synthetic":
        raise ValueError(f"task {cfg.task!r} needs a policy (e.g. policy = \"offline:smollm2\"); only 'synthetic' builds its own")
    from rlkit.envs import text_task

    path = os.path.abspath(os.path.join(cfg.artifacts_dir, f"synthetic_base__seed{cfg.task_seed}"))
    if not os.path.isfile(os.path.join(path, "config.json")):
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        log(f"building the synthetic base policy -> {path}")
        seed_everything(cfg.task_seed)
        _build_once(path, lambda folder: text_task.pretrain_base_model(folder, seed=cfg.task_seed, steps=cfg.pretrain_steps, log=log))
    return path


def default_reward_model_path(cfg: RLHFConfig) -> str:
    return os.path.join(cfg.artifacts_dir, f"{cfg.task}_rm__seed{cfg.task_seed}")


def build_reward_model(cfg: RLHFConfig, policy_path: str, out_dir: str, progress: bool = True, log=print) -> dict:
    """Train the task's proxy reward model into out_dir; returns its report (held-out accuracy, gain / bias...)."""
    if cfg.task == "sentiment":
        return build_sentiment_reward_model(cfg, policy_path, out_dir, progress=progress, log=log,
                                            device=resolve_device(cfg.device))
    return build_synthetic_reward_model(cfg, policy_path, out_dir, progress=progress, log=log)


def resolve_reward_model_path(cfg: RLHFConfig, policy_path: str, progress: bool = True, log=print) -> tuple[str, dict | None]:
    """cfg.reward_model, or the task's proxy RM (trained once per task_seed)."""
    if cfg.reward_model:
        return cfg.reward_model, None
    path = default_reward_model_path(cfg)
    if os.path.isfile(os.path.join(path, "config.json")):
        return path, None
    log(f"training the {cfg.task} proxy reward model -> {path}")
    return path, _build_once(path, lambda folder: build_reward_model(cfg, policy_path, folder, progress=progress, log=log))


def make_reward(cfg: RLHFConfig, policy_path: str, device: torch.device, progress: bool = True, log=print) -> tuple[RewardFn, RewardFn | None, str]:
    """(reward used for training, gold reward for logging or None, description)."""
    gold = callable_reward(task_module(cfg).gold_reward)
    if cfg.reward == "gold":
        if gold is None:
            raise ValueError(f"reward 'gold': task {cfg.task!r} has no gold reward")
        return gold, gold, "gold reward (callable)"
    if cfg.reward != "model":
        return callable_reward(load_callable(cfg.reward)), gold, f"callable {cfg.reward}"
    path, _ = resolve_reward_model_path(cfg, policy_path, progress, log)
    if not cfg.reward_model_resident:
        return RewardModelPerCall(path, device), gold, f"reward model {path} (loaded per scoring)"
    return load_reward_model(path, device), gold, f"reward model {path}"


def sample_prompts(cfg: RLHFConfig, n: int, seed: int, split: str = "train") -> list[str]:
    """n prompts of the task; split 'test' (held-out prompts) where the task has one."""
    if cfg.task == "synthetic":
        from rlkit.envs import text_task

        return text_task.sample_prompts(n, seed)
    return task_module(cfg).sample_prompts(n, seed, split=split)


def gold_scores(gold: RewardFn, samples: Samples, cfg: RLHFConfig | None = None) -> Tensor:
    """The task's gold score of each sample; a response that never ended gets the task's GOLD_NO_EOS (if any)."""
    module = task_module(cfg) if cfg is not None else task_module(RLHFConfig())
    return apply_eos_trick(gold(samples.prompts, samples.texts), samples.ended.cpu(), module.GOLD_NO_EOS)


# ---------------------------------------------------------------------------------
# One rollout, one update
# ---------------------------------------------------------------------------------


@dataclass
class Batch:
    samples: Samples
    logp: Tensor
    ref_logp: Tensor
    values: Tensor
    scores: Tensor
    rewards: Tensor
    advantages: Tensor
    returns: Tensor
    mask: Tensor
    generate_seconds: float = 0.0


@torch.no_grad()
def collect(policy: PolicyWithValue, tokenizer, prompts: list[str], reward_fn: RewardFn, cfg: RLHFConfig, beta: float) -> Batch:
    """Generate, score, and turn one batch of episodes into per-token advantages and returns."""
    generate_start = time.perf_counter()
    s = generate_samples(policy, tokenizer, prompts, cfg.temperature, cfg.max_new_tokens, cfg.stop_string)
    generate_seconds = time.perf_counter() - generate_start
    mask = s.response_mask.float()
    rows = cfg.minibatch_size // cfg.grad_accum_steps  # the training micro-batch: the logits never outgrow training's
    logp, _, values = forward_responses(policy, s.queries, s.query_mask, s.responses, s.response_mask, cfg.temperature,
                                        chunk_size=rows, with_entropy=False)
    ref_logp, _, _ = forward_responses(policy, s.queries, s.query_mask, s.responses, s.response_mask, cfg.temperature,
                                       reference=True, chunk_size=rows, with_entropy=False)
    scores = apply_eos_trick(reward_fn(s.prompts, s.texts).to(mask.device).float(), s.ended, cfg.no_eos_score)
    rewards, _ = per_token_rewards(logp, ref_logp, scores, mask, beta, kl_in_reward=cfg.kl_mode == "k1_in_reward")
    advantages, returns = compute_advantages(rewards, values, mask, cfg.gamma, cfg.lam, cfg.whiten_rewards)
    return Batch(s, logp, ref_logp, values * mask, scores, rewards, advantages, returns, mask, generate_seconds)


def ppo_update(policy: PolicyWithValue, optimizer: torch.optim.Optimizer, batch: Batch, cfg: RLHFConfig, beta: float,
               generator: torch.Generator, sync_gradients=None) -> dict[str, float]:
    """ppo_epochs x num_minibatches optimiser steps, each accumulating grad_accum_steps micro-batches.

    ``sync_gradients()`` (data parallel: average over ranks) runs after accumulation, before clipping.
    """
    totals: dict[str, float] = {}
    if cfg.gradient_checkpointing:
        policy.lm.train()  # transformers checkpoints only in training mode; dropout is already 0 everywhere
    try:
        count = _ppo_epochs(policy, optimizer, batch, cfg, beta, generator, sync_gradients, totals)
    finally:
        policy.lm.eval()  # generation needs its KV cache, which checkpointing would turn off
    return {k: v / count for k, v in totals.items()}


def _ppo_epochs(policy: PolicyWithValue, optimizer: torch.optim.Optimizer, batch: Batch, cfg: RLHFConfig, beta: float,
                generator: torch.Generator, sync_gradients, totals: dict[str, float]) -> int:
    """The optimiser steps of ppo_update; sums the step statistics into ``totals``, returns their count."""
    s = batch.samples
    size, micro_size = cfg.batch_size, cfg.minibatch_size // cfg.grad_accum_steps
    count = 0
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(size, generator=generator).to(batch.mask.device)
        for start in range(0, size, cfg.minibatch_size):
            optimizer.zero_grad()
            for micro_start in range(start, start + cfg.minibatch_size, micro_size):
                idx = order[micro_start : micro_start + micro_size]
                mask = batch.mask[idx]
                logp, entropy, values = forward_responses(policy, s.queries[idx], s.query_mask[idx], s.responses[idx],
                                                          s.response_mask[idx], cfg.temperature)
                pg_loss, pg_stats = clipped_policy_loss(logp, batch.logp[idx], batch.advantages[idx], cfg.cliprange, mask)
                vf_loss = clipped_value_loss(values, batch.values[idx], batch.returns[idx], cfg.cliprange_value, mask)
                loss = pg_loss + cfg.vf_coef * vf_loss
                if cfg.kl_mode == "k2_loss":
                    loss = loss + beta * k2_kl_loss(logp, batch.ref_logp[idx], mask)
                (loss / cfg.grad_accum_steps).backward()
                step_stats = {"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(),
                              "entropy": masked_mean(entropy.detach(), mask).item(),
                              **{k: v.item() for k, v in pg_stats.items()}}
                for k, v in step_stats.items():
                    totals[k] = totals.get(k, 0.0) + v
                count += 1
            if sync_gradients is not None:
                sync_gradients()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()
    return count


@torch.no_grad()
def evaluate(policy: PolicyWithValue, tokenizer, cfg: RLHFConfig, reward_fn: RewardFn, gold: RewardFn | None,
             n: int | None = None, seed: int = 12345, ctx: distributed.DistContext | None = None,
             chunk: int = 256, samples_out: list[dict] | None = None) -> dict[str, float]:
    """Score, gold and KL(pi || ref) of n (cfg.eval_samples) fresh samples: fixed prompts (the task's
    held-out split where it has one) and a fixed sampling seed.  Data parallel: each rank takes every
    world_size-th prompt and the means are reduced over ranks.  ``samples_out`` (a list) receives this
    rank's (prompt, response, score, gold) rows, for reading what the policy actually writes."""
    ctx = ctx or distributed.DistContext()
    n = cfg.eval_samples if n is None else n
    rng_state = torch.random.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    torch.manual_seed(distributed.rank_seed(seed, ctx.rank))
    prompts = sample_prompts(cfg, n, seed, split="test")[ctx.rank :: ctx.world_size]
    totals: dict[str, float] = {}
    for i in range(0, len(prompts), chunk):
        s = generate_samples(policy, tokenizer, prompts[i : i + chunk], cfg.temperature, cfg.max_new_tokens, cfg.stop_string)
        rows = cfg.minibatch_size // cfg.grad_accum_steps
        logp, _, _ = forward_responses(policy, s.queries, s.query_mask, s.responses, s.response_mask, cfg.temperature,
                                       chunk_size=rows, with_entropy=False)
        ref_logp, _, _ = forward_responses(policy, s.queries, s.query_mask, s.responses, s.response_mask, cfg.temperature,
                                           reference=True, chunk_size=rows, with_entropy=False)
        mask = s.response_mask.float()
        scores = apply_eos_trick(reward_fn(s.prompts, s.texts).float().cpu(), s.ended.cpu(), cfg.no_eos_score)
        part = {"score": float(scores.mean()), **sequence_kl(logp, ref_logp, mask),
                "response_length": float(mask.sum(-1).mean()), "eos_frac": float(s.ended.float().mean())}
        gold_values = gold_scores(gold, s, cfg) if gold is not None else None
        if gold_values is not None:
            part["gold"] = float(gold_values.mean())
        if samples_out is not None:
            samples_out.extend({"prompt": p, "response": t, "score": float(scores[j]),
                                "gold": None if gold_values is None else float(gold_values[j])}
                               for j, (p, t) in enumerate(zip(s.prompts, s.texts)))
        for k, v in part.items():  # sample-weighted sums
            totals[k] = totals.get(k, 0.0) + v * len(s.prompts)
    torch.random.set_rng_state(rng_state)
    if cuda_state is not None:
        torch.cuda.set_rng_state_all(cuda_state)
    count = max(len(prompts), 1)
    return distributed.reduce_mean({k: v / count for k, v in totals.items()}, ctx, weight=len(prompts))


# ---------------------------------------------------------------------------------
# The train loop
# ---------------------------------------------------------------------------------


def enable_activation_checkpointing(lm) -> None:
    """transformers' gradient checkpointing (renamed activation checkpointing in 5.x), non-reentrant:
    works with frozen LoRA base weights and gives bitwise the same gradients."""
    kwargs = {"use_reentrant": False}
    if hasattr(lm, "activation_checkpointing_enable"):
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def return_freed_memory_to_os() -> bool:
    """Make glibc give freed large blocks back to the OS (Linux only; True if applied).

    An update allocates and frees hundreds of MB of activations and logits; glibc's
    adaptive mmap threshold otherwise keeps them in the heap, and resident memory grows
    to the sum of peaks (measured: 1.9 GB instead of 1.2 GB for rlhf-sentiment).
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
        return bool(libc.mallopt(m_mmap_threshold, 64 * 1024)) and bool(libc.mallopt(m_trim_threshold, 0))
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


@dataclass
class RLHFResult:
    run_dir: str
    checkpoint_dir: str | None
    policy_path: str
    reward: str
    initial: dict[str, float]
    final: dict[str, float]
    history: list[dict] = field(default_factory=list)
    wall_time: float = 0.0
    world_size: int = 1
    rank: int = 0


def samples_table(batch: Batch, gold_values: Tensor | None, rows: int = 8) -> str:
    """Markdown table of a few generations for TensorBoard's text tab."""
    lines = ["| prompt | response | score | gold | EOS |", "|-|-|-|-|-|"]
    for i in range(min(rows, len(batch.samples.prompts))):
        gold_cell = f"{gold_values[i]:.2f}" if gold_values is not None else ""
        lines.append(f"| {batch.samples.prompts[i]} | {batch.samples.texts[i]} | {batch.scores[i]:.2f} | {gold_cell} | "
                     f"{bool(batch.samples.ended[i])} |")
    return "\n".join(lines)


def train(cfg: RLHFConfig, run_name: str | None = None, progress: bool = True, log: bool = True,
          reward_fn: RewardFn | None = None, echo=print) -> RLHFResult:
    """Run PPO on a language model; returns an RLHFResult (history has one dict per update).

    ``reward_fn`` (prompts, responses) -> scores overrides cfg.reward (e.g. a lambda in a notebook).
    Under torchrun (WORLD_SIZE > 1) it runs data parallel; every rank returns the same (reduced)
    numbers, and only rank 0 writes (run folder, checkpoint, summary, progress bars).
    """
    cfg.validate()
    start_time = time.time()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    return_freed_memory_to_os()
    ctx, device = distributed.init_distributed(cfg.device)
    try:
        return _train(cfg, ctx, device, start_time, run_name, progress and ctx.is_main, log and ctx.is_main, reward_fn, echo)
    finally:
        distributed.cleanup(ctx)


def _train(cfg: RLHFConfig, ctx: distributed.DistContext, device: torch.device, start_time: float, run_name: str | None,
           progress: bool, log: bool, reward_fn: RewardFn | None, echo) -> RLHFResult:
    quiet = (lambda *a, **k: None)
    say = echo if progress else quiet
    with distributed.main_process_first(ctx):  # rank 0 converts / builds / trains shared artifacts, the others wait
        policy_path = resolve_policy_path(cfg, log=say)
        gold = None
        if reward_fn is None:
            reward_fn, gold, reward_desc = make_reward(cfg, policy_path, device, progress, log=say)
        else:
            reward_desc = "reward_fn argument"
            gold = callable_reward(task_module(cfg).gold_reward)

    seed_everything(cfg.seed)  # the same initial weights on every rank (and rank 0's broadcast below)
    policy, tokenizer = load_policy(policy_path, cfg.lora, cfg.lora_r, cfg.lora_alpha, cfg.lora_target_modules, device)
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(policy.lm)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    distributed.broadcast_parameters(trainable, ctx)
    seed = distributed.rank_seed(cfg.seed, ctx.rank)  # different prompts and samples per rank
    seed_everything(seed)
    optimizer = torch.optim.Adam(trainable, lr=cfg.learning_rate, eps=1e-5)
    generator = torch.Generator().manual_seed(seed)
    kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl else FixedKLController(cfg.kl_coef)
    sync = (lambda: distributed.average_gradients(trainable, ctx)) if ctx.enabled else None
    global_batch = cfg.batch_size * ctx.world_size

    if run_name is None:
        run_name = f"{cfg.task}__{cfg.exp_name}__{cfg.seed}__{int(time.time())}"
    run_dir = os.path.join(cfg.run_dir, run_name)
    logger = RunLogger(run_dir, {**cfg.to_dict(), "policy_resolved": policy_path, "reward_resolved": reward_desc,
                                 "world_size": ctx.world_size},
                       enabled=log, progress=progress, total=cfg.num_updates * global_batch)
    logger.bar.set_description("rlhf")
    initial_samples: list[dict] = []
    final_samples: list[dict] = []
    initial = evaluate(policy, tokenizer, cfg, reward_fn, gold, ctx=ctx, samples_out=initial_samples)
    history: list[dict] = []
    checkpoint_dir = None
    try:
        for update in range(1, cfg.num_updates + 1):
            update_start = time.time()
            beta = kl_ctl.value
            prompts = sample_prompts(cfg, cfg.batch_size, seed=seed * 1_000_003 + update)
            batch = collect(policy, tokenizer, prompts, reward_fn, cfg, beta)
            train_start = time.perf_counter()
            stats = ppo_update(policy, optimizer, batch, cfg, beta, generator, sync_gradients=sync)
            train_seconds = time.perf_counter() - train_start
            # throughput: sampled response tokens per second of generation; (query + response) tokens
            # passed forward and backward per second of PPO epochs
            trained_tokens = cfg.ppo_epochs * float(batch.samples.query_mask.sum() + batch.mask.sum())
            stats.update(generate_tokens_per_s=float(batch.mask.sum()) / max(batch.generate_seconds, 1e-9),
                         train_tokens_per_s=trained_tokens / max(train_seconds, 1e-9))

            kl = sequence_kl(batch.logp, batch.ref_logp, batch.mask)
            stats.update(kl)
            stats.update(score=float(batch.scores.mean()), response_length=float(batch.mask.sum(-1).mean()),
                         eos_frac=float(batch.samples.ended.float().mean()))
            gold_values = None
            if gold is not None:
                gold_values = gold_scores(gold, batch.samples, cfg)
                stats["gold"] = float(gold_values.mean())
            stats = distributed.reduce_mean(stats, ctx)  # means over ranks: every rank's controller sees the same KL
            kl_ctl.update(stats["kl_k1"], global_batch)
            stats.update(beta=beta, sqrt_kl=max(stats["kl_k1"], 0.0) ** 0.5,
                         episodes_per_s=global_batch / (time.time() - update_start), peak_rss_mb=peak_rss_mb())
            episodes = update * global_batch
            logger.update(episodes, update, stats)
            history.append({"update": update, "episodes": episodes, **stats})
            if logger.writer is not None and (update % cfg.sample_every == 0 or update == 1):
                logger.writer.add_text("samples", samples_table(batch, gold_values), episodes)
            postfix = {"score": f"{stats['score']:.2f}", "kl": f"{stats['kl_k1']:.2f}"}
            if "gold" in stats:
                postfix["gold"] = f"{stats['gold']:.2f}"
            logger.bar.set_postfix(postfix, refresh=False)
            logger.bar.update(global_batch)
        final = evaluate(policy, tokenizer, cfg, reward_fn, gold, ctx=ctx, samples_out=final_samples)
        in_sync = distributed.parameters_in_sync(trainable, ctx)
        if not in_sync:
            raise RuntimeError("data parallel: the ranks' parameters diverged (gradients were not averaged identically)")
        if cfg.save_checkpoint and log:  # log is False on every rank but 0: rank 0 is the only writer
            checkpoint_dir = save_policy_checkpoint(policy, tokenizer, {**cfg.to_dict(), "policy_resolved": policy_path},
                                                    os.path.join(run_dir, "checkpoint"))
        if log:
            import json

            summary = {"initial": initial, "final": final, "wall_time_s": time.time() - start_time,
                       "peak_rss_mb": peak_rss_mb(),
                       "distributed": {"world_size": ctx.world_size, "parameters_in_sync": in_sync,
                                       "global_batch": global_batch, "writer_rank": ctx.rank},
                       "initial_samples": initial_samples, "final_samples": final_samples}
            with open(os.path.join(run_dir, "summary.json"), "w") as f:
                json.dump(summary, f, indent=2)
        distributed.barrier(ctx)  # nobody leaves before the writer is done
    finally:
        logger.close()
    return RLHFResult(os.path.abspath(run_dir), checkpoint_dir, policy_path, reward_desc, initial, final, history,
                      time.time() - start_time, ctx.world_size, ctx.rank)
