"""Multi-seed launcher: RECIPE x env ids x seeds, one process per run.

Each run is the plain CLI command (``rlkit train RECIPE --seed S ...``) in its own
process, writing to ``OUT/<env>/seed_<S>/`` with its log beside it.  A run that
finished has a ``summary.json`` and is skipped on the next launch (resume); a run
that fails is reported and the others go on.  ``--devices cuda:0 cuda:1`` assigns
devices round-robin.  ``--backend ray`` hands the same commands to a Ray cluster
(``RAY_ADDRESS``, or a local Ray started here), so scaling out uses an existing
engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from rlkit.config import ConfigError, read_recipe

RECIPE_COMMANDS = {"ppo": "train", "rlhf": "rlhf"}
"""Recipe table -> the rlkit subcommand that runs it."""


@dataclass
class RunSpec:
    recipe: str
    env_id: str | None
    seed: int
    device: str
    run_dir: str
    overrides: list[str]

    @property
    def name(self) -> str:
        return f"{self.env_id or 'task'}/seed_{self.seed}"

    @property
    def finished(self) -> bool:
        return os.path.isfile(os.path.join(self.run_dir, "summary.json"))

    def command(self) -> list[str]:
        table, _, _ = read_recipe(self.recipe)
        parent, name = os.path.split(self.run_dir)
        command = [sys.executable, "-m", "rlkit.cli", RECIPE_COMMANDS[table], self.recipe, "--seed", str(self.seed),
                   "--device", self.device, "--run_dir", parent, "--run-name", name, "--no-progress"]
        if self.env_id is not None:
            command += ["--env_id", self.env_id]
        return command + self.overrides


def plan_runs(recipe: str, env_ids: list[str] | None, seeds: list[int], devices: list[str], out: str,
              overrides: list[str] | None = None) -> list[RunSpec]:
    """Every (env, seed) run, devices assigned round-robin."""
    table, values, source = read_recipe(recipe)
    if table not in RECIPE_COMMANDS:
        raise ConfigError(f"{source}: no launcher for recipe table [{table}]")
    if env_ids and "env_id" not in values and table != "ppo":
        raise ConfigError(f"{source}: this recipe has no env_id, so --env-ids does not apply")
    if not seeds:
        raise ConfigError("give at least one seed")
    envs = env_ids or [values.get("env_id")]
    runs = []
    for env_id in envs:
        for seed in seeds:
            device = devices[len(runs) % len(devices)]
            folder = os.path.join(out, (env_id or "task").replace("/", "_"), f"seed_{seed}")
            runs.append(RunSpec(recipe, env_id if env_ids else None, seed, device, folder, list(overrides or [])))
    return runs


def _run_local(spec: RunSpec) -> tuple[RunSpec, int, float]:
    os.makedirs(spec.run_dir, exist_ok=True)
    start = time.time()
    with open(spec.run_dir + ".log", "w") as log:
        code = subprocess.run(spec.command(), stdout=log, stderr=subprocess.STDOUT).returncode
    return spec, code, time.time() - start


def _run_ray(specs: list[RunSpec], on_done) -> None:
    import ray

    ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True, log_to_driver=False)

    @ray.remote
    def remote_run(spec: RunSpec) -> tuple[RunSpec, int, float]:
        return _run_local(spec)

    pending = {}
    for spec in specs:
        gpus = 1 if spec.device.startswith("cuda") else 0
        pending[remote_run.options(num_gpus=gpus, num_cpus=1).remote(spec)] = spec
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            pending.pop(ref)
            on_done(*ray.get(ref))


def launch(runs: list[RunSpec], workers: int = 1, backend: str = "local", progress: bool = True) -> dict[str, list[RunSpec]]:
    """Run what is not finished yet; returns {"skipped", "finished", "failed"} lists."""
    from tqdm.auto import tqdm

    todo = [r for r in runs if not r.finished]
    outcome: dict[str, list[RunSpec]] = {"skipped": [r for r in runs if r.finished], "finished": [], "failed": []}
    bar = tqdm(total=len(todo), unit="run", disable=not progress)

    def on_done(spec: RunSpec, code: int, seconds: float) -> None:
        ok = code == 0 and spec.finished
        outcome["finished" if ok else "failed"].append(spec)
        bar.write(f"{'done  ' if ok else 'FAILED'} {spec.name} ({seconds:.0f} s){'' if ok else f'  exit {code}, log: {spec.run_dir}.log'}")
        bar.update(1)

    if backend == "ray":
        _run_ray(todo, on_done)
    elif backend == "local":
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for future in as_completed([pool.submit(_run_local, spec) for spec in todo]):
                on_done(*future.result())
    else:
        raise ConfigError(f"backend must be local or ray, got {backend!r}")
    bar.close()
    return outcome
