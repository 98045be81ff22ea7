"""Nothing lost, nothing overwritten (issue #20): run-folder ownership and lineage, safe resume from
any checkpoint, one error path with an exit code per class, validated checkpoints and exports.

Each test is one finding of the fault survey; each failed before the fix.  The fuzz test at the
end drives the CLI's own entry (rlkit.cli.main) with generated recipes and overrides: every case
ends in a valid config or in one line with a documented exit code, never in a traceback."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from rlkit.checkpoint import file_sha256, list_checkpoints, load_checkpoint, resolve_checkpoint, save_checkpoint
from rlkit.cli import main
from rlkit.errors import EXIT_CODES, RunFolderError
from rlkit.ppo import PPOConfig, train, user_fields
from rlkit.runfolder import LOCK_FILE, RunFolderLock
from rlkit.runtime import Callback

TINY = ["--num_envs", "2", "--num_steps", "16", "--num_minibatches", "2", "--update_epochs", "1",
        "--checkpoint_interval", "1", "--keep_checkpoints", "3", "--no-progress"]
"""a cartpole run of 32-step updates: a second or so a run"""


def _train(tmp_path, name: str, steps: int = 128, *extra: str) -> int:
    return main(["train", "cartpole", "--total_timesteps", str(steps), "--run_dir", str(tmp_path), "--run-name", name,
                 *TINY, *extra])


def _lines(run) -> list[dict]:
    with open(os.path.join(run, "metrics.jsonl"), "rb") as f:
        data = f.read()
    assert b"\0" not in data
    return [json.loads(line) for line in data.decode().splitlines()]


def _updates(run) -> list[int]:
    return [r["iteration"] for r in _lines(run) if r["kind"] == "update"]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlkit: ") and "Traceback" not in err[0], err
    return err[0]


class StopAfter(Callback):
    def __init__(self, updates: int):
        self.updates = updates

    def on_update(self, run, iteration, stats):
        self.updates -= 1
        return self.updates > 0


class SigintAfter(Callback):
    """A Ctrl-C after ``updates`` updates: the run checkpoints and stops, to be resumed."""

    def __init__(self, updates: int):
        self.updates = updates

    def on_update(self, run, iteration, stats):
        self.updates -= 1
        if self.updates == 0:
            os.kill(os.getpid(), signal.SIGINT)
        return True


# ---------------------------------------------------------------------------------
# 1. Run-name reuse
# ---------------------------------------------------------------------------------


def test_a_new_run_in_a_folder_that_holds_a_run_is_refused_and_new_folder_numbers_it(tmp_path, capsys):
    assert _train(tmp_path, "X", 256) == 0  # 8 updates: checkpoints 6, 7, 8
    run = tmp_path / "X"
    before = {name: (run / name).read_bytes() for name in ("config.json", "metrics.jsonl", "summary.json")}
    capsys.readouterr()
    assert _train(tmp_path, "X", 64, "--seed", "7") == EXIT_CODES["run_folder"]
    line = _one_line(capsys)
    assert str(run) in line and "--resume" in line and "--new-folder" in line
    assert {name: (run / name).read_bytes() for name in before} == before  # nothing appended, nothing overwritten
    assert [os.path.basename(c) for c in list_checkpoints(str(run))] == [f"update_000000{k}" for k in (6, 7, 8)]
    # --new-folder: the new run goes next door, the old one stays what `rlkit eval X` evaluates
    assert _train(tmp_path, "X", 64, "--seed", "7", "--new-folder") == 0
    second = tmp_path / "X-2"
    assert json.loads((second / "config.json").read_text())["seed"] == 7
    assert [os.path.basename(c) for c in list_checkpoints(str(second))] == ["update_0000001", "update_0000002"]
    assert json.loads((run / "config.json").read_text())["seed"] == 1


def test_pruning_keeps_the_checkpoints_of_the_current_lineage_only(tmp_path):
    for update in (80, 90, 100):  # another lineage's, numbered after this run's
        save_checkpoint(str(tmp_path), update, {"model": {"w": torch.zeros(1)}}, {"i": update}, keep=3)
    for update in range(1, 6):
        save_checkpoint(str(tmp_path), update, {"model": {"w": torch.ones(1)}}, {"i": update}, keep=3)
    names = [os.path.basename(c) for c in list_checkpoints(str(tmp_path))]
    assert names == ["update_0000003", "update_0000004", "update_0000005", "update_0000080", "update_0000090",
                     "update_0000100"]


# ---------------------------------------------------------------------------------
# 2. Two writers; a stale lock
# ---------------------------------------------------------------------------------

_HOLDER = """
import sys, time
from rlkit.runfolder import RunFolderLock
lock = RunFolderLock(sys.argv[1]); lock.acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_training_or_resume_of_a_folder_in_use_is_refused_and_a_dead_owner_is_taken_over(tmp_path, capsys):
    assert _train(tmp_path, "r", 64) == 0
    run = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert main(["train", "--resume", str(run), "--total_timesteps", "128", "--no-progress"]) == EXIT_CODES["run_folder"]
        line = _one_line(capsys)
        assert "in use by another training" in line and f"pid {holder.pid}" in line
        assert _updates(run) == [1, 2]  # the refused resume wrote nothing
        with pytest.raises(RunFolderError, match="in use"):
            RunFolderLock(str(run)).acquire()
    finally:
        holder.kill()
        holder.wait()
    # the owner died without releasing (kill -9): the OS dropped the lock; its pid is taken over, with a note
    assert main(["train", "--resume", str(run), "--total_timesteps", "128", "--no-progress"]) == 0
    notes = [r["text"] for r in _lines(run) if r["kind"] == "note"]
    assert any(f"took over the lock of pid {holder.pid}" in n for n in notes), notes
    assert _updates(run) == [1, 2, 3, 4]
    assert (run / LOCK_FILE).read_text() == ""  # released at the end


