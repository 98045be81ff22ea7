"""RLHF with PPO for language models (install the ``rlhf`` extra: transformers, peft).

    config.py   RLHFConfig: every hyperparameter, one [rlhf] recipe table
    reward.py   Bradley-Terry reward model, score at the last real token, gain/bias normalisation, callables
    policy.py   causal LM + zero-init value head, dropout off, LoRA with the adapter-disabled reference
    rollout.py  sampling, truncation at EOS / stop string, the EOS trick
    ppo_lm.py   per-token KL rewards, GAE / losses from rlkit.ppo, the update, KL controllers, train()
    cli.py      ``rlkit reward-model`` and ``rlkit rlhf``

transformers and peft are imported lazily, inside the functions that need them.
"""

from rlkit.rlhf.config import RLHFConfig

__all__ = ["RLHFConfig", "train"]


def train(*args, **kwargs):
    """rlkit.rlhf.ppo_lm.train (imported on first use)."""
    from rlkit.rlhf.ppo_lm import train as _train

    return _train(*args, **kwargs)
