"""Where an environment comes from: a registered id, gymnasium's "module:Id" form, modules that
register envs when imported (``env_module``), or a Python object handed to rlkit.PPO.

Nothing here imports the agent.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Callable

import gymnasium as gym

USER_PREFIX = "rlkit-user/"
_counter = itertools.count()


def import_env_modules(modules: list[str]) -> None:
    """Import each module (they register their envs with gymnasium); one-line error when one is missing."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ValueError(f"cannot import env module {name!r} ({error}); is it on PYTHONPATH?") from None


def resolve_env_id(env_id: str, modules: list[str] = ()) -> str:
    """The registered id to make: imports ``modules`` and, for "module:Id", the module; checks the id exists."""
    import_env_modules(list(modules))
    if ":" in env_id:
        module, env_id = env_id.split(":", 1)
        import_env_modules([module])
    if env_id.startswith(USER_PREFIX) and env_id not in gym.registry:
        raise ValueError(f"{env_id!r} was an env object handed to rlkit.PPO in another process; pass the env again: "
                         "PPO.load(path, env=...)")
    return env_id


def register_env_object(env: gym.Env | Callable[[], gym.Env], num_envs: int) -> str:
    """Register a gymnasium.Env instance or a zero-argument factory under a fresh id; returns the id.

    An instance can back one env only (it is reused, not copied); a factory makes each sub-env.
    """
    if isinstance(env, gym.vector.VectorEnv):
        raise ValueError("pass a single env or a zero-argument factory (rlkit builds the vector env, num_envs copies); "
                         "a gymnasium vector env instance is not supported")
    if isinstance(env, gym.Env):
        if num_envs != 1:
            raise ValueError(f"an env instance backs one env only, but num_envs = {num_envs}; pass a zero-argument "
                             "factory (e.g. lambda: MyEnv()) to train on several")
        instance, env = env, (lambda: instance)
        name = type(instance.unwrapped).__name__
    elif callable(env):
        name = getattr(env, "__name__", "factory").replace("<lambda>", "factory")
    else:
        raise ValueError(f"env must be an id, a gymnasium.Env or a zero-argument factory, got {type(env).__name__}")
    env_id = f"{USER_PREFIX}{name}-{next(_counter)}-v0"
    gym.register(env_id, entry_point=env, disable_env_checker=True)
    return env_id