def _records(run) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "SPS"} for r in _lines(run) if r["kind"] in ("update", "episode")]


def test_kill_9_at_seeded_random_moments_then_resume_is_the_uninterrupted_run(tmp_path):
    import random

    rng = random.Random(20)
    steps = "480"  # 15 updates
    assert _train(tmp_path, "full", int(steps)) == 0
    full = load_checkpoint(str(tmp_path / "full"))[0]["model"]
    for attempt in range(2):
        name = f"killed{attempt}"
        run = tmp_path / name
        command = [sys.executable, "-m", "rlkit.cli", "train", "cartpole", "--total_timesteps", steps, "--run_dir",
                   str(tmp_path), "--run-name", name, *TINY]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 90
        while not list_checkpoints(str(run)) and process.poll() is None:
            assert time.time() < deadline
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        process.kill()  # SIGKILL: no handler runs, the lock is dropped by the OS
        process.wait()
        assert main(["train", "--resume", str(run), "--no-progress"]) == 0
        resumed = load_checkpoint(str(run))[0]["model"]
        assert all(torch.equal(full[k], resumed[k]) for k in full)
        assert _records(run) == _records(tmp_path / "full")


# ---------------------------------------------------------------------------------
# 3. Resume from an older checkpoint, then resume again; metrics offsets; leftovers
# ---------------------------------------------------------------------------------


def test_resume_from_an_older_checkpoint_starts_a_lineage_and_a_later_resume_continues_it(tmp_path):
    cfg = PPOConfig(env_id="CartPole-v1", num_envs=2, num_steps=16, num_minibatches=2, update_epochs=1,
                    total_timesteps=2 * 16 * 6, checkpoint_interval=1, keep_checkpoints=10, device="cpu",
                    run_dir=str(tmp_path))
    full = train(cfg, run_name="r", progress=False)
    run = tmp_path / "r"
    # from update 2, stopped after one update by a Ctrl-C: update 3 is the new lineage's newest
    branch = train(resume=str(run / "checkpoints" / "update_0000002"), progress=False, callbacks=[SigintAfter(1)])
    assert branch.global_step == 3 * 32 and branch.interrupted == signal.SIGINT
    assert [os.path.basename(c) for c in list_checkpoints(str(run))] == [f"update_000000{k}" for k in (1, 2, 3)]
    abandoned = [os.path.join(run, "abandoned", d) for d in os.listdir(run / "abandoned")]
    assert len(abandoned) == 1
    kept = sorted(os.listdir(os.path.join(abandoned[0], "checkpoints")))
    assert kept == [f"update_000000{k}" for k in (3, 4, 5, 6)]  # moved, never deleted
    assert json.load(open(os.path.join(abandoned[0], "summary.json")))["global_step"] == 6 * 32
    assert not (run / "summary.json").exists()  # the old run's summary went with it; the stopped lineage has none
    notes = [r["text"] for r in _lines(run) if r["kind"] == "note"]
    assert any("resumed from update_0000002" in n and "new lineage" in n for n in notes)
    # a plain resume now picks the lineage's own newest (update 3), not the abandoned update 6
    resumed = train(resume=str(run), progress=False)
    assert resumed.updates_run == 3 and resumed.global_step == full.global_step
    assert _updates(run) == [1, 2, 3, 4, 5, 6]  # each update once, no NUL padding
    assert resumed.episode_returns == full.episode_returns  # CartPole's state is exact: the same run


