"""Where an environment comes from: a registered id, gymnasium's "module:Id" form, modules that
register envs when imported (``env_module``), or a Python object handed to rlkit.PPO.

Nothing here imports the agent.
"""

from __future__ import annotations

import copy
import importlib
import itertools
from collections.abc import Callable

import gymnasium as gym

USER_PREFIX = "rlkit-user/"
_counter = itertools.count()


def current_folder_importable() -> None:
    """Let a module in the current folder import, as ``python -m`` and ``python script.py`` do: the ``rlkit``
    console script leaves the current folder off sys.path (after anything on PYTHONPATH, which still wins)."""
    import os
    import sys

    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())


def import_env_modules(modules: list[str]) -> None:
    """Import each module (they register their envs with gymnasium); one-line error when one is missing."""
    if modules:
        current_folder_importable()
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

    An instance can back one env at a time (:class:`InstanceLease`); a factory makes each sub-env.
    """
    if isinstance(env, gym.vector.VectorEnv):
        return register_vector_env(env)
    if isinstance(env, gym.Env):
        if num_envs != 1:
            raise ValueError(f"an env instance backs one env only, but num_envs = {num_envs}; pass a zero-argument "
                             "factory (e.g. lambda: MyEnv()) to train on several")
        name = type(env.unwrapped).__name__
        env = InstanceLease(env)
    elif callable(env):
        name = getattr(env, "__name__", "factory").replace("<lambda>", "factory")
    else:
        raise ValueError(f"env must be an id, a gymnasium.Env or a zero-argument factory, got {type(env).__name__}")
    env_id = f"{USER_PREFIX}{name}-{next(_counter)}-v0"
    gym.register(env_id, entry_point=env, disable_env_checker=True)
    return env_id


class InstanceLease:
    """The entry point of an env instance handed to rlkit.PPO: the instance itself to one holder at a time
    (the training envs), a deep copy to any other (the periodic evaluation's env while training runs), so
    evaluating never resets or steps the training episode.  Closing what it handed out ends the lease and
    leaves the user's instance open: it is theirs."""

    def __init__(self, instance: gym.Env):
        self.instance, self.holder = instance, None

    def __deepcopy__(self, memo):  # gym.make deep-copies the spec, entry point included: this lease is the one
        return self

    def __call__(self, **kwargs) -> gym.Env:
        if kwargs:
            raise ValueError(f"an env instance takes no env_kwargs (got {sorted(kwargs)}); pass a factory instead")
        if self.holder is None:
            self.holder = _Leased(self.instance, self)
            return self.holder
        try:
            return copy.deepcopy(self.instance)
        except Exception as error:  # noqa: BLE001  (a simulator handle, a socket: whatever deepcopy refuses)
            from rlkit.errors import EnvError

            raise EnvError(f"a second env is needed while the env instance trains (periodic evaluation) and "
                           f"{type(self.instance.unwrapped).__name__} cannot be deep-copied ({type(error).__name__}: "
                           f"{error}); pass a zero-argument factory (e.g. lambda: MyEnv()) instead") from None


class _Leased(gym.Wrapper):
    """The leased instance; ``close`` returns it to the lease instead of closing it."""

    def __init__(self, env: gym.Env, lease: InstanceLease):
        super().__init__(env)
        self._lease = lease

    def close(self) -> None:
        if self._lease.holder is self:  # not a copy of it (rlkit.envs.factory.state_fields probes a copy)
            self._lease.holder = None


def register_vector_env(envs: gym.vector.VectorEnv) -> str:
    """The id of the sub-envs of a gymnasium vector env, for rlkit to build its own vector env from.

    rlkit needs same-step autoreset and its wrappers on every sub-env, so it does not step the
    given vector env: it rebuilds one from the same sub-env factories (``env_fns`` of a
    Sync/AsyncVectorEnv, one per index) or, for a registered env's own vectorised class
    (``gym.make_vec(id, vectorization_mode="vector_entry_point")``), from the id and its kwargs.
    The caller takes ``envs.num_envs`` as the number of envs.
    """
    env_fns = getattr(envs, "env_fns", None)
    if env_fns:
        calls = itertools.count()
        return register_env_object(lambda: env_fns[next(calls) % len(env_fns)](), envs.num_envs)
    spec = getattr(envs, "spec", None)
    if spec is not None and spec.id in gym.registry and spec.entry_point is not None:
        kwargs = {k: v for k, v in spec.kwargs.items() if k not in ("num_envs", "vectorization_mode", "max_episode_steps")}
        env_id = f"{USER_PREFIX}{spec.name}-{next(_counter)}-v0"
        gym.register(env_id, entry_point=spec.entry_point, max_episode_steps=spec.max_episode_steps, kwargs=kwargs)
        return env_id
    raise ValueError(f"cannot rebuild the sub-envs of {type(envs).__name__} (it has no env_fns and no registered "
                     "single-env entry point); pass a zero-argument factory of one env and num_envs instead")
