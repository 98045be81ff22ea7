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
   policy and value losses (+ beta * k2 or k3 as a loss in kl_mode 'k2_loss' / 'k3_loss');
8. KL controller: fixed beta or Ziegler et al.'s adaptive one.

``advantage_estimator`` 'rloo' / 'grpo' / 'dr_grpo' replace steps 5-6 (and the value head) by a
baseline over the samples_per_prompt responses to each prompt (:func:`group_advantages`), one
advantage per response; step 7 is the same clipped surrogate, aggregated over tokens as each
method's paper / TRL trainer does (:func:`loss_weights`), without a value loss.

GAE, whitening, the losses and the KL estimators are rlkit.ppo's, not copies; the run
lifecycle (resumable checkpoints, SIGINT / SIGTERM, the non-finite guard, callbacks) is
rlkit.runtime's, the one every PPO loop shares.
Under ``torchrun --nproc_per_node N`` the same loop runs data parallel
(rlkit.rlhf.distributed: per-rank seeds, averaged gradients, reduced metrics,
rank 0 the only writer).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from rlkit.checkpoint import CheckpointError, load_checkpoint, load_optimizer_tensors, optimizer_tensors, resolve_checkpoint
from rlkit.errors import RunFolderError
from rlkit.logger import RunLogger
from rlkit.ppo import (
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_estimators,
    masked_mean,
    masked_whiten,
    resolve_device,
)
from rlkit.rlhf import distributed
from rlkit.rlhf.config import RLHFConfig
from rlkit.rlhf.policy import PolicyWithValue, forward_responses, last_token_index, load_policy, save_policy_checkpoint
from rlkit.rlhf.data import PromptSet, load_prompt_sets
from rlkit.rlhf.reward import (
    CombinedReward,
    RewardComponent,
    RewardFn,
    RewardModelPerCall,
    build_preference_reward_model,
    build_sentiment_reward_model,
    build_synthetic_reward_model,
    callable_reward,
    component_name,
    is_batched,
    load_callable,
    load_reward_model,
    refuse_float16_training,
)
from rlkit.rlhf.rollout import Samples, apply_eos_trick, generate_samples
from rlkit.runfolder import RunFolder
from rlkit.runtime import (  # the run lifecycle, shared with rlkit.ppo's loops
    Callback,
    Lifecycle,
    StopSignals,
    check_finite,
    default_run_name,
    open_run_folder,
    restore_rng_state,
    rng_state,
    seed_everything,
)

# ---------------------------------------------------------------------------------
# KL controllers and the learning-rate schedule
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


def scheduled_learning_rate(cfg: RLHFConfig, update: int) -> float:
    """The policy's learning rate at ``update`` (1-based): warmup, then cfg.lr_schedule.

    Warmup is the line from 0 (at update 0) to lr (at update W + 1): update u <= W trains at
    lr * u / (W + 1), so no update spends its rollout at lr 0 and the peak comes once.  After it,
    with progress p = (u - 1 - W) / (N - W), 'linear' is lr * (1 - p) and 'cosine'
    lr * (1 + cos(pi p)) / 2: update W + 1 runs at the full lr, the last at lr / (N - W) (linear),
    the convention of rlkit.runtime.linear_lr (and of transformers' schedules, whose steps count
    from 0).  A function of the update index alone, so a resumed run needs no scheduler state.
    """
    lr, warmup, total = cfg.learning_rate, cfg.warmup_updates, cfg.num_updates
    if update <= warmup:
        return lr * update / (warmup + 1)
    if cfg.lr_schedule == "constant":
        return lr
    progress = (update - 1 - warmup) / (total - warmup)
    if cfg.lr_schedule == "linear":
        return lr * (1.0 - progress)
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


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


def kl_loss(logp: Tensor, ref_logp: Tensor, mask: Tensor, kl_mode: str, weights: Tensor | None = None) -> Tensor:
    """The KL term of the loss for kl_mode 'k2_loss' or 'k3_loss', aggregated over tokens like the policy loss.

    k3 = (r - 1) - log r, r = ref / pi, is GRPO's (TRL GRPOTrainer's per_token_kl); as a loss its
    on-policy gradient is E_pi[(1 - r) grad log pi] = -sum_y ref(y) grad log pi(y), the gradient of
    KL(ref || pi), not of KL(pi || ref) as k1-in-reward and k2 give.  ``weights``: :func:`loss_weights`.
    """
    if kl_mode == "k2_loss" and weights is None:
        return k2_kl_loss(logp, ref_logp, mask)
    _, k2, k3 = kl_estimators(logp, ref_logp)
    per_token = k2 if kl_mode == "k2_loss" else k3
    return masked_mean(per_token if weights is None else per_token * weights, mask)


# ---------------------------------------------------------------------------------
# The critic-free estimators: one advantage per response from its prompt's group
# ---------------------------------------------------------------------------------

GROUP_STD_EPS = 1e-4
"""GRPO's (score - mean) / (std + eps): TRL GRPOTrainer's constant"""

LOSS_AGGREGATION = {"gae": "token_mean", "rloo": "sequence_sum", "grpo": "sequence_mean", "dr_grpo": "constant_length"}
"""how each estimator's loss sums the per-token terms of a minibatch (see :func:`loss_weights`)"""


def sequence_rewards(scores: Tensor, logp: Tensor, ref_logp: Tensor, mask: Tensor, beta: float,
                     kl_in_reward: bool = True) -> Tensor:
    """Each response's reward for a group baseline: score - beta * sum_t k1 (k1_in_reward; TRL RLOOTrainer's
    sequence-level KL penalty), or the score alone when the KL is a loss.  [B, R] -> [B]."""
    if not kl_in_reward:
        return scores
    k1, _, _ = kl_estimators(logp, ref_logp)
    return scores - beta * (k1 * mask).sum(-1)


def group_advantages(rewards: Tensor, estimator: str) -> Tensor:
    """Advantages of [P, k] rewards, row p the k responses to prompt p (a baseline from the other responses).

    rloo:    r - (sum of the other k - 1) / (k - 1)   leave-one-out mean (Ahmadian et al. 2024)
    grpo:    (r - mean) / (std + 1e-4)                 group mean and (unbiased) std (Shao et al. 2024)
    dr_grpo: r - mean                                  no std: it re-weights prompts by their difficulty (Liu et al. 2025)
    """
    k = rewards.shape[1]
    if estimator == "rloo":
        return rewards - (rewards.sum(1, keepdim=True) - rewards) / (k - 1)
    centred = rewards - rewards.mean(1, keepdim=True)
    if estimator == "grpo":
        return centred / (rewards.std(1, keepdim=True) + GROUP_STD_EPS)
    if estimator == "dr_grpo":
        return centred
    raise ValueError(f"group_advantages: estimator must be rloo, grpo or dr_grpo, got {estimator!r}")


def loss_weights(mask: Tensor, aggregation: str, max_new_tokens: int) -> Tensor | None:
    """Per-response weights w [B, 1] that turn masked_mean(w * x, mask), the mean over all real tokens of
    the minibatch, into the estimator's aggregation of per-token terms x (None: the token mean, PPO's):

    sequence_mean    w_b = N / (B len_b): each response's token mean, then the mean over responses (GRPO)
    sequence_sum     w_b = N / B: each response's token sum, then the mean over responses (RLOO's KL loss)
    constant_length  w_b = N / (B max_new_tokens): the sum over all tokens / a constant (Dr. GRPO)

    with N the real tokens of the minibatch and B its responses.  The clipped surrogate is positively
    homogeneous in the advantage (which of the clipped / unclipped terms wins depends on its sign only),
    so rlkit.ppo's clipped_policy_loss on w * A is exactly the surrogate aggregated this way.
    """
    if aggregation == "token_mean":
        return None
    rows, tokens = mask.shape[0], mask.sum()
    if aggregation == "sequence_mean":
        return (tokens / (rows * mask.sum(-1).clamp(min=1)))[:, None]
    if aggregation == "sequence_sum":
        return (tokens / rows).expand(rows, 1)
    return (tokens / (rows * max_new_tokens)).expand(rows, 1)


