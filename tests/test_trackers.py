"""Experiment trackers (rlkit.trackers) on the one logging path: a tiny control run and a tiny RLHF run,
each logged to W&B (offline), MLflow (a local SQLite store) and Trackio (a local store), read back
through each tracker's own API and compared with the run's metrics.jsonl."""

from __future__ import annotations

import glob
import re
import json
import os
import struct
import sys
import tempfile
import uuid

import pytest

# trackio reads TRACKIO_DIR once, when it is first imported: point it at a scratch folder before that
os.environ.setdefault("TRACKIO_DIR", tempfile.mkdtemp(prefix="rlkit-trackio-"))

from rlkit.config import ConfigError, config_from_dict  # noqa: E402
from rlkit.ppo import PPOConfig, train  # noqa: E402
from rlkit.trackers import INSTALL, markdown_table  # noqa: E402

ALL = ["tensorboard", "wandb", "mlflow", "trackio"]


def _need_all() -> None:
    for package in ("wandb", "mlflow", "trackio"):
        pytest.importorskip(package, reason=f'the {package} tracker needs {INSTALL}')


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    """One SQLite store for the module: creating its tables takes MLflow ~15 s."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def offline(tmp_path, monkeypatch, mlflow_uri):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.chdir(tmp_path)  # MLflow's artifact root (./mlruns) lands here
    return tmp_path


# ---------------------------------------------------------------------------------
# Reading each tracker back through its own API
# ---------------------------------------------------------------------------------


def wandb_records(run_dir: str, latest: bool = False) -> list:
    """The records of a W&B offline run (<run>/wandb/offline-run-*/run-*.wandb), decoded with W&B's own
    protobuf schema.  The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of records,
    each with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    paths = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))
    if latest:  # a resumed run's last segment
        paths = [max(paths, key=os.path.getmtime)]
    (path,) = paths
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    block, position, pending, chunks = 32768, 7, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        position += 7
        if kind == 0 and length == 0:
            break
        chunk, position = data[position:position + length], position + length
        if kind == 1:
            chunks.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            chunks.append(pending + chunk)
    records = []
    for chunk in chunks:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        records.append(record)
    return records


def wandb_run(run_dir: str, latest: bool = False) -> dict:
    """config, history rows, summary and artefacts of an offline W&B run (``latest``: its last segment)."""
    config, history, summary, artifacts = {}, [], {}, []
    for record in wandb_records(run_dir, latest):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.summary.update})
        elif kind == "artifact":
            artifacts.append((record.artifact.name, record.artifact.type))
        elif kind == "exit":
            summary["_exit_code"] = record.exit.exit_code
    return {"config": config, "history": history, "summary": summary, "artifacts": artifacts}


def mlflow_run(run_dir: str):
    from mlflow.tracking import MlflowClient

    with open(os.path.join(run_dir, "trackers.json")) as f:
        run_id = json.load(f)["mlflow"]["run_id"]
    client = MlflowClient()
    return client, client.get_run(run_id)


def trackio_run(project: str, name: str) -> tuple[dict, list[dict], list[str]]:
    """(config, logged rows, artefact names) of a local Trackio run."""
    import trackio
    from trackio.sqlite_storage import SQLiteStorage

    (run,) = [r for r in trackio.Api().runs(project) if r.name == name]
    artifacts = SQLiteStorage.get_run_artifacts(project, name, run.id)
    return run.config, SQLiteStorage.get_logs(project, name), [a["name"] for a in artifacts["output"]]


def jsonl(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(int(row.get("global_step", row.get("step"))), row[key]) for row in rows if row.get(key) is not None]


