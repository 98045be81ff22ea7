"""Run folders: one owner at a time, one lineage, nothing lost.

- **Ownership.**  A training holds ``<run folder>/rlkit.lock`` (an OS lock, ``fcntl.flock``, with
  the owner's pid, host and start time in the file) for as long as it runs.  A second training
  or resume of the same folder refuses with one line naming the owner.  The OS drops the lock
  when its process dies (even ``kill -9``); the dead owner's pid left in the file is then taken
  over, with a note.
- **A new run never writes into another run.**  A folder that already holds a run (config.json,
  metrics.jsonl, summary.json or checkpoints/) is refused for a new run with one line that says
  to ``--resume`` it or to choose another run name; with ``new_folder`` (``--new-folder``) the
  new run goes to the first free ``<name>-2``, ``<name>-3``, ...  A generated run name that
  collides is numbered the same way without asking.
- **Resume from any checkpoint starts a lineage.**  Resuming from a checkpoint older than the
  newest moves the newer checkpoints, summary.json and the metrics lines written after the
  checkpoint into ``abandoned/<time>/`` (never deleted) and notes the branch point in the
  run's log; the metrics offset the checkpoint saved is checked against the file first.
- **Leftovers.**  ``.tmp-*`` folders of a write that never finished (a crash, a full disk) are
  removed when the folder is next claimed; no other process can be writing them then.

It knows no algorithm: it moves files and holds a lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from rlkit.checkpoint import CHECKPOINT_DIR, PREFIX, checkpoint_update
from rlkit.errors import CheckpointError, ConfigError, ExportError, RunFolderError

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: the pid file alone)
    fcntl = None

LOCK_FILE = "rlkit.lock"
ABANDONED = "abandoned"
RUN_MARKERS = ("config.json", "metrics.jsonl", "summary.json", CHECKPOINT_DIR)
MAX_NAME_BYTES = 200
"""a run name (or exp_name) longer than this would make folder names the file system refuses"""


# ---------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------


def check_name(name: object, key: str = "run name") -> str:
    """A run name / exp_name: a non-empty single folder name (no path separators, not . or ..)."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{key} must be a non-empty name, got {name!r}")
    bad = [c for c in ("/", "\\", "\0") if c in name] + ([os.sep] if os.sep in name else [])
    if bad or name in (".", ".."):
        raise ConfigError(f"{key} {name!r} must be one folder name: no '/', '\\', NUL, '.' or '..'")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise ConfigError(f"{key} is {len(name)} characters long; use at most {MAX_NAME_BYTES} bytes")
    if any(ord(c) < 32 for c in name):
        raise ConfigError(f"{key} {name!r} contains control characters")
    return name


def holds_run(path: str) -> list[str]:
    """The run files in ``path`` (empty: no run there)."""
    if not os.path.isdir(path):
        return []
    return [name for name in RUN_MARKERS if os.path.exists(os.path.join(path, name))]


def numbered(path: str) -> str:
    """The first of ``path``-2, ``path``-3, ... that holds no run."""
    k = 2
    while holds_run(f"{path}-{k}") or os.path.exists(os.path.join(f"{path}-{k}", LOCK_FILE)) and _locked(f"{path}-{k}"):
        k += 1
    return f"{path}-{k}"


# ---------------------------------------------------------------------------------
# The lock
# ---------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def read_owner(path: str) -> dict:
    """The lock file's owner record ({} when empty or unreadable)."""
    try:
        with open(path) as f:
            text = f.read().strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}


_HELD: weakref.WeakValueDictionary[str, RunFolderLock] = weakref.WeakValueDictionary()
"""locks this process holds, by real path (a lock left by a failed start in this thread is taken over)"""