def _craft_state(folder, **changes):
    path = os.path.join(folder, "state.json")
    state = json.load(open(path))
    for key, value in changes.items():
        if value is KeyError:
            state.pop(key)
        else:
            state[key] = value
    json.dump(state, open(path, "w"))


def test_a_metrics_offset_past_the_end_of_the_file_is_an_error_not_a_sparse_file(tmp_path, capsys):
    assert _train(tmp_path, "r", 64) == 0
    run = tmp_path / "r"
    _craft_state(list_checkpoints(str(run))[-1], metrics_offset=10**9)
    size = os.path.getsize(run / "metrics.jsonl")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--total_timesteps", "128", "--no-progress"]) == EXIT_CODES["checkpoint"]
    line = _one_line(capsys)
    assert "metrics_offset 1000000000 is past the end" in line and "metrics.jsonl" in line
    assert os.path.getsize(run / "metrics.jsonl") == size


def test_leftover_temporary_folders_are_removed_at_the_next_start(tmp_path):
    assert _train(tmp_path, "r", 64) == 0
    run = tmp_path / "r"
    for leftover in (run / "checkpoints" / ".tmp-update_0000003-99999", run / ".tmp-best-99999"):
        leftover.mkdir()
        (leftover / "model.safetensors").write_bytes(b"half a file")
    assert main(["train", "--resume", str(run), "--total_timesteps", "128", "--no-progress"]) == 0
    assert not [n for n in os.listdir(run / "checkpoints") if n.startswith(".tmp-")]
    assert not (run / ".tmp-best-99999").exists()
    notes = [r["text"] for r in _lines(run) if r["kind"] == "note"]
    assert any("removed 2 unfinished temporary folder(s)" in n for n in notes)


# ---------------------------------------------------------------------------------
# 4. Loading: fall back over incomplete checkpoints; crafted state.json; env_state allow-list
# ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    assert main(["train", "cartpole", "--total_timesteps", "96", "--run_dir", str(root), "--run-name", "r", *TINY]) == 0
    return root / "r"


@pytest.mark.parametrize("damage", ["state.json", "model.safetensors", "empty"])
def test_an_incomplete_newest_checkpoint_is_skipped_with_a_line_saying_why(finished_run, tmp_path, damage, capsys):
    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    newest = list_checkpoints(str(run))[-1]
    if damage == "empty":
        shutil.rmtree(newest)
        os.makedirs(newest)
    else:
        os.remove(os.path.join(newest, damage))
    capsys.readouterr()
    tensors, state = load_checkpoint(str(run))
    assert state["iteration"] == 2 and "model" in tensors
    err = capsys.readouterr().err
    assert f"skipped checkpoint {newest}" in err and ("state.json is missing" if damage != "model.safetensors" else
                                                     "model.safetensors is missing") in err
    assert main(["eval", str(run), "--episodes", "1"]) == 0
    # resuming from it branches: the incomplete folder is kept aside, not deleted
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert os.path.isdir(os.path.join(run, "checkpoints", "update_0000003"))
    assert any(os.path.isdir(os.path.join(run, "abandoned", d, "checkpoints", "update_0000003"))
               for d in os.listdir(run / "abandoned"))


@pytest.mark.parametrize("changes", [
    {"iteration": KeyError}, {"config": KeyError}, {"spaces": KeyError}, {"episodes": KeyError},
    {"iteration": "3"}, {"global_step": -5}, {"metrics_offset": 1.5}, {"env_exact": "yes"}, {"config": [1, 2]},
    {"spaces": {"observation_shape": 4}}, {"episodes": {"returns": None}}, {"format_version": 99},
])
def test_a_crafted_state_json_is_one_line_never_a_traceback(finished_run, tmp_path, changes, capsys):
    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    folder = list_checkpoints(str(run))[-1]
    _craft_state(folder, **changes)
    capsys.readouterr()
    assert main(["train", "--resume", folder, "--no-progress"]) == EXIT_CODES["checkpoint"]  # named: no fallback
    assert os.path.basename(folder) in _one_line(capsys)
    # the run folder itself: the damaged newest is skipped for the one before it
    assert os.path.basename(resolve_checkpoint(str(run))) == "update_0000002"


