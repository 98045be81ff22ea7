"""RLHFConfig: every hyperparameter of reward-model training and PPO for language models.

One ``[rlhf]`` recipe table fills it.  Defaults follow TRL's last PPOConfig and
Huang et al. 2024 ("The N Implementation Details of RLHF with PPO") where they
apply; the synthetic recipe scales sizes down to run on 2 CPU cores.
"""

from __future__ import annotations

import os
import dataclasses
from dataclasses import asdict, dataclass, field

from rlkit.ppo import resolve_device
from rlkit.trackers import validate_track

KL_MODES = ("k1_in_reward", "k2_loss", "k3_loss")
ADVANTAGE_ESTIMATORS = ("gae", "rloo", "grpo", "dr_grpo")
GROUP_ESTIMATORS = ("rloo", "grpo", "dr_grpo")
DEFAULT_GROUP_SIZE = 4
"""samples_per_prompt of the group estimators when it is left at 0 (TRL: RLOO 2, GRPO 8)"""
LR_SCHEDULES = ("constant", "linear", "cosine")
TASKS = ("synthetic", "sentiment", "custom")
DTYPES = ("auto", "float32", "bfloat16", "float16")


VALUE_HEAD_SETTINGS = ("gamma", "lam", "vf_coef", "cliprange_value")
"""what only the gae estimator (a value head, per-token GAE) reads"""