def _locked(folder: str) -> bool:
    """Whether another holder has the lock of ``folder`` (without taking it)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also drops the lock just taken
    return False


class RunFolderLock:
    """``fcntl.flock`` on ``<folder>/rlkit.lock``, held until :meth:`release` (or the process ends)."""

    def __init__(self, folder: str):
        self.folder = os.path.abspath(folder)
        self.path = os.path.join(self.folder, LOCK_FILE)
        self.fd: int | None = None
        self.thread = threading.get_ident()
        self.running = False  # inside a Lifecycle.run: a second claim from this thread is refused too
        self._finalizer = None

    def acquire(self) -> str | None:
        """Take the lock; returns a note when a dead owner's lock was taken over."""
        os.makedirs(self.folder, exist_ok=True)
        key = os.path.realpath(self.path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._lock(fd, key)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self._finalizer = weakref.finalize(self, os.close, fd)
        _HELD[key] = self
        previous = read_owner(self.path)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        pid = previous.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and previous.get("host") in (None, record["host"]) \
                and not pid_alive(pid):
            return f"took over the lock of pid {pid}, which is no longer running (it stopped without releasing {self.path})"
        return None

    def _lock(self, fd: int, key: str) -> None:
        if fcntl is None:
            return
        for attempt in range(2):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                holder = _HELD.get(key)
                if attempt == 0 and holder is not None and holder.thread == threading.get_ident() and not holder.running:
                    holder.release()  # left by a start in this thread that failed before training: stale
                    continue
                owner = read_owner(self.path)
                who = f"pid {owner['pid']}" if "pid" in owner else "another process"
                if owner.get("host") and owner["host"] != socket.gethostname():
                    who += f" on {owner['host']}"
                since = f" since {owner['started']}" if "started" in owner else ""
                raise RunFolderError(f"{self.folder} is in use by another training ({who}{since}; lock {self.path}): "
                                     "wait for it to finish or stop it, or choose another run name") from None
            except OSError as error:
                if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    return  # a file system without locks (some network mounts): the pid file alone
                raise

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, 0)  # an empty lock file: released cleanly
        except OSError:
            pass
        if self._finalizer is not None:
            self._finalizer.detach()
        os.close(fd)  # closing drops the flock
        key = os.path.realpath(self.path)
        if _HELD.get(key) is self:
            del _HELD[key]


# ---------------------------------------------------------------------------------
# Claiming a folder
# ---------------------------------------------------------------------------------


@dataclass
class RunFolder:
    """A claimed run folder: its path, its lock, and the notes for the run's log."""

    path: str
    lock: RunFolderLock | None = None
    notes: list[str] = field(default_factory=list)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def discard_if_unused(self) -> None:
        """Release the folder, and remove it when it holds only its lock (a run refused before it began)."""
        self.release()
        try:
            if self.lock is not None and set(os.listdir(self.path)) <= {LOCK_FILE}:
                shutil.rmtree(self.path, ignore_errors=True)
        except OSError:
            pass


def claim_new(path: str, *, if_exists: str = "refuse", enabled: bool = True, resume_command: str = "rlkit train --resume",
              new_folder_flag: str | None = "--new-folder") -> RunFolder:
    """The folder of a new run, locked.  ``if_exists`` when ``path`` already holds a run:
    ``refuse`` (one line: resume it or choose another name), ``number`` (the first free ``path-k``),
    or ``abandon`` (its run files are moved to ``abandoned/<time>/`` and the folder starts fresh).
    ``resume_command`` / ``new_folder_flag`` (None: there is none) are what the refusal suggests."""
    check_name(os.path.basename(os.path.normpath(path)) if path else "", "run name")
    if not enabled:
        return RunFolder(os.path.abspath(path))
    notes = []
    for _ in range(1000):
        found = holds_run(path)
        if found and if_exists == "number":
            path = numbered(path)
            continue
        if found and if_exists == "refuse":
            elsewhere = f", or pass {new_folder_flag} to start it in {numbered(path)}" if new_folder_flag else ""
            raise RunFolderError(
                f"{path} already holds a run ({', '.join(found)}): continue it with `{resume_command} {path}`"
                f"{', ' if elsewhere else ' or '}choose another run name (--run-name){elsewhere}")
        lock = RunFolderLock(path)
        note = lock.acquire()
        notes += [note] if note else []
        if holds_run(path) and if_exists != "abandon":  # another process got there first and has finished
            lock.release()
            if if_exists == "refuse":
                raise RunFolderError(f"{path} already holds a run: continue it with `{resume_command} {path}` "
                                     "or choose another run name")
            continue
        folder = RunFolder(os.path.abspath(path), lock, notes)
        try:
            folder.notes += remove_temporaries(folder.path)
            if holds_run(path):
                folder.notes.append(abandon(folder.path, RUN_MARKERS, "a new run starts in this folder"))
        except BaseException:
            folder.release()
            raise
        return folder
    raise RunFolderError(f"no free run folder next to {path}")  # pragma: no cover


