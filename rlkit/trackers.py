"""Experiment trackers: TensorBoard, Weights & Biases, MLflow and Trackio behind rlkit's one logging path.

``track = ["tensorboard", "wandb", "mlflow", "trackio"]`` in a recipe (a list; ``["tensorboard"]`` by
default; CLI ``--track tensorboard,wandb``) names where a run's numbers go.  :class:`rlkit.logger.RunLogger`
stays the only writer: every scalar it logs (``charts/*``, ``losses/*``, ``eval/*``, RLHF's ``reward/*``
...) goes to each tracker at the same global step (W&B's x-axis is the ``global_step`` metric), the
hyperparameters when the run starts, and, when the run finishes, the summary (``summary/*``), the sample
tables and the artefacts: ``summary.json``, ``config.json``, the last checkpoint, ``best/`` (the best
periodic evaluation) and, for RLHF, the final ``checkpoint/`` folder.

Where each tracker writes, and how to keep it local:

- ``wandb``: ``wandb.init(project=track_project, name=<run folder name>, dir=<run folder>)``;
  ``WANDB_MODE=offline`` keeps the run on disk (``<run>/wandb/offline-run-*``; ``wandb sync`` uploads it
  later), ``WANDB_MODE=disabled`` turns it off.
- ``mlflow``: an ``MlflowClient`` on ``MLFLOW_TRACKING_URI`` (unset: MLflow's default,
  ``sqlite:///mlflow.db`` in the working directory); experiment ``track_project``.
- ``trackio``: ``trackio.init(project=track_project, name=<run folder name>)``; its local store is
  ``TRACKIO_DIR`` (read when trackio is first imported; default ``~/.cache/huggingface/trackio``),
  ``trackio show --project rlkit`` opens the dashboard.

A resumed run continues the same tracker runs: their ids are kept in ``<run>/trackers.json``; settings that
changed on the way (``total_timesteps`` of an extension) update W&B's config, and in MLflow, whose params cannot
change, go in the tag ``rlkit.now.<key>`` beside the first value.  A tracker that fails while a run is training is reported once and dropped; the run goes on (its TensorBoard and
``metrics.jsonl`` have everything).  A missing package is refused before training starts, with the
install line.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import os
import re
import sys
import time
import warnings
from typing import Any

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
INSTALL = 'pip install "rlkit[track]"'
STATE_FILE = "trackers.json"


def validate_track(track: list[str], key: str = "track") -> None:
    """Names only (packages are checked when a run starts, so a saved config loads anywhere)."""
    if not isinstance(track, list) or not all(isinstance(name, str) for name in track):
        raise ValueError(f"{key} must be a list of tracker names ({', '.join(TRACKERS)}), got {track!r}")
    for name in track:
        if name not in TRACKERS:
            raise ValueError(f"{key}: unknown tracker {name!r}; known: {', '.join(TRACKERS)}")
    if len(set(track)) != len(track):
        raise ValueError(f"{key} names a tracker twice: {track!r}")


def require(package: str):
    """Import a tracker's package, or one ImportError line with the install command."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ImportError(f"track = [..., {package!r}] needs the {package} package: {INSTALL}") from None


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a/b': 1}."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        else:
            out[name] = value
    return out