@dataclass
class RLHFConfig:
    """Hyperparameters of an RLHF run (reward model + PPO)."""

    task: str = "synthetic"
    """prompt source, preference data and gold reward: 'synthetic' (rlkit.envs.text_task), 'sentiment' (rlkit.envs.sentiment_task: movie-review continuations, VADER gold) or 'custom' (your own prompts / preferences files, no gold reward); any policy / reward can be used with any"""
    prompts: str = ""
    """prompt file: JSONL, CSV, Parquet or a local `datasets` folder (load_from_disk) with a 'prompt' column (strings, or conversational lists of {"role", "content"}) or a 'messages' column, rendered with the policy tokenizer's chat template (add_generation_prompt); when set, the task's built-in prompts are not used ('' : the task's own)"""
    eval_prompts: str = ""
    """held-out prompt file for the initial / final evaluation ('' : a datasets folder's 'test' split, else eval_fraction of the prompts file)"""
    eval_fraction: float = 0.1
    """share of the prompts (and of the preferences) held out for evaluation when no eval_prompts / eval_preferences file or 'test' split is given (0: evaluate on the training prompts)"""
    max_prompt_tokens: int = 0
    """drop prompts longer than this many policy tokens (chat template included), and say how many (0: keep all)"""
    preferences: str = ""
    """preference file for `rlkit reward-model` (same file types): prompt + chosen + rejected (explicit prompt) or chosen + rejected (implicit prompt), strings or conversational lists ('' : the task's built-in preferences)"""
    eval_preferences: str = ""
    """held-out preference file for the pairwise accuracy ('' : a datasets folder's 'test' split, else eval_fraction of the preferences)"""
    reward_append_eos: bool = True
    """append the reward tokenizer's EOS to non-conversational (prompt + response) text, when training on preferences and when scoring (TRL RewardTrainer's convention); a reward model rlkit trained records its own setting (the built-in tasks' models: without) and is scored with it"""
    reward_label: str = ""
    """an existing reward model with several labels (e.g. a sentiment classifier) scores the logit of this label, e.g. 'POSITIVE' ('' : the model must have one label); with several reward models in reward_funcs it applies to the several-label ones, a 1-label one scores its own logit"""
    reward_funcs: list[str] = field(default_factory=list)
    """several rewards summed with reward_weights: each 'model' (the reward model), 'gold', a reward-model folder, or 'package.module:function' ([] : the single `reward`); each is logged as reward/<name>"""
    reward_weights: list[float] = field(default_factory=list)
    """weights of reward_funcs, one each ([] : all 1.0)"""
    dtype: str = "auto"
    """weights of the policy and the reward model: 'auto' (the checkpoint's own dtype), 'float32', 'bfloat16' or 'float16'; the value head, log-probs, KL and advantages stay float32"""
    seed: int = 1
    """seed of python, numpy and torch for the PPO run"""
    task_seed: int = 0
    """seed of the base-model pretraining, preference data and reward model (shared across PPO seeds)"""
    artifacts_dir: str = "runs/rlhf-artifacts"
    """folder where the synthetic base policy and reward model are built when policy / reward_model are empty"""
    policy: str = ""
    """policy name_or_path for AutoModelForCausalLM.from_pretrained, or a packaged model 'offline:smollm2' ('' : build the synthetic task's tiny GPT-2)"""
    cache_dir: str = ""
    """where packaged (offline:) models are converted once ('' : $RLKIT_CACHE_DIR or ~/.cache/rlkit)"""
    reward: str = "model"
    """'model' (the reward model below), 'gold' (the task's programmatic reward) or 'module:function': batched fn(prompts, completions, **columns) -> list[float] (TRL's convention: detected by **kwargs or a first parameter named 'prompts') or per sample fn(prompt, response) -> float"""
    reward_model: str = ""
    """reward model folder for AutoModelForSequenceClassification ('' : train one on the task's preferences)"""
    reward_model_resident: bool = True
    """keep the reward model in memory between scorings (false: load it from its folder for each scoring and free it after, ~0.15 s for MiniLM on CPU, so the PPO update's memory peak does not hold it)"""
    rm_backbone: str = ""
    """backbone of the reward model trained when reward_model is '': any AutoModelForSequenceClassification name_or_path (a fresh 1-label head) or 'offline:minilm' ('' : the policy for 'synthetic' and for a preferences file, offline:minilm for 'sentiment')"""
    lora: bool = False
    """train a peft LoRA adapter; the reference policy is the same base with the adapter disabled"""
    lora_r: int = 8
    """LoRA rank"""
    lora_alpha: int = 16
    """LoRA alpha (scale = alpha / r)"""
    lora_target_modules: str = "all-linear"
    """comma-separated module names to adapt, or 'all-linear'"""
    gradient_checkpointing: bool = False
    """recompute the LM's activations in the backward pass instead of keeping them (same gradients, less memory, ~1/3 slower updates)"""
    batch_size: int = 64
    """episodes (prompt + response) per PPO update: batch_size / samples_per_prompt distinct prompts, each sampled samples_per_prompt times"""
    advantage_estimator: str = "gae"
    """'gae' (PPO: a value head, GAE over the response tokens, advantages whitened over the batch, mean over tokens); or critic-free, one advantage per response from the scores of the samples_per_prompt responses to its prompt, no value head built: 'rloo' (score - the mean of the other k-1; the response is one action: ratio of sequence probabilities, mean over responses, as TRL's RLOOTrainer), 'grpo' ((score - group mean) / (group std + 1e-4); per-token ratios, each response's token mean, then the mean over responses), 'dr_grpo' (score - group mean; sum over tokens / (responses * max_new_tokens): Dr. GRPO, no std and no length normalisation)"""
    samples_per_prompt: int = 0
    """responses sampled per prompt, k (0: 1 for gae, 4 for rloo / grpo / dr_grpo, which need k >= 2); must divide batch_size"""
    num_minibatches: int = 4
    """minibatches per PPO epoch (one optimiser step each)"""
    grad_accum_steps: int = 1
    """micro-batches per minibatch whose gradients are accumulated before the step"""
    ppo_epochs: int = 4
    """passes over each batch of rollouts"""
    num_updates: int = 60
    """PPO updates (rollout + optimisation) in the run"""
    learning_rate: float = 3e-6
    """Adam learning rate of the policy (and value head); the peak of lr_schedule"""
    lr_schedule: str = "constant"
    """learning rate over updates after the warmup: 'constant', 'linear' (to 0, TRL's default) or 'cosine' (half a cosine to 0); a function of the update index alone, so a resumed run follows it exactly"""
    warmup_updates: int = 0
    """updates of linear warmup from 0 before lr_schedule: update u <= warmup_updates trains at learning_rate * u / (warmup_updates + 1) (0: none)"""
    max_grad_norm: float = 1.0
    """global gradient-norm clip"""
    temperature: float = 0.7
    """sampling temperature; log-probs are computed from logits / temperature everywhere"""
    max_new_tokens: int = 16
    """response length cap; a response without EOS by then gets no_eos_score"""
    stop_string: str = ""
    """truncate a response after this string (like EOS); '' : EOS only"""
    no_eos_score: float | None = -1.0
    """the EOS trick: score of a response that produced no EOS (none: keep the reward's score)"""
    kl_coef: float = 0.05
    """beta: KL penalty coefficient (initial value when adaptive_kl)"""
    kl_mode: str = "k1_in_reward"
    """'k1_in_reward' (per-token -beta*(logp - ref_logp) in the reward; rloo / grpo / dr_grpo: summed over the response and taken off its score before the group baseline), 'k2_loss' (beta * (logp-ref)^2/2 added to the loss) or 'k3_loss' (beta * ((r - 1) - log r), r = ref/p, added to the loss: GRPO's; its gradient is that of KL(ref || pi)); the loss forms are aggregated over tokens like the estimator's policy loss; 'k1_loss' is refused: its expected gradient is zero"""
    adaptive_kl: bool = False
    """Ziegler et al. adaptive controller: beta *= 1 + clip(KL/target - 1, -0.2, 0.2) * batch_size / horizon"""
    kl_target: float = 6.0
    """target sequence KL of the adaptive controller (nats)"""
    kl_horizon: int = 10000
    """horizon of the adaptive controller (episodes)"""
    whiten_rewards: bool = False
    """scale per-token rewards to unit std (masked, mean kept) before GAE"""
    gamma: float = 1.0
    """discount over response tokens (gae)"""
    lam: float = 0.95
    """GAE lambda (gae)"""
    cliprange: float = 0.2
    """policy-ratio clip epsilon"""
    cliprange_value: float | None = 0.2
    """value clip around the old values (none: unclipped value loss; gae)"""
    vf_coef: float = 0.1
    """value-loss coefficient (gae)"""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:i"""
    torch_threads: int = 1
    """torch CPU threads (0: torch's default)"""
    run_dir: str = "runs"
    """parent folder of the run folder"""
    exp_name: str = "rlhf"
    """run folder name is <run_dir>/<task>__<exp_name>__<seed>__<time>"""
    eval_samples: int = 256
    """samples (fixed prompts and seed; held-out prompts where the task has them) of each evaluation"""
    eval_interval: int = 0
    """evaluate on the held-out prompts every this many updates, logged under eval/ (metrics.jsonl "kind": "eval", TensorBoard) and passed to the callbacks' on_eval (0: only before the first and after the last update)"""
    sample_every: int = 10
    """write a table of sample generations to TensorBoard every this many updates"""
    track: list[str] = field(default_factory=lambda: ["tensorboard"])
    """where the run is logged besides metrics.jsonl: any of tensorboard, wandb, mlflow, trackio (rlkit.trackers; CLI: --track tensorboard,wandb)"""
    track_project: str = "rlkit"
    """project (W&B, Trackio) or experiment (MLflow) the run is logged under"""
    save_checkpoint: bool = True
    """write resumable checkpoints (<run_dir>/checkpoints/update_<k>: trainable tensors, optimizer, RNGs, state) and, at the end, the policy (or adapter), value head, tokenizer and config as a save_pretrained folder <run_dir>/checkpoint"""
    checkpoint_interval: int = 10
    """write a resumable checkpoint every this many updates (0: only at the end and on SIGINT / SIGTERM)"""
    keep_checkpoints: int = 2
    """resumable checkpoints kept; older ones are deleted once a newer one is complete (0: keep all)"""
    rm_pairs: int = 2000
    """preference pairs for reward-model training: synthetic, sampled from the initial policy (10% held out); sentiment, fresh-vs-rotten snippet pairs of the train split (held out: rm_pairs / 10 pairs of the test split)"""
    rm_label_temperature: float = 1.0
    """Bradley-Terry noise of the synthetic labels: P(a > b) = sigmoid((gold_a - gold_b) / T)"""
    rm_epochs: int = 2
    """reward-model training epochs"""
    rm_batch_size: int = 32
    """reward-model minibatch (pairs)"""
    rm_learning_rate: float = 1e-3
    """reward-model Adam learning rate"""
    rm_norm_samples: int = 512
    """initial-policy samples used to fit the gain/bias (score mean 0, std 1)"""
    pretrain_steps: int = 300
    """synthetic task: next-token steps of base-model pretraining"""

    def validate(self) -> RLHFConfig:
        """Check ranges and combinations; errors name the key."""
        if self.kl_mode == "k1_loss":
            raise ValueError(
                "kl_mode 'k1_loss' is refused: k1 = logp - ref_logp used as a loss has zero expected gradient "
                "(E_pi[grad log pi] = 0), so it does not penalise KL at all. Use 'k1_in_reward' (k1 as a per-token "
                "reward, the gradient of KL(pi||ref) through the policy gradient) or 'k2_loss' ((logp-ref)^2/2 as a loss)."
            )
        if self.kl_mode not in KL_MODES:
            raise ValueError(f"kl_mode must be one of {', '.join(KL_MODES)}, got {self.kl_mode!r}")
        self._validate_estimator()
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0 <= self.warmup_updates < self.num_updates:
            raise ValueError(f"warmup_updates must be in [0, num_updates) = [0, {self.num_updates}), got {self.warmup_updates}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        unused = [f"{key} = {getattr(self, key)!r}" for key, needs in (("eval_prompts", "prompts"), ("max_prompt_tokens", "prompts"),
                                                                        ("eval_preferences", "preferences"))
                  if getattr(self, key) and not getattr(self, needs)]
        if unused:
            raise ValueError(f"{', '.join(unused)} apply to your own prompts / preferences file, and none is set (task "
                             f"{self.task!r} uses its own, with its own held-out split): set prompts / preferences, "
                             "or remove them")
        if self.max_prompt_tokens < 0:
            raise ValueError(f"max_prompt_tokens must be >= 0 (0: no limit), got {self.max_prompt_tokens}")
        self._validate_rewards()
        validate_track(self.track)
        for key in ["batch_size", "num_minibatches", "grad_accum_steps", "ppo_epochs", "num_updates", "max_new_tokens",
                    "lora_r", "lora_alpha", "kl_horizon", "sample_every", "eval_samples", "rm_pairs", "rm_epochs", "rm_batch_size",
                    "rm_norm_samples", "pretrain_steps"]:
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ["learning_rate", "max_grad_norm", "temperature", "cliprange", "kl_target", "rm_learning_rate"]:
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ["kl_coef", "vf_coef", "torch_threads", "rm_label_temperature", "checkpoint_interval", "keep_checkpoints", "eval_interval"]:
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ["gamma", "lam"]:
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {getattr(self, key)}")
        if self.cliprange_value is not None and not self.cliprange_value > 0:
            raise ValueError(f"cliprange_value must be > 0 or none, got {self.cliprange_value}")
        if self.batch_size % (self.num_minibatches * self.grad_accum_steps):
            raise ValueError(
                f"num_minibatches * grad_accum_steps ({self.num_minibatches} * {self.grad_accum_steps}) must divide "
                f"batch_size ({self.batch_size})"
            )
        resolve_device(self.device)
        return self

    def _validate_estimator(self) -> None:
        if self.advantage_estimator not in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage_estimator must be one of {', '.join(ADVANTAGE_ESTIMATORS)}, "
                             f"got {self.advantage_estimator!r}")
        if self.samples_per_prompt < 0:
            raise ValueError(f"samples_per_prompt must be >= 0 (0: 1 for gae, {DEFAULT_GROUP_SIZE} for the group "
                             f"estimators), got {self.samples_per_prompt}")
        if self.advantage_estimator in GROUP_ESTIMATORS:
            if self.group_size < 2:
                raise ValueError(f"advantage_estimator {self.advantage_estimator!r} needs samples_per_prompt >= 2 (its "
                                 f"baseline is the other responses to the same prompt), got {self.samples_per_prompt}")
            if self.whiten_rewards:
                raise ValueError(f"whiten_rewards is per-token reward whitening before GAE; advantage_estimator "
                                 f"{self.advantage_estimator!r} has no per-token rewards: set whiten_rewards = false")
            defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in VALUE_HEAD_SETTINGS}
            changed = [f"{k} = {getattr(self, k)}" for k in VALUE_HEAD_SETTINGS if getattr(self, k) != defaults[k]]
            if changed:
                raise ValueError(f"{', '.join(changed)}: GAE / value-head settings, and advantage_estimator "
                                 f"{self.advantage_estimator!r} has neither (its baseline is the other responses to "
                                 "the prompt): remove them, or use advantage_estimator = 'gae'")
        if self.batch_size > 0 and self.batch_size % self.group_size:
            raise ValueError(f"samples_per_prompt ({self.group_size}) must divide batch_size ({self.batch_size}): "
                             f"batch_size counts responses, batch_size / samples_per_prompt prompts per update")

    @property
    def group_size(self) -> int:
        """k, the responses sampled per prompt (samples_per_prompt, or its default for the estimator)."""
        if self.samples_per_prompt:
            return self.samples_per_prompt
        return DEFAULT_GROUP_SIZE if self.advantage_estimator in GROUP_ESTIMATORS else 1

    @property
    def uses_value_head(self) -> bool:
        """Only gae learns values; the group estimators' baseline is the other samples of the prompt."""
        return self.advantage_estimator == "gae"

    def _validate_rewards(self) -> None:
        if self.reward not in ("model", "gold") and ":" not in self.reward:
            raise ValueError(f"reward must be 'model', 'gold' or 'module:function', got {self.reward!r}")
        for spec in self.reward_funcs:
            if not isinstance(spec, str) or not (spec in ("model", "gold") or ":" in spec or os.path.isdir(spec)):
                raise ValueError(f"reward_funcs: each must be 'model', 'gold', a reward-model folder or 'module:function', got {spec!r}")
        try:
            self.reward_weights = [float(w) for w in self.reward_weights]
        except (TypeError, ValueError):
            raise ValueError(f"reward_weights must be numbers, got {self.reward_weights!r}") from None
        if self.reward_weights and len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(f"reward_weights has {len(self.reward_weights)} values for {len(self.reward_funcs)} reward_funcs "
                             f"({self.reward_funcs}): give one weight each, or none (all 1.0)")
        uses = self.reward_funcs or [self.reward]
        if self.task == "custom" and "gold" in uses:
            raise ValueError("reward 'gold': task 'custom' has no gold reward (use 'model' or 'module:function')")

    @property
    def reward_specs(self) -> list[tuple[str, float]]:
        """(reward, weight) pairs: reward_funcs with reward_weights, or the single `reward` with weight 1."""
        if not self.reward_funcs:
            return [(self.reward, 1.0)]
        return list(zip(self.reward_funcs, self.reward_weights or [1.0] * len(self.reward_funcs)))

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    def to_dict(self) -> dict:
        return asdict(self)
