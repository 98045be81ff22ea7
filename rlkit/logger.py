"""Run logging: TensorBoard scalars, a JSONL metrics file, the resolved config, a progress bar.

TensorBoard names follow CleanRL (``charts/*``, ``losses/*``) so existing
dashboards work.  ``metrics.jsonl`` is the machine-readable record the benchmark
tools read: one line per episode (``"kind": "episode"``) and per update
(``"kind": "update"``).

The config's ``track`` list says where else the same numbers go (W&B, MLflow, Trackio: see
rlkit.trackers): this logger fans every scalar out to them, the config when it opens, and the
summary and the run's artefacts when the run finishes.  It is the one logging path.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import deque

from tqdm.auto import tqdm

from rlkit.trackers import TrackerSet, run_artifacts

TB_NAMES = {
    "policy_loss": "losses/policy_loss",
    "value_loss": "losses/value_loss",
    "entropy": "losses/entropy",
    "approx_kl": "losses/approx_kl",
    "clipfrac": "losses/clipfrac",
    "explained_variance": "losses/explained_variance",
    "first_ratio_error": "debug/first_ratio_error",
    "epochs": "debug/epochs",
    "learning_rate": "charts/learning_rate",
    "SPS": "charts/SPS",
}


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def last_global_step(path: str) -> int | None:
    """The global_step of the last metrics line that has one (None: none)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 65536))
        lines = f.read().decode("utf-8", "replace").splitlines()
    for line in reversed(lines):
        try:
            step = json.loads(line).get("global_step")
        except (ValueError, AttributeError):
            continue
        if isinstance(step, int):
            return step
    return None


