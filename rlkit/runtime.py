"""The run lifecycle every training loop shares: PPO, recurrent PPO, batched seeds and PPO for LMs.

A loop supplies what is its own (an ``iterate(i)`` that does one rollout and one update, and a
``capture(i)`` that says what a checkpoint holds); this module does the rest, once:

- run naming and seeding (:func:`default_run_name`, :func:`seed_everything`);
- the run folder: one owner (a lock), no new run over another, a lineage per resume
  (:func:`open_run_folder`, rlkit.runfolder);
- RNG state capture and restore for checkpoints (:func:`rng_state`, :func:`restore_rng_state`);
- SIGINT / SIGTERM: finish the current iteration, checkpoint, stop (:class:`StopSignals`);
- the non-finite guard: a NaN or inf anywhere stops the run with one message format that names
  the quantity, the iteration, the step and the last good checkpoint (:class:`NonFiniteError`,
  exit code 3 in the CLI);
- periodic and final checkpoints (:meth:`Lifecycle.run`);
- callbacks, called after every iteration, that can stop the run by returning False.

It knows no algorithm: it moves state in and out of files and processes, and calls the hooks
it is given.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rlkit.checkpoint import save_checkpoint
from rlkit.runfolder import RunFolder, check_name, claim_new, claim_resumed


class NonFiniteError(RuntimeError):
    """A NaN or inf appeared; the message names the quantity, the iteration and the last good checkpoint."""


def check_finite(name: str, tensor: Tensor) -> None:
    if not torch.isfinite(tensor).all():
        raise NonFiniteError(f"non-finite {name}")


def check_finite_parameters(module: torch.nn.Module) -> None:
    """The weights after an update: a step from finite gradients can still overflow."""
    for name, parameter in module.named_parameters():
        check_finite(f"parameter {name}", parameter)


SEED_RANGE = 2**32
"""seeds are in [0, 2**32): numpy's legacy seeding (and so gymnasium's) takes no other"""


def check_seed(seed: object, key: str = "seed") -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < SEED_RANGE:
        raise ValueError(f"{key} must be an integer in [0, 2**32), got {seed!r}")


def memory_bytes() -> int | None:
    """This machine's physical memory (None where it cannot be asked)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return None


def check_memory(what: str, needed: int) -> None:
    """Refuse, before allocating, a buffer estimated larger than the machine's memory."""
    total = memory_bytes()
    if total is not None and needed > total:
        raise ValueError(f"{what} needs about {needed / 2**30:,.1f} GiB, more than this machine's "
                         f"{total / 2**30:,.1f} GiB: lower num_envs or num_steps")


def check_run_settings(cfg: Any) -> None:
    """What every loop's config must satisfy before any work: seeds in range, a usable exp_name,
    rollout sizes that fit in memory (a lower bound: 32 bytes a sample, 20 kB an env)."""
    check_seed(cfg.seed)
    if hasattr(cfg, "eval_seed"):
        check_seed(cfg.eval_seed, "eval_seed")
    try:
        check_name(cfg.exp_name, "exp_name")
    except ValueError as error:
        raise ValueError(str(error)) from None
    run_dir = getattr(cfg, "run_dir", "runs")
    if not isinstance(run_dir, str) or not run_dir or "\0" in run_dir:
        raise ValueError(f"run_dir must be a folder path, got {run_dir!r}")
    num_envs, num_steps = getattr(cfg, "num_envs", 1), getattr(cfg, "num_steps", 1)
    check_memory(f"the rollout of num_envs x num_steps = {num_envs:,} x {num_steps:,}",
                 num_envs * num_steps * 32 + num_envs * 20_000)