def scalars(values: dict) -> dict[str, float]:
    """The finite-or-not numbers of a (nested) dict, flattened; bools and strings are left out."""
    return {k: float(v) for k, v in flatten(values).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def tables(values: dict) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """Lists of dicts with the same keys (e.g. RLHF's samples) -> {name: (columns, rows)}."""
    out = {}
    for key, value in flatten(values).items():
        if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
            columns = list(value[0])
            out[key] = (columns, [[_plain(row.get(c)) for c in columns] for row in value])
    return out


def markdown_table(text: str) -> tuple[list[str], list[list[str]]] | None:
    """(columns, rows) of a markdown table such as rlkit.rlhf's samples table, or None when it is not one."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 2 or not all(line.startswith("|") and line.endswith("|") for line in lines):
        return None

    def cells(line: str) -> list[str]:
        parts = re.split(r"(?<!\\)\|", line[1:-1])
        return [part.strip().replace("\\|", "|") for part in parts]

    columns = cells(lines[0])
    rows = [cells(line) for line in lines[2:]]
    return (columns, rows) if all(len(row) == len(columns) for row in rows) else None


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return json.dumps(value, default=str)


# ---------------------------------------------------------------------------------
# One class per tracker: start (hyperparameters) -> log / table / text -> summary, artifact -> finish
# ---------------------------------------------------------------------------------


class Tracker:
    name = "tracker"

    def log(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        raise NotImplementedError

    def text(self, key: str, text: str, step: int) -> None:
        raise NotImplementedError

    def summary(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def artifact(self, path: str, name: str, kind: str) -> None:
        raise NotImplementedError

    def finish(self, status: str) -> None:
        """status: finished, failed or killed (stopped by a signal; resumable)."""
        raise NotImplementedError

    def flush(self) -> None:
        """Send what is buffered (at each checkpoint: a kill -9 after it loses nothing the resume keeps)."""

    def state(self) -> dict:
        """What resuming needs (kept in <run>/trackers.json)."""
        return {}


def _artifact_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:128]


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, run_dir: str, run_name: str, project: str, config: dict, resume: dict | None):
        wandb = require("wandb")
        self.wandb = wandb
        kwargs = dict(project=project, name=run_name, dir=run_dir, config=config, reinit="create_new")
        if resume and resume.get("id"):
            kwargs.update(id=resume["id"], resume="allow")
        self.run = wandb.init(**kwargs)
        # global_step is the x-axis of everything: W&B's own step must grow with each call, ours may
        # repeat (episodes and the update at one step) or go back (a resumed run's abandoned tail)
        self.run.define_metric("global_step")
        self.run.define_metric("*", step_metric="global_step")

    def log(self, metrics, step):
        self.run.log({**metrics, "global_step": step})

    def table(self, key, columns, rows, step):
        self.run.log({key: self.wandb.Table(columns=columns, data=rows), "global_step": step})

    def text(self, key, text, step):
        import html

        self.run.log({key: self.wandb.Html(f"<pre>{html.escape(text)}</pre>"), "global_step": step})

    def summary(self, values, step):
        self.run.summary.update(values)

    def artifact(self, path, name, kind):
        artifact = self.wandb.Artifact(_artifact_name(f"{self.run.name}-{name}"), type=kind)
        if os.path.isdir(path):
            artifact.add_dir(path)
        else:
            artifact.add_file(path)
        self.run.log_artifact(artifact)

    def finish(self, status):
        self.run.finish(exit_code=0 if status == "finished" else 1)

    def state(self):
        return {"id": self.run.id, "project": self.run.project}


class MLflowTracker(Tracker):
    """Through an ``MlflowClient`` (not the fluent API), so several runs can be open in one process
    (batched seeds, a study's trials) and nothing global is changed."""

    name = "mlflow"
    BATCH = 500  # MLflow takes at most 1000 metrics per log_batch

    def __init__(self, run_dir: str, run_name: str, project: str, config: dict, resume: dict | None):
        require("mlflow")
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self.Metric = Metric
        # a resumed run talks to the store it started in, wherever the command runs now
        uri = (resume or {}).get("tracking_uri")
        self.client = MlflowClient(tracking_uri=uri) if uri else MlflowClient()
        self.pending: list = []
        if resume and resume.get("run_id"):
            self.run_id = resume["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            self._resume_params(config, Param)
            return
        experiment = self.client.get_experiment_by_name(project)
        if experiment is None:
            try:
                experiment_id = self.client.create_experiment(project)
            except Exception:  # noqa: BLE001 - another process created it first
                experiment_id = self.client.get_experiment_by_name(project).experiment_id
        else:
            experiment_id = experiment.experiment_id
        run = self.client.create_run(experiment_id, run_name=run_name, tags={"rlkit.run_dir": run_dir})
        self.run_id = run.info.run_id
        params = [Param(k[:250], str(v)[:6000]) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):  # at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def _resume_params(self, config: dict, Param) -> None:
        """A resumed run's settings that changed (an extension's total_timesteps) or are new.  MLflow refuses to
        change a logged param, so a changed one keeps its first value and its value now goes in the tag
        ``rlkit.now.<key>``; new ones are logged as params."""
        logged = self.client.get_run(self.run_id).data.params
        now = {k[:250]: str(v)[:6000] for k, v in flatten(config).items()}
        new = [Param(k, v) for k, v in now.items() if k not in logged]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i:i + 100])
        for k, v in now.items():
            if k in logged and logged[k] != v:
                self.client.set_tag(self.run_id, f"rlkit.now.{k}"[:250], v)

    @staticmethod
    def key(name: str) -> str:
        return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name)

    def log(self, metrics, step):
        now = int(time.time() * 1000)
        self.pending += [self.Metric(self.key(k), float(v), now, int(step)) for k, v in metrics.items()]
        if len(self.pending) >= self.BATCH:
            self.flush()

    def flush(self):
        while self.pending:
            batch, self.pending = self.pending[:self.BATCH], self.pending[self.BATCH:]
            self.client.log_batch(self.run_id, metrics=batch)

    def table(self, key, columns, rows, step):
        self.client.log_dict(self.run_id, {"columns": columns, "data": rows}, f"tables/{self.key(key)}_{step}.json")

    def text(self, key, text, step):
        self.client.log_text(self.run_id, text, f"text/{self.key(key)}_{step}.md")

    def summary(self, values, step):
        self.log({f"summary/{k}": v for k, v in values.items()}, step)
        self.flush()

    def artifact(self, path, name, kind):
        if os.path.isdir(path):
            self.client.log_artifacts(self.run_id, path, artifact_path=name)
        else:
            self.client.log_artifact(self.run_id, path)

    def finish(self, status):
        self.flush()
        self.client.set_terminated(self.run_id, {"finished": "FINISHED", "failed": "FAILED"}.get(status, "KILLED"))

    def state(self):
        return {"run_id": self.run_id, "tracking_uri": self.client.tracking_uri}