def same(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    """The same steps, and the same values up to float32 rounding."""
    return [s for s, _ in a] == [s for s, _ in b] and [v for _, v in a] == pytest.approx([v for _, v in b], rel=1e-6)


# ---------------------------------------------------------------------------------
# Config and errors
# ---------------------------------------------------------------------------------


def test_track_is_a_validated_list_with_tensorboard_the_default():
    assert PPOConfig().track == ["tensorboard"]
    cfg = config_from_dict(PPOConfig, {"track": "tensorboard,mlflow"}, source="command line")
    assert cfg.track == ["tensorboard", "mlflow"]
    with pytest.raises(ConfigError, match="unknown tracker 'neptune'.*wandb"):
        config_from_dict(PPOConfig, {"track": ["neptune"]})
    from rlkit.rlhf.config import RLHFConfig

    assert RLHFConfig().track == ["tensorboard"]
    with pytest.raises(ValueError, match="unknown tracker"):
        RLHFConfig(track=["tb"]).validate()


def test_a_missing_package_is_one_line_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    cfg = PPOConfig(env_id="CartPole-v1", total_timesteps=64, num_steps=64, num_minibatches=2, device="cpu",
                    run_dir=str(tmp_path), track=["tensorboard", "wandb"])
    with pytest.raises(ImportError) as error:
        train(cfg, run_name="r", progress=False)
    assert str(error.value) == f"track = [..., 'wandb'] needs the wandb package: {INSTALL}"
    assert not os.path.exists(tmp_path / "r" / "metrics.jsonl")  # refused before anything was written

    from rlkit.cli import main

    assert main(["train", "cartpole", "--track", "wandb", "--total_timesteps", "64", "--run_dir", str(tmp_path)]) == 2


def test_tensorboard_can_be_left_out(tmp_path):
    cfg = PPOConfig(env_id="CartPole-v1", total_timesteps=64, num_steps=64, num_minibatches=2, device="cpu",
                    run_dir=str(tmp_path), track=[])
    result = train(cfg, run_name="r", progress=False)
    assert not glob.glob(os.path.join(result.run_dir, "events.out.tfevents.*"))
    assert os.path.isfile(os.path.join(result.run_dir, "summary.json"))


def test_markdown_tables_become_tracker_tables():
    columns, rows = markdown_table("| prompt | response |\n|-|-|\n| a \\| b | c |\n| d | e |")
    assert columns == ["prompt", "response"] and rows == [["a | b", "c"], ["d", "e"]]
    assert markdown_table("just text") is None


# ---------------------------------------------------------------------------------
# A control run and an RLHF run, each to every tracker, read back
# ---------------------------------------------------------------------------------


def test_a_control_run_reaches_every_tracker(offline):
    _need_all()
    project = f"rlkit-test-{uuid.uuid4().hex[:8]}"
    cfg = PPOConfig(env_id="CartPole-v1", num_envs=2, num_steps=32, total_timesteps=2 * 32 * 3, num_minibatches=2,
                    update_epochs=1, eval_interval=2, eval_episodes=2, device="cpu", run_dir=str(offline / "runs"),
                    checkpoint_interval=0, track=ALL, track_project=project)
    result = train(cfg, run_name="control", progress=False)
    run_dir = result.run_dir
    lines = jsonl(run_dir)
    returns = series([r for r in lines if r["kind"] == "episode"], "return")
    evals = series([r for r in lines if r["kind"] == "eval"], "mean_return")
    losses = series([r for r in lines if r["kind"] == "update"], "value_loss")
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert len(returns) >= 3 and len(evals) == 2 and len(losses) == 3
    assert glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))  # TensorBoard as before

    wb = wandb_run(run_dir)
    assert wb["config"]["learning_rate"] == cfg.learning_rate and wb["config"]["env_id"] == "CartPole-v1"
    assert series(wb["history"], "charts/episodic_return") == returns
    assert series(wb["history"], "eval/mean_return") == evals
    assert same(series(wb["history"], "losses/value_loss"), losses)
    assert wb["summary"]["return_mean"] == pytest.approx(summary["return_mean"]) and wb["summary"]["_exit_code"] == 0
    assert ("control-checkpoint", "model") in wb["artifacts"] and ("control-best", "model") in wb["artifacts"]

    client, run = mlflow_run(run_dir)
    assert run.info.status == "FINISHED" and run.info.run_name == "control"
    assert run.data.params["learning_rate"] == str(cfg.learning_rate) and run.data.params["track_project"] == project
    history = client.get_metric_history(run.info.run_id, "charts/episodic_return")
    assert sorted((m.step, m.value) for m in history) == sorted(returns)
    assert sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval/mean_return")) == evals
    assert run.data.metrics["summary/return_mean"] == pytest.approx(summary["return_mean"])
    assert {"checkpoint", "best", "summary.json", "config.json"} <= {f.path for f in client.list_artifacts(run.info.run_id)}

    config, rows, artifacts = trackio_run(project, "control")
    assert config["learning_rate"] == cfg.learning_rate
    assert series(rows, "charts/episodic_return") == returns and series(rows, "eval/mean_return") == evals
    assert series(rows, "summary/return_mean")[0][1] == pytest.approx(summary["return_mean"])
    assert {"control-checkpoint", "control-best", "control-summary"} <= set(artifacts)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> str:
    import torch
    from rlkit.envs import text_task

    path = str(tmp_path_factory.mktemp("trackers_base"))
    torch.manual_seed(0)
    return text_task.pretrain_base_model(path, seed=0, steps=30, batch_size=32, log=None)