def test_env_state_is_restored_through_an_allow_list(finished_run, tmp_path):
    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    folder = list_checkpoints(str(run))[-1]
    state = json.load(open(os.path.join(folder, "state.json")))
    chain = state["env_state"]["sub_envs"][0]["chain"]
    base = next(link for link in chain if "gravity" in link)
    base["gravity"] = 0.0  # a crafted checkpoint: no gravity
    next(link for link in chain if "_max_episode_steps" in link)["_max_episode_steps"] = 3  # a 3-step time limit
    json.dump(state, open(os.path.join(folder, "state.json"), "w"))

    seen = {}

    class Look(Callback):
        def on_start(self, run_):
            from rlkit.envs.factory import _sub_env_chain

            env = run_.context["envs"].unwrapped.envs[0]
            limit = next(link for link in _sub_env_chain(env) if hasattr(link, "_max_episode_steps"))
            seen.update(gravity=env.unwrapped.gravity, limit=env.spec.max_episode_steps, steps=limit._max_episode_steps)

    result = train(resume=str(run), total_timesteps=128, progress=False, callbacks=[Look()])
    assert seen == {"gravity": 9.8, "limit": 500, "steps": 500}
    notes = [r["text"] for r in _lines(run) if r["kind"] == "note"]
    assert any("CartPoleEnv.gravity" in n and "TimeLimit._max_episode_steps" in n for n in notes), notes
    assert result.global_step == 128
    # a wrong type for a field of the env's state is an error naming it
    base["gravity"] = 9.8
    base["state"] = "upside down"
    json.dump(state, open(os.path.join(folder, "state.json"), "w"))
    with pytest.raises(ValueError, match="CartPoleEnv.state"):
        train(resume=folder, progress=False)


# ---------------------------------------------------------------------------------
# 5. Exports
# ---------------------------------------------------------------------------------


def test_an_export_of_nan_weights_is_refused(finished_run, tmp_path, capsys):
    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    for folder in list_checkpoints(str(run)):
        path = os.path.join(folder, "model.safetensors")
        weights = load_file(path)
        name = next(iter(weights))
        weights[name] = torch.full_like(weights[name], float("nan"))
        save_file(weights, path)
        state = json.load(open(os.path.join(folder, "state.json")))  # as a run that diverged would have written it:
        state["file_sha256"]["model.safetensors"] = file_sha256(path)  # its recorded digest is the NaN file's
        json.dump(state, open(os.path.join(folder, "state.json"), "w"))
    capsys.readouterr()
    assert main(["export", str(run), str(tmp_path / "out"), "--episodes", "1"]) == EXIT_CODES["export"]
    assert "NaN or inf" in _one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_an_export_writes_only_into_a_new_or_empty_folder_or_replaces_an_earlier_export_whole(finished_run, tmp_path,
                                                                                                capsys):
    work = tmp_path / "project"
    work.mkdir()
    (work / "README.md").write_text("my project\n")
    (work / "config.json").write_text("{}\n")
    capsys.readouterr()
    assert main(["export", str(finished_run), str(work), "--episodes", "1"]) == EXIT_CODES["export"]
    assert "is not empty" in _one_line(capsys)
    assert (work / "README.md").read_text() == "my project\n" and sorted(os.listdir(work)) == ["README.md", "config.json"]
    out = tmp_path / "agent"
    out.mkdir()  # empty: fine
    assert main(["export", str(finished_run), str(out), "--episodes", "1"]) == 0
    (out / "normalizer.json").write_text("{}")  # as an export of a normalised agent left it
    assert main(["export", str(finished_run), str(out), "--episodes", "2"]) == 0  # an earlier export: replaced whole
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors"]
    assert "| 2 episodes" in (out / "README.md").read_text() or "2 episodes" in (out / "README.md").read_text()
    assert not [n for n in os.listdir(tmp_path) if n.startswith((".tmp-", ".old-"))]
    (out / "notes.txt").write_text("mine\n")  # an earlier export with the user's file: kept, and said why
    capsys.readouterr()
    assert main(["export", str(finished_run), str(out), "--episodes", "1"]) == EXIT_CODES["export"]
    line = _one_line(capsys)  # it once said the folder "is not an rlkit export"
    assert "is an rlkit export that also holds files rlkit did not write (notes.txt)" in line, line
    assert (out / "notes.txt").read_text() == "mine\n"


# ---------------------------------------------------------------------------------
# 6. Ctrl-C with async env workers
# ---------------------------------------------------------------------------------


def test_ctrl_c_with_async_envs_finishes_the_update_and_writes_the_checkpoint(tmp_path):
    run = tmp_path / "r"
    command = [sys.executable, "-m", "rlkit.cli", "train", "cartpole", "--vectorization", "async",
               "--total_timesteps", "10000000", "--run_dir", str(tmp_path), "--run-name", "r", *TINY,
               "--checkpoint_interval", "0"]  # the only checkpoint: the one the stop writes
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        deadline = time.time() + 90
        while not ((run / "metrics.jsonl").exists() and '"update"' in (run / "metrics.jsonl").read_text()):
            assert time.time() < deadline and process.poll() is None
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C: the parent and every env worker
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 128 + signal.SIGINT, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert "stopped by SIGINT" in output and list_checkpoints(str(run))
    state = load_checkpoint(str(run))[1]
    assert state["iteration"] == max(_updates(run))  # the update in flight finished and is in the checkpoint