def claim_resumed(run_dir: str, checkpoint: str, metrics_offset: object, *, enabled: bool = True) -> RunFolder:
    """The folder of a run resumed from ``checkpoint`` (one of its checkpoint folders), locked.

    Checks the checkpoint's metrics offset against metrics.jsonl (an offset past the end, or not
    at a line's end, is a CheckpointError); when ``checkpoint`` is older than the newest, starts a
    new lineage: the newer checkpoints, summary.json and the metrics lines after the offset are
    moved to ``abandoned/<time>/``, and a note records the branch point."""
    run_dir = os.path.abspath(run_dir)
    if not enabled:
        return RunFolder(run_dir)
    lock = RunFolderLock(run_dir)
    notes = [n for n in [lock.acquire()] if n]
    folder = RunFolder(run_dir, lock, notes)
    try:
        folder.notes += remove_temporaries(run_dir)
        check_metrics_offset(run_dir, checkpoint, metrics_offset)
        note = branch(run_dir, checkpoint, metrics_offset)
        if note:
            folder.notes.append(note)
    except BaseException:
        folder.release()
        raise
    return folder


def check_metrics_offset(run_dir: str, checkpoint: str, offset: object) -> None:
    """The saved offset must be a whole number of bytes within metrics.jsonl, at the end of a line."""
    path = os.path.join(run_dir, "metrics.jsonl")
    state = os.path.join(checkpoint, "state.json")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise CheckpointError(f"{state}: metrics_offset must be a byte count >= 0, got {offset!r}")
    if not os.path.exists(path):
        return
    size = os.path.getsize(path)
    if offset > size:
        raise CheckpointError(f"{state}: metrics_offset {offset} is past the end of {path} ({size} bytes): the "
                              "checkpoint and the metrics file are from different runs; resume from the run's own "
                              "checkpoints, or move metrics.jsonl away to start a fresh one")
    if offset:
        with open(path, "rb") as f:
            f.seek(offset - 1)
            if f.read(1) != b"\n":
                raise CheckpointError(f"{state}: metrics_offset {offset} is not at the end of a line of {path}: the "
                                      "metrics file was changed after the checkpoint; move it away to start a fresh one")