class TrackioTracker(Tracker):
    """trackio keeps one active run per process (``trackio.init`` finishes the previous one)."""

    name = "trackio"

    def __init__(self, run_dir: str, run_name: str, project: str, config: dict, resume: dict | None):
        trackio = require("trackio")
        self.trackio = trackio
        self.last_step = 0
        with contextlib.redirect_stdout(io.StringIO()):  # its dashboard banner
            self.run = trackio.init(project=project, name=run_name, config=config,
                                    resume="allow" if resume else "never", embed=False,
                                    auto_log_cpu=False, auto_log_gpu=False)
        self.project = project

    def log(self, metrics, step):
        self.last_step = max(self.last_step, int(step))
        self.run.log(metrics, step=int(step))

    def table(self, key, columns, rows, step):
        self.run.log({key: self.trackio.Table(columns=columns, data=rows)}, step=int(step))

    def text(self, key, text, step):
        self.run.log({key: self.trackio.Markdown(text)}, step=int(step))

    def summary(self, values, step):
        self.run.log({f"summary/{k}": v for k, v in values.items()}, step=int(step))

    def artifact(self, path, name, kind):
        self.run.log_artifact(path, name=_artifact_name(f"{self.run.name}-{name}"), type=kind)

    def finish(self, status):
        with contextlib.redirect_stdout(io.StringIO()):
            self.run.finish()

    def state(self):
        return {"project": self.project, "name": self.run.name}


CLASSES = {"wandb": WandbTracker, "mlflow": MLflowTracker, "trackio": TrackioTracker}
START_HINTS = {"wandb": "`wandb login`, or WANDB_MODE=offline to log to disk only",
               "mlflow": "check MLFLOW_TRACKING_URI, e.g. sqlite:///mlflow.db",
               "trackio": "check TRACKIO_DIR"}


class TrackerError(ValueError):
    """A tracker that could not start (a ValueError: the CLI's one-line user error)."""


# ---------------------------------------------------------------------------------
# The fan-out RunLogger holds
# ---------------------------------------------------------------------------------