# ---------------------------------------------------------------------------------
# 7. One error path: bad input, file system, debug
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, match", [
    (["--seed", "-1"], "seed must be an integer in [0, 2**32)"),
    (["--seed", str(2**32)], "seed must be an integer in [0, 2**32)"),
    (["--run-name", ""], "run name must be a non-empty name"),
    (["--run-name", "../x"], "must be one folder name"),
    (["--exp_name", "../../.."], "exp_name '../../..' must be one folder name"),
    (["--exp_name", "x" * 300], "exp_name is 300 characters long"),
    (["--num_minibatches", "32"], "advantage normalisation needs at least 2"),
    (["--num_envs", "1e20"], "more than this machine's"),
    (["--num_steps", "1e12"], "more than this machine's"),
    (["--learning_rat", "0.1"], "unknown key 'learning_rat'"),
    (["--num_env", "2"], "unknown key 'num_env'"),
    (["--seed"], "expected one argument"),
    (["--network", "nature_cnn"], "nature_cnn"),
])
def test_bad_settings_are_refused_before_any_work_in_one_line(tmp_path, capsys, extra, match):
    argv = ["train", "cartpole", "--run_dir", str(tmp_path), "--total_timesteps", "64", *TINY, *extra]
    if "--run-name" not in extra:
        argv += ["--run-name", "r"]
    assert main(argv) == EXIT_CODES["config"]
    assert match in _one_line(capsys)
    assert not (tmp_path / "r" / "config.json").exists() and not (tmp_path.parent / "x").exists()


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    import rlkit.checkpoint as checkpoint

    real, calls = checkpoint.save_file, []

    def full_after_the_first_checkpoint(tensors, path):
        calls.append(path)
        if os.path.basename(os.path.dirname(path)).startswith(".tmp-update_0000002"):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(tensors, path)

    monkeypatch.setattr(checkpoint, "save_file", full_after_the_first_checkpoint)
    assert _train(tmp_path, "r", 128) == EXIT_CODES["filesystem"]
    line = _one_line(capsys)
    assert "the disk is full" in line and "resume" in line
    assert [os.path.basename(c) for c in list_checkpoints(str(tmp_path / "r"))] == ["update_0000001"]
    assert not [n for n in os.listdir(tmp_path / "r" / "checkpoints") if n.startswith(".tmp-")]
    monkeypatch.setattr(checkpoint, "save_file", real)
    assert main(["train", "--resume", str(tmp_path / "r"), "--no-progress"]) == 0  # free space, resume


def test_a_real_full_disk_on_a_small_tmpfs(tmp_path, capsys):
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
                                                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root in a mount namespace)")
    try:
        code = _train(mount, "r", 4096)
        line = _one_line(capsys)
        assert code == EXIT_CODES["filesystem"], line
        assert "disk is full" in line or "No space" in line
        for folder in list_checkpoints(str(mount / "r")):  # whatever was written is complete
            load_checkpoint(folder)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_read_only_run_dir_is_one_line(tmp_path, capsys, monkeypatch):
    import rlkit.runfolder as runfolder

    def read_only(path, *args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system", path)

    monkeypatch.setattr(runfolder.os, "makedirs", read_only)
    assert _train(tmp_path, "r", 64) == EXIT_CODES["filesystem"]
    assert "read-only" in _one_line(capsys)


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    """The traceback, then the same one line and the same exit code (it once re-raised: exit code 1)."""
    argv = ["train", "cartpole", "--seed", "-1", "--run_dir", str(tmp_path)]
    assert main(argv + ["--debug"]) == EXIT_CODES["config"]
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    monkeypatch.setenv("RLKIT_DEBUG", "1")
    assert main(argv) == EXIT_CODES["config"]
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_a_closed_stdout_ends_quietly_with_141_not_a_file_system_error(monkeypatch, capsys):
    """`rlkit recipes | head -1`: the reader has gone; this once said "Broken pipe: check the path", exit 8."""
    import io

    read_end, write_end = os.pipe()
    os.close(read_end)
    closed = io.TextIOWrapper(io.FileIO(write_end, "w"), write_through=True)
    monkeypatch.setattr(sys, "stdout", closed)
    assert main(["recipes"]) == EXIT_CODES["stdout_closed"] == 141
    assert capsys.readouterr().err == ""
    closed.close()


def test_each_class_of_failure_has_its_exit_code_and_one_line():
    from safetensors import SafetensorError

    from rlkit.errors import (CheckpointError, ConfigError, DeviceError, EnvError, ExportError, RewardFunctionError,
                              classify)
    from rlkit.runtime import NonFiniteError

    cases = [(ConfigError("k must be > 0"), "config"), (EnvError("spaces"), "env"), (CheckpointError("x"), "checkpoint"),
             (ExportError("nan"), "export"), (RunFolderError("busy"), "run_folder"),
             (OSError(errno.ENOSPC, "No space left on device", "/x"), "filesystem"),
             (PermissionError(errno.EACCES, "Permission denied", "/x"), "filesystem"),
             (SafetensorError("write failed"), "filesystem"), (DeviceError("no cuda"), "device"),
             (MemoryError(), "device"), (RuntimeError("CUDA out of memory. Tried to allocate"), "device"),
             (RewardFunctionError("reward returned 'a'"), "reward"), (NonFiniteError("non-finite loss"), "non_finite"),
             (ImportError("No module named 'ale_py'"), "config"), (KeyboardInterrupt(), "interrupted"),
             (KeyError("iteration"), "internal")]
    for error, kind in cases:
        got, message = classify(error)
        assert got == kind and message and "\n" not in message, (error, got, message)
    assert "a bug in rlkit" in classify(KeyError("x"))[1] and "--debug" in classify(KeyError("x"))[1]
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)


