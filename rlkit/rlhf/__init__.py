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

from rlkit.rlhf.config import RLHFConfig

__all__ = ["RLHFConfig", "train"]


def train(*args, **kwargs):
    """rlkit.rlhf.ppo_lm.train (imported on first use)."""
    from rlkit.rlhf.ppo_lm import train as _train

    return _train(*args, **kwargs)