def seed_everything(seed: int, torch_deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic


def default_run_name(label: str, exp_name: str, seed: int | str) -> str:
    """``<label>__<exp_name>__<seed>__<unix time>``, the label's slashes made safe for a folder name."""
    check_name(exp_name, "exp_name")
    return f"{label.replace('/', '_')}__{exp_name}__{seed}__{int(time.time())}"


def open_run_folder(run_dir: str, resume_from: str | None = None, saved: dict | None = None, new_name: str | None = None,
                    new_folder: bool = False, enabled: bool = True, if_exists: str | None = None,
                    **hints: str | None) -> RunFolder:
    """Claim the run folder before anything is written to it (rlkit.runfolder): locked for this process;
    a new run refuses a folder that holds another run (``new_folder``, or a generated name: the next
    free ``<name>-k``); a resume from ``resume_from`` (a checkpoint folder of the run, with its
    ``saved`` state) checks the metrics offset and, from an older checkpoint, starts a new lineage.
    ``if_exists`` overrides that choice (rlkit.runfolder.claim_new: refuse, number or abandon).
    Leftover temporary folders are removed.  ``hints``: claim_new's resume_command / new_folder_flag
    (what a refusal suggests; rlkit rlhf's differ).  ``folder.notes`` are for the run's log; the caller
    releases the lock when the run's last file is written (the OS does when the process ends)."""
    if resume_from is not None:
        return claim_resumed(run_dir, resume_from, (saved or {}).get("metrics_offset", 0), enabled=enabled)
    if new_name is not None:
        check_name(new_name, "run name")
    if if_exists is None:
        if_exists = "number" if new_folder or new_name is None else "refuse"
    return claim_new(run_dir, if_exists=if_exists, enabled=enabled, **hints)


def linear_lr(optimizer: torch.optim.Optimizer, iteration: int, num_iterations: int, learning_rate: float) -> None:
    """Anneal the learning rate linearly from its initial value at iteration 1 towards 0 [core 4]."""
    optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / num_iterations) * learning_rate


# ---------------------------------------------------------------------------------
# RNG state (for checkpoints: JSON for python/numpy, tensors for torch)
# ---------------------------------------------------------------------------------


def rng_state(device: torch.device, generators: dict[str, torch.Generator] | None = None) -> tuple[dict, dict[str, Tensor]]:
    """(JSON-able python/numpy states, tensors: torch global, CUDA, and each named generator)."""
    tensors = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["cuda"] = torch.cuda.get_rng_state(device)
    for name, generator in (generators or {}).items():
        tensors[name] = generator.get_state()
    return {"python_rng": random.getstate(), "numpy_rng": np.random.get_state()}, tensors


def restore_rng_state(state: dict, tensors: dict[str, Tensor], device: torch.device,
                      generators: dict[str, torch.Generator] | None = None) -> None:
    torch.set_rng_state(tensors["torch"])
    if device.type == "cuda" and "cuda" in tensors:
        torch.cuda.set_rng_state(tensors["cuda"], device)
    for name, generator in (generators or {}).items():
        generator.set_state(tensors[name])
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy_rng"]))


# ---------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------