def branch(run_dir: str, checkpoint: str, metrics_offset: int) -> str | None:
    """Resuming from ``checkpoint``: when newer checkpoints exist, move them (and summary.json, and the
    metrics written after the checkpoint, and best/ when it was written after the checkpoint) into
    abandoned/<time>/; returns the note, or None."""
    update = checkpoint_update(checkpoint)
    folder = os.path.join(run_dir, CHECKPOINT_DIR)
    if update is None or os.path.dirname(os.path.abspath(checkpoint)) != os.path.abspath(folder):
        return None  # a checkpoint from elsewhere (best/, another folder): the run's own stay as they are
    newer = sorted(n for n in os.listdir(folder) if n.startswith(PREFIX) and (checkpoint_update(n) or -1) > update)
    best = os.path.join(run_dir, BEST_DIR)
    best_is_newer = _saved_update(best) > update  # evaluated after the checkpoint: not this lineage's
    if not newer and not best_is_newer:
        return None
    target = abandoned_folder(run_dir)
    os.makedirs(os.path.join(target, CHECKPOINT_DIR))
    for name in newer:
        os.rename(os.path.join(folder, name), os.path.join(target, CHECKPOINT_DIR, name))
    moved = [f"checkpoints/{n}" for n in newer]
    if best_is_newer:
        os.rename(best, os.path.join(target, BEST_DIR))
        moved.append(f"{BEST_DIR}/")
    summary = os.path.join(run_dir, "summary.json")
    if os.path.exists(summary):
        os.rename(summary, os.path.join(target, "summary.json"))
        moved.append("summary.json")
    metrics = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(metrics) and os.path.getsize(metrics) > metrics_offset:
        with open(metrics, "rb") as source, open(os.path.join(target, "metrics.after.jsonl"), "wb") as tail:
            source.seek(metrics_offset)
            shutil.copyfileobj(source, tail)
        moved.append(f"the metrics after byte {metrics_offset} (metrics.after.jsonl)")
    with open(os.path.join(target, "branch.json"), "w") as f:
        json.dump({"resumed_from": os.path.basename(checkpoint), "update": update, "moved": moved,
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, f, indent=2)
    return (f"resumed from {os.path.basename(checkpoint)} (update {update}), older than the newest checkpoint: a new "
            f"lineage starts here; moved {', '.join(moved)} to {os.path.relpath(target, run_dir)}/ (nothing deleted)")


BEST_DIR = "best"  # rlkit.evaluate.PeriodicEvaluation's best weights so far


def _saved_update(folder: str) -> int:
    """The update a checkpoint-form folder (best/) was written at; -1 when there is none."""
    try:
        with open(os.path.join(folder, "state.json")) as f:
            state = json.load(f)
        return int(state["iteration"] if "iteration" in state else state["update"])  # rlkit.ppo's / rlkit.rlhf's
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def abandoned_folder(run_dir: str) -> str:
    base = os.path.join(run_dir, ABANDONED, time.strftime("%Y%m%d-%H%M%S"))
    target, k = base, 2
    while os.path.exists(target):
        target, k = f"{base}-{k}", k + 1
    return target


def abandon(run_dir: str, names: tuple[str, ...], why: str) -> str:
    """Move ``names`` (those present) from ``run_dir`` into abandoned/<time>/; returns the note."""
    target = abandoned_folder(run_dir)
    os.makedirs(target)
    moved = []
    for name in names:
        if os.path.exists(os.path.join(run_dir, name)):
            os.rename(os.path.join(run_dir, name), os.path.join(target, name))
            moved.append(name)
    for name in os.listdir(run_dir):  # TensorBoard event files of the old run
        if name.startswith("events.out.tfevents."):
            os.rename(os.path.join(run_dir, name), os.path.join(target, name))
    return f"{why}: moved the earlier run's {', '.join(moved)} to {os.path.relpath(target, run_dir)}/ (nothing deleted)"


def remove_temporaries(run_dir: str) -> list[str]:
    """Remove the ``.tmp-*`` folders of writes that never finished (the caller holds the lock)."""
    removed = []
    for parent in (run_dir, os.path.join(run_dir, CHECKPOINT_DIR)):
        if not os.path.isdir(parent):
            continue
        for name in sorted(os.listdir(parent)):
            path = os.path.join(parent, name)
            if name.startswith(".tmp-") and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(os.path.relpath(path, run_dir))
    if not removed:
        return []
    return [f"removed {len(removed)} unfinished temporary folder(s) left by an earlier crash: {', '.join(removed)}"]


# ---------------------------------------------------------------------------------
# Output folders that replace an earlier one whole (exports)
# ---------------------------------------------------------------------------------


@contextlib.contextmanager
def replace_folder(out: str, is_previous: Callable[[str], bool], what: str = "an rlkit export",
                   extras: Callable[[str], list[str] | None] | None = None):
    """Write a folder atomically: yields a temporary sibling to fill; on success it becomes ``out``.

    ``out`` must be new, an empty folder, or one ``is_previous`` recognises (an earlier output of
    the same kind), which is then replaced completely, never merged with (no stale file survives);
    one that also holds files of someone else's (``extras`` names them) is refused saying so.
    Anything else is refused with an ExportError before a byte is written.  On an error the
    temporary folder is removed and ``out`` is as it was."""
    out = os.path.abspath(out)
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise ExportError(f"{out} is a file; give a new folder (or an empty one) to write {what} to")
        if os.listdir(out) and not is_previous(out):
            foreign = extras(out) if extras is not None else None
            if foreign:  # an earlier output, plus files someone put there: replacing it whole would delete them
                shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
                raise ExportError(f"{out} is {what} that also holds files rlkit did not write ({shown}); replacing it "
                                  "would delete them, so nothing was written: move them out or give a new folder")
            names = sorted(os.listdir(out))
            shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            raise ExportError(f"{out} is not empty ({shown}) and is not {what}; nothing was written: give a new or "
                              "empty folder")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".tmp-{os.path.basename(out)}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    old = None
    try:
        yield staging
        if os.path.isdir(out) and os.listdir(out):
            old = os.path.join(parent, f".old-{os.path.basename(out)}-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(out, old)
        os.replace(staging, out)  # over an empty folder too
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and not os.path.exists(out):
            os.rename(old, out)  # the earlier output back in place
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
