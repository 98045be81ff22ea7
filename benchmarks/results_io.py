"""Writing a benchmark's results: results.json (the numbers) and results.md (the table), then echoing the table;
and an earlier revision of this repo checked out beside it, for the *_vs_revision benchmarks."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator

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