def policy_loss(cfg: RLHFConfig, logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor
                ) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
    """rlkit.ppo's clipped surrogate as the estimator uses it; returns (loss, stats, the token weights for the KL loss).

    gae: per-token ratios and advantages, mean over tokens.  rloo: the response is one action, so the
    ratio is of sequence probabilities, exp(sum_t log ratio), with one advantage per response and the
    mean over responses (TRL RLOOTrainer).  grpo / dr_grpo: per-token ratios, the response's advantage
    on each of its tokens, aggregated as :func:`loss_weights` says.
    """
    aggregation = LOSS_AGGREGATION[cfg.advantage_estimator]
    if cfg.advantage_estimator == "gae":
        return (*clipped_policy_loss(logp, old_logp, advantages, cfg.cliprange, mask), None)
    if cfg.advantage_estimator == "rloo":
        # advantages[:, 0]: the response's advantage (its first token is always real, see rollout.truncate_responses)
        loss, stats = clipped_policy_loss((logp * mask).sum(-1), (old_logp * mask).sum(-1), advantages[:, 0], cfg.cliprange)
        return loss, stats, loss_weights(mask, aggregation, cfg.max_new_tokens)
    weights = loss_weights(mask, aggregation, cfg.max_new_tokens)
    return (*clipped_policy_loss(logp, old_logp, advantages * weights, cfg.cliprange, mask), weights)


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
    """The task's module in rlkit.envs: sample_prompts(n, seed[, split]), gold_reward(prompt, response), GOLD_NO_EOS
    (None for task 'custom': your files, no gold)."""
    if cfg.task == "custom":
        return None
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
        raise ValueError(f"task {cfg.task!r} needs a policy (a model folder or name,  e.g. policy = \"offline:smollm2\"); only 'synthetic' builds its own")
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
    """Where the proxy reward model of ``cfg`` lives in artifacts_dir: <task>_rm__seed<k> (for a preferences file
    <task>_<file stem>_<hash of its path, size and time>_rm__seed<k>, so an edited file trains a new model), when
    that folder was built from the same settings (or records none: an older rlkit's); else a sibling keyed by the
    settings too (<...>_rm_<settings hash>__seed<k>), so other rm_* settings or another backbone train their own."""
    import hashlib

    settings = json.dumps(reward_model_settings(cfg), sort_keys=True)
    if cfg.preferences:
        path = os.path.abspath(cfg.preferences)
        stat = os.stat(path) if os.path.exists(path) else None
        data = f"{path}|{stat.st_size if stat else ''}|{stat.st_mtime_ns if stat else ''}"
        stem = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
        digest = hashlib.sha1(f"{data}|{cfg.rm_backbone}|{cfg.reward_append_eos}".encode()).hexdigest()[:8]
        base = f"{cfg.task}_{stem}_{digest}"
    else:
        base = cfg.task
    plain = os.path.join(cfg.artifacts_dir, f"{base}_rm__seed{cfg.task_seed}")
    record = os.path.join(plain, RM_SETTINGS_FILE)
    if not os.path.isdir(plain) or not os.path.isfile(record):
        return plain
    try:
        with open(record) as f:
            same = json.load(f) == json.loads(settings)
    except (OSError, ValueError):
        same = False
    if same:
        return plain
    keyed = hashlib.sha1(settings.encode()).hexdigest()[:8]
    return os.path.join(cfg.artifacts_dir, f"{base}_rm_{keyed}__seed{cfg.task_seed}")


RM_SETTINGS_FILE = "rlkit_reward_model_settings.json"
"""what a trained proxy reward model was built from (reward_model_settings), in its folder"""


def reward_model_settings(cfg: RLHFConfig) -> dict:
    """The settings a trained proxy reward model depends on: its data, backbone (the policy when rm_backbone is
    ''), the rm_* training settings, the task's seed, and what its score normalisation sampled (the policy, the
    prompts, the sampling settings).  A model in the cache is reused only for the same."""
    names = ["task", "task_seed", "preferences", "rm_backbone", "reward_append_eos", "max_prompt_tokens", "dtype",
             # the score normalisation: policy samples for these prompts with these sampling settings
             "policy", "prompts", "eval_fraction", "temperature", "max_new_tokens", "stop_string",
             *sorted(f.name for f in fields(cfg) if f.name.startswith("rm_"))]
    settings = {name: getattr(cfg, name) for name in names if hasattr(cfg, name)}
    for key in ("preferences", "policy", "rm_backbone", "prompts"):  # a local path, wherever the command runs from
        value = settings.get(key)
        if isinstance(value, str) and value and os.path.exists(value):
            settings[key] = os.path.abspath(value)
    return settings


def check_cached_reward_model(cfg: RLHFConfig, path: str) -> None:
    """Refuse a cached proxy reward model built from other settings (one line naming them)."""
    record = os.path.join(path, RM_SETTINGS_FILE)
    if not os.path.isfile(record):
        return  # built by an older rlkit, or a folder the user put there: used as it is
    with open(record) as f:
        built = json.load(f)
    now = json.loads(json.dumps(reward_model_settings(cfg)))
    differ = sorted(k for k in built if built.get(k) != now.get(k))  # an older record lacks later keys: not compared
    if differ:
        from rlkit.errors import ConfigError

        what = ", ".join(f"{k} {built.get(k)!r} -> {now.get(k)!r}" for k in differ)
        raise ConfigError(f"the reward model at {path} was trained with other settings ({what}): delete that folder "
                          "to train a new one, use another artifacts_dir, or set reward_model to a folder to use as it is")


PATH_KEYS = ("policy", "prompts", "eval_prompts", "preferences", "eval_preferences", "reward_model", "rm_backbone",
             "artifacts_dir", "cache_dir")
"""config keys that may name a local file or folder: saved absolute, so a run resumes from any folder"""


def absolute_paths(values: dict, base: str) -> dict:
    """The path-valued keys of config ``values`` (:data:`PATH_KEYS`, ``reward``, ``reward_funcs``) that name a local
    file or folder relative to ``base``, made absolute (hub names, 'offline:' models, 'model', 'gold' and
    'module:function' stay as they are); ``artifacts_dir``, made on demand, always."""
    def absolute(value):
        if isinstance(value, str) and value and ":" not in value and value not in ("model", "gold") \
                and os.path.exists(os.path.join(base, value)):
            return os.path.abspath(os.path.join(base, value))
        return value

    out = {key: absolute(values[key]) for key in (*PATH_KEYS, "reward") if key in values}
    if "reward_funcs" in values:
        out["reward_funcs"] = [absolute(spec) for spec in values["reward_funcs"]]
    if values.get("artifacts_dir"):
        out["artifacts_dir"] = os.path.abspath(os.path.join(base, values["artifacts_dir"]))
    return out


def with_absolute_paths(cfg: RLHFConfig) -> RLHFConfig:
    """``cfg`` with its local paths absolute (:func:`absolute_paths`, from the current folder)."""
    import dataclasses

    return dataclasses.replace(cfg, **absolute_paths(cfg.to_dict(), os.getcwd()))