class StopSignals:
    """While active, SIGINT / SIGTERM set ``self.signal`` (the loop ends after the current iteration);
    a second SIGINT aborts at once.  Outside the main thread it installs nothing."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict = {}

    def _request_stop(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._request_stop)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


# ---------------------------------------------------------------------------------
# Callbacks
# ---------------------------------------------------------------------------------


class Callback:
    """Hooks a user (or a tracker, or a hyperparameter search) attaches to a run.

    ``on_rollout`` runs after each rollout, ``on_update`` after every iteration with its number and
    metrics, ``on_eval`` after each periodic evaluation with its result; returning False from any
    of them ends training after that iteration (it is checkpointed like a signal stop, without the
    exit code, and the checkpoint says so: a resume trains on only when given more steps).
    ``run.context`` holds the run's objects: ``agent``, ``envs``, ``logger``, ``config``, ``cursor`` (the step count), ``capture`` (iteration -> checkpoint payload); batched seeds hold, instead
    of ``agent``, ``params`` (every seed's parameters stacked) and per seed ``seed_envs``, ``loggers``,
    ``configs`` and ``seeds``.
    """

    def on_start(self, run: Lifecycle) -> None:
        pass

    def on_rollout(self, run: Lifecycle, iteration: int) -> bool | None:
        return True

    def on_eval(self, run: Lifecycle, iteration: int, result: dict) -> bool | None:
        return True

    def on_update(self, run: Lifecycle, iteration: int, stats: dict[str, float]) -> bool | None:
        return True

    def on_end(self, run: Lifecycle) -> None:
        pass


# ---------------------------------------------------------------------------------
# The lifecycle
# ---------------------------------------------------------------------------------

Capture = Callable[[int], tuple[dict[str, dict[str, Tensor]], dict[str, Any]]]
"""iteration -> (tensor files by name, JSON state) of a checkpoint at that iteration"""


@dataclass
class Lifecycle:
    """One run's checkpointing, stopping and guarding around a loop's iterations.

    ``run_dirs``: where checkpoints go (one per seed for batched seeds: ``capture`` then returns
    one (files, state) per folder, as a list); ``enabled=False`` writes nothing.
    """

    run_dirs: list[str]
    num_iterations: int
    checkpoint_interval: int = 10
    keep_checkpoints: int = 3
    enabled: bool = True
    last_checkpoint: str | None = None
    callbacks: list[Callback] = field(default_factory=list)
    stop: StopSignals = field(default_factory=StopSignals)
    stopped_by_callback: bool = False
    iteration: int = 0
    context: dict = field(default_factory=dict)
    updates_run: int = 0
    folders: list[RunFolder] = field(default_factory=list)
    """the claimed run folders (rlkit.runfolder), marked in use while the iterations run"""

    @property
    def interrupted(self) -> int | None:
        return self.stop.signal

    def emit(self, hook: str, *args) -> None:
        """Call ``hook`` of every callback; a False answer stops the run after this iteration."""
        for callback in self.callbacks:
            if getattr(callback, hook)(self, self.iteration, *args) is False:
                self.stopped_by_callback = True

    def save(self, iteration: int, capture: Callable) -> str | None:
        if not self.enabled:
            return None
        captured = capture(iteration)
        if not isinstance(captured, list):
            captured = [captured]
        # a stop a callback asked for (stop_at_return, say) ends the run: a resume without more steps trains nothing
        stopped = {"stopped_by_callback": True} if self.stopped_by_callback else {}
        paths = [save_checkpoint(run_dir, iteration, files, {**state, **stopped}, keep=self.keep_checkpoints)
                 for run_dir, (files, state) in zip(self.run_dirs, captured)]
        for logger in self.context.get("loggers") or [self.context.get("logger")]:  # what a resume keeps, sent out
            if logger is not None and hasattr(logger, "flush"):
                logger.flush()
        self.last_checkpoint = paths[0]
        return paths[0]

    def run(self, start_iteration: int, iterate: Callable[[int], dict[str, float]], capture: Callable,
            where: Callable[[], str] = lambda: "") -> int:
        """Iterations ``start_iteration .. num_iterations``: each ``iterate(i)`` under the non-finite guard,
        then the callbacks, then a checkpoint when due, at the end, or when stopping.  Returns the last
        iteration run."""
        last = start_iteration - 1
        for folder in self.folders:
            if folder.lock is not None:
                folder.lock.running = True
        try:
            return self._run(start_iteration, iterate, capture, where, last)
        finally:
            for folder in self.folders:
                if folder.lock is not None:
                    folder.lock.running = False

    def _run(self, start_iteration: int, iterate: Callable, capture: Callable, where: Callable[[], str], last: int) -> int:
        with self.stop:
            for callback in self.callbacks:
                callback.on_start(self)
            for iteration in range(start_iteration, self.num_iterations + 1):
                self.iteration = iteration
                try:
                    stats = iterate(iteration)
                except NonFiniteError as error:
                    good = f"last good checkpoint: {self.last_checkpoint}" if self.last_checkpoint else \
                        "no checkpoint was written yet"
                    raise NonFiniteError(f"{error} at update {iteration}{where()}; {good}") from None
                last = iteration
                self.updates_run += 1
                self.emit("on_update", stats)
                due = self.checkpoint_interval and iteration % self.checkpoint_interval == 0
                stopping = self.stop.signal is not None or self.stopped_by_callback
                if due or iteration == self.num_iterations or stopping:
                    self.save(iteration, capture)
                if stopping:
                    break
            for callback in self.callbacks:
                callback.on_end(self)
        return last
