"""Multi-seed launcher: RECIPE x env ids x seeds, one process per run.

Each run is the plain CLI command (``rlkit train RECIPE --seed S ...``) in its own
process, writing to ``OUT/<env>/seed_<S>/`` (``launch.json`` there records the
command) with its log beside it.  A run that finished has a ``summary.json`` and is
skipped on the next launch (resume); a ``rlkit train`` run that did not finish
but wrote a checkpoint continues from it (``rlkit train --resume``); any other
unfinished run starts again from scratch (its stale folder is removed first:
``metrics.jsonl`` is appended to, so two attempts would mix); a run that fails is
reported and the others go on.
Before anything runs, each existing run folder's saved ``config.json`` is compared with the config the
launch asks for (:func:`config_changes`; the device, folder and logging keys aside): a finished run made
with another config is not skipped but moved aside to ``seed_<S>.replaced-<time>/`` (which ``rlkit
report`` does not read) and trained again, and so is a resumable one (resuming would continue the old
config); with ``--refuse-changed`` the launch stops instead, in one line naming the differing keys.
``--devices cuda:0 cuda:1`` assigns devices round-robin.  ``--backend ray`` hands
the same commands to a Ray cluster (``RAY_ADDRESS``, or a local Ray started here
with ``--workers`` CPUs), so scaling out uses an existing engine.  On a multi-node
cluster every node needs rlkit installed and OUT on a shared filesystem (the
driver checks ``summary.json``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from rlkit.config import ConfigError, read_recipe

RECIPE_COMMANDS = {"ppo": "train", "ppo_lstm": "train", "rlhf": "rlhf"}
"""Recipe table -> the rlkit subcommand that runs it."""

CONFIG_CLASSES = {"ppo": ("rlkit.ppo", "PPOConfig"), "ppo_lstm": ("rlkit.ppo_lstm", "RecurrentPPOConfig"),
                  "rlhf": ("rlkit.rlhf.config", "RLHFConfig")}
"""Recipe table -> its config class (to compare a saved run's config with the requested one)."""

NOT_COMPARED = {"run_dir", "device", "torch_threads", "log_interval", "checkpoint_interval", "keep_checkpoints",
                "track", "track_project", "new_folder", "save_checkpoint", "cache_dir", "artifacts_dir"}
"""Keys that say where and how a run is kept, not what it learns: a change of these reuses the run."""

LAUNCHER_KEYS = {"seed": "--seeds", "device": "--devices", "run_dir": "--out", "run_name": "--out", "env_id": "--env-ids"}
"""Keys the launcher sets per run; an override after ``--`` would silently collapse the runs."""


@dataclass
class RunSpec:
    recipe: str
    env_id: str | None
    seed: int
    device: str
    run_dir: str
    overrides: list[str]
    subcommand: str = "train"
    """rlkit subcommand for the recipe's table (resolved once, at planning time)"""
    label: str = "task"
    """env id shown in messages (the recipe's own when no --env-ids were given)"""
    cwd: str | None = None
    """working directory of the run (the launcher's), so relative paths in recipes resolve the same"""

    @property
    def name(self) -> str:
        return f"{self.label}/seed_{self.seed}"

    @property
    def log_path(self) -> str:
        return self.run_dir + ".log"

    @property
    def finished(self) -> bool:
        return os.path.isfile(os.path.join(self.run_dir, "summary.json"))

    @property
    def resumable(self) -> bool:
        """An unfinished run (``rlkit train`` or ``rlkit rlhf``) with a complete checkpoint
        (``checkpoints/update_<k>/state.json``)."""
        folder = os.path.join(self.run_dir, "checkpoints")
        if self.subcommand not in ("train", "rlhf") or self.finished or not os.path.isdir(folder):
            return False
        return any(n.startswith("update_") and n[7:].isdigit() and os.path.isfile(os.path.join(folder, n, "state.json"))
                   for n in os.listdir(folder))

    def requested_config(self) -> dict:
        """The validated config this run is asked for (recipe + overrides + the launcher's keys), as a dict."""
        import argparse
        import importlib

        from rlkit.config import add_config_arguments, config_from_dict, parse_overrides

        table, values, source = read_recipe(self.recipe)
        module, name = CONFIG_CLASSES[table]
        cls = getattr(importlib.import_module(module), name)
        parser = argparse.ArgumentParser(prog="rlkit bench --")
        add_config_arguments(parser, cls, values)
        _, extra = parse_overrides(parser, cls, self.overrides)
        # (not the device: it is checked where the run starts, which may be another machine, and not compared)
        launcher = {"seed": self.seed, "run_dir": os.path.dirname(self.run_dir)}
        if self.env_id is not None:
            launcher["env_id"] = self.env_id
        cfg = config_from_dict(cls, {**values, **extra, **launcher}, source=f"{source} + command line")
        return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if f.init}

    def config_changes(self) -> list[tuple[str, object, object]]:
        """(key, saved, requested) for each key where the existing run's config.json differs from the request
        (a key the saved config lacks, written by an older rlkit, counts as its default); [] without a run."""
        path = os.path.join(self.run_dir, "config.json")
        if not os.path.isfile(path):
            return []
        with open(path) as f:
            saved = json.load(f)
        requested = self.requested_config()
        table, _, _ = read_recipe(self.recipe)
        module, name = CONFIG_CLASSES[table]
        import importlib

        defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                    for f in dataclasses.fields(getattr(importlib.import_module(module), name)) if f.init}
        if table == "rlhf":  # an RLHF run saves its paths absolute (resumable from anywhere); the recipe's are relative
            from rlkit.rlhf.ppo_lm import absolute_paths

            requested = {**requested, **absolute_paths(requested, self.cwd or os.getcwd())}
        else:  # the same network written two ways (an older rlkit's shared_network = false / hidden_size = 64)
            from rlkit.ppo import saved_config_values

            saved, requested = saved_config_values(saved), saved_config_values(requested)
        changes = []
        for key, value in requested.items():
            if key in NOT_COMPARED:
                continue
            old = saved.get(key, defaults.get(key))
            if json.loads(json.dumps(old)) != json.loads(json.dumps(value)):  # tuples vs lists, as JSON has them
                changes.append((key, old, value))
        return changes

    def command(self, resume: bool = False) -> list[str]:
        """The argv of the run; ``sys.executable`` is evaluated where the run starts (a Ray worker, say).

        ``resume``: continue from the run's latest checkpoint (``rlkit train --resume``, its saved config).
        """
        if resume:  # on the device this launch assigns, which may not be the one the run started on
            return [sys.executable, "-m", "rlkit.cli", self.subcommand, "--resume", self.run_dir, "--device", self.device,
                    "--no-progress"]
        parent, name = os.path.split(self.run_dir)
        command = [sys.executable, "-m", "rlkit.cli", self.subcommand, self.recipe, "--seed", str(self.seed),
                   "--device", self.device, "--run_dir", parent, "--run-name", name, "--no-progress"]
        if self.env_id is not None:
            command += ["--env_id", self.env_id]
        return command + self.overrides


