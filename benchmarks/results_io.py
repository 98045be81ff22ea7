"""Writing a benchmark's results: results.json (the numbers) and results.md (the table), then echoing the table;
and an earlier revision of this repo checked out beside it, for the *_vs_revision benchmarks."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def revision_tree(rev: str) -> Iterator[tuple[str, str, str]]:
    """(path of a temporary git worktree at ``rev``, rev's short hash, a label of this checkout), removed afterwards."""
    short, head = git("rev-parse", "--short", rev), git("rev-parse", "--short", "HEAD")
    now = f"{head}{' + uncommitted changes' if git('status', '--porcelain', 'rlkit', 'envs') else ''}"
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, "then")
        git("worktree", "add", "--detach", tree, short)
        try:
            yield tree, short, now
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=ROOT, capture_output=True)


def write_results(out: str, payload: dict, lines: list[str]) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(payload, f, indent=2)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out}/results.json and results.md")


def interleaved_step_times(ways: dict[str, Callable], actions, repeat: int) -> dict[str, float]:
    """µs per call of each way's step over the pre-drawn ``actions``, the ways in alternating order by repeat."""
    times = {}
    for name in (list(ways) if repeat % 2 == 0 else list(reversed(ways))):
        start = time.perf_counter()
        for a in actions:
            ways[name](a)
        times[name] = 1e6 * (time.perf_counter() - start) / len(actions)
    return times


def medians(rows: list[dict], ratio: tuple[str, str]) -> tuple[Callable[[str], float], float]:
    """(median of a key over ``rows``, median of the per-row ratio ratio[0] / ratio[1])."""
    return (lambda key: statistics.median(r[key] for r in rows),
            statistics.median(r[ratio[0]] / r[ratio[1]] for r in rows))
