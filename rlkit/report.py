"""Aggregate a benchmark folder: per-seed scores, mean +- std, IQM with a bootstrap CI, curves.

Reads what ``rlkit bench`` writes, ``OUT/<env>/seed_<s>/metrics.jsonl`` (and
``summary.json``, whose presence marks a finished run; an unfinished run is
reported and left out), never TensorBoard internals.  Per env:

- per-seed score: CleanRL's, the mean return of the last 100 training episodes
  (``"kind": "episode"`` records; fewer than 100 episodes: all of them);
- mean and std across seeds, std with ddof=0 (``np.std``, as CleanRL reports);
- IQM across seeds: ``scipy.stats.trim_mean(scores, 0.25)`` semantics, as
  rliable's ``metrics.aggregate_iqm`` (cut ``int(0.25 * n)`` scores at each end,
  so 3 seeds keep all 3, 4 or 5 seeds drop one at each end);
- a 95% CI of the IQM: rliable's ``library.get_interval_estimates`` with its
  defaults (``method="percentile"``, 50,000 reps).  For one task rliable's
  stratified bootstrap is an ordinary bootstrap over seeds: resample the n seed
  scores with replacement, take the IQM of each resample, and report the 2.5th
  and 97.5th percentiles (``np.percentile``, linear interpolation, as arch does).
  It is these few numpy lines rather than rliable itself because rliable pulls in
  arch, statsmodels, scipy and seaborn;
- a learning curve: each seed's episode returns averaged in equal env-step bins
  (an empty bin repeats the previous one), then the mean across seeds with a 95%
  percentile-bootstrap band over seeds, saved as ``OUT/<env>.png``.

Files: ``OUT/report.md`` (the markdown table), ``OUT/report.csv`` and one PNG per
env.

``rlkit report NEW --compare OLD`` judges a change across seeds rather than by one run (rliable,
Agarwal et al. 2021): per env present in both folders, the probability of improvement
P(NEW > OLD) = the Mann-Whitney U statistic / (n m) (a tie counts 1/2) with a 95% CI from a
stratified bootstrap (each folder's seeds resampled on their own), both IQMs, and the env's
score profile (the fraction of seeds scoring above tau, for every tau) of both folders in one
PNG; over all shared envs, the mean probability of improvement with its stratified-bootstrap CI.
Written to ``NEW/compare.md`` and ``NEW/compare_<env>.png``.  ``metric="score"`` (or ``"gold"``, ...) aggregates a key of the
``"kind": "update"`` records instead, e.g. for RLHF runs, which log no episodes.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np

from rlkit.config import ConfigError

SEED_DIR = re.compile(r"^seed_(-?\d+)$")


# ---------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------


def iqm(scores, axis: int = -1) -> np.ndarray | float:
    """Interquartile mean: scipy.stats.trim_mean(scores, 0.25) (rliable's aggregate_iqm)."""
    x = np.sort(np.asarray(scores, dtype=np.float64), axis=axis)
    n = x.shape[axis]
    if n == 0:
        raise ValueError("IQM of no scores")
    cut = int(0.25 * n)
    kept = np.take(x, np.arange(cut, n - cut), axis=axis)
    return kept.mean(axis=axis)


def bootstrap_ci(scores, statistic=iqm, reps: int = 50_000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic`` over the scores (rliable's get_interval_estimates, one task).

    ``statistic`` takes an array and an ``axis`` keyword (it is applied to all resamples at once).
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap of no scores")
    rng = np.random.default_rng(seed)
    samples = x[rng.integers(0, x.size, size=(reps, x.size))]
    values = statistic(samples, axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(values, [100 * alpha, 100 * (1.0 - alpha)])
    return float(low), float(high)


def _wins(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) (ties 1/2) over the last axis of x [..., n] against y [..., m]; leading axes are resamples."""
    greater = (x[..., :, None] > y[..., None, :]).mean(axis=(-2, -1))
    ties = (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))
    return greater + 0.5 * ties


def probability_of_improvement(x, y) -> float:
    """P(X > Y) for one task, rliable's: the Mann-Whitney U statistic of x over y divided by n m (ties count 1/2)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size == 0 or y.size == 0:
        raise ValueError("probability of improvement of no scores")
    return float(_wins(x, y))


def improvement_ci(pairs: list[tuple[np.ndarray, np.ndarray]], reps: int = 2000, confidence: float = 0.95,
                   seed: int = 0) -> tuple[float, float, float]:
    """(mean over tasks of P(X > Y), CI low, CI high): a stratified bootstrap (rliable's), each task's X seeds and Y
    seeds resampled with replacement on their own, the statistic recomputed per resample."""
    point = float(np.mean([probability_of_improvement(x, y) for x, y in pairs]))
    rng = np.random.default_rng(seed)
    values = np.zeros(reps)
    for x, y in pairs:
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        values += _wins(x[rng.integers(0, x.size, size=(reps, x.size))], y[rng.integers(0, y.size, size=(reps, y.size))])
    values /= len(pairs)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(values, [100 * alpha, 100 * (1.0 - alpha)])
    return point, float(low), float(high)


def score_profile(scores, taus) -> np.ndarray:
    """Fraction of the seeds whose score is above each tau (rliable's run-score performance profile, one task)."""
    scores = np.asarray(scores, dtype=np.float64)
    return (scores[None, :] > np.asarray(taus, dtype=np.float64)[:, None]).mean(axis=1)


def binned_curve(steps, values, edges: np.ndarray) -> np.ndarray:
    """Mean of ``values`` in each bin ``(edges[i], edges[i+1]]``; an empty bin repeats the previous one (NaN before the first)."""
    steps = np.asarray(steps, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    nbins = len(edges) - 1
    index = np.clip(np.searchsorted(edges, steps, side="left") - 1, 0, nbins - 1)
    sums = np.bincount(index, weights=values, minlength=nbins)
    counts = np.bincount(index, minlength=nbins)
    curve = np.full(nbins, np.nan)
    last = np.nan
    for i in range(nbins):
        if counts[i]:
            last = sums[i] / counts[i]
        curve[i] = last
    return curve


# ---------------------------------------------------------------------------------
# Reading runs
# ---------------------------------------------------------------------------------


@dataclass
class SeedRun:
    seed: int
    run_dir: str
    steps: np.ndarray
    values: np.ndarray
    total_steps: int

    def score(self, last: int = 100) -> float:
        return float(np.mean(self.values[-last:]))

    def first_score(self, first: int = 100) -> float:
        """The same mean over the first episodes: where learning started from."""
        return float(np.mean(self.values[:first]))


@dataclass
class EnvResult:
    """One env's aggregate.  ``std`` is ddof=0; ``iqm_ci`` is the 95% percentile-bootstrap CI."""

    env_id: str
    folder: str
    metric: str
    last: int
    runs: list[SeedRun]
    unfinished: list[str] = field(default_factory=list)
    """run folders without summary.json (crashed or still running): left out"""
    empty: list[str] = field(default_factory=list)
    """finished run folders with no value of the metric (e.g. no episode ended): left out"""
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mean: float = math.nan
    std: float = math.nan
    iqm: float = math.nan
    iqm_ci: tuple[float, float] = (math.nan, math.nan)
    curve_steps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    curve_seeds: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    curve_mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    curve_low: np.ndarray = field(default_factory=lambda: np.zeros(0))
    curve_high: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _read_series(metrics_path: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(global_step, value) of the metric: episode returns for "return", else a key of update records."""
    kind, key = ("episode", "return") if metric == "return" else ("update", metric)
    steps, values = [], []
    with open(metrics_path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            if record.get("kind") == kind and record.get(key) is not None:
                steps.append(record.get("global_step", len(steps)))
                values.append(record[key])
    return np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)


def _seed_dirs(env_dir: str) -> list[tuple[int, str]]:
    found = []
    for name in os.listdir(env_dir):
        match = SEED_DIR.match(name)
        if match and os.path.isdir(os.path.join(env_dir, name)):
            found.append((int(match.group(1)), os.path.join(env_dir, name)))
    return sorted(found)


def aggregate(out_dir: str, last: int = 100, metric: str = "return", reps: int = 50_000, confidence: float = 0.95,
              bins: int = 100, seed: int = 0) -> dict[str, EnvResult]:
    """Per-env results of a bench folder OUT/<env>/seed_<s>/, keyed by env id, in folder order."""
    if not os.path.isdir(out_dir):
        raise ConfigError(f"no benchmark folder {out_dir!r}")
    results: dict[str, EnvResult] = {}
    for folder in sorted(os.listdir(out_dir)):
        env_dir = os.path.join(out_dir, folder)
        if not os.path.isdir(env_dir):
            continue
        seed_dirs = _seed_dirs(env_dir)
        if not seed_dirs:
            continue
        env_id, runs, unfinished, empty = folder, [], [], []
        for seed_value, run_dir in seed_dirs:
            summary = _read_json(os.path.join(run_dir, "summary.json"))
            config = _read_json(os.path.join(run_dir, "config.json"))
            launched = _read_json(os.path.join(run_dir, "launch.json"))  # written by rlkit bench
            env_id = (summary.get("env_id") or config.get("env_id") or config.get("task") or launched.get("env_id")
                      or env_id)
            metrics_path = os.path.join(run_dir, "metrics.jsonl")
            if not os.path.isfile(os.path.join(run_dir, "summary.json")) or not os.path.isfile(metrics_path):
                unfinished.append(run_dir)
                continue
            steps, values = _read_series(metrics_path, metric)
            if values.size == 0:
                empty.append(run_dir)
                continue
            total = int(summary.get("global_step") or steps.max())
            runs.append(SeedRun(int(config.get("seed", seed_value)), run_dir, steps, values, total))
        result = EnvResult(env_id, folder, metric, last, runs, unfinished, empty)
        if runs:
            _fill_stats(result, reps, confidence, bins, seed)
        results[env_id] = result
    return results


def _fill_stats(result: EnvResult, reps: int, confidence: float, bins: int, seed: int) -> None:
    scores = np.array([r.score(result.last) for r in result.runs])
    result.scores = scores
    result.mean = float(np.mean(scores))
    result.std = float(np.std(scores))  # ddof=0, as CleanRL
    result.iqm = float(iqm(scores))
    result.iqm_ci = bootstrap_ci(scores, iqm, reps, confidence, seed)

    horizon = max(max(r.total_steps for r in result.runs), 1)
    edges = np.linspace(0.0, horizon, bins + 1)
    curves = np.stack([binned_curve(r.steps, r.values, edges) for r in result.runs])  # seeds x bins
    result.curve_steps = edges[1:]
    result.curve_seeds = curves
    result.curve_mean = np.full(bins, np.nan)
    result.curve_low = np.full(bins, np.nan)
    result.curve_high = np.full(bins, np.nan)
    complete = ~np.isnan(curves).any(axis=0)  # bins where every seed has had an episode
    if complete.any():
        c = curves[:, complete]
        result.curve_mean[complete] = c.mean(axis=0)
        rng = np.random.default_rng(seed)
        n = c.shape[0]
        boot_reps = min(reps, 2000)
        means = c[rng.integers(0, n, size=(boot_reps, n))].mean(axis=1)  # reps x bins
        alpha = (1.0 - confidence) / 2.0
        result.curve_low[complete], result.curve_high[complete] = np.percentile(means, [100 * alpha, 100 * (1 - alpha)], axis=0)


# ---------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{x:.2f}" if abs(x) < 1e6 else f"{x:.4g}"


def load_reference(path: str) -> dict[str, str]:
    """Published numbers to show beside ours: env id -> text.

    JSON: ``{"Hopper-v4": 2300, "Walker2d-v4": {"mean": 3400, "std": 500, "source": "CleanRL"}, ...}``
    (a value may also be a string).  CSV: a header with ``env_id`` (or ``env``) and ``mean``
    (or ``score`` / ``reference``), optional ``std`` and ``source`` columns.
    """
    def text(entry) -> str:
        if isinstance(entry, dict):
            value = entry.get("mean", entry.get("score", entry.get("reference")))
            out = _fmt(float(value)) if value not in (None, "") else ""
            if entry.get("std") not in (None, ""):
                out += f" ± {_fmt(float(entry['std']))}"
            if entry.get("source"):
                out += f" ({entry['source']})"
            return out.strip()
        if isinstance(entry, (int, float)):
            return _fmt(float(entry))
        return str(entry)

    if not os.path.isfile(path):
        raise ConfigError(f"reference file {path!r} does not exist")
    if path.endswith(".json"):
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object env id -> number / {{mean, std}}")
        return {str(k): text(v) for k, v in data.items()}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for row in rows:
        env = row.get("env_id") or row.get("env")
        if env is None:
            raise ConfigError(f"{path}: the CSV needs an env_id (or env) column")
        out[env] = text(row)
    return out


def _env_line(r: EnvResult, reference: dict[str, str] | None) -> list[str]:
    if r.runs:
        per_seed = ", ".join(f"{_fmt(s)}" for s in r.scores)
        first = ", ".join(f"{_fmt(run.first_score(r.last))}" for run in r.runs)
        cells = [f"`{r.env_id}`", str(len(r.runs)), first, per_seed, f"{_fmt(r.mean)} ± {_fmt(r.std)}",
                 f"{_fmt(r.iqm)} [{_fmt(r.iqm_ci[0])}, {_fmt(r.iqm_ci[1])}]"]
    else:
        cells = [f"`{r.env_id}`", "0", "", "", "n/a", "n/a"]
    if reference is not None:
        cells.append(reference.get(r.env_id, reference.get(r.folder, "")))
    return cells


def render_report(out_dir: str, reference: dict[str, str] | str | None = None, results: dict[str, EnvResult] | None = None,
                  plots: bool = True, **aggregate_kwargs) -> str:
    """The markdown report of a bench folder (``reference``: a dict from load_reference, or its path)."""
    if isinstance(reference, str):
        reference = load_reference(reference)
    if results is None:
        results = aggregate(out_dir, **aggregate_kwargs)
    any_result = next(iter(results.values()), None)
    metric = any_result.metric if any_result else aggregate_kwargs.get("metric", "return")
    last = any_result.last if any_result else aggregate_kwargs.get("last", 100)
    what = f"episodic return over its last {last} episodes" if metric == "return" else \
        f"`{metric}` over its last {last} update records"
    header = ["env", "seeds", f"first {last} per seed", "score per seed", "mean ± std", "IQM [95% CI]"] + (["reference"] if reference is not None else [])
    lines = [f"# Benchmark report: `{os.path.abspath(out_dir)}`", "",
             f"Score of a seed: mean {what} (CleanRL's score). "
             "std: ddof=0 (np.std, as CleanRL). IQM: interquartile mean across seeds (rliable, trim 25% each end); "
             "CI: 95% percentile bootstrap over seeds (rliable's get_interval_estimates).", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in results.values():
        lines.append("| " + " | ".join(_env_line(r, reference)) + " |")
    left_out = [(r.env_id, d, "unfinished (no summary.json)") for r in results.values() for d in r.unfinished]
    left_out += [(r.env_id, d, f"no {metric} values") for r in results.values() for d in r.empty]
    if left_out:
        lines += ["", "Left out:", ""]
        lines += [f"- `{env}` {os.path.relpath(d, out_dir)}: {why}" for env, d, why in left_out]
    curves = [r for r in results.values() if r.runs]
    if curves and plots:  # (--no-plots: no PNG, so no link to one)
        # "./" and %3A: a module:Id folder would read as a URI scheme ("myenvs:") and the link would not open the file
        lines += ["", "Learning curves: " + ", ".join(f"[{r.env_id}](./{r.folder.replace(':', '%3A')}.png)" for r in curves)]
    return "\n".join(lines) + "\n"


def write_csv(path: str, results: dict[str, EnvResult], reference: dict[str, str] | None = None) -> None:
    columns = ["env_id", "num_seeds", "seeds", "scores", "mean", "std", "iqm", "iqm_ci_low", "iqm_ci_high",
               "metric", "last", "unfinished"] + (["reference"] if reference is not None else [])
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in results.values():
            row = [r.env_id, len(r.runs), " ".join(map(str, r.seeds)), " ".join(repr(float(s)) for s in r.scores),
                   r.mean, r.std, r.iqm, r.iqm_ci[0], r.iqm_ci[1], r.metric, r.last, len(r.unfinished)]
            if reference is not None:
                row.append(reference.get(r.env_id, reference.get(r.folder, "")))
            writer.writerow(row)


def plot_curves(results: list[EnvResult], path: str, reference: dict[str, str] | None = None) -> None:
    """Every env's curve (mean and 95% band over seeds) in one figure, a panel per env; a reference number, where
    one is given, as a dashed line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, len(results))
    rows = math.ceil(len(results) / cols)
    fig = Figure(figsize=(4.5 * cols, 3.3 * rows), dpi=100)
    FigureCanvasAgg(fig)
    for i, r in enumerate(results):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot(r.curve_steps, r.curve_mean, color="tab:blue", linewidth=1.8, label=f"mean of {len(r.runs)} seeds")
        ax.fill_between(r.curve_steps, r.curve_low, r.curve_high, color="tab:blue", alpha=0.25, linewidth=0)
        value = _reference_value(reference.get(r.env_id, reference.get(r.folder)) if reference else None)
        if value is not None:
            ax.axhline(value, color="tab:red", linestyle="--", linewidth=1, label="reference")
        ax.set_title(r.env_id, fontsize="medium")
        ax.set_xlabel("env steps", fontsize="small")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize="x-small", loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def _reference_value(text: str | None) -> float | None:
    """The leading number of a reference cell ("-73.50 (RL-Zoo)" -> -73.5), or None."""
    match = re.match(r"\s*(-?[\d.,]+)", text or "")
    try:
        return float(match.group(1).replace(",", "")) if match else None
    except ValueError:
        return None


def plot_curve(result: EnvResult, path: str) -> None:
    """Mean across seeds with the 95% bootstrap band, each seed thin; Agg canvas, no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = result.curve_steps
    for seed, curve in zip(result.seeds, result.curve_seeds):
        ax.plot(x, curve, color="tab:blue", alpha=0.25, linewidth=0.8)
    ax.plot(x, result.curve_mean, color="tab:blue", linewidth=2, label=f"mean of {len(result.runs)} seeds")
    ax.fill_between(x, result.curve_low, result.curve_high, color="tab:blue", alpha=0.25, linewidth=0, label="95% bootstrap CI of the mean")
    ax.set_title(result.env_id)
    ax.set_xlabel("env steps")
    ax.set_ylabel("episodic return" if result.metric == "return" else result.metric)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)


def write_report(out_dir: str, reference: dict[str, str] | str | None = None, plots: bool = True,
                 **aggregate_kwargs) -> tuple[dict[str, EnvResult], str, list[str]]:
    """aggregate + OUT/report.md + OUT/report.csv + OUT/<env>.png; returns (results, markdown, files written)."""
    if isinstance(reference, str):
        reference = load_reference(reference)
    results = aggregate(out_dir, **aggregate_kwargs)
    markdown = render_report(out_dir, reference, results=results, plots=plots, **aggregate_kwargs)
    files = [os.path.join(out_dir, "report.md"), os.path.join(out_dir, "report.csv")]
    with open(files[0], "w") as f:
        f.write(markdown)
    write_csv(files[1], results, reference)
    if plots:
        for r in results.values():
            if r.runs:
                files.append(os.path.join(out_dir, f"{r.folder}.png"))
                plot_curve(r, files[-1])
        if sum(bool(r.runs) for r in results.values()) > 1:
            files.append(os.path.join(out_dir, "curves.png"))
            plot_curves([r for r in results.values() if r.runs], files[-1], reference)
    return results, markdown, files


def compare_reports(new_dir: str, old_dir: str, plots: bool = True, reps: int = 2000, confidence: float = 0.95,
                    **aggregate_kwargs) -> tuple[str, list[str]]:
    """NEW vs OLD bench folders: per shared env P(NEW > OLD) with its CI, both IQMs and a score-profile PNG; the mean
    over envs.  Writes NEW/compare.md (and NEW/compare_<env>.png); returns (markdown, files written)."""
    new, old = aggregate(new_dir, **aggregate_kwargs), aggregate(old_dir, **aggregate_kwargs)
    shared = [env for env in new if env in old and new[env].runs and old[env].runs]
    if not shared:
        raise ConfigError(f"no env has finished runs in both {new_dir!r} and {old_dir!r} "
                          f"(new: {', '.join(new) or 'none'}; old: {', '.join(old) or 'none'})")
    lines = [f"# `{os.path.abspath(new_dir)}` (new) against `{os.path.abspath(old_dir)}` (old)", "",
             "P(new > old): the chance that a random seed of the new folder scores above a random seed of the old one "
             "(rliable's probability of improvement: Mann-Whitney U / (n m), ties 1/2); 0.5 is no difference. CI: "
             f"{confidence:.0%} stratified bootstrap over each folder's seeds ({reps} resamples). A CI that holds 0.5 "
             "is no evidence either way.", "",
             "| env | seeds (new / old) | IQM new [CI] | IQM old [CI] | P(new > old) [CI] |", "|---|---|---|---|---|"]
    files = [os.path.join(new_dir, "compare.md")]
    for env in shared:
        a, b = new[env], old[env]
        point, low, high = improvement_ci([(a.scores, b.scores)], reps, confidence)
        lines.append(f"| `{env}` | {len(a.runs)} / {len(b.runs)} | {_fmt(a.iqm)} [{_fmt(a.iqm_ci[0])}, {_fmt(a.iqm_ci[1])}] | "
                     f"{_fmt(b.iqm)} [{_fmt(b.iqm_ci[0])}, {_fmt(b.iqm_ci[1])}] | {point:.2f} [{low:.2f}, {high:.2f}] |")
        if plots:
            files.append(os.path.join(new_dir, f"compare_{a.folder}.png"))
            plot_profiles(env, {"new": a.scores, "old": b.scores}, files[-1])
    if len(shared) > 1:
        point, low, high = improvement_ci([(new[e].scores, old[e].scores) for e in shared], reps, confidence)
        lines += ["", f"Over the {len(shared)} shared envs: mean P(new > old) = **{point:.2f}** [{low:.2f}, {high:.2f}]."]
    only = sorted(set(new) ^ set(old))
    if only:
        lines += ["", "In one folder only (not compared): " + ", ".join(f"`{e}`" for e in only)]
    if plots:
        lines += ["", "Score profiles: " + ", ".join(f"[{e}](compare_{new[e].folder}.png)" for e in shared)]
    markdown = "\n".join(lines) + "\n"
    with open(files[0], "w") as f:
        f.write(markdown)
    return markdown, files


def plot_profiles(env_id: str, scores: dict[str, np.ndarray], path: str) -> None:
    """The run-score profile of each folder: fraction of seeds above tau, over tau."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    every = np.concatenate(list(scores.values()))
    span = max(float(every.max() - every.min()), 1e-9)
    taus = np.linspace(every.min() - 0.05 * span, every.max() + 0.05 * span, 200)
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, s in scores.items():
        ax.step(taus, score_profile(s, taus), where="post", label=f"{label} ({len(s)} seeds)")
    ax.set_title(f"{env_id}: score profile")
    ax.set_xlabel("score tau")
    ax.set_ylabel("fraction of seeds with score > tau")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)


def cmd_report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rlkit report", description="Aggregate a folder written by rlkit bench (OUT/<env>/seed_<s>/): per env the "
        "per-seed score (mean return of the last 100 training episodes, CleanRL's), mean ± std (ddof=0), the IQM with "
        "a 95% percentile-bootstrap CI over seeds (rliable's), and a learning-curve PNG. Writes OUT/report.md, "
        "OUT/report.csv and OUT/<env>.png. Runs without summary.json are unfinished: listed, left out.")
    parser.add_argument("out", help="the bench output folder")
    parser.add_argument("--reference", default=None, help="published numbers to show beside ours: a JSON "
                        "{env_id: number or {mean, std, source}} or a CSV with env_id,mean[,std,source] columns")
    parser.add_argument("--last", type=int, default=100, help="episodes per seed in the score (default: 100)")
    parser.add_argument("--metric", default="return", help="'return' (episode records, default) or a key of the "
                        "update records, e.g. 'score' or 'gold' for RLHF runs")
    parser.add_argument("--reps", type=int, default=50_000, help="bootstrap resamples (default: 50000, as rliable)")
    parser.add_argument("--bins", type=int, default=100, help="env-step bins of the learning curves (default: 100)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    parser.add_argument("--compare", default=None, metavar="OLD", help="also judge OUT against another bench folder: per "
                        "shared env P(OUT > OLD) with a stratified-bootstrap CI and a score-profile PNG (OUT/compare.md)")
    args = parser.parse_args(argv)
    if args.last <= 0 or args.reps <= 0 or args.bins <= 0:
        raise ConfigError("--last, --reps and --bins must be > 0")
    results, markdown, files = write_report(args.out, args.reference, plots=not args.no_plots, last=args.last,
                                            metric=args.metric, reps=args.reps, bins=args.bins)
    print(markdown)
    if not results:  # a wrong folder: a usage error (exit 1 means non-finite returns)
        raise ConfigError(f"no OUT/<env>/seed_<s>/ runs under {args.out}: give the folder `rlkit bench --out` wrote")
    if args.compare is not None:
        compared, compare_files = compare_reports(args.out, args.compare, plots=not args.no_plots,
                                                  reps=min(args.reps, 2000), last=args.last, metric=args.metric,
                                                  bins=args.bins)
        print(compared)
        files += compare_files
    print("wrote: " + ", ".join(files))
    return 0 if any(r.runs for r in results.values()) else 1