def test_every_exit_code_is_in_the_readme():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    section = readme[readme.index("### Faults and what you see"):]
    for kind, code in EXIT_CODES.items():
        assert f"| {code} |" in section, (kind, code)


# ---------------------------------------------------------------------------------
# 8. Fuzz: generated recipes and overrides through the CLI's entry
# ---------------------------------------------------------------------------------

_KEYS = user_fields(PPOConfig) + ["lerning_rate", "batch_size", "seed_", "num_env", "learning_rat", "run-name"]
_SCALARS = st.one_of(
    st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.sampled_from(["", "../x", "a/b", "\0", "1e20", "nan", "-1", "cpu", "cuda:7", "async"]),
)
_TOML_VALUES = st.one_of(_SCALARS.filter(lambda v: not (isinstance(v, float) and v != v)),
                         st.lists(st.integers(-5, 5), max_size=2), st.dictionaries(st.text("ab", max_size=2), st.integers(), max_size=2))


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "inf" if value == float("inf") else "-inf" if value == float("-inf") else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


@st.composite
def _recipes(draw) -> bytes:
    if draw(st.integers(0, 9)) == 0:  # not text at all, or not TOML
        return draw(st.sampled_from([b"\xff\xfe[ppo]\n", b"[ppo\nseed = ", b"[ppo]\nseed = 1\0\n", b"", b"[a]\n[b]\n"]))
    table = draw(st.sampled_from(["ppo", "ppo", "ppo", "ppo_lstm", "rlhf", "dqn"]))
    values = draw(st.dictionaries(st.sampled_from(_KEYS), _TOML_VALUES, max_size=3 if draw(st.booleans()) else 0))
    values.update(draw(st.fixed_dictionaries({}, optional={  # a recipe that might just work
        "num_envs": st.integers(0, 8), "num_steps": st.integers(0, 64), "num_minibatches": st.integers(0, 8),
        "total_timesteps": st.integers(-1, 10**6), "learning_rate": st.floats(-1, 1), "seed": st.integers(-1, 2**33)})))
    values.setdefault("env_id", "CartPole-v1")
    lines = [f"[{table}]"] + [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines).encode()


_FLAGS = st.sampled_from([f"--{k}" for k in _KEYS] + [f"--{k.replace('_', '-')}" for k in _KEYS[:20]] +
                         ["--run-name", "--new-folder", "--no-progress", "--learning_rat", "--num_env", "--total"])