def test_an_rlhf_run_reaches_every_tracker(offline, tiny_base):
    _need_all()
    pytest.importorskip("transformers")
    from rlkit.rlhf.config import RLHFConfig
    from rlkit.rlhf.ppo_lm import train as train_lm

    project = f"rlkit-test-{uuid.uuid4().hex[:8]}"
    cfg = RLHFConfig(policy=tiny_base, reward="gold", batch_size=8, num_minibatches=2, ppo_epochs=1, num_updates=2,
                     max_new_tokens=6, eval_samples=8, learning_rate=1e-3, device="cpu", run_dir=str(offline / "runs"),
                     artifacts_dir=str(offline / "artifacts"), sample_every=1, track=ALL, track_project=project).validate()
    result = train_lm(cfg, run_name="lm", progress=False)
    run_dir = result.run_dir
    updates = [r for r in jsonl(run_dir) if r["kind"] == "update"]
    scores, kls = series(updates, "score"), series(updates, "kl_k1")
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert len(scores) == 2

    wb = wandb_run(run_dir)
    assert wb["config"]["learning_rate"] == cfg.learning_rate and wb["config"]["reward"] == "gold"
    assert same(series(wb["history"], "charts/score"), scores)
    assert same(series(wb["history"], "charts/kl_k1"), kls)
    assert wb["summary"]["final/gold"] == pytest.approx(summary["final"]["gold"]) and wb["summary"]["_exit_code"] == 0
    assert any(name.startswith("run-") and "samples" in name for name, _ in wb["artifacts"])  # the sample tables
    assert ("lm-policy", "model") in wb["artifacts"]

    client, run = mlflow_run(run_dir)
    assert run.info.status == "FINISHED" and run.data.params["reward"] == "gold"
    assert [m.value for m in sorted(client.get_metric_history(run.info.run_id, "charts/score"), key=lambda m: m.step)] \
        == pytest.approx([v for _, v in scores])
    assert run.data.metrics["summary/final/gold"] == pytest.approx(summary["final"]["gold"])
    paths = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"policy", "summary.json", "tables"} <= paths
    tables = {f.path for f in client.list_artifacts(run.info.run_id, "tables")}
    assert any("final_samples" in p for p in tables) and any("tables/samples_" in p for p in tables)

    config, rows, artifacts = trackio_run(project, "lm")
    assert config["reward"] == "gold"
    assert [v for _, v in series(rows, "charts/score")] == pytest.approx([v for _, v in scores])
    assert series(rows, "summary/final/gold")[0][1] == pytest.approx(summary["final"]["gold"])
    sample_rows = [r["samples"] for r in rows if "samples" in r]
    assert sample_rows and sample_rows[0]["_type"] == "trackio.table" and "prompt" in sample_rows[0]["_value"][0]
    assert "lm-policy" in artifacts


