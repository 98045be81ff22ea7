"""rlkit: readable, tested PPO from control tasks to RLHF."""

__version__ = "0.1.0"