_PLAUSIBLE = st.one_of(  # near the valid region, so that many cases pass validation
    st.tuples(st.sampled_from(["--seed", "--eval_seed"]), st.integers(-2, 2**33).map(str)),
    st.tuples(st.sampled_from(["--num_envs", "--num_steps", "--num_minibatches", "--update_epochs"]),
              st.sampled_from(["1", "2", "4", "16", "0", "1e20", "3.5"])),
    st.tuples(st.sampled_from(["--learning_rate", "--gamma", "--clip_coef", "--ent_coef"]),
              st.sampled_from(["0.1", "1e-4", "0", "1.5", "nan", "inf", "-1"])),
    st.tuples(st.sampled_from(["--run-name", "--exp_name"]), st.sampled_from(["a", "", "a/b", "..", "x" * 250, "ok-2"])),
    st.tuples(st.sampled_from(["--anneal_lr", "--norm_adv", "--new-folder"]), st.sampled_from(["true", "false", "maybe"])),
)
_OVERRIDES = st.lists(st.one_of(_FLAGS.map(lambda f: [f]), _SCALARS.map(lambda v: [str(v)]), _PLAUSIBLE.map(list),
                                _PLAUSIBLE.map(list)), max_size=5).map(lambda parts: [a for part in parts for a in part])

_DOCUMENTED = set(EXIT_CODES.values()) - {EXIT_CODES["internal"]}


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(recipe=_recipes(), overrides=_OVERRIDES)
def test_fuzzed_recipes_and_overrides_give_a_valid_config_or_one_clean_line(recipe, overrides, monkeypatch, capsys):
    import rlkit.ppo
    import rlkit.ppo_lstm
    from rlkit.runtime import open_run_folder

    class Result:  # what rlkit.cli prints from; the run itself is not the point here
        interrupted, global_step, wall_time, sps, run_dir = None, 0, 0.0, 0.0, "."

        def last_returns(self, n):
            return np.zeros(0)

    def validated_only(config, run_name=None, progress=True, **_):
        # the checks a real train() makes before any work: the config, the run folder's name
        open_run_folder(os.path.join(config.run_dir, run_name or "x"), new_name=run_name, enabled=False)
        return Result()

    monkeypatch.setattr(rlkit.ppo, "train", validated_only)
    monkeypatch.setattr(rlkit.ppo_lstm, "train", validated_only)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "recipe.toml")
        with open(path, "wb") as f:
            f.write(recipe)
        capsys.readouterr()
        started = time.time()
        try:
            code = main(["train", path, *overrides, "--run_dir", folder])
        except SystemExit as exit_:  # --help among the overrides
            code = exit_.code
            assert code == 0
        assert time.time() - started < 20  # never a hang
    err = capsys.readouterr().err.strip().splitlines()
    assert code in _DOCUMENTED, (code, err)
    if code not in (0, 1):
        assert len(err) == 1 and err[0].startswith("rlkit: ") and "Traceback" not in err[0], err


# ---------------------------------------------------------------------------------
# 9. RLHF: the same run folders, and reward functions that fail
# ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> str:
    """A GPT-2 pretrained 30 steps on the synthetic task (as tests/test_rlhf_lifecycle.py builds it)."""
    from rlkit.envs import text_task

    path = str(tmp_path_factory.mktemp("reliability_lm"))
    torch.manual_seed(0)
    return text_task.pretrain_base_model(path, seed=0, steps=30, batch_size=32, log=None)


def _rlhf_args(tmp_path, tiny_lm: str, name: str, *extra: str) -> list[str]:
    return ["rlhf", "rlhf-synthetic", "--policy", tiny_lm, "--reward", "gold", "--num_updates", "2", "--batch_size", "8",
            "--num_minibatches", "2", "--ppo_epochs", "1", "--max_new_tokens", "6", "--eval_samples", "8",
            "--device", "cpu", "--run_dir", str(tmp_path / "runs"), "--artifacts_dir", str(tmp_path / "artifacts"),
            "--run-name", name, "--no-progress", *extra]


class _SigtermAfter(Callback):
    def on_update(self, run, iteration, stats):
        os.kill(os.getpid(), signal.SIGTERM)
        return True