def test_a_resumed_run_continues_the_same_tracker_runs(offline):
    pytest.importorskip("mlflow", reason=f"the mlflow tracker needs {INSTALL}")
    pytest.importorskip("wandb", reason=f"the wandb tracker needs {INSTALL}")
    import signal

    from rlkit.runtime import Callback

    class SigtermAt(Callback):
        def on_update(self, run, iteration, stats):
            if iteration == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return True

    project = f"rlkit-test-{uuid.uuid4().hex[:8]}"
    cfg = PPOConfig(env_id="CartPole-v1", num_envs=2, num_steps=32, total_timesteps=2 * 32 * 4, num_minibatches=2,
                    update_epochs=1, device="cpu", run_dir=str(offline / "runs"), checkpoint_interval=0,
                    track=["mlflow", "wandb"], track_project=project)
    cut = train(cfg, run_name="cut", progress=False, callbacks=[SigtermAt()])
    assert cut.interrupted == signal.SIGTERM
    client, run = mlflow_run(cut.run_dir)
    assert run.info.status == "KILLED"
    resumed = train(resume=cut.run_dir, progress=False)
    assert resumed.interrupted is None
    client, again = mlflow_run(resumed.run_dir)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "losses/value_loss")]
    assert sorted(steps) == [64, 128, 192, 256]  # both halves, each update once
    # offline-run-<date>_<time>-<id>, with a "-1" suffix when both segments start within the same second
    ids = {re.match(r"offline-run-\d{8}_\d{6}-([^-]+)", os.path.basename(p)).group(1)
           for p in glob.glob(os.path.join(cut.run_dir, "wandb", "offline-run-*"))}
    assert len(ids) == 1  # the W&B run resumed under the same id (two offline segments)
    assert "rlkit.now.total_timesteps" not in again.data.tags  # nothing changed

    extended = train(resume=resumed.run_dir, total_timesteps=2 * 32 * 5, progress=False)
    client, longer = mlflow_run(extended.run_dir)
    assert longer.info.run_id == run.info.run_id and longer.info.status == "FINISHED"
    # MLflow keeps a param's first value; the extension's is beside it (it once stayed at the first, unsaid)
    assert longer.data.params["total_timesteps"] == "256" and longer.data.tags["rlkit.now.total_timesteps"] == "320"
    assert wandb_run(extended.run_dir, latest=True)["config"]["total_timesteps"] == 320


def test_a_tracker_that_cannot_start_is_one_line_naming_it(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason=f"the mlflow tracker needs {INSTALL}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    cfg = PPOConfig(env_id="CartPole-v1", total_timesteps=64, num_steps=64, num_minibatches=2, device="cpu",
                    run_dir=str(tmp_path), track=["mlflow"])
    with pytest.raises(ValueError, match=r"^tracker mlflow could not start: .*MLFLOW_TRACKING_URI") as error:
        train(cfg, run_name="r", progress=False)
    assert "\n" not in str(error.value)


def test_a_checkpoint_sends_the_trackers_buffers_and_a_resume_after_a_kill_keeps_tensorboard_monotone(offline,
                                                                                                    monkeypatch):
    """Bugs: MLflow's buffered metrics (and TensorBoard's) were sent only at the end, so a kill -9 lost what the
    resume's checkpoint kept; and after such a kill TensorBoard held the abandoned updates twice."""
    pytest.importorskip("mlflow", reason=f"the mlflow tracker needs {INSTALL}")
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rlkit.checkpoint import list_checkpoints
    from rlkit.runtime import Callback

    seen = {}

    class AfterCheckpoint(Callback):
        def on_update(self, run, iteration, stats):
            if iteration == 3:  # the checkpoint of update 2 is written: its metrics are in the store already
                client, mlflow = mlflow_run(run.run_dirs[0])
                seen["steps"] = sorted(m.step for m in client.get_metric_history(mlflow.info.run_id, "losses/value_loss"))
            return True

    cfg = PPOConfig(env_id="CartPole-v1", num_envs=2, num_steps=32, total_timesteps=2 * 32 * 4, num_minibatches=2,
                    update_epochs=1, device="cpu", run_dir=str(offline / "runs"), checkpoint_interval=2,
                    keep_checkpoints=5, track=["tensorboard", "mlflow"], track_project=f"rlkit-test-{uuid.uuid4().hex[:8]}")
    whole = train(cfg, run_name="k9", progress=False, callbacks=[AfterCheckpoint()])
    assert seen["steps"] == [64, 128]
    # as if killed -9 after update 4's events but before its checkpoint: resume from update 2
    shutil.rmtree(list_checkpoints(whole.run_dir)[-1])
    os.remove(os.path.join(whole.run_dir, "summary.json"))
    train(resume=whole.run_dir, progress=False)
    events = EventAccumulator(whole.run_dir)
    events.Reload()
    steps = [e.step for e in events.Scalars("losses/value_loss")]
    assert steps == [64, 128, 192, 256]  # each update once, in order