class TrackerSet:
    """The trackers of one run (TensorBoard is RunLogger's own writer, not in here).

    Every call goes to every tracker; one that raises is reported once and dropped, so a tracker's
    hiccup never costs the training run.
    """

    def __init__(self, trackers: list[Tracker], run_dir: str | None = None):
        self.trackers = trackers
        self.run_dir = run_dir
        self.finished = False
        self.last_step = 0

    @classmethod
    def open(cls, config: dict, run_dir: str, resume: bool = False) -> TrackerSet:
        """The trackers ``config['track']`` names (besides tensorboard), hyperparameters logged."""
        names = [n for n in config.get("track", ["tensorboard"]) if n != "tensorboard"]
        if not names:
            return cls([], run_dir)
        validate_track(list(config.get("track", [])))
        for name in names:  # every package up front: not one run started and then a missing one refused
            require(name)
        saved = {}
        path = os.path.join(run_dir, STATE_FILE)
        if resume and os.path.isfile(path):
            with open(path) as f:
                saved = json.load(f)
        project = config.get("track_project") or "rlkit"
        run_name = os.path.basename(os.path.normpath(run_dir))
        hyperparameters = {k: v for k, v in config.items()}
        trackers: list[Tracker] = []
        try:
            for name in names:
                try:
                    trackers.append(CLASSES[name](run_dir, run_name, project, hyperparameters, saved.get(name)))
                except (ImportError, KeyboardInterrupt):
                    raise
                except Exception as error:  # noqa: BLE001 - one line naming the tracker and what to do
                    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
                    raise TrackerError(f"tracker {name} could not start: {first} ({START_HINTS[name]})") from error
        except BaseException:
            for tracker in trackers:
                with contextlib.suppress(Exception):
                    tracker.finish("failed")
            raise
        os.makedirs(run_dir, exist_ok=True)
        with open(path, "w") as f:
            json.dump({t.name: t.state() for t in trackers}, f, indent=2)
        return cls(trackers, run_dir)

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def _each(self, method: str, *args) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as error:  # noqa: BLE001 - see the class docstring
                self.trackers.remove(tracker)
                print(f"rlkit: tracker {tracker.name} failed ({type(error).__name__}: {error}); "
                      "the run goes on without it", file=sys.stderr)
                with contextlib.suppress(Exception):
                    tracker.finish("failed")

    def log(self, metrics: dict, step: int) -> None:
        if self.trackers:
            values = {k: float(v) for k, v in metrics.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.last_step = max(self.last_step, int(step))
            self._each("log", values, int(step))

    def text(self, key: str, text: str, step: int) -> None:
        if self.trackers:
            table = markdown_table(text)
            if table is not None:
                self._each("table", key, *table, int(step))
            else:
                self._each("text", key, text, int(step))

    def summary(self, summary: dict, artifacts: list[tuple[str, str, str]]) -> None:
        """The final numbers (``summary/*``), tables of the summary's lists of rows, and the artefacts."""
        if not self.trackers:
            return
        self._each("summary", scalars(summary), self.last_step)
        for key, (columns, rows) in tables(summary).items():
            self._each("table", key, columns, rows, self.last_step)
        for path, name, kind in artifacts:
            if os.path.exists(path):
                self._each("artifact", path, name, kind)

    def flush(self) -> None:
        if self.trackers:
            self._each("flush")

    def finish(self, status: str) -> None:
        if self.finished:
            return
        self.finished = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._each("finish", status)


def run_artifacts(run_dir: str) -> list[tuple[str, str, str]]:
    """(path, name, kind) of what a finished run folder holds worth keeping in a tracker."""
    from rlkit.checkpoint import list_checkpoints

    found = [(os.path.join(run_dir, "summary.json"), "summary", "run"),
             (os.path.join(run_dir, "config.json"), "config", "run")]
    with contextlib.suppress(Exception):
        checkpoints = list_checkpoints(run_dir)
        if checkpoints:
            newest = max(checkpoints, key=lambda path: int(re.sub(r"\D", "", os.path.basename(path)) or 0))
            found.append((newest, "checkpoint", "model"))
    found.append((os.path.join(run_dir, "best"), "best", "model"))  # control: the best periodic evaluation
    found.append((os.path.join(run_dir, "checkpoint"), "policy", "model"))  # RLHF: the save_pretrained folder
    return found