def _check_overrides(overrides: list[str]) -> None:
    for token in overrides:
        if token.startswith("--"):
            key = token[2:].split("=", 1)[0].replace("-", "_")
            if key in LAUNCHER_KEYS:
                raise ConfigError(f"--{key} is set per run by the launcher; use {LAUNCHER_KEYS[key]} instead")


def _unique(items):
    return list(dict.fromkeys(items))


def plan_runs(recipe: str, env_ids: list[str] | None, seeds: list[int], devices: list[str], out: str,
              overrides: list[str] | None = None) -> list[RunSpec]:
    """Every (env, seed) run, devices assigned round-robin.  Paths are made absolute here."""
    table, values, source = read_recipe(recipe)
    if table not in RECIPE_COMMANDS:
        raise ConfigError(f"{source}: no launcher for recipe table [{table}]")
    if env_ids and "env_id" not in values and table != "ppo":
        raise ConfigError(f"{source}: this recipe has no env_id, so --env-ids does not apply")
    if not seeds:
        raise ConfigError("give at least one seed")
    if not devices:
        raise ConfigError("give at least one device")
    overrides = list(overrides or [])
    _check_overrides(overrides)
    if recipe.endswith(".toml") or os.sep in recipe:
        recipe = os.path.abspath(recipe)  # the run may start in another directory (Ray)
    out, cwd = os.path.abspath(out), os.getcwd()
    envs = _unique(env_ids) if env_ids else [values.get("env_id")]
    runs = []
    for env_id in envs:
        label = env_id or values.get("task") or "task"
        for seed in _unique(seeds):
            device = devices[len(runs) % len(devices)]
            folder = os.path.join(out, label.replace("/", "_"), f"seed_{seed}")
            runs.append(RunSpec(recipe, env_id if env_ids else None, seed, device, folder, list(overrides),
                                subcommand=RECIPE_COMMANDS[table], label=label, cwd=cwd))
    return runs