def input_fingerprints(cfg: RLHFConfig) -> dict[str, dict]:
    """{what: {path, files, bytes, mtime_ns, sha256}} of the data and reward models a run reads (the cached proxy reward
    model too, once trained): a resume checks that none changed underneath it."""
    paths = {key: getattr(cfg, key) for key in ("prompts", "eval_prompts", "preferences", "eval_preferences", "reward_model")}
    if not cfg.reward_model and "model" in (cfg.reward_funcs or [cfg.reward]):
        paths["proxy reward model"] = default_reward_model_path(cfg)
    paths.update({f"reward_funcs {spec}": spec for spec in cfg.reward_funcs if ":" not in spec and spec not in ("model", "gold")})
    return {what: found for what, path in paths.items() if path and (found := fingerprint_of(path)) is not None}


def fingerprint_of(path: str, digest: bool = True) -> dict | None:
    """{path, files, bytes, mtime_ns, sha256} of a file or folder (None when it is not there); ``digest=False``
    leaves out the content hash (the stat fields alone)."""
    if not os.path.exists(path):
        return None
    files = _fingerprint_files(path)
    stats = [os.stat(f) for f in files]
    found = {"path": os.path.abspath(path), "files": len(files), "bytes": sum(st.st_size for st in stats),
             "mtime_ns": max((st.st_mtime_ns for st in stats), default=0)}
    if digest:
        found["sha256"] = _content_sha256(path, files)
    return found


def _fingerprint_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                  if not name.startswith("cache-"))[:1000]  # not datasets' own cache files, which reading may add