class RunLogger:
    """Writes one run's outputs into ``run_dir``; with ``enabled=False`` only the progress bar."""

    def __init__(self, run_dir: str, config: dict, enabled: bool = True, progress: bool = True, total: int | None = None,
                 resume_metrics_at: int | None = None):
        self.run_dir = os.path.abspath(run_dir)
        self.enabled = enabled
        self.writer = None
        self.metrics_file = None
        self.trackers = TrackerSet([])
        self.closed = self.summarised = False
        if enabled:  # trackers first: a missing package is refused before anything is written
            self.trackers = TrackerSet.open(config, self.run_dir, resume=resume_metrics_at is not None)
            os.makedirs(self.run_dir, exist_ok=True)
            with open(os.path.join(self.run_dir, "config.json"), "w") as f:
                json.dump(config, f, indent=2)
            path = os.path.join(self.run_dir, "metrics.jsonl")
            purge_step = None
            if resume_metrics_at is not None and os.path.exists(path):
                # Lines written after the checkpoint belong to the abandoned attempt.
                with open(path, "r+") as f:
                    f.truncate(resume_metrics_at)
                purge_step = last_global_step(path)
                if purge_step is not None:  # a resume that trains nothing logs its summary at the run's step, not 0
                    self.trackers.last_step = max(self.trackers.last_step, purge_step)
            self.metrics_file = open(path, "a", buffering=1)
            if "tensorboard" in config.get("track", ["tensorboard"]):
                from torch.utils.tensorboard import SummaryWriter

                # purge_step: TensorBoard drops the abandoned attempt's events after the checkpoint's step
                self.writer = SummaryWriter(self.run_dir, purge_step=None if purge_step is None else purge_step + 1)
                table = "\n".join(f"|{k}|{v}|" for k, v in config.items())
                self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
        self.recent_returns: deque[float] = deque(maxlen=20)
        self.bar = tqdm(total=total, unit="step", unit_scale=True, disable=not progress, dynamic_ncols=True, smoothing=0.1)

    def flush(self) -> None:
        """TensorBoard's and the trackers' buffers out (rlkit.runtime.Lifecycle calls it at each checkpoint)."""
        if self.writer is not None:
            self.writer.flush()
        self.trackers.flush()

    def _write(self, record: dict) -> None:
        if self.metrics_file is not None:
            self.metrics_file.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")

    def episode(self, global_step: int, episodic_return: float, episodic_length: int) -> None:
        self.recent_returns.append(episodic_return)
        if self.writer is not None:
            self.writer.add_scalar("charts/episodic_return", episodic_return, global_step)
            self.writer.add_scalar("charts/episodic_length", episodic_length, global_step)
        self.trackers.log({"charts/episodic_return": episodic_return, "charts/episodic_length": episodic_length}, global_step)
        self._write({"kind": "episode", "global_step": global_step, "return": episodic_return, "length": episodic_length})

    def update(self, global_step: int, iteration: int, stats: dict) -> None:
        if self.writer is not None:
            for key, value in stats.items():
                self.writer.add_scalar(TB_NAMES.get(key, f"charts/{key}"), value, global_step)
        self.trackers.log({TB_NAMES.get(key, f"charts/{key}"): value for key, value in stats.items()}, global_step)
        self._write({"kind": "update", "global_step": global_step, "iteration": iteration, **stats})

    def evaluation(self, global_step: int, iteration: int, stats: dict) -> None:
        """A periodic evaluation: TensorBoard ``eval/<name>`` of its numbers and an ``"kind": "eval"``
        metrics line of all of ``stats`` (other values too, e.g. RLHF's sample rows).  The console line
        is control's (mean return); an evaluation without one (RLHF) prints its own."""
        self.scalars("eval", stats, global_step)
        self._write({"kind": "eval", "global_step": global_step, "iteration": iteration, **stats})
        if not self.bar.disable and "mean_return" in stats:  # progress=False: quiet (rlkit tune's trials)
            self.bar.write(f"rlkit: eval at update {iteration} (step {global_step:,}): mean return {stats['mean_return']:.2f}")

    def scalars(self, prefix: str, values: dict, global_step: int) -> None:
        """``<prefix>/<name>`` scalars at a step, to TensorBoard and the trackers (no metrics line: the caller writes its own)."""
        numbers = {f"{prefix}/{k}": v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.writer is not None:
            for key, value in numbers.items():
                self.writer.add_scalar(key, value, global_step)
        self.trackers.log(numbers, global_step)

    def text(self, tag: str, text: str, global_step: int) -> None:
        """A text (markdown) at a step: TensorBoard's text tab; a table in the trackers when it is a markdown table."""
        if self.writer is not None:
            self.writer.add_text(tag, text, global_step)
        self.trackers.text(tag, text, global_step)

    def metrics_offset(self) -> int:
        """Bytes of metrics.jsonl written so far (a checkpoint stores it to cut the file on resume)."""
        if self.metrics_file is None:
            return 0
        self.metrics_file.flush()
        return self.metrics_file.tell()

    def note(self, text: str) -> None:
        """A line for the console and the metrics file (e.g. how a resume went)."""
        self.bar.write(f"rlkit: {text}")
        self._write({"kind": "note", "text": text})

    def advance(self, global_step: int, steps: int, sps: float) -> None:
        postfix = {"SPS": f"{sps:.0f}"}
        if self.recent_returns:
            postfix["return"] = f"{sum(self.recent_returns) / len(self.recent_returns):.1f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(steps)

    def summary(self, summary: dict) -> None:
        """summary.json: the final numbers of a finished run (absent when it crashed); to the trackers
        with the run's artefacts (then they are finished, if the logger is closed already)."""
        if self.enabled:
            with open(os.path.join(self.run_dir, "summary.json"), "w") as f:
                json.dump({k: _jsonable(v) for k, v in summary.items()}, f, indent=2)
        self.trackers.summary(summary, run_artifacts(self.run_dir))
        self.summarised = True
        if self.closed:
            self.trackers.finish("finished")

    def close(self, pending_summary: bool = False) -> None:
        """Close the files; ``pending_summary``: the loop writes summary() after this, so the trackers
        stay open for it (an exception in flight finishes them as failed all the same)."""
        self.closed = True
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.metrics_file is not None:
            self.metrics_file.close()
        error = sys.exc_info()[0]
        if error is not None:
            self.trackers.finish("killed" if issubclass(error, KeyboardInterrupt) else "failed")
        elif self.summarised:
            self.trackers.finish("finished")
        elif not pending_summary:
            self.trackers.finish("killed")  # stopped by a signal: resumable, no summary