def reconcile(runs: list[RunSpec], refuse: bool = False, echo=print) -> list[RunSpec]:
    """Move aside (or, with ``refuse``, refuse) every existing finished or resumable run whose saved config
    differs from the requested one; returns the runs moved aside."""
    moved = []
    for spec in runs:
        if not (spec.finished or spec.resumable):
            continue  # nothing to reuse: an unfinished run without a checkpoint starts afresh anyway
        changes = spec.config_changes()
        if not changes:
            continue
        listed = ", ".join(f"{key} {old!r} -> {new!r}" for key, old, new in changes)
        if refuse:
            raise ConfigError(f"{spec.name}: the run in {spec.run_dir} was made with another config ({listed}); "
                              "drop --refuse-changed to move it aside and train again, or use another --out")
        aside = f"{spec.run_dir}.replaced-{int(time.time())}"
        os.replace(spec.run_dir, aside)
        if os.path.isfile(spec.log_path):
            os.replace(spec.log_path, aside + ".log")
        echo(f"rlkit bench: {spec.name} was made with another config ({listed}): moved to {aside}, training again")
        moved.append(spec)
    return moved


_CHILDREN: set = set()
"""the runs' child processes now running (local backend), each in a session of its own: the launcher passes a
Ctrl-C (or SIGTERM) on to them exactly once (a second SIGINT would make a run abort without its checkpoint)"""
_STOPPING = threading.Event()
"""set by a Ctrl-C of the launcher: no run starts after it"""
_LOCK = threading.Lock()
"""the stop flag and the children set change together: no child starts unsignalled after a stop"""


class _Terminated(KeyboardInterrupt):
    """SIGTERM of the launcher, handled as its Ctrl-C (its runs get SIGTERM)."""


def _stop_children(signum: int) -> None:
    with _LOCK:
        _STOPPING.set()
        for child in list(_CHILDREN):
            if child.poll() is None:
                child.send_signal(signum)


def _run_local(spec: RunSpec) -> tuple[RunSpec, int, float]:
    """Run one spec in a child process; never raises (a launcher error is exit code -1 and goes to the log)."""
    start = time.time()
    if _STOPPING.is_set():
        return spec, 130, 0.0
    try:
        resume = spec.resumable
        if os.path.isdir(spec.run_dir) and not spec.finished and not resume:
            shutil.rmtree(spec.run_dir)  # an earlier attempt died before a checkpoint: start clean (metrics.jsonl appends)
        os.makedirs(spec.run_dir, exist_ok=True)
        command = spec.command(resume)
        with open(os.path.join(spec.run_dir, "launch.json"), "w") as f:  # names the run even if it dies at once
            json.dump({"env_id": spec.label, "seed": spec.seed, "device": spec.device, "command": command}, f, indent=2)
        with open(spec.log_path, "a" if resume else "w") as log:
            log.write(f"{'resuming from the latest checkpoint: ' if resume else ''}{' '.join(command)}\n\n")
            log.flush()
            cwd = spec.cwd if spec.cwd and os.path.isdir(spec.cwd) else None
            with _LOCK:
                if _STOPPING.is_set():
                    return spec, 130, 0.0
                child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
                _CHILDREN.add(child)
            try:
                code = child.wait()
            finally:
                _CHILDREN.discard(child)
    except Exception:  # noqa: BLE001 - one broken run must not stop the others
        code = -1
        try:
            with open(spec.log_path, "a") as log:
                log.write(f"\nrlkit bench: could not run {spec.name}:\n{traceback.format_exc()}")
        except OSError:
            pass
    return spec, code, time.time() - start