def _content_sha256(path: str, files: list[str]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name in files:
        digest.update(os.path.relpath(name, path).encode() + b"\0")
        with open(name, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


STAT_FIELDS = ("files", "bytes", "mtime_ns")


def check_inputs_unchanged(saved: dict[str, Any], cfg: RLHFConfig) -> None:
    """Refuse a resume whose prompt / preference files or reward models changed since the run started.  Equal
    stat fields pass at once; otherwise the contents decide (a copy or a `touch` of the same bytes passes)."""
    before = saved.get("inputs")
    if not before:
        return  # a checkpoint of an older rlkit
    for what, fingerprint in before.items():  # each at the path recorded when the run started
        now = fingerprint_of(fingerprint["path"], digest=False)
        if now is not None and all(now[k] == fingerprint[k] for k in STAT_FIELDS):
            continue
        if now is not None and "sha256" in fingerprint and now["files"] == fingerprint["files"] and \
                _content_sha256(fingerprint["path"], _fingerprint_files(fingerprint["path"])) == fingerprint["sha256"]:
            continue
        state = "is gone" if now is None else "changed"
        raise CheckpointError(f"{saved['checkpoint']}: the run's {what} ({fingerprint['path']}) {state} since the run "
                              "started; resuming would continue on other data or rewards: put it back, or start a new run")


def build_reward_model(cfg: RLHFConfig, policy_path: str, out_dir: str, progress: bool = True, log=print) -> dict:
    """Train the proxy reward model into out_dir (cfg.preferences, else the task's own preferences); returns its
    report (held-out accuracy, gain / bias...).  ``out_dir`` must be new, empty or an earlier reward model of
    rlkit's: a folder of anything else (a model you meant to use as it is, say) is refused, not overwritten."""
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not any(
            os.path.isfile(os.path.join(out_dir, name)) for name in (RM_SETTINGS_FILE, "reward_model_report.json")):
        from rlkit.errors import ExportError

        names = sorted(os.listdir(out_dir))
        raise ExportError(f"{out_dir} holds files rlkit did not write there ({', '.join(names[:4])}"
                          f"{', ...' if len(names) > 4 else ''}); training a reward model into it would overwrite them: "
                          "give a new folder (--out), or reward_model = that folder in `rlkit rlhf` to use it as it is")
    if cfg.preferences:
        report = build_preference_reward_model(cfg, policy_path, out_dir, progress=progress, log=log,
                                               device=resolve_device(cfg.device))
    elif cfg.task == "custom":
        raise ValueError("task 'custom' trains its reward model on your preference file: set preferences = \"path\" "
                         "(or give an existing reward_model)")
    elif cfg.task == "sentiment":
        report = build_sentiment_reward_model(cfg, policy_path, out_dir, progress=progress, log=log,
                                              device=resolve_device(cfg.device))
    else:
        report = build_synthetic_reward_model(cfg, policy_path, out_dir, progress=progress, log=log)
    with open(os.path.join(out_dir, RM_SETTINGS_FILE), "w") as f:
        json.dump(reward_model_settings(cfg), f, indent=2)
    return report


def resolve_reward_model_path(cfg: RLHFConfig, policy_path: str, progress: bool = True, log=print) -> tuple[str, dict | None]:
    """cfg.reward_model, or the task's proxy RM (trained once per task_seed)."""
    if cfg.reward_model:
        return cfg.reward_model, None
    path = default_reward_model_path(cfg)
    if os.path.isfile(os.path.join(path, "config.json")):
        check_cached_reward_model(cfg, path)
        log(f"reward model: {path} (trained earlier from the same data and settings; delete it to train again)")
        return path, None
    log(f"training the {cfg.task} proxy reward model -> {path}")
    return path, _build_once(path, lambda folder: build_reward_model(cfg, policy_path, folder, progress=progress, log=log))


def gold_reward_of(cfg: RLHFConfig) -> RewardFn | None:
    """The task's programmatic gold reward on (rendered prompt, response) text; None for task 'custom'."""
    module = task_module(cfg)
    return None if module is None else callable_reward(module.gold_reward)


def make_reward(cfg: RLHFConfig, policy_path: str, device: torch.device, progress: bool = True, log=print
                ) -> tuple[CombinedReward, RewardFn | None, str]:
    """(reward used for training, gold reward for logging or None, description).

    cfg.reward_funcs with cfg.reward_weights (else the single cfg.reward): each 'model' (cfg.reward_model,
    or the proxy trained once), 'gold', a reward-model folder, or 'module:function' (batched or per sample,
    see rlkit.rlhf.reward.is_batched); summed with their weights, each logged as reward/<name>.
    """
    gold = gold_reward_of(cfg)
    components, descriptions, taken = [], [], set()
    models = [spec for spec, _ in cfg.reward_specs if spec == "model" or (":" not in spec and os.path.isdir(spec))]
    for spec, weight in cfg.reward_specs:
        name = component_name(spec, taken)
        if spec == "gold":
            if gold is None:
                raise ValueError(f"reward 'gold': task {cfg.task!r} has no gold reward")
            components.append(RewardComponent(name, gold, weight, "text"))
            descriptions.append("gold reward (callable)")
        elif spec == "model" or (":" not in spec and os.path.isdir(spec)):
            path = resolve_reward_model_path(cfg, policy_path, progress, log)[0] if spec == "model" else spec
            # several reward models: reward_label picks the logit of the several-label ones; a 1-label model
            # has only its own (alone, a reward_label it lacks is an error naming both)
            label = cfg.reward_label if len(models) == 1 or label_count(path) > 1 else ""
            load = dict(append_eos=cfg.reward_append_eos, label=label, dtype=cfg.dtype)
            if cfg.reward_model_resident:
                components.append(RewardComponent(name, load_reward_model(path, device, **load), weight, "model"))
                descriptions.append(f"reward model {path}")
            else:
                components.append(RewardComponent(name, RewardModelPerCall(path, device, **load), weight, "model"))
                descriptions.append(f"reward model {path} (loaded per scoring)")
        else:
            fn = load_callable(spec)
            batched = is_batched(fn)
            components.append(RewardComponent(name, fn, weight, "batched" if batched else "per_sample"))
            descriptions.append(f"{'batched' if batched else 'per-sample'} callable {spec}")
    if len(components) == 1 and components[0].weight == 1.0:
        return CombinedReward(components), gold, descriptions[0]
    combined = CombinedReward(components)
    return combined, gold, f"{combined.describe()} ({'; '.join(f'{c.name}: {d}' for c, d in zip(components, descriptions))})"


def label_count(path: str) -> int:
    """num_labels of a reward-model folder's config.json (1 when it does not say)."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return 1
    return int(config.get("num_labels") or len(config.get("id2label") or {}) or 1)


def sample_prompts(cfg: RLHFConfig, n: int, seed: int, split: str = "train") -> list[str]:
    """n prompts of the built-in task; split 'test' (held-out prompts) where the task has one."""
    if cfg.task == "custom":
        raise ValueError("task 'custom' has no built-in prompts: set prompts = \"path\"")
    if cfg.task == "synthetic":
        from rlkit.envs import text_task

        return text_task.sample_prompts(n, seed)
    return task_module(cfg).sample_prompts(n, seed, split=split)


def draw_prompts(cfg: RLHFConfig, prompts: PromptSet | None, n: int, seed: int) -> PromptSet:
    """n training prompts, a function of seed alone (so a resumed run draws the same): from the prompt file
    (without replacement within a batch) or the built-in task."""
    if prompts is not None:
        return prompts.sample(n, seed)
    return PromptSet.from_texts(sample_prompts(cfg, n, seed))


def evaluation_prompts(cfg: RLHFConfig, held_out: PromptSet | None, n: int, seed: int) -> PromptSet:
    """The fixed evaluation prompts: the first n held-out rows of the prompt file, or the task's test split."""
    if held_out is not None:
        return held_out.first(n)
    return PromptSet.from_texts(sample_prompts(cfg, n, seed, split="test"))


def gold_scores(gold: RewardFn, samples: Samples, cfg: RLHFConfig | None = None) -> Tensor:
    """The task's gold score of each sample; a response that never ended gets the task's GOLD_NO_EOS (if any)."""
    module = (task_module(cfg) if cfg is not None else None) or task_module(RLHFConfig())
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
    components: dict[str, Tensor] = field(default_factory=dict)  # each reward before weighting and the EOS trick


def score_samples(reward_fn, prompts: PromptSet, s: Samples) -> tuple[Tensor, dict[str, Tensor]]:
    """(total score, components) of the samples: rewards get the prompts as in the file and their columns."""
    completion_ids = [row[mask.bool()].tolist() for row, mask in zip(s.responses.cpu(), s.response_mask.cpu())]
    return CombinedReward.of(reward_fn).score(prompts.texts, prompts.raw, prompts.columns, s.texts, completion_ids)


@torch.no_grad()
def collect(policy: PolicyWithValue, tokenizer, prompts: list[str] | PromptSet, reward_fn, cfg: RLHFConfig,
            beta: float) -> Batch:
    """Generate, score, and turn one batch of episodes into per-token advantages and returns."""
    prompts = prompts if isinstance(prompts, PromptSet) else PromptSet.from_texts(prompts)
    generate_start = time.perf_counter()
    s = generate_samples(policy, tokenizer, prompts.texts, cfg.temperature, cfg.max_new_tokens, cfg.stop_string)
    generate_seconds = time.perf_counter() - generate_start
    mask = s.response_mask.float()
    rows = cfg.minibatch_size // cfg.grad_accum_steps  # the training micro-batch: the logits never outgrow training's
    logp, _, values = forward_responses(policy, s.queries, s.query_mask, s.responses, s.response_mask, cfg.temperature,
                                        chunk_size=rows, with_entropy=False)
    ref_logp, _, _ = forward_responses(policy, s.queries, s.query_mask, s.responses, s.response_mask, cfg.temperature,
                                       reference=True, chunk_size=rows, with_entropy=False)
    raw_scores, components = score_samples(reward_fn, prompts, s)
    raw_scores = raw_scores.to(mask.device)
    check_finite("rewards", raw_scores)  # before the EOS trick, which would hide a broken reward on unfinished responses
    scores = apply_eos_trick(raw_scores, s.ended, cfg.no_eos_score)
    kl_in_reward = cfg.kl_mode == "k1_in_reward"
    rewards, _ = per_token_rewards(logp, ref_logp, scores, mask, beta, kl_in_reward=kl_in_reward)
    if cfg.advantage_estimator == "gae":
        advantages, returns = compute_advantages(rewards, values, mask, cfg.gamma, cfg.lam, cfg.whiten_rewards)
    else:  # the rows are prompt-major (k responses to each prompt in a row): [B] -> [B / k, k] groups
        totals = sequence_rewards(scores, logp, ref_logp, mask, beta, kl_in_reward).view(-1, cfg.group_size)
        # one advantage per response, on each of its tokens (policy_loss reads column 0 for rloo)
        advantages = group_advantages(totals, cfg.advantage_estimator).reshape(-1, 1) * mask
        returns = torch.zeros_like(rewards)  # no critic to fit
    return Batch(s, logp, ref_logp, values * mask, scores, rewards, advantages, returns, mask, generate_seconds, components)


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
                pg_loss, pg_stats, weights = policy_loss(cfg, logp, batch.logp[idx], batch.advantages[idx], mask)
                step_stats = {"policy_loss": pg_loss.item()}
                loss = pg_loss
                if policy.value_head is not None:  # gae: the critic's clipped value loss
                    vf_loss = clipped_value_loss(values, batch.values[idx], batch.returns[idx], cfg.cliprange_value, mask)
                    loss = pg_loss + cfg.vf_coef * vf_loss
                    step_stats["value_loss"] = vf_loss.item()
                if cfg.kl_mode != "k1_in_reward":
                    loss = loss + beta * kl_loss(logp, batch.ref_logp[idx], mask, cfg.kl_mode, weights)
                check_finite("loss", loss.detach())
                (loss / cfg.grad_accum_steps).backward()
                step_stats.update(entropy=masked_mean(entropy.detach(), mask).item(),
                                  **{k: v.item() for k, v in pg_stats.items()})
                for k, v in step_stats.items():
                    totals[k] = totals.get(k, 0.0) + v
                count += 1
            if sync_gradients is not None:
                sync_gradients()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            check_finite("gradients (global norm)", grad_norm)  # before the step: the weights stay the last good ones
            optimizer.step()
    return count


@torch.no_grad()
def evaluate(policy: PolicyWithValue, tokenizer, cfg: RLHFConfig, reward_fn, gold: RewardFn | None,
             n: int | None = None, seed: int = 12345, ctx: distributed.DistContext | None = None,
             chunk: int = 256, samples_out: list[dict] | None = None, held_out: PromptSet | None = None) -> dict[str, float]:
    """Score, gold and KL(pi || ref) of n (cfg.eval_samples) fresh samples: fixed prompts (the task's
    held-out split where it has one) and a fixed sampling seed.  Data parallel: each rank takes every
    world_size-th prompt and the means are reduced over ranks.  ``samples_out`` (a list) receives this
    rank's (prompt, response, score, gold) rows, for reading what the policy actually writes.
    ``held_out``: the prompt file's held-out prompts (their first n), instead of the task's."""
    ctx = ctx or distributed.DistContext()
    n = cfg.eval_samples if n is None else n
    torch_state = torch.random.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    torch.manual_seed(distributed.rank_seed(seed, ctx.rank))
    every = evaluation_prompts(cfg, held_out, n, seed)
    prompts = every.select(list(range(ctx.rank, len(every), ctx.world_size)))
    totals: dict[str, float] = {}
    for i in range(0, len(prompts), chunk):
        part_prompts = prompts.select(list(range(i, min(i + chunk, len(prompts)))))
        s = generate_samples(policy, tokenizer, part_prompts.texts, cfg.temperature, cfg.max_new_tokens, cfg.stop_string)
        rows = cfg.minibatch_size // cfg.grad_accum_steps
        logp, _, _ = forward_responses(policy, s.queries, s.query_mask, s.responses, s.response_mask, cfg.temperature,
                                       chunk_size=rows, with_entropy=False)
        ref_logp, _, _ = forward_responses(policy, s.queries, s.query_mask, s.responses, s.response_mask, cfg.temperature,
                                           reference=True, chunk_size=rows, with_entropy=False)
        mask = s.response_mask.float()
        total, components = score_samples(reward_fn, part_prompts, s)
        scores = apply_eos_trick(total, s.ended.cpu(), cfg.no_eos_score)
        part = {"score": float(scores.mean()), **sequence_kl(logp, ref_logp, mask),
                **{f"reward/{k}": float(v.nanmean()) for k, v in components.items()},
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
    torch.random.set_rng_state(torch_state)
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


def _cell(text: str) -> str:
    """Text as one markdown table cell: a newline or a '|' in a prompt would end the cell or the row."""
    return str(text).replace("\n", " ").replace("|", "\\|")


def samples_table(batch: Batch, gold_values: Tensor | None, rows: int = 8) -> str:
    """Markdown table of a few generations for TensorBoard's text tab."""
    lines = ["| prompt | response | score | gold | EOS |", "|-|-|-|-|-|"]
    for i in range(min(rows, len(batch.samples.prompts))):
        gold_cell = f"{gold_values[i]:.2f}" if gold_values is not None else ""
        lines.append(f"| {_cell(batch.samples.prompts[i])} | {_cell(batch.samples.texts[i])} | {batch.scores[i]:.2f} | "
                     f"{gold_cell} | {bool(batch.samples.ended[i])} |")
    return "\n".join(lines)


def evaluation_table(rows: list[dict]) -> str:
    """Markdown table of evaluation samples (evaluate's samples_out rows)."""
    lines = ["| prompt | response | score | gold |", "|-|-|-|-|"]
    for row in rows:
        gold_cell = "" if row["gold"] is None else f"{row['gold']:.2f}"
        lines.append(f"| {_cell(row['prompt'])} | {_cell(row['response'])} | {row['score']:.2f} | {gold_cell} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------
# The run: one update per iteration of rlkit.runtime's Lifecycle (checkpoints,
# SIGINT / SIGTERM, the non-finite guard and callbacks are the lifecycle's)
# ---------------------------------------------------------------------------------

VARIANT = "ppo_lm"
"""The checkpoints' ``variant``: ``rlkit rlhf --resume`` takes only these, ``rlkit train --resume`` refuses them by name."""
REWARD_FN_ARGUMENT = "reward_fn argument"


@dataclass
class RLHFResult:
    run_dir: str
    checkpoint_dir: str | None
    """the final save_pretrained folder <run_dir>/checkpoint (None when interrupted or not saved)"""
    policy_path: str
    reward: str
    initial: dict[str, float]
    final: dict[str, float]
    """the final evaluation ({} when interrupted)"""
    history: list[dict] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)
    """every evaluation on the held-out prompts: {"update", "episodes", **metrics}; update 0 is the initial one"""
    wall_time: float = 0.0
    world_size: int = 1
    rank: int = 0
    interrupted: int | None = None
    """the signal (SIGINT / SIGTERM) that stopped the run after a checkpoint; None when it ran to its end"""
    checkpoint: str | None = None
    """the last resumable checkpoint, <run_dir>/checkpoints/update_<k> (what ``rlkit rlhf --resume`` continues)"""
    updates: int = 0
    """the last update run"""
    config: RLHFConfig | None = None
    trained: int | None = None
    """0: a resumed run that was already complete (nothing trained, nothing evaluated again)"""


class AgreedStopSignals(StopSignals):
    """Data parallel: a signal counts once every rank knows of it.

    torchrun passes SIGTERM to every rank, but each may receive it at another point of an update;
    a rank that stopped alone would leave the others waiting in their next all-reduce.  So the
    handler only records the signal, and :meth:`agree` (an all-reduce at the end of every update)
    sets ``signal`` on all ranks at once.
    """

    def __init__(self, ctx: distributed.DistContext):
        super().__init__()
        self.ctx = ctx
        self.received: int | None = None

    def _request_stop(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def agree(self) -> None:
        self.signal = int(distributed.reduce_max(float(self.received or 0), self.ctx)) or None


@dataclass
class LMRun:
    """What the updates read and change, shared by iterate, capture and restore."""

    cfg: RLHFConfig
    ctx: distributed.DistContext
    device: torch.device
    policy: PolicyWithValue
    tokenizer: Any
    reward_fn: RewardFn
    gold: RewardFn | None
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # the minibatch shuffler
    kl_ctl: FixedKLController | AdaptiveKLController
    seed: int  # this rank's seed
    sync: Any = None  # data parallel: averages the gradients over ranks
    logger: RunLogger | None = None
    lifecycle: Lifecycle | None = None
    history: list[dict] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)  # {"update", "episodes", **evaluate()}, update 0 the initial
    initial: dict[str, float] = field(default_factory=dict)
    initial_samples: list[dict] = field(default_factory=list)
    last_evaluation: tuple[int, dict[str, float], list[dict]] | None = None  # (update, metrics, samples) of the newest
    episodes: int = 0
    prompts: PromptSet | None = None  # the prompt file's training prompts (None: the built-in task's)
    eval_prompts: PromptSet | None = None  # its held-out prompts
    inputs: dict[str, dict] = field(default_factory=dict)  # input_fingerprints when the run started

    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size * self.ctx.world_size


def trainable_tensors(policy: PolicyWithValue) -> dict[str, Tensor]:
    """The tensors PPO changes, by name: LoRA adapter + value head, or every weight of a full fine-tune."""
    return {name: p for name, p in policy.named_parameters() if p.requires_grad}


def train(cfg: RLHFConfig | None = None, run_name: str | None = None, progress: bool = True, log: bool = True,
          reward_fn: RewardFn | None = None, echo=print, resume: str | None = None,
          callbacks: Sequence[Callback] = (), num_updates: int | None = None, device: str | None = None) -> RLHFResult:
    """Run PPO on a language model; returns an RLHFResult (history has one dict per update).

    ``reward_fn`` (prompts, responses) -> scores overrides cfg.reward (e.g. a lambda in a notebook).
    ``resume``: a run folder (or one of its checkpoints) to continue, with its saved config (cfg None);
    on CPU the continued run ends bitwise where the uninterrupted one would.  SIGINT / SIGTERM finish
    the current update, write a checkpoint and return with ``result.interrupted`` set to the signal.
    ``num_updates`` with ``resume`` extends the run to that many updates (the learning-rate schedule is
    stretched to the new length from the next update on, as ``rlkit train --resume --total_timesteps`` does);
    ``device`` with ``resume`` continues it on another device.
    ``callbacks`` (rlkit.runtime.Callback) run after every update; one returning False stops the run.
    Under torchrun (WORLD_SIZE > 1) it runs data parallel; every rank returns the same (reduced)
    numbers, and only rank 0 writes (run folder, checkpoints, summary, progress bars).
    The run folder is claimed as control PPO's is (rlkit.runfolder): locked while the run lasts (a
    second training or resume of it is refused, a dead owner's lock taken over), never another run's
    (a generated name that collides is numbered), and a resume from an older checkpoint starts a lineage.
    """
    cfg, run_dir, tensors, saved = open_run(cfg, run_name, resume, num_updates, device)
    ended = saved is not None and (saved["update"] >= cfg.num_updates or saved.get("stopped_by_callback") and num_updates is None)
    if ended and os.path.isfile(os.path.join(run_dir, "summary.json")):
        return finished_result(cfg, run_dir, saved)
    if saved is not None and saved["reward"] == REWARD_FN_ARGUMENT and reward_fn is None:
        raise CheckpointError(f"{saved['checkpoint']} was trained with a reward_fn argument: pass the same reward_fn to resume it")
    start_time = time.time() - (saved["wall_time"] if saved is not None else 0.0)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    return_freed_memory_to_os()
    ctx, device = distributed.init_distributed(cfg.device)
    folder, completed = None, False
    try:
        folder = claim_run_folder(run_dir, run_name, saved, ctx, log and ctx.is_main)
        result = _train(cfg, ctx, device, start_time, folder.path, progress and ctx.is_main, log and ctx.is_main,
                        reward_fn, echo, list(callbacks), tensors, saved, folder)
        completed = True
        return result
    finally:
        if folder is not None:
            folder.release()
        distributed.cleanup(ctx, completed)


def finished_result(cfg: RLHFConfig, run_dir: str, saved: dict[str, Any]) -> RLHFResult:
    """A resumed run that had already run all its updates: its own summary, nothing trained or evaluated again."""
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    checkpoint_dir = os.path.join(run_dir, "checkpoint")
    return RLHFResult(os.path.abspath(run_dir), checkpoint_dir if os.path.isdir(checkpoint_dir) else None,
                      saved["policy_path"], saved["reward"], summary.get("initial", {}), summary.get("final", {}),
                      saved.get("history", []), saved.get("evaluations", []), summary.get("wall_time_s", 0.0),
                      checkpoint=saved["checkpoint"], updates=saved["update"], config=cfg, trained=0)


def claim_run_folder(run_dir: str, run_name: str | None, saved: dict[str, Any] | None, ctx: distributed.DistContext,
                     enabled: bool) -> RunFolder:
    """Rank 0 claims the run folder (rlkit.runtime.open_run_folder) before anything is written; the
    other ranks, which write nothing, learn its path, or that rank 0 refused (and stop too)."""
    folder, failure = None, None
    if ctx.is_main:
        try:
            folder = open_run_folder(run_dir, saved["checkpoint"] if saved is not None else None, saved, run_name,
                                     enabled=enabled, resume_command="rlkit rlhf --resume", new_folder_flag=None)
        except Exception as error:
            if not ctx.enabled:
                raise
            failure = error
    shared = distributed.broadcast_object(folder.path if folder is not None else None, ctx)
    if failure is not None:
        raise failure
    if ctx.is_main:
        return folder
    if shared is None:
        raise RunFolderError(f"rank 0 could not claim the run folder {run_dir} (its error says why)")
    return RunFolder(shared)


def open_run(cfg: RLHFConfig | None, run_name: str | None, resume: str | None, num_updates: int | None = None,
             device: str | None = None) -> tuple[RLHFConfig, str, dict[str, dict[str, Tensor]], dict[str, Any] | None]:
    """(config, run folder, checkpoint tensors, checkpoint state): a new run, or the run ``resume`` names
    (with ``num_updates``, extended to that many updates)."""
    if (num_updates is not None or device is not None) and resume is None:
        raise ValueError("num_updates= and device= are for resume=; a new run takes them from its config")
    if resume is None:
        if cfg is None:
            raise ValueError("train() needs a config or a run to resume")
        cfg = with_absolute_paths(cfg.validate())
        return cfg, os.path.join(cfg.run_dir, run_name or default_run_name(cfg.task, cfg.exp_name, cfg.seed)), {}, None
    if cfg is not None or run_name is not None:
        raise ValueError("resume continues a run with its saved config and folder: pass neither cfg nor run_name")
    folder = resolve_checkpoint(resume)
    tensors, saved = load_checkpoint(folder)
    if saved.get("variant") != VARIANT:
        raise CheckpointError(f"{folder} is not an RLHF checkpoint (variant {saved.get('variant', 'ppo')!r}); "
                              "continue it with `rlkit train --resume`")
    known = {f.name for f in fields(RLHFConfig)}  # keys a later rlkit dropped are ignored, new ones get defaults
    values = {k: v for k, v in saved["config"].items() if k in known}
    if num_updates is not None:
        if num_updates < saved["update"]:
            from rlkit.errors import ConfigError

            raise ConfigError(f"num_updates {num_updates} is below the {saved['update']} updates {folder} has run")
        values["num_updates"] = num_updates
    if device is not None:
        values["device"] = device
    try:
        cfg = RLHFConfig(**values).validate()
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{folder}: the saved config is not valid: {error}") from None
    saved = {**saved, "checkpoint": folder}
    check_inputs_unchanged(saved, cfg)
    return cfg, os.path.dirname(os.path.dirname(folder)), tensors, saved


def _train(cfg: RLHFConfig, ctx: distributed.DistContext, device: torch.device, start_time: float, run_dir: str,
           progress: bool, log: bool, reward_fn: RewardFn | None, echo, callbacks: list[Callback],
           tensors: dict[str, dict[str, Tensor]], saved: dict[str, Any] | None, folder: RunFolder | None = None
           ) -> RLHFResult:
    say = echo if progress else (lambda *a, **k: None)
    policy_path, reward_fn, gold, reward_desc = prepare_models(cfg, ctx, device, reward_fn, progress, say, saved)
    run = build_run(cfg, ctx, device, policy_path, reward_fn, gold, say)
    run.inputs = saved["inputs"] if saved is not None and saved.get("inputs") else input_fingerprints(cfg)
    if saved is not None:
        restore_training_state(run, tensors, saved)
    run.logger = logger = RunLogger(
        run_dir, {**cfg.to_dict(), "policy_resolved": policy_path, "reward_resolved": reward_desc, "world_size": ctx.world_size,
                  **prompt_data_record(run)},
        enabled=log, progress=progress, total=cfg.num_updates * run.global_batch,
        resume_metrics_at=saved["metrics_offset"] if saved is not None else None)
    logger.bar.set_description("rlhf")
    for note in folder.notes if folder is not None else []:  # a dead owner's lock taken over, a lineage branched
        logger.note(note)
    if saved is not None and (progress or log):  # data parallel: rank 0 says it, once
        logger.bar.update(run.episodes)
        logger.note(f"resumed at update {saved['update']} from {saved['checkpoint']}")
    run.lifecycle = lifecycle = Lifecycle(
        [run_dir], cfg.num_updates, cfg.checkpoint_interval, cfg.keep_checkpoints,
        enabled=log and cfg.save_checkpoint,  # log is False on every rank but 0: one writer
        last_checkpoint=saved["checkpoint"] if saved is not None else None, callbacks=callbacks,
        stop=AgreedStopSignals(ctx) if ctx.enabled else StopSignals(), folders=[folder] if folder is not None else [])
    lifecycle.context.update(agent=run.policy, tokenizer=run.tokenizer, logger=logger, config=cfg,
                             capture=lambda update: capture(run, update, policy_path, reward_desc, start_time))
    final, checkpoint_dir = {}, None
    try:
        if saved is None:  # update 0: the policy before training (logged under eval/ like the periodic ones)
            run.initial, run.initial_samples = run_evaluation(run, 0)
        last = lifecycle.run(saved["update"] + 1 if saved is not None else 1, lambda update: run_update(run, update),
                             lifecycle.context["capture"], where=lambda: f" ({run.episodes} episodes done)")
        if lifecycle.interrupted is None:  # an interrupted run ends at its checkpoint: no final evaluation, no summary
            final, checkpoint_dir = finish(run, run_dir, policy_path, start_time, log)
        distributed.barrier(ctx)  # nobody leaves before the writer is done
    finally:
        logger.close()
    return RLHFResult(os.path.abspath(run_dir), checkpoint_dir, policy_path, reward_desc, run.initial, final, run.history,
                      run.evaluations, time.time() - start_time, ctx.world_size, ctx.rank, interrupted=lifecycle.interrupted,
                      checkpoint=lifecycle.last_checkpoint, updates=last, config=cfg)


def prepare_models(cfg: RLHFConfig, ctx: distributed.DistContext, device: torch.device, reward_fn: RewardFn | None,
                   progress: bool, say, saved: dict[str, Any] | None) -> tuple[str, RewardFn, RewardFn | None, str]:
    """(policy path, training reward, gold reward or None, reward description); rank 0 builds shared files first."""
    with distributed.main_process_first(ctx):  # rank 0 converts / builds / trains shared artifacts, the others wait
        if saved is not None and os.path.isdir(saved["policy_path"]):
            policy_path = saved["policy_path"]  # the very base the run started from, whatever the current folder
        else:
            policy_path = resolve_policy_path(cfg, log=say)
        if reward_fn is not None:
            return policy_path, reward_fn, gold_reward_of(cfg), REWARD_FN_ARGUMENT
        pinned = ((saved or {}).get("inputs") or {}).get("proxy reward model")
        if pinned and not cfg.reward_model:  # a resume scores with the very reward model the run started with
            from dataclasses import replace

            cfg = replace(cfg, reward_model=pinned["path"])
        reward_fn, gold, reward_desc = make_reward(cfg, policy_path, device, progress, log=say)
    return policy_path, reward_fn, gold, reward_desc


def prompt_data_record(run: LMRun) -> dict:
    """What the prompt file gave (for config.json): counts, and the prompts max_prompt_tokens dropped."""
    if run.prompts is None:
        return {}
    return {"prompt_data": {"train": len(run.prompts), "held_out": len(run.eval_prompts), "held_out_from": run.eval_prompts.source,
                            "dropped_train": run.prompts.dropped, "dropped_held_out": run.eval_prompts.dropped,
                            "conversational": run.prompts.conversational, "columns": list(run.prompts.columns)}}


def build_run(cfg: RLHFConfig, ctx: distributed.DistContext, device: torch.device, policy_path: str,
              reward_fn: RewardFn, gold: RewardFn | None, say=print) -> LMRun:
    """The policy, its optimiser, the RNGs, the KL controller and the prompts of a new run (or one about to be restored)."""
    seed_everything(cfg.seed)  # the same initial weights on every rank (and rank 0's broadcast below)
    policy, tokenizer = load_policy(policy_path, cfg.lora, cfg.lora_r, cfg.lora_alpha, cfg.lora_target_modules, device,
                                    dtype=cfg.dtype, value_head=cfg.uses_value_head)
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(policy.lm)
    trainable = list(trainable_tensors(policy).values())
    refuse_float16_training(trainable, "the policy", lora_hint=not cfg.lora)
    distributed.broadcast_parameters(trainable, ctx)
    seed = distributed.rank_seed(cfg.seed, ctx.rank)  # different prompts and samples per rank
    seed_everything(seed)
    optimizer = torch.optim.Adam(trainable, lr=cfg.learning_rate, eps=1e-5)
    kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl else FixedKLController(cfg.kl_coef)
    sync = (lambda: distributed.average_gradients(trainable, ctx)) if ctx.enabled else None
    if cfg.task == "custom" and not cfg.prompts:
        raise ValueError("task 'custom' needs prompts = \"path\" (a JSONL, CSV, Parquet file or a datasets folder)")
    prompts, held_out = load_prompt_sets(cfg, tokenizer, log=say) if cfg.prompts else (None, None)
    return LMRun(cfg, ctx, device, policy, tokenizer, reward_fn, gold, optimizer, torch.Generator().manual_seed(seed),
                 kl_ctl, seed, sync, prompts=prompts, eval_prompts=held_out)


def run_update(run: LMRun, update: int) -> dict[str, float]:
    """One PPO update: rollout, reward, optimisation, statistics, logging (the Lifecycle's iterate)."""
    cfg = run.cfg
    update_start = time.time()
    beta = run.kl_ctl.value
    learning_rate = scheduled_learning_rate(cfg, update)
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate
    prompts = draw_prompts(cfg, run.prompts, cfg.batch_size // cfg.group_size, seed=run.seed * 1_000_003 + update)
    if cfg.group_size > 1:  # k responses to each prompt, prompt-major: the groups are consecutive rows
        prompts = prompts.select([i for i in range(len(prompts)) for _ in range(cfg.group_size)])
    batch = collect(run.policy, run.tokenizer, prompts, run.reward_fn, cfg, beta)
    if run.lifecycle is not None:
        run.lifecycle.emit("on_rollout")
    train_start = time.perf_counter()
    stats = ppo_update(run.policy, run.optimizer, batch, cfg, beta, run.generator, sync_gradients=run.sync)
    train_seconds = time.perf_counter() - train_start
    for name, parameter in trainable_tensors(run.policy).items():  # a step from finite gradients can still overflow
        check_finite(f"parameter {name}", parameter.detach())
    stats, gold_values = update_statistics(run, batch, stats, train_seconds)
    run.kl_ctl.update(stats["kl_k1"], run.global_batch)
    stats.update(beta=beta, learning_rate=learning_rate, sqrt_kl=max(stats["kl_k1"], 0.0) ** 0.5,
                 episodes_per_s=run.global_batch / (time.time() - update_start), peak_rss_mb=peak_rss_mb())
    run.episodes = update * run.global_batch
    log_update(run, update, stats, batch, gold_values)
    if evaluation_due(cfg, update):
        result, _ = run_evaluation(run, update)  # after the last update: the final one, where on_eval sees it too
        if run.lifecycle is not None:
            run.lifecycle.emit("on_eval", result)
    if run.lifecycle is not None and isinstance(run.lifecycle.stop, AgreedStopSignals):
        run.lifecycle.stop.agree()
    return stats


def update_statistics(run: LMRun, batch: Batch, stats: dict[str, float], train_seconds: float
                      ) -> tuple[dict[str, float], Tensor | None]:
    """ppo_update's statistics plus throughput, KL, score and gold, as means over ranks; and this rank's gold scores."""
    # throughput: sampled response tokens per second of generation; (query + response) tokens
    # passed forward and backward per second of PPO epochs
    trained_tokens = run.cfg.ppo_epochs * float(batch.samples.query_mask.sum() + batch.mask.sum())
    stats.update(generate_tokens_per_s=float(batch.mask.sum()) / max(batch.generate_seconds, 1e-9),
                 train_tokens_per_s=trained_tokens / max(train_seconds, 1e-9))
    stats.update(sequence_kl(batch.logp, batch.ref_logp, batch.mask))
    stats.update(score=float(batch.scores.mean()), response_length=float(batch.mask.sum(-1).mean()),
                 eos_frac=float(batch.samples.ended.float().mean()),
                 **{f"reward/{name}": float(values.nanmean()) for name, values in batch.components.items()})
    if run.cfg.group_size > 1:  # groups whose k scores are all equal give every response advantage 0 (TRL's name)
        groups = batch.scores.view(-1, run.cfg.group_size)
        stats["frac_reward_zero_std"] = float((groups == groups[:, :1]).all(1).float().mean())
    gold_values = None
    if run.gold is not None:
        gold_values = gold_scores(run.gold, batch.samples, run.cfg)
        stats["gold"] = float(gold_values.mean())
    return distributed.reduce_mean(stats, run.ctx), gold_values  # every rank's controller sees the same KL


def log_update(run: LMRun, update: int, stats: dict[str, float], batch: Batch, gold_values: Tensor | None) -> None:
    logger = run.logger
    logger.update(run.episodes, update, stats)
    run.history.append({"update": update, "episodes": run.episodes, **stats})
    if logger.enabled and (update % run.cfg.sample_every == 0 or update == 1):
        logger.text("samples", samples_table(batch, gold_values), run.episodes)  # TensorBoard and the trackers
    postfix = {"score": f"{stats['score']:.2f}", "kl": f"{stats['kl_k1']:.2f}"}
    if "gold" in stats:
        postfix["gold"] = f"{stats['gold']:.2f}"
    logger.bar.set_postfix(postfix, refresh=False)
    logger.bar.update(run.global_batch)


def evaluation_due(cfg: RLHFConfig, update: int) -> bool:
    """Every eval_interval updates (0: never in between), and after the last update (the final evaluation)."""
    return update == cfg.num_updates or (cfg.eval_interval > 0 and update % cfg.eval_interval == 0)


EVAL_LOG_ROWS = 4
"""evaluation samples written into each "kind": "eval" line of metrics.jsonl (TensorBoard's table gets 8)"""


def run_evaluation(run: LMRun, update: int) -> tuple[dict[str, float], list[dict]]:
    """:func:`evaluate` on the held-out prompts after ``update`` (0: before training), recorded in
    run.evaluations and logged: TensorBoard eval/<name> and a sample table, a "kind": "eval" line."""
    samples: list[dict] = []
    result = evaluate(run.policy, run.tokenizer, run.cfg, run.reward_fn, run.gold, ctx=run.ctx, samples_out=samples,
                      held_out=run.eval_prompts)
    run.evaluations.append({"update": update, "episodes": run.episodes, **result})
    run.last_evaluation = (update, result, samples)
    logger = run.logger  # TensorBoard eval/<name>, the trackers (rlkit.trackers) and a "kind": "eval" line
    logger.evaluation(run.episodes, update, {**result, "samples": samples[:EVAL_LOG_ROWS]})
    if logger.enabled:
        logger.text("eval/samples", evaluation_table(samples[:8]), run.episodes)
    if not logger.bar.disable:
        gold = f", gold {result['gold']:+.3f}" if "gold" in result else ""
        logger.bar.write(f"rlkit: eval after update {update}: score {result['score']:+.3f}{gold}, "
                         f"KL k1 {result['kl_k1']:.3f}, length {result['response_length']:.1f}")
    return result, samples


def capture(run: LMRun, update: int, policy_path: str, reward_desc: str, start_time: float
            ) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
    """The run after ``update`` as (tensor files, JSON state) for rlkit.checkpoint.save_checkpoint."""
    random_state, rng = rng_state(run.device, {"shuffle": run.generator})
    optimizer_files, groups = optimizer_tensors(run.optimizer)
    state = {"variant": VARIANT, "config": run.cfg.to_dict(), "update": update, "episodes": run.episodes,
             "kl_coef": run.kl_ctl.value, "history": run.history, "evaluations": run.evaluations, "initial": run.initial,
             "initial_samples": run.initial_samples,  # the initial evaluation is not repeated on resume
             "metrics_offset": run.logger.metrics_offset(), "wall_time": time.time() - start_time,
             "policy_path": policy_path, "reward": reward_desc, "optimizer_param_groups": groups,
             "inputs": run.inputs, **random_state}
    return {"model": trainable_tensors(run.policy), "optimizer": optimizer_files, "rng": rng}, state


def restore_training_state(run: LMRun, tensors: dict[str, dict[str, Tensor]], saved: dict[str, Any]) -> None:
    """Load a checkpoint into a freshly built run: trainable tensors, Adam, RNGs, KL coefficient, history."""
    where, params, stored = saved["checkpoint"], trainable_tensors(run.policy), tensors.get("model", {})
    if set(stored) != set(params):
        missing, unexpected = sorted(set(params) - set(stored)), sorted(set(stored) - set(params))
        raise CheckpointError(f"{where}: its trainable tensors do not fit this policy (lora = {run.cfg.lora}): "
                              f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for name, parameter in params.items():
            if stored[name].shape != parameter.shape:
                raise CheckpointError(f"{where}: {name} has shape {list(stored[name].shape)}, the policy's {list(parameter.shape)}")
            parameter.copy_(stored[name])
    try:
        load_optimizer_tensors(run.optimizer, tensors["optimizer"], saved["optimizer_param_groups"])
    except (KeyError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{where}: the optimizer state does not fit this policy ({error})") from None
    if run.ctx.is_main:
        restore_rng_state(saved, tensors["rng"], run.device, {"shuffle": run.generator})
    else:  # only rank 0 writes, so only its streams were saved; the others restart theirs, seeded by rank and update
        seed = (run.seed + 1_000_003 * saved["update"]) % 2**32
        seed_everything(seed)
        run.generator.manual_seed(seed)
    run.kl_ctl.value = saved["kl_coef"]
    run.history, run.episodes = list(saved["history"]), saved["episodes"]
    run.evaluations = list(saved.get("evaluations", []))  # checkpoints before eval_interval have none
    run.initial, run.initial_samples = saved["initial"], list(saved["initial_samples"])


def finish(run: LMRun, run_dir: str, policy_path: str, start_time: float, log: bool) -> tuple[dict[str, float], str | None]:
    """The final evaluation, the save_pretrained folder <run_dir>/checkpoint, and summary.json (written last)."""
    cfg, ctx = run.cfg, run.ctx
    last = run.history[-1]["update"] if run.history else 0
    if run.last_evaluation is None or run.last_evaluation[0] != last:  # stopped by a callback between evaluations
        run_evaluation(run, last)
    _, final, final_samples = run.last_evaluation
    in_sync = distributed.parameters_in_sync(list(trainable_tensors(run.policy).values()), ctx)
    if not in_sync:
        raise RuntimeError("data parallel: the ranks' parameters diverged (gradients were not averaged identically)")
    checkpoint_dir = None
    if cfg.save_checkpoint and log:  # log is False on every rank but 0: rank 0 is the only writer
        checkpoint_dir = save_policy_checkpoint(run.policy, run.tokenizer, {**cfg.to_dict(), "policy_resolved": policy_path},
                                                os.path.join(run_dir, "checkpoint"))
    run.logger.summary({"initial": run.initial, "final": final, "wall_time_s": time.time() - start_time,
                        "peak_rss_mb": peak_rss_mb(),
                        "distributed": {"world_size": ctx.world_size, "parameters_in_sync": in_sync,
                                        "global_batch": run.global_batch, "writer_rank": ctx.rank},
                        "initial_samples": run.initial_samples, "final_samples": final_samples})
    return final, checkpoint_dir
