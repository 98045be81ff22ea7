"""RLHF with PPO for language models (install the ``rlhf`` extra: transformers, peft).

    config.py   RLHFConfig: every hyperparameter, one [rlhf] recipe table
    data.py     prompt / preference files (JSONL, CSV, Parquet, datasets folders) in TRL's conventions, chat templates
    reward.py   Bradley-Terry reward model, score at the last real token, gain/bias normalisation, reward functions
                (batched or per sample) combined with weights
    policy.py   causal LM + zero-init value head (none for the critic-free estimators), dropout off, LoRA with the
                adapter-disabled reference
    rollout.py  sampling with an explicit GenerationConfig, truncation at EOS / stop string, the EOS trick
    ppo_lm.py   per-token KL rewards, GAE or group baselines (RLOO, GRPO, Dr. GRPO), losses from rlkit.ppo, the update,
                KL controllers, the learning-rate schedule, periodic evaluation, train()
    export.py   ``rlkit rlhf-export``: a run's policy as a plain transformers folder with a model card
    example.py  a tiny chat model + prompt / preference files + recipe: the README's "RLHF on your own data"
    cli.py      ``rlkit reward-model``, ``rlkit rlhf`` and ``rlkit rlhf-export``

transformers and peft are imported lazily, inside the functions that need them.
"""

from __future__ import annotations

from typing import Any

from rlkit.rlhf.config import RLHFConfig

__all__ = ["RLHFConfig", "load_config", "train", "train_reward_model", "export_policy"]


def load_config(recipe: str = "rlhf-synthetic", **overrides: Any) -> RLHFConfig:
    """An RLHFConfig from a shipped recipe name or a .toml path, with any key overridden (validated like the CLI)."""
    from rlkit.config import config_from_dict, read_recipe

    table, values, source = read_recipe(recipe)
    if table != "rlhf":
        raise ValueError(f"{recipe} is a [{table}] recipe; RLHF takes [rlhf] recipes")
    return config_from_dict(RLHFConfig, {**values, **overrides}, source=f"{source} + Python")


def train(*args, **kwargs):
    """rlkit.rlhf.ppo_lm.train (imported on first use): ``train(cfg, run_name=..., reward_fn=..., resume=...,
    callbacks=[...])`` -> RLHFResult; what ``rlkit rlhf`` runs."""
    from rlkit.rlhf.ppo_lm import train as _train

    return _train(*args, **kwargs)


def train_reward_model(cfg: RLHFConfig, out: str | None = None, progress: bool = True) -> dict:
    """What ``rlkit reward-model`` runs: a Bradley-Terry reward model on ``cfg.preferences`` (or the task's pairs),
    saved to ``out`` (default: cfg.reward_model, else the task's artifacts folder); returns the report
    (held-out pairwise accuracy before and after training, pairs, seconds, the folder)."""
    from rlkit.rlhf.ppo_lm import build_reward_model, default_reward_model_path, resolve_policy_path

    policy_path = resolve_policy_path(cfg)
    out = out or cfg.reward_model or default_reward_model_path(cfg)
    return {**build_reward_model(cfg, policy_path, out, progress=progress), "path": out}


def export_policy(run: str, out: str, merge: bool = False) -> dict:
    """What ``rlkit rlhf-export`` runs: a run's policy as a plain transformers folder (``merge``: LoRA merged)."""
    from rlkit.rlhf.export import export_run

    return export_run(run, out, merge=merge)
