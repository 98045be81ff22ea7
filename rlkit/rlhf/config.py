"""RLHFConfig: every hyperparameter of reward-model training and PPO for language models.

One ``[rlhf]`` recipe table fills it.  Defaults follow TRL's last PPOConfig and
Huang et al. 2024 ("The N Implementation Details of RLHF with PPO") where they
apply; the synthetic recipe scales sizes down to run on 2 CPU cores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rlkit.ppo import resolve_device

KL_MODES = ("k1_in_reward", "k2_loss")
TASKS = ("synthetic", "sentiment")


@dataclass
class RLHFConfig:
    """Hyperparameters of an RLHF run (reward model + PPO)."""

    task: str = "synthetic"
    """prompt source, preference data and gold reward: 'synthetic' (rlkit.envs.text_task) or 'sentiment' (rlkit.envs.sentiment_task: movie-review continuations, VADER gold); any policy / reward can be used with either"""
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
    """'model' (the reward model below), 'gold' (the task's programmatic reward) or 'module:function' (fn(prompt, response) -> float)"""
    reward_model: str = ""
    """reward model folder for AutoModelForSequenceClassification ('' : train one on the task's preferences)"""
    reward_model_resident: bool = True
    """keep the reward model in memory between scorings (false: load it from its folder for each scoring and free it after, ~0.15 s for MiniLM on CPU, so the PPO update's memory peak does not hold it)"""
    rm_backbone: str = ""
    """backbone of the reward model trained when reward_model is '' (name_or_path or 'offline:minilm'; '' : the policy for 'synthetic', offline:minilm for 'sentiment')"""
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
    """prompts (= episodes) per PPO update"""
    num_minibatches: int = 4
    """minibatches per PPO epoch (one optimiser step each)"""
    grad_accum_steps: int = 1
    """micro-batches per minibatch whose gradients are accumulated before the step"""
    ppo_epochs: int = 4
    """passes over each batch of rollouts"""
    num_updates: int = 60
    """PPO updates (rollout + optimisation) in the run"""
    learning_rate: float = 3e-6
    """Adam learning rate of the policy (and value head)"""
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
    """'k1_in_reward' (per-token -beta*(logp - ref_logp) in the reward) or 'k2_loss' (beta * (logp-ref)^2/2 added to the loss); 'k1_loss' is refused: its expected gradient is zero"""
    adaptive_kl: bool = False
    """Ziegler et al. adaptive controller: beta *= 1 + clip(KL/target - 1, -0.2, 0.2) * batch_size / horizon"""
    kl_target: float = 6.0
    """target sequence KL of the adaptive controller (nats)"""
    kl_horizon: int = 10000
    """horizon of the adaptive controller (episodes)"""
    whiten_rewards: bool = False
    """scale per-token rewards to unit std (masked, mean kept) before GAE"""
    gamma: float = 1.0
    """discount over response tokens"""
    lam: float = 0.95
    """GAE lambda"""
    cliprange: float = 0.2
    """policy-ratio clip epsilon"""
    cliprange_value: float | None = 0.2
    """value clip around the old values (none: unclipped value loss)"""
    vf_coef: float = 0.1
    """value-loss coefficient"""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:i"""
    torch_threads: int = 1
    """torch CPU threads (0: torch's default)"""
    run_dir: str = "runs"
    """parent folder of the run folder"""
    exp_name: str = "rlhf"
    """run folder name is <run_dir>/<task>__<exp_name>__<seed>__<time>"""
    eval_samples: int = 256
    """samples (fixed prompts and seed; held-out prompts where the task has them) of the initial and final evaluation"""
    sample_every: int = 10
    """write a table of sample generations to TensorBoard every this many updates"""
    save_checkpoint: bool = True
    """save the final policy (or adapter), value head, tokenizer and config as save_pretrained folders"""
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
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        for key in ["batch_size", "num_minibatches", "grad_accum_steps", "ppo_epochs", "num_updates", "max_new_tokens",
                    "lora_r", "lora_alpha", "kl_horizon", "sample_every", "eval_samples", "rm_pairs", "rm_epochs", "rm_batch_size",
                    "rm_norm_samples", "pretrain_steps"]:
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ["learning_rate", "max_grad_norm", "temperature", "cliprange", "kl_target", "rm_learning_rate"]:
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ["kl_coef", "vf_coef", "torch_threads", "rm_label_temperature"]:
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
        if self.reward not in ("model", "gold") and ":" not in self.reward:
            raise ValueError(f"reward must be 'model', 'gold' or 'module:function', got {self.reward!r}")
        resolve_device(self.device)
        return self

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    def to_dict(self) -> dict:
        return asdict(self)