def test_rlhf_two_writers_are_refused_and_a_dead_owner_is_taken_over(tiny_lm, tmp_path, capsys):
    from rlkit.rlhf import ppo_lm
    from rlkit.rlhf.config import RLHFConfig

    cfg = RLHFConfig(policy=tiny_lm, reward="gold", batch_size=8, num_minibatches=2, ppo_epochs=1, num_updates=2,
                     max_new_tokens=6, eval_samples=8, device="cpu", run_dir=str(tmp_path / "runs"),
                     artifacts_dir=str(tmp_path / "artifacts")).validate()
    cut = ppo_lm.train(cfg, run_name="r", progress=False, callbacks=[_SigtermAfter()])
    run = tmp_path / "runs" / "r"
    assert cut.interrupted == signal.SIGTERM and cut.checkpoint == str(run / "checkpoints" / "update_0000001")
    before = {name: (run / name).read_bytes() for name in ("config.json", "metrics.jsonl")}
    capsys.readouterr()
    # a new run into the folder of another: refused, nothing written
    assert main(_rlhf_args(tmp_path, tiny_lm, "r", "--seed", "7")) == EXIT_CODES["run_folder"]
    line = _one_line(capsys)
    assert str(run) in line and "already holds a run" in line and "rlkit rlhf --resume" in line
    assert {name: (run / name).read_bytes() for name in before} == before
    # a resume, or a new run, while another process holds the folder: refused with the owner's pid
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["rlhf", "--resume", str(run), "--no-progress"]) == EXIT_CODES["run_folder"]
        line = _one_line(capsys)
        assert "in use by another training" in line and f"pid {holder.pid}" in line
        assert {name: (run / name).read_bytes() for name in before} == before
        fresh = tmp_path / "runs" / "fresh"
        fresh.mkdir(parents=True)
        second = subprocess.Popen([sys.executable, "-c", _HOLDER, str(fresh)], stdout=subprocess.PIPE, text=True)
        try:
            assert second.stdout.readline().strip() == "locked"
            assert main(_rlhf_args(tmp_path, tiny_lm, "fresh")) == EXIT_CODES["run_folder"]
            assert f"pid {second.pid}" in _one_line(capsys) and sorted(os.listdir(fresh)) == [LOCK_FILE]
        finally:
            second.kill()
            second.wait()
    finally:
        holder.kill()
        holder.wait()
    # the owner died without releasing: its lock is taken over, with a note, and the run continues
    assert main(["rlhf", "--resume", str(run), "--no-progress"]) == 0
    notes = [r["text"] for r in _lines(run) if r["kind"] == "note"]
    assert any(f"took over the lock of pid {holder.pid}" in n for n in notes), notes
    assert _updates(run) == [1, 2] and (run / "summary.json").exists()
    assert (run / LOCK_FILE).read_text() == ""  # released when the run ended


_REWARDS = '''
def boom(prompt, response):
    raise ZeroDivisionError("no score today")


def too_few(prompts, completions, **columns):
    return [1.0]


def words(prompts, completions, **columns):
    return ["good"] * len(completions)
'''


@pytest.mark.parametrize("function, says", [("boom", "raised ZeroDivisionError: no score today"),
                                            ("too_few", "returned 1 scores for 8 completions"),
                                            ("words", "must return one float")])
def test_rlhf_a_failing_reward_function_is_one_line_and_exit_code_10(tiny_lm, tmp_path, capsys, monkeypatch, function, says):
    (tmp_path / "failing_rewards.py").write_text(_REWARDS)  # its own name: test_rlhf_data has a my_rewards too
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "failing_rewards", raising=False)
    capsys.readouterr()
    args = _rlhf_args(tmp_path, tiny_lm, "bad")
    args[args.index("--reward") + 1] = f"failing_rewards:{function}"
    assert main(args) == EXIT_CODES["reward"] == 10
    line = _one_line(capsys)
    assert f"reward '{function}'" in line and says in line, line
    assert not (tmp_path / "runs" / "bad" / "summary.json").exists()


def test_rlhf_reward_fn_argument_errors_are_reward_errors(tiny_lm, tmp_path):
    from rlkit.errors import RewardError
    from rlkit.rlhf.reward import CombinedReward

    def my_reward(prompts, responses):
        return [0.0] * (len(responses) + 1)

    with pytest.raises(RewardError, match=r"reward 'reward_fn' \(my_reward\) returned 3 scores for 2 completions"):
        CombinedReward.of(my_reward)(["p", "q"], ["a", "b"])
    with pytest.raises(RewardError, match=r"raised KeyError"):
        CombinedReward.of(lambda prompts, responses: {}["x"])(["p"], ["a"])


def test_rlhf_parsers_take_no_abbreviations(capsys):
    assert main(["rlhf", "--resume", "somewhere", "--no-prog"]) == EXIT_CODES["config"]
    assert "unrecognized arguments: --no-prog" in _one_line(capsys)
    assert main(["rlhf-export", "run", "out", "--mer"]) == EXIT_CODES["config"]
    assert "--mer" in _one_line(capsys)


def test_rlhf_evaluation_lines_go_through_the_public_logger_method(tmp_path):
    from rlkit.logger import RunLogger

    logger = RunLogger(str(tmp_path), {}, progress=True)  # TensorBoard on, the console line on: no mean_return here
    logger.evaluation(16, 2, {"score": 0.5, "kl_k1": 0.1, "samples": [{"prompt": "p", "response": "r"}]})
    logger.close()
    line = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert line == {"kind": "eval", "global_step": 16, "iteration": 2, "score": 0.5, "kl_k1": 0.1,
                    "samples": [{"prompt": "p", "response": "r"}]}
