"""``rlkit tune RECIPE --trials N``: hyperparameter search with Optuna, fed by the periodic evaluation.

Each trial samples a config from the recipe's search space (TPE), trains it on each of ``--seeds`` in
turn, and scores it by the mean, over the seeds, of the final evaluation's mean return
(``eval_episodes`` episodes on the separate evaluation env, deterministic policy).  A callback on the run
lifecycle (:class:`PruneOnEval`) reports every periodic evaluation to Optuna; when the median pruner
says the trial is worse than the median of the earlier trials at the same point of the budget, the run
stops after that update and the trial is recorded as pruned.

The study lives in ``--storage`` (default ``sqlite:///<study-name>.db`` in the working directory):

- re-running the command continues the study (``load_if_exists``) until it holds ``--trials`` finished
  (complete, pruned or failed by a non-finite value) trials; a trial stopped by Ctrl-C / SIGTERM is not
  counted and is replaced;
- several processes running the same command share the study (RDB storage with heartbeats: a trial of
  a killed process is failed after ``grace_period`` seconds and not counted);
- every run of the command writes the best trial as a recipe, ``<study-name>-best.toml`` by default,
  which ``rlkit train`` runs as it is, and prints the top trials.

Search spaces (``rlkit tune RECIPE --show-space`` prints the one a recipe gets, as TOML): the keys of
:data:`COMMON_SPACE` for every recipe, plus ``num_steps`` / ``num_minibatches`` choices from
:data:`RECIPE_SPACES` for the shipped recipes, or, for any other recipe, half / same / twice its own
values.  ``--space FILE.toml`` merges a ``[space]`` table over it: a key given as a table
(``{low, high, log}`` or ``{choices = [...]}``) is searched, a key given as a plain value is fixed.
A sampled ``num_minibatches`` that does not divide ``num_envs * num_steps`` becomes the nearest divisor.

RLHF recipes (``[rlhf]``) are tuned the same way, with :func:`rlhf_space` (learning rate within 10x of the
recipe's, ``kl_coef``, ``cliprange``, ``ppo_epochs``, ``num_minibatches``) and the held-out evaluation
(``eval_samples`` prompts, every ``num_updates / evals`` updates) as the pruner's reports. The objective is
the gold reward where the task has a gold judge (else the proxy score; ``--objective`` picks), and with
``--kl-budget K`` the best value among the run's evaluations whose KL(pi || ref) is at most K nats per
sequence (the start, at KL 0, always is): the gold a setting reaches within that KL.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import warnings
from typing import Any

from rlkit.config import ConfigError, add_config_arguments, config_from_dict, parse_overrides, read_recipe, tomllib
from rlkit.runtime import Callback

INSTALL = 'pip install "rlkit[tune]"'

CONFIG_TABLES = {"ppo": ("rlkit.ppo", "PPOConfig"), "ppo_lstm": ("rlkit.ppo_lstm", "RecurrentPPOConfig"),
                 "rlhf": ("rlkit.rlhf.ppo_lm", "RLHFConfig")}
"""The recipe tables this command tunes -> (module with train(), config class)."""

COMMON_SPACE: dict[str, dict] = {
    "learning_rate": {"low": 1e-5, "high": 3e-3, "log": True},
    "update_epochs": {"low": 3, "high": 15},
    "gamma": {"choices": [0.9, 0.95, 0.98, 0.99, 0.995, 0.999]},
    "gae_lambda": {"choices": [0.8, 0.9, 0.92, 0.95, 0.98, 0.99]},
    "clip_coef": {"choices": [0.1, 0.2, 0.3]},
    "ent_coef": {"low": 1e-8, "high": 1e-2, "log": True},
    "hidden_size": {"choices": [64, 128, 256]},
}
"""Searched for every recipe (RL-Zoo's PPO ranges, narrowed a little)."""

RECIPE_SPACES: dict[str, dict[str, dict]] = {
    "pendulum": {"num_steps": {"choices": [100, 200, 400]}, "num_minibatches": {"choices": [8, 16, 25, 50]}},
    "cartpole": {"num_steps": {"choices": [64, 128, 256, 512]}, "num_minibatches": {"choices": [2, 4, 8, 16]}},
    "mujoco": {"num_steps": {"choices": [512, 1024, 2048, 4096]}, "num_minibatches": {"choices": [8, 16, 32, 64]}},
    "atari": {"num_steps": {"choices": [64, 128, 256]}, "num_minibatches": {"choices": [2, 4, 8]},
              "hidden_size": None},  # the Nature CNN has no hidden_size: not searched
}
"""Rollout and minibatch choices of the shipped recipes (every num_minibatches divides every batch);
None removes a key of COMMON_SPACE."""

TRIAL_SETTINGS = {
    "ppo": {"exp_name": "the trial's own name", "eval_deterministic": "trials are scored on deterministic evaluations",
            "checkpoint_interval": "trials keep no checkpoints", "stop_at_return": "a trial runs its whole budget"},
    "rlhf": {"checkpoint_interval": "trials keep no checkpoints"},
}
"""Settings TuneSetup.config fixes for every trial, and why (an override of one is refused)."""

DEFAULT_STUDY = "{recipe}-tune"
COUNTED_FAILURE = "rlkit_error"  # user attribute of a trial that failed for a reason of its own (counted)


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise ImportError(f"rlkit tune needs optuna: {INSTALL}") from None
    return optuna


# ---------------------------------------------------------------------------------
# Search spaces
# ---------------------------------------------------------------------------------


def rlhf_space(values: dict) -> dict[str, Any]:
    """The search space of an RLHF recipe: learning rate within 10x of the recipe's (log), beta, the clip range,
    the epochs and minibatches of each update."""
    lr = float(values.get("learning_rate", 1e-5))
    return {"learning_rate": {"low": lr / 10, "high": lr * 10, "log": True},
            "kl_coef": {"low": 0.01, "high": 0.3, "log": True},
            "cliprange": {"choices": [0.1, 0.2, 0.3]},
            "ppo_epochs": {"choices": [1, 2, 4]},
            "num_minibatches": {"choices": [1, 2, 4]}}


def default_space(recipe: str, values: dict, table: str = "ppo") -> dict[str, Any]:
    """The documented search space of a recipe (see the module docstring)."""
    if table == "rlhf":
        return rlhf_space(values)
    name = os.path.splitext(os.path.basename(recipe))[0]
    space: dict[str, Any] = dict(COMMON_SPACE)
    if name in RECIPE_SPACES:
        space.update(RECIPE_SPACES[name])
        space = {k: v for k, v in space.items() if v is not None}
    else:
        steps, minibatches = int(values.get("num_steps", 2048)), int(values.get("num_minibatches", 32))
        space["num_steps"] = {"choices": sorted({max(1, steps // 2), steps, steps * 2})}
        space["num_minibatches"] = {"choices": sorted({max(1, minibatches // 2), minibatches, minibatches * 2})}
    if "hidden_size" in space and recipe_network(values) in ("nature_cnn", "small_cnn"):
        del space["hidden_size"]  # their layers are fixed (rlkit.ppo.check_network_settings refuses it)
    return space


def recipe_network(values: dict) -> str | None:
    """The network a recipe's agent gets (``auto`` resolved on one env of it); None when the env cannot be built
    here (its trial then says why)."""
    from rlkit.envs import make_vector_env
    from rlkit.envs.atari import is_atari_id
    from rlkit.envs.sources import resolve_env_id
    from rlkit.networks import resolve_network

    network = values.get("network", "auto")
    if network != "auto":
        return network
    try:
        env_id = resolve_env_id(values.get("env_id", "CartPole-v1"), values.get("env_module", []))
        if is_atari_id(env_id):
            return "nature_cnn"
        envs = make_vector_env(env_id, 1, env_kwargs=values.get("env_kwargs"))
    except Exception:  # noqa: BLE001 - a bad env is the trial's error to report, not the space's
        return None
    try:
        return resolve_network(envs.single_observation_space)
    finally:
        envs.close()


def read_space(path: str) -> dict[str, Any]:
    """A ``[space]`` table (or top-level keys) of a TOML file."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"search space {path!r}: {error}") from None
    return data.get("space", data)


def check_space(space: dict[str, Any], cls: type, source: str) -> None:
    from rlkit.config import settable_fields, unknown_key_error

    valid = list(settable_fields(cls))
    for key, spec in space.items():
        if key not in valid:
            raise unknown_key_error(key, valid, source)
        if isinstance(spec, dict):
            allowed = {"choices"} if "choices" in spec else {"low", "high", "log"}
            if set(spec) - allowed:
                raise ConfigError(f"{source}: {key} has unknown field(s) {', '.join(sorted(set(spec) - allowed))}; a range "
                                  "takes low, high and log, a list takes choices")
            if "choices" in spec:
                if not isinstance(spec["choices"], list) or not spec["choices"]:
                    raise ConfigError(f"{source}: {key}.choices must be a non-empty list")
            elif not ("low" in spec and "high" in spec) or not all(
                    isinstance(spec[e], (int, float)) and not isinstance(spec[e], bool) for e in ("low", "high")) \
                    or not spec["low"] <= spec["high"]:
                raise ConfigError(f"{source}: {key} must be {{low = .., high = .., log = false}} with low <= high, "
                                  f"or {{choices = [...]}}, or a plain value (fixed)")
            elif spec.get("log") and spec["low"] <= 0:
                raise ConfigError(f"{source}: {key} is searched on a log scale, so low must be > 0, got {spec['low']}")


def suggest(trial, space: dict[str, Any]) -> dict[str, Any]:
    """One sample of the space: ints where low and high are ints, log scale where asked."""
    params = {}
    for key, spec in space.items():
        if not isinstance(spec, dict):
            params[key] = spec  # fixed
        elif "choices" in spec:
            params[key] = trial.suggest_categorical(key, spec["choices"])
        elif _is_int_range(spec):
            params[key] = trial.suggest_int(key, spec["low"], spec["high"], log=bool(spec.get("log", False)))
        else:
            params[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)))
    return params


def nearest_divisor(n: int, target: int) -> int:
    if n < 1:
        raise ConfigError(f"num_envs x num_steps (or batch_size) must be >= 1 to choose num_minibatches, got {n}")
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), -d))


# ---------------------------------------------------------------------------------
# The objective
# ---------------------------------------------------------------------------------


class PruneOnEval(Callback):
    """Reports each periodic evaluation to the trial; stops the run once the pruner says so.

    The step reported is the share of the trial's budget done (0-100 per seed, seed i from 100 i on), so
    trials with other batch sizes are compared at the same point of their budget.
    """

    def __init__(self, trial, seed_index: int, total_steps: int, rlhf: RLHFObjective | None = None):
        self.trial, self.seed_index, self.total_steps, self.rlhf = trial, seed_index, total_steps, rlhf
        self.pruned = False
        self.evaluations: list[dict] = []

    def on_eval(self, run, iteration: int, result: dict) -> None:
        if self.rlhf is None:
            done, value = run.context["cursor"].global_step / self.total_steps, float(result["mean"])
        else:  # RLHF: the budget is in updates; the value is the objective over the evaluations so far
            self.evaluations.append(result)
            done, value = iteration / self.total_steps, self.rlhf.value(self.evaluations)
        step = 100 * self.seed_index + min(100, round(100 * done))
        self.trial.report(value, step)
        if self.trial.should_prune():
            self.pruned = True

    def on_update(self, run, iteration: int, stats: dict) -> bool:
        return not self.pruned


@dataclasses.dataclass
class RLHFObjective:
    """What an RLHF trial scores: ``metric`` ('gold', or 'score' = the proxy reward; 'auto': gold where the
    evaluations have it) of the final evaluation, or with ``kl_budget`` the best one among the evaluations
    whose k1 KL(pi || ref) per sequence is at most the budget."""

    metric: str = "auto"
    kl_budget: float | None = None

    def value(self, evaluations: list[dict]) -> float:
        if not evaluations:
            raise ValueError("an RLHF trial has no evaluation")
        metric = self.metric if self.metric != "auto" else ("gold" if "gold" in evaluations[-1] else "score")
        if metric not in evaluations[-1]:
            raise ConfigError(f"--objective {metric}: the evaluations have no {metric!r} (this task has no gold "
                              f"judge; use --objective score)")
        if self.kl_budget is None:
            return float(evaluations[-1][metric])
        within = [e[metric] for e in evaluations if e.get("kl_k1", 0.0) <= self.kl_budget]
        return float(max(within)) if within else -math.inf


class TuneInterrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


NOT_SETTINGS = ("device", "torch_threads", "track", "track_project", "exp_name", "run_dir", "artifacts_dir", "cache_dir")
"""keys that do not change what a trial scores: a study may continue with other ones"""


@dataclasses.dataclass
class TuneSetup:
    recipe: str
    table: str
    values: dict
    """the recipe's values with the command-line overrides"""
    space: dict
    seeds: list[int]
    evals: int = 10
    eval_episodes: int = 5
    run_dir: str = "tune_runs"
    study_name: str = ""
    rlhf: RLHFObjective | None = None
    """set for [rlhf] recipes: what a trial scores"""

    def full_values(self) -> dict:
        """Every key's value in the recipe's config (its defaults where the recipe and the command line are silent)."""
        cls = self.config_class
        defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                    for f in dataclasses.fields(cls) if f.init}
        return {**{k: v for k, v in defaults.items() if v is not dataclasses.MISSING}, **self.values}

    def settings(self) -> dict:
        """What a trial's score depends on besides its sampled values: a study continues only with the same."""
        values = {k: v for k, v in self.values.items() if k not in NOT_SETTINGS}
        return json.loads(json.dumps({"values": values, "seeds": self.seeds, "evals": self.evals,
                                      "eval_episodes": self.eval_episodes, "table": self.table,
                                      "objective": None if self.rlhf is None else vars(self.rlhf)}, default=str))

    @property
    def config_class(self):
        module, cls = CONFIG_TABLES[self.table]
        return getattr(__import__(module, fromlist=[cls]), cls)

    @property
    def train(self):
        module, _ = CONFIG_TABLES[self.table]
        return __import__(module, fromlist=["train"]).train

    def config(self, params: dict, seed: int, trial_number: int):
        """The validated config of one seed of one trial (the tuning's own evaluation settings on top)."""
        values = {**self.values, **params}
        run_dir = os.path.join(self.run_dir, self.study_name, f"trial_{trial_number:03d}")
        source = f"rlkit tune {self.recipe}, trial {trial_number}"
        if self.table == "rlhf":
            if "num_minibatches" in values:
                values["num_minibatches"] = nearest_divisor(int(values.get("batch_size", 64)), int(values["num_minibatches"]))
            values.update(seed=seed, run_dir=run_dir, checkpoint_interval=0)
            cfg = config_from_dict(self.config_class, values, source=source)
            cfg.eval_interval = max(1, cfg.num_updates // self.evals)
            return cfg.validate(), values
        envs, steps = int(values.get("num_envs", 1)), int(values.get("num_steps", 2048))
        if "num_minibatches" in values:
            values["num_minibatches"] = nearest_divisor(envs * steps, int(values["num_minibatches"]))
        values.update(seed=seed, run_dir=run_dir, exp_name=f"{self.study_name}-t{trial_number}", eval_interval=1,
                      eval_episodes=self.eval_episodes, eval_deterministic=True, checkpoint_interval=0,
                      stop_at_return=None)
        cfg = config_from_dict(self.config_class, values, source=source)
        cfg.eval_interval = max(1, cfg.num_iterations // self.evals)
        return cfg.validate(), values

    def objective(self, trial) -> float:
        optuna = require_optuna()
        from rlkit.errors import RunFolderError
        from rlkit.runtime import NonFiniteError

        params = suggest(trial, self.space)
        scores = []
        for index, seed in enumerate(self.seeds):
            try:
                cfg, values = self.config(params, seed, trial.number)
            except ConfigError as error:
                trial.set_user_attr(COUNTED_FAILURE, f"invalid config: {error}")
                raise optuna.TrialPruned(f"invalid config: {error}") from None
            if index == 0:
                trial.set_user_attr("config", {k: v for k, v in values.items() if k in params or k == "num_minibatches"})
            budget = cfg.num_updates if self.rlhf is not None else cfg.num_iterations * cfg.batch_size
            prune = PruneOnEval(trial, index, budget, self.rlhf)
            try:
                result = self.train(cfg, run_name=f"seed_{seed}", progress=False, callbacks=[prune])
            except RunFolderError as error:
                if "already holds a run" not in str(error):  # in use by a live process: its own message says so
                    raise
                raise RunFolderError(f"{str(error).split(':')[0]}: that trial folder holds a run of an earlier study "
                                     f"named {self.study_name!r} (another --storage?): give this study another "
                                     "--study-name or --run-dir, or move the old folder away") from None
            except NonFiniteError as error:
                trial.set_user_attr(COUNTED_FAILURE, str(error).splitlines()[0])
                raise
            if result.interrupted is not None:
                trial.set_user_attr("interrupted", result.interrupted)
                raise TuneInterrupted(result.interrupted)
            if prune.pruned:
                trial.set_user_attr("pruned_at_seed", seed)
                raise optuna.TrialPruned()
            scores.append(self.rlhf.value(result.evaluations) if self.rlhf is not None
                          else result.evaluations[-1]["mean_return"])
            trial.set_user_attr("seed_returns", scores)
        return float(sum(scores) / len(scores))


# ---------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------


def recipe_params(space: dict[str, Any], values: dict) -> dict[str, Any]:
    """The recipe's own values of the searched keys, as a trial of the space: a value outside a range is moved to
    its nearest end (``ent_coef = 0`` -> the range's low), a key whose value is not among its choices is left out
    (the sampler draws it)."""
    params = {}
    for key, spec in space.items():
        if key not in values or not isinstance(spec, dict):
            continue
        value = values[key]
        if "choices" in spec:
            if value in spec["choices"]:
                params[key] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            clamped = min(max(value, spec["low"]), spec["high"])
            params[key] = round(clamped) if _is_int_range(spec) else float(clamped)  # as suggest() draws the key
    return params


def _is_int_range(spec: dict) -> bool:
    """A {low, high} range searched with suggest_int: both ends ints (not bools)."""
    return all(isinstance(spec[end], int) and not isinstance(spec[end], bool) for end in ("low", "high"))


def counted(trial) -> bool:
    """Finished trials: complete, pruned, or failed for a reason of their own (not a signal or a dead process)."""
    from optuna.trial import TrialState

    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and COUNTED_FAILURE in trial.user_attrs)


def open_study(study_name: str, storage: str | None, sampler_seed: int | None = None, pruner=None,
               startup_trials: int = 5, warmup: float = 0.3):
    """The study (created, or loaded when it exists): TPE (``startup_trials`` random trials first) and a
    median pruner that waits ``warmup`` of the first seed's budget."""
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # tune() prints one line per trial
    url = storage
    sampler = optuna.samplers.TPESampler(n_startup_trials=startup_trials, seed=sampler_seed)
    pruner = pruner or optuna.pruners.MedianPruner(n_startup_trials=min(3, startup_trials),
                                                   n_warmup_steps=int(round(100 * warmup)))
    for attempt in range(5):  # processes starting together race to create the tables and the study
        try:
            if url and url.startswith(("sqlite:", "postgresql:", "mysql:")):  # heartbeats: a dead process's trial fails
                engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=20, grace_period=60)
            return optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner,
                                       direction="maximize", load_if_exists=True)
        except Exception:  # noqa: BLE001 - sqlalchemy's OperationalError / IntegrityError of the race
            if attempt == 4:
                raise
            time.sleep(1.0 + attempt)


def tune(setup: TuneSetup, trials: int, storage: str | None = None, timeout: float | None = None,
         sampler_seed: int | None = None, pruner=None, best_path: str | None = None, progress: bool = True,
         startup_trials: int = 5, warmup: float = 0.3, start_from_recipe: bool = True, echo=print) -> dict:
    """Run the study until it holds ``trials`` finished trials (or ``timeout`` seconds pass); write the best
    recipe.  ``start_from_recipe``: a new study's first trial (trial 0) is the recipe's own values, so the best trial scores at least the recipe on the tuning objective and TPE knows a
    good point from the start.  Returns {'study', 'best_path', 'interrupted', 'finished', 'ran'}."""
    optuna = require_optuna()
    from tqdm.auto import tqdm

    study = open_study(setup.study_name, storage, sampler_seed, pruner, startup_trials, warmup)
    check_same_settings(study, setup)
    if sampler_seed is not None:  # a resumed study must not replay the first process's random draws
        study.sampler = optuna.samplers.TPESampler(n_startup_trials=startup_trials,
                                                   seed=sampler_seed + len(study.get_trials(deepcopy=False)))
    # Trial 0 draws the recipe's values rather than being enqueued: on SQLite two processes starting together
    # can both pop one enqueued trial (no row locks; Optuna #4002) and run it into the same trial folder,
    # while trial numbers themselves are unique.
    recipe = recipe_params(setup.space, setup.full_values()) if start_from_recipe else None
    if recipe is not None:
        study.sampler = RecipeFirstSampler(study.sampler, recipe)
    done = sum(counted(t) for t in study.get_trials(deepcopy=False))
    remaining = max(0, trials - done)
    bar = tqdm(total=trials, initial=done, unit="trial", disable=not progress, dynamic_ncols=True)
    ran, interrupted = 0, None
    start = time.time()

    def after_trial(study, trial) -> None:
        nonlocal ran
        ran += 1
        bar.update(1 if counted(trial) else 0)
        value = f"{trial.value:.2f}" if trial.state == optuna.trial.TrialState.COMPLETE else ""
        try:
            best = f"{study.best_value:.2f} (trial {study.best_trial.number})"
        except ValueError:
            best = "-"
        why = trial.user_attrs.get(COUNTED_FAILURE, "") if trial.state != optuna.trial.TrialState.COMPLETE else ""
        bar.write(f"trial {trial.number}: {trial.state.name.lower()}{' ' + value if value else ''} in "
                  f"{(trial.duration.total_seconds() if trial.duration else 0):.0f} s; best {best}{'; ' + why if why else ''}")
        # other processes' trials count too: stop once finished + running reach the target
        others = [t for t in study.get_trials(deepcopy=False)
                  if counted(t) or t.state == optuna.trial.TrialState.RUNNING]
        if len(others) >= trials:
            study.stop()

    if remaining:
        try:
            study.optimize(setup.objective if recipe is None else _marking_recipe_trial(setup.objective), n_trials=remaining, timeout=timeout, callbacks=[after_trial],
                           catch=(_non_finite(),))
        except TuneInterrupted as stop:
            interrupted = stop.signum
        finally:
            bar.close()
    else:
        bar.close()
    finished = [t for t in study.get_trials(deepcopy=False) if counted(t)]
    best_path = best_path or f"{setup.study_name}-best.toml"
    wrote = write_best_recipe(study, setup, best_path, storage)
    echo(summary_table(study, value=objective_text(setup) + ", mean over seeds"))
    echo(f"\n{len(finished)} of {trials} trials finished ({ran} run now, {time.time() - start:.0f} s); "
         f"study {setup.study_name!r} in {storage or 'memory'}")
    if interrupted is not None:
        echo(f"stopped by signal {interrupted}: re-run the same command to continue the study")
    if wrote:
        echo(f"best recipe: {os.path.abspath(best_path)}\n  rlkit {'rlhf' if setup.table == 'rlhf' else 'train'} {best_path}")
    return {"study": study, "best_path": best_path if wrote else None, "interrupted": interrupted,
            "finished": len(finished), "ran": ran}


class RecipeFirstSampler:
    """``base``, except that trial 0 of the study takes ``params`` (the recipe's values) and draws only the keys
    they lack: the study's first trial is the recipe, so the best trial scores at least the recipe."""

    def __init__(self, base, params: dict[str, Any]):
        self.base, self.params = base, dict(params)

    def infer_relative_search_space(self, study, trial):
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return {} if trial.number == 0 else self.base.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        if trial.number == 0 and param_name in self.params:
            return self.params[param_name]
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def __getattr__(self, name):  # before_trial, after_trial, reseed_rng, ... : the base sampler's
        return getattr(self.base, name)


def _marking_recipe_trial(objective):
    def marked(trial):
        if trial.number == 0:
            trial.set_user_attr("from_recipe", True)
        return objective(trial)

    return marked


def check_same_settings(study, setup: TuneSetup) -> None:
    """Record a new study's settings (recipe values with the overrides, seeds, evaluations); refuse to continue
    one with others: trials scored on other budgets or seeds are not comparable, and the best recipe would mix
    the best trial with the new command's settings."""
    now = setup.settings()
    before = study.user_attrs.get("rlkit_settings")
    if before is None:
        if study.get_trials(deepcopy=False):
            return  # made by an older rlkit: nothing recorded to compare
        study.set_user_attr("rlkit_settings", now)
        return
    differ = []
    for key in sorted(set(before) | set(now)):
        if key == "values":
            old, new = before.get(key) or {}, now.get(key) or {}
            differ += [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        elif before.get(key) != now.get(key):
            differ.append(f"{key} {before.get(key)!r} -> {now.get(key)!r}")
    if differ:
        raise ConfigError(f"study {setup.study_name!r} was made with other settings ({'; '.join(differ)}): its trials "
                          "would not be comparable; continue it with the same command, or start another study "
                          "(--study-name, or another --storage)")


def _non_finite():
    from rlkit.runtime import NonFiniteError

    return NonFiniteError


def summary_table(study, top: int = 5, value: str = "mean final eval return over seeds") -> str:
    """The ``top`` complete trials by value, then how many were pruned / failed."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)[:top]
    if not complete:
        return "no trial has completed yet"
    keys = list(complete[0].params)
    header = ["trial", "value", *keys]
    # what the trial trained with: num_minibatches is rounded to a divisor of the batch (user_attrs["config"])
    rows = [[str(t.number), f"{t.value:.2f}", *(_short(t.user_attrs.get("config", {}).get(k, t.params.get(k)))
                                                   for k in keys)] for t in complete]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    states = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    lines.append(f"({states[TrialState.COMPLETE]} complete, {states[TrialState.PRUNED]} pruned, "
                 f"{states[TrialState.FAIL]} failed; top {len(complete)} shown)")
    return "\n".join(["", f"top trials of {study.study_name!r} ({value}):", *lines])


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


# ---------------------------------------------------------------------------------
# The best trial as a recipe
# ---------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} to TOML")


def _toml_key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "_-" for c in key) and key.isascii() else json.dumps(key)


def best_recipe_text(study, setup: TuneSetup, storage: str | None) -> str | None:
    try:
        best = study.best_trial
    except ValueError:
        return None
    values = {**setup.values, **best.params, **best.user_attrs.get("config", {})}
    order = [f.name for f in dataclasses.fields(setup.config_class) if f.init]
    lines = [f"# Best trial of the rlkit tune study {setup.study_name!r} ({storage or 'in memory'}): trial {best.number},",
             f"# {objective_text(setup)} {best.value:.2f} over seeds {setup.seeds}.",
             f"# Tuned from {setup.recipe}; searched: {', '.join(best.params)}.",
             f"# Re-train: rlkit {'rlhf' if setup.table == 'rlhf' else 'train'} <this file> --seed S", "",
             f"[{setup.table}]"]
    for key in order:
        if key in values and values[key] is not None:
            mark = "  # tuned" if key in best.params else ""
            lines.append(f"{key} = {toml_value(values[key])}{mark}")
    return "\n".join(lines) + "\n"


def objective_text(setup: TuneSetup) -> str:
    """What a trial's value is, in words."""
    if setup.rlhf is None:
        return f"mean final evaluation return ({setup.eval_episodes} deterministic episodes)"
    metric = setup.rlhf.metric if setup.rlhf.metric != "auto" else "gold (else proxy score)"
    if setup.rlhf.kl_budget is None:
        return f"mean final held-out {metric}"
    return f"mean best held-out {metric} within KL <= {setup.rlhf.kl_budget:g} nats / sequence"


def write_best_recipe(study, setup: TuneSetup, path: str, storage: str | None) -> bool:
    text = best_recipe_text(study, setup, storage)
    if text is None:
        return False
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return True


# ---------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------


def space_toml(space: dict) -> str:
    return "[space]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in space.items())


def cmd_tune(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="rlkit tune", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Hyperparameter search with Optuna (TPE sampler, median pruner fed by the periodic evaluation). "
        "Each trial trains RECIPE on every --seeds and scores the mean final evaluation return. The study is kept "
        "in --storage: re-running the command continues it, and several processes running it share it. The best "
        "trial is written as a recipe that `rlkit train` runs. An [rlhf] recipe scores the held-out gold reward "
        "(--objective), within --kl-budget if given, and its best recipe runs with `rlkit rlhf`. Recipe overrides "
        "go after --, e.g.\n"
        "  rlkit tune pendulum --trials 12 --storage sqlite:///t.db -- --total_timesteps 100000\n"
        "--show-space prints the default search space of RECIPE (edit it and pass it back with --space).")
    parser.add_argument("recipe", help="a [ppo] / [ppo_lstm] / [rlhf] recipe name or .toml path")
    parser.add_argument("--trials", type=int, default=20, help="finished trials the study should hold (default 20); "
                        "a re-run only runs the missing ones")
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///<study-name>.db)")
    parser.add_argument("--study-name", default=None, help="study name (default <recipe>-tune)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds each trial trains on (default: the recipe's)")
    parser.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    parser.add_argument("--space", default=None, metavar="FILE.toml", help="[space] table merged over the default space")
    parser.add_argument("--show-space", action="store_true", help="print the search space as TOML and exit")
    parser.add_argument("--evals", type=int, default=10, help="periodic evaluations per run (the pruner's reports; default 10)")
    parser.add_argument("--eval-episodes", type=int, default=None, help="episodes per evaluation (default 5; RLHF "
                        "evaluations use the recipe's eval_samples prompts: set it with -- --eval_samples N)")
    parser.add_argument("--objective", choices=["auto", "gold", "score"], default="auto", help="RLHF: what a trial "
                        "scores, the gold reward or the proxy score (default auto: gold where the task has it)")
    parser.add_argument("--kl-budget", type=float, default=None, metavar="NATS", help="RLHF: score the best "
                        "evaluation whose KL(pi || ref) per sequence is at most NATS (default: the final evaluation)")
    parser.add_argument("--startup-trials", type=int, default=5, help="random trials before TPE, and (up to 3) "
                        "before the pruner acts (default 5)")
    parser.add_argument("--warmup", type=float, default=0.3, help="share of a trial's first-seed budget before it can be pruned (default 0.3)")
    parser.add_argument("--no-recipe-trial", action="store_true", help="do not start a new study with the recipe's own "
                        "values as trial 0")
    parser.add_argument("--sampler-seed", type=int, default=None, help="seed of the TPE sampler (default: random)")
    parser.add_argument("--run-dir", default="tune_runs", help="trial runs go to RUN_DIR/<study>/trial_<n>/seed_<s> (default tune_runs)")
    parser.add_argument("--best", default=None, metavar="FILE.toml", help="where to write the best recipe (default <study-name>-best.toml)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    if "--" in argv:
        split = argv.index("--")
        argv, overrides = argv[:split], argv[split + 1:]
    else:
        overrides = []
    args = parser.parse_args(argv)
    setup = make_setup(args.recipe, overrides, args.seeds, args.space, args.evals, args.eval_episodes, args.run_dir,
                       args.study_name, objective=args.objective, kl_budget=args.kl_budget)
    if args.show_space:
        print(space_toml(setup.space), end="")
        return 0
    if args.trials <= 0 or args.evals <= 0 or setup.eval_episodes <= 0:
        raise ConfigError("--trials, --evals and --eval-episodes must be > 0")
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError(f"--timeout must be > 0 seconds, got {args.timeout}")
    storage = args.storage or f"sqlite:///{setup.study_name}.db"
    outcome = tune(setup, args.trials, storage, args.timeout, args.sampler_seed, best_path=args.best,
                   progress=not args.no_progress, startup_trials=args.startup_trials, warmup=args.warmup,
                   start_from_recipe=not args.no_recipe_trial)
    if outcome["interrupted"] is not None:
        return 128 + outcome["interrupted"]
    trials = outcome["study"].trials
    invalid = [t for t in trials if str(t.user_attrs.get(COUNTED_FAILURE, "")).startswith("invalid config")]
    if trials and len(invalid) == len(trials):
        raise ConfigError(f"every trial's config was invalid, e.g. trial {invalid[0].number}: "
                          f"{invalid[0].user_attrs[COUNTED_FAILURE]}; fix the search space")
    return 0


def make_setup(recipe: str, overrides: list[str], seeds: list[int] | None = None, space_file: str | None = None,
               evals: int = 10, eval_episodes: int | None = None, run_dir: str = "tune_runs",
               study_name: str | None = None, objective: str = "auto", kl_budget: float | None = None) -> TuneSetup:
    """Recipe + overrides (``--key value`` tokens) + search space -> what the objective needs."""
    import argparse

    table, values, source = read_recipe(recipe)
    if table not in CONFIG_TABLES:
        raise ConfigError(f"{source}: rlkit tune takes [ppo], [ppo_lstm] or [rlhf] recipes, not [{table}]")
    if table == "rlhf":
        if eval_episodes is not None:
            raise ConfigError("--eval-episodes is for control recipes; an RLHF evaluation scores the recipe's "
                              "eval_samples prompts (set it with -- --eval_samples N)")
        if kl_budget is not None and kl_budget < 0:
            raise ConfigError(f"--kl-budget must be >= 0 nats, got {kl_budget}")
        rlhf = RLHFObjective(objective, kl_budget)
    else:
        if objective != "auto" or kl_budget is not None:
            raise ConfigError("--objective and --kl-budget are for RLHF recipes; a control trial scores its final "
                              "evaluation return")
        rlhf = None
    setup = TuneSetup(recipe, table, dict(values), {}, [], evals, 5 if eval_episodes is None else eval_episodes,
                      run_dir, rlhf=rlhf)
    cls = setup.config_class
    parser = argparse.ArgumentParser(prog=f"rlkit tune {recipe} --")
    add_config_arguments(parser, cls, values)
    _, extra = parse_overrides(parser, cls, overrides)
    for key in ("seed", "run_dir", "eval_interval", "eval_episodes"):
        if key in extra:
            raise ConfigError(f"--{key} is set by rlkit tune per trial; use its own options (--seeds, --run-dir, --evals, --eval-episodes)")
    fixed = TRIAL_SETTINGS[table if table == "rlhf" else "ppo"]
    for key in fixed:
        if key in extra:  # TuneSetup.config sets it for every trial: the override would be dropped, unsaid
            raise ConfigError(f"--{key} is fixed by rlkit tune for every trial ({fixed[key]}); remove it (it may be "
                              "set in the best recipe tune writes, for rlkit train)")
    merged = {**values, **extra}
    config_from_dict(cls, merged, source=f"{source} + command line")  # every key checked before a trial starts
    space = default_space(recipe, merged, table)
    if space_file:
        space.update(read_space(space_file))
    check_space(space, cls, space_file or "search space")
    for key in [k for k, v in space.items() if not isinstance(v, dict)]:
        merged[key] = space.pop(key)  # a fixed value
    cfg = config_from_dict(cls, merged, source=f"{source} + command line + search space")
    setup.values = {k: getattr(cfg, k) for k in merged}  # typed (command-line strings converted)
    setup.space = space
    setup.seeds = list(dict.fromkeys(seeds)) if seeds else [int(merged.get("seed", 1))]
    setup.study_name = study_name or DEFAULT_STUDY.format(recipe=os.path.splitext(os.path.basename(recipe))[0])
    return setup


if __name__ == "__main__":
    sys.exit(cmd_tune(sys.argv[1:]))
