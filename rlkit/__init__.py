"""rlkit: readable, tested PPO from control tasks to RLHF."""

import os as _os

__version__ = "0.1.0"

# The installed package maps the repo's top-level envs/ and recipes/ to rlkit.envs and
# rlkit.recipes.  When Python runs from a source checkout instead (``python -m rlkit.cli``
# in the repo root puts this folder first on sys.path), mirror that mapping so the
# subprocesses that the launcher, the tests and torchrun start find the same modules.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _os.path.isfile(_os.path.join(_root, "envs", "__init__.py")):
    __path__.append(_root)


def __getattr__(name: str):
    # ``from rlkit import PPO`` without importing torch for ``import rlkit`` alone
    if name == "PPO":
        from rlkit.api import PPO

        return PPO
    raise AttributeError(f"module 'rlkit' has no attribute {name!r}")
