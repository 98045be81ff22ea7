"""What can go wrong, by class, and the CLI's exit code for each.

Every failure the ``rlkit`` command can meet ends in one line that names the file or key and
says what to do, with an exit code per class (README, "Faults and what you see"); the traceback
is shown only with ``--debug`` or ``RLKIT_DEBUG=1``.  Library code raises these classes (each is
also a ``ValueError`` or ``OSError`` where it was one before, so existing ``except`` clauses still
catch it); :func:`classify` maps any exception, the library's or Python's, to (class, exit code).
"""

from __future__ import annotations

import errno
import os

EXIT_CODES = {
    "ok": 0,
    "non_finite_returns": 1,
    "config": 2,
    "non_finite": 3,
    "env": 4,
    "checkpoint": 5,
    "export": 6,
    "run_folder": 7,
    "filesystem": 8,
    "device": 9,
    "reward": 10,
    "internal": 70,
    "interrupted": 130,
    "stdout_closed": 141,
}
"""Exit codes of the ``rlkit`` command; 128 + N when signal N stopped a run (its checkpoint written)."""


class RlkitError(Exception):
    """A failure with a one-line message that says what to do; ``kind`` picks the exit code."""

    kind = "internal"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.kind]


class ConfigError(RlkitError, ValueError):
    """A user error in a recipe, an override or an argument; the message names the key."""

    kind = "config"


class EnvError(RlkitError, ValueError):
    """The environment cannot be built or does not fit the agent (unknown id, spaces, wrappers)."""

    kind = "env"


class CheckpointError(RlkitError, ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupted, or from another setup."""

    kind = "checkpoint"


class ExportError(RlkitError, ValueError):
    """An export that would be wrong (non-finite weights) or would overwrite something else."""

    kind = "export"


class RunFolderError(RlkitError, ValueError):
    """A run folder owned by another process, or holding another run."""

    kind = "run_folder"


class DeviceError(RlkitError, ValueError):
    """The device asked for is absent or ran out of memory."""

    kind = "device"


class RewardFunctionError(RlkitError, ValueError):
    """A reward function raised, or returned something that is not one finite number per response."""

    kind = "reward"


RewardError = RewardFunctionError
"""the same class, by its shorter name"""


DISK_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied", errno.ENAMETOOLONG: "a file name is too long"}


def filesystem_message(error: OSError) -> str:
    """One line for an OSError: what happened, to which file, what to do."""
    what = DISK_ERRNOS.get(error.errno) or (error.strerror or type(error).__name__)
    where = f" writing {error.filename!r}" if getattr(error, "filename", None) else ""
    hint = {errno.ENOSPC: "free some space (or point run_dir elsewhere) and resume the run",
            errno.EDQUOT: "free some space (or point run_dir elsewhere) and resume the run",
            errno.EROFS: "point run_dir (or the output folder) at a writable place",
            errno.EACCES: "point run_dir (or the output folder) at a writable place",
            errno.EPERM: "point run_dir (or the output folder) at a writable place",
            errno.ENAMETOOLONG: "use a shorter run name or exp_name"}.get(error.errno, "check the path")
    return f"{what}{where}: {hint}"


def classify(error: BaseException) -> tuple[str, str]:
    """(kind, one-line message) of any exception; kind is a key of :data:`EXIT_CODES`."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, RlkitError):
        return error.kind, message
    module = type(error).__module__ or ""
    if type(error).__name__ == "NonFiniteError":
        return "non_finite", message
    if type(error).__name__ == "SafetensorError":  # safetensors' own (e.g. a full disk while writing)
        return "filesystem", f"writing a tensor file failed ({message}): free some space or check the folder, then resume"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", "interrupted"
    if isinstance(error, MemoryError):
        return "device", "out of memory: lower num_envs or num_steps (or the batch sizes)"
    if type(error).__name__ in ("OutOfMemoryError", "CudaError", "AcceleratorError") or "CUDA out of memory" in message:
        return "device", f"{message}: lower the batch sizes or use another device"
    if isinstance(error, RuntimeError) and any(word in message for word in ("CUDA", "cuda", "MPS", "device ordinal")):
        return "device", f"{message}: check the device setting (device = cpu runs anywhere)"
    if isinstance(error, (ImportError,)):
        return "config", f"a dependency is missing: {message}"
    if module.startswith("gymnasium") or type(error).__name__ == "DependencyNotInstalled":
        return "env", message
    disk = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
    origin = None if disk else env_code_origin(error)
    if origin is not None:  # the user's env (its __init__, reset or step) raised, an OSError too (a map file it
        # opens, a simulator's socket): not a bug in rlkit, and not rlkit's files
        return "env", f"the environment raised {type(error).__name__}: {message} ({origin})"
    if isinstance(error, OSError):  # a disk, a folder: wherever it was raised
        return "filesystem", filesystem_message(error)
    if isinstance(error, UnicodeDecodeError):
        return "config", f"a file is not UTF-8 text ({message})"
    if isinstance(error, ValueError):
        return "config", message
    return "internal", f"unexpected {type(error).__name__}: {message} (a bug in rlkit: rerun with --debug and report the traceback)"


_OWN_DIRS: list[str] = []


def _own_dirs() -> list[str]:
    """rlkit's package folder and rlkit.envs' (envs/ at the top of a source checkout)."""
    if not _OWN_DIRS:
        import importlib.util

        spec = importlib.util.find_spec("rlkit.envs")
        _OWN_DIRS.append(os.path.dirname(os.path.abspath(__file__)))
        if spec is not None and spec.origin:
            _OWN_DIRS.append(os.path.dirname(os.path.abspath(spec.origin)))
    return _OWN_DIRS


def env_code_origin(error: BaseException) -> str | None:
    """"file:line in function" of the frame that raised ``error`` when it was raised below rlkit's own code by
    an environment: a frame of gymnasium's (making or wrapping the env) or of a gymnasium.Env / Wrapper that is
    not rlkit's; None otherwise (rlkit's own code, torch, numpy called by rlkit)."""
    frames = []
    tb = error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    own = [i for i, frame in enumerate(frames) if _is_own(frame.f_code.co_filename)]
    below = frames[own[-1] + 1:] if own else []
    if not any(_is_env_frame(frame) for frame in below):
        return None
    last = frames[-1]
    return f"{os.path.basename(last.f_code.co_filename)}:{last.f_lineno} in {last.f_code.co_name}"


def _is_own(filename: str) -> bool:
    path = os.path.abspath(filename)
    return any(path.startswith(folder + os.sep) for folder in _own_dirs())


def _is_env_frame(frame) -> bool:
    if f"{os.sep}gymnasium{os.sep}" in frame.f_code.co_filename:
        return True
    owner = frame.f_locals.get("self")
    try:
        import gymnasium as gym
    except ImportError:  # pragma: no cover
        return False
    return isinstance(owner, (gym.Env, gym.vector.VectorEnv)) and not _is_own(frame.f_code.co_filename)