def _run_ray(specs: list[RunSpec], on_done, workers: int = 1) -> None:
    """Submit every spec as a Ray task (1 CPU, 1 GPU for cuda runs); results arrive as they finish.

    With RAY_ADDRESS set (or Ray already initialised in this process) the runs go to that
    cluster; otherwise a local Ray is started with ``workers`` CPUs and shut down afterwards.
    Inside a task Ray sets CUDA_VISIBLE_DEVICES to the GPU it granted, so a cuda run gets
    device "cuda" there (Ray, not the round-robin, picks the GPU).
    """
    import ray

    started_here = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False)
        started_here = True
    try:
        remote_run = ray.remote(_run_local)
        pending = {}
        for spec in specs:
            on_gpu = spec.device.startswith("cuda")
            task_spec = dataclasses.replace(spec, device="cuda") if on_gpu else spec
            ref = remote_run.options(num_cpus=1, num_gpus=1 if on_gpu else 0).remote(task_spec)
            pending[ref] = spec
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                spec = pending.pop(ref)
                try:
                    _, code, seconds = ray.get(ref)
                except Exception as error:  # noqa: BLE001 - a lost worker fails this run, not the launch
                    print(f"rlkit bench: Ray task for {spec.name} failed: {error}", file=sys.stderr)
                    code, seconds = -1, 0.0
                on_done(spec, code, seconds)
    finally:
        if started_here:
            ray.shutdown()


def launch(runs: list[RunSpec], workers: int = 1, backend: str = "local", progress: bool = True) -> dict[str, list[RunSpec]]:
    """Run what is not finished yet; returns {"skipped", "finished", "failed"} lists."""
    from tqdm.auto import tqdm

    if backend not in ("local", "ray"):
        raise ConfigError(f"backend must be local or ray, got {backend!r}")
    todo = [r for r in runs if not r.finished]
    outcome: dict[str, list[RunSpec]] = {"skipped": [r for r in runs if r.finished], "finished": [], "failed": []}
    bar = tqdm(total=len(todo), unit="run", disable=not progress)

    def on_done(spec: RunSpec, code: int, seconds: float) -> None:
        ok = code == 0 and spec.finished
        outcome["finished" if ok else "failed"].append(spec)
        bar.write(f"{'done  ' if ok else 'FAILED'} {spec.name} ({seconds:.0f} s)"
                  f"{'' if ok else f'  exit {code}, log: {spec.log_path}'}")
        bar.update(1)

    try:
        if backend == "ray" and todo:  # (nothing to do: no Ray to start)
            _run_ray(todo, on_done, workers)
        elif todo:
            _STOPPING.clear()
            pool = ThreadPoolExecutor(max_workers=max(1, workers))
            previous = None
            if threading.current_thread() is threading.main_thread():
                def terminate(signum, frame):
                    raise _Terminated()

                previous = signal.signal(signal.SIGTERM, terminate)
            try:
                for future in as_completed([pool.submit(_run_local, spec) for spec in todo]):
                    on_done(*future.result())
            except KeyboardInterrupt as stop:  # no run starts after a Ctrl-C; the running ones checkpoint and stop
                _stop_children(signal.SIGTERM if isinstance(stop, _Terminated) else signal.SIGINT)
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
                if previous is not None:
                    signal.signal(signal.SIGTERM, previous)
    finally:
        bar.close()
    return outcome
