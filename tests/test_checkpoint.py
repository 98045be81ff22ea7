"""Checkpoints, resume, signals, non-finite detection, eval/export and bad input."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlkit.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_optimizer_tensors,
    optimizer_tensors,
    save_checkpoint,
)
from rlkit.cli import main
from rlkit.evaluate import evaluate, export
from rlkit.ppo import NonFiniteError, PPOConfig, train

SMALL = PPOConfig(env_id="Pendulum-v1", total_timesteps=6 * 4 * 128, num_envs=4, num_steps=128, num_minibatches=4,
                  update_epochs=2, device="cpu", checkpoint_interval=1, keep_checkpoints=100)


def _records(run_dir):
    lines = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    return [{k: v for k, v in r.items() if k != "SPS"} for r in lines if r["kind"] != "note"]


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "rlkit/TwoStepDiscounted-Discrete-v0", "CartPole-v1"])
def test_resume_is_bit_for_bit_the_uninterrupted_run(tmp_path, env_id):
    cfg = replace(SMALL, env_id=env_id, run_dir=str(tmp_path), normalize_obs=env_id == "Pendulum-v1")
    full = train(replace(cfg), run_name="full", progress=False)
    # A copy of the run as it was after update 3: later checkpoints gone, and the
    # metrics file still holding the lines of updates 4-6 (written before a "crash").
    shutil.copytree(tmp_path / "full", tmp_path / "part")
    for folder in list_checkpoints(str(tmp_path / "part"))[3:]:
        shutil.rmtree(folder)
    os.remove(tmp_path / "part" / "summary.json")
    resumed = train(resume=str(tmp_path / "part"), progress=False)
    assert resumed.episode_returns == full.episode_returns
    for a, b in zip(full.agent.parameters(), resumed.agent.parameters()):
        assert torch.equal(a, b)
    assert _records(tmp_path / "part") == _records(tmp_path / "full")
    assert json.loads((tmp_path / "part" / "summary.json").read_text())["global_step"] == full.global_step


def test_resume_of_an_env_without_exact_state_says_so(tmp_path, capsys):
    cfg = replace(SMALL, env_id="Pendulum-v1", vectorization="async", num_envs=2, run_dir=str(tmp_path),
                  total_timesteps=2 * 2 * 128)
    train(cfg, run_name="r", progress=False)
    checkpoints = list_checkpoints(str(tmp_path / "r"))
    shutil.rmtree(checkpoints[-1])
    result = train(resume=str(tmp_path / "r"), progress=False)
    assert result.global_step == 512
    notes = [json.loads(l) for l in open(tmp_path / "r" / "metrics.jsonl") if '"note"' in l]
    assert "seeded reset" in notes[0]["text"]


def test_checkpoint_contents_are_safetensors_and_json(tmp_path):
    train(replace(SMALL, run_dir=str(tmp_path), total_timesteps=512), run_name="r", progress=False)
    folder = list_checkpoints(str(tmp_path / "r"))[-1]
    assert sorted(os.listdir(folder)) == ["model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"]
    state = json.load(open(os.path.join(folder, "state.json")))
    for key in ["config", "global_step", "iteration", "python_rng", "numpy_rng", "normalizers", "env_state", "episodes"]:
        assert key in state
    assert state["normalizers"]["obs.mean"]["shape"] == [3]


def test_keep_only_the_newest_checkpoints(tmp_path):
    train(replace(SMALL, run_dir=str(tmp_path), keep_checkpoints=2), run_name="r", progress=False)
    names = [os.path.basename(p) for p in list_checkpoints(str(tmp_path / "r"))]
    assert names == ["update_0000005", "update_0000006"]


_WRITER = """
import sys, torch
from rlkit.checkpoint import save_checkpoint
big = {"w": torch.randn(4_000_000)}
for i in range(1, 1000):
    save_checkpoint(sys.argv[1], i, {"model": {**big, "i": torch.tensor([i])}}, {"i": i}, keep=2)
    print(i, flush=True)
"""


def test_kill_9_during_a_checkpoint_write_never_corrupts_the_previous_one(tmp_path):
    interrupted_writes = 0
    for attempt, delay in enumerate([0.0, 0.05, 0.11, 0.17, 0.23]):
        run_dir = tmp_path / f"run{attempt}"
        process = subprocess.Popen([sys.executable, "-c", _WRITER, str(run_dir)], stdout=subprocess.PIPE, text=True)
        process.stdout.readline()  # the first checkpoint is complete; the writer is busy with the next
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        leftovers = [n for n in os.listdir(run_dir / "checkpoints") if n.startswith(".tmp-")]
        interrupted_writes += bool(leftovers)
        tensors, state = load_checkpoint(str(run_dir))  # the newest complete one
        assert int(tensors["model"]["i"][0]) == state["i"] >= 1
        assert tensors["model"]["w"].numel() == 4_000_000
    # the writer spends nearly all its time inside save_checkpoint, so kills land mid-write
    assert interrupted_writes >= 1


def test_sigterm_writes_a_checkpoint_and_prints_the_resume_command(tmp_path):
    command = [sys.executable, "-m", "rlkit.cli", "train", "pendulum", "--total_timesteps", "10000000",
               "--run_dir", str(tmp_path), "--run-name", "r", "--no-progress", "--checkpoint_interval", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not (tmp_path / "r" / "metrics.jsonl").exists() or '"update"' not in (tmp_path / "r" / "metrics.jsonl").read_text():
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert f"resume with: rlkit train --resume {tmp_path / 'r'}" in output
    assert list_checkpoints(str(tmp_path / "r"))
    assert not (tmp_path / "r" / "summary.json").exists()


class _NaNAfter(gym.Env):
    """Observation 0 until step 300 of the env, then NaN."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = getattr(self, "t", 0)
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.full(1, np.nan if self.t > 300 else 0.0, dtype=np.float32)
        return obs, 1.0, self.t % 5 == 0, False, {}


gym.register("rlkit-test/NaNAfter-v0", entry_point=_NaNAfter)


def test_non_finite_observations_stop_the_run_naming_quantity_and_update(tmp_path):
    cfg = replace(SMALL, env_id="rlkit-test/NaNAfter-v0", num_envs=1, num_steps=128, total_timesteps=1280,
                  normalize_obs=False, normalize_reward=False, run_dir=str(tmp_path))
    with pytest.raises(NonFiniteError, match=r"non-finite observations at update 3 .*last good checkpoint: .*update_0000002"):
        train(cfg, run_name="r", progress=False)
    tensors, state = load_checkpoint(str(tmp_path / "r"))
    assert state["iteration"] == 2 and all(torch.isfinite(t).all() for t in tensors["model"].values())


class _HugeReward(_NaNAfter):
    """Finite float32 rewards whose square overflows: the value loss becomes inf."""

    def step(self, action):
        return np.zeros(1, dtype=np.float32), 3e38, True, False, {}


gym.register("rlkit-test/HugeReward-v0", entry_point=_HugeReward)


def test_non_finite_loss_is_caught_before_the_weights_change(tmp_path):
    cfg = replace(SMALL, env_id="rlkit-test/HugeReward-v0", normalize_obs=False, normalize_reward=False,
                  run_dir=str(tmp_path))
    with pytest.raises(NonFiniteError, match=r"non-finite (loss|gradients).* at update 1 .*no checkpoint was written yet"):
        train(cfg, run_name="r", progress=False)


def test_non_finite_hyperparameters_are_refused_at_load():
    from rlkit.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="learning_rate must be finite"):
        config_from_dict(PPOConfig, {"learning_rate": float("nan")})
    with pytest.raises(ConfigError, match="vf_coef must be finite"):
        config_from_dict(PPOConfig, {"vf_coef": "inf"})


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    train(replace(SMALL, run_dir=str(root), total_timesteps=1024), run_name="r", progress=False)
    return root / "r"


def test_eval_uses_saved_normaliser_and_export_matches(trained_run, tmp_path):
    first = evaluate(str(trained_run), episodes=2, deterministic=True)
    again = evaluate(str(trained_run), episodes=2, deterministic=True)
    assert first["returns"] == again["returns"] and len(first["returns"]) == 2
    exported = export(str(trained_run), str(tmp_path / "export"), episodes=2)
    assert exported["returns"] == first["returns"]
    assert sorted(os.listdir(tmp_path / "export")) == ["README.md", "config.json", "model.safetensors", "normalizer.json"]
    card = (tmp_path / "export" / "README.md").read_text()
    assert f"{first['mean']:.2f}" in card


def test_readme_plain_torch_snippet_loads_the_export(trained_run, tmp_path):
    export(str(trained_run), str(tmp_path / "agent"), episodes=1)
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    snippet = re.search(r"<!-- plain-torch-snippet -->\n```python\n(.*?)```", readme, re.S).group(1)
    assert len(snippet.strip().splitlines()) <= 22
    namespace = {"EXPORT_DIR": str(tmp_path / "agent")}
    exec(snippet, namespace)
    obs = np.array([1.0, 0.0, 0.5], dtype=np.float32)
    action = namespace["act"](obs)
    # the same agent through rlkit: deterministic mean action on the same normalised obs
    from rlkit.evaluate import load_agent

    cfg, weights, normalizer = load_agent(str(tmp_path / "agent"))
    normalised = np.clip((obs - normalizer["obs.mean"]) / np.sqrt(normalizer["obs.var"] + 1e-8), -10, 10)
    expected = weights["actor.4.bias"] + weights["actor.4.weight"] @ torch.tanh(
        weights["actor.2.weight"] @ torch.tanh(weights["actor.0.weight"] @ torch.as_tensor(normalised, dtype=torch.float32)
                                               + weights["actor.0.bias"]) + weights["actor.2.bias"])
    np.testing.assert_allclose(action, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_checkpoint_from_another_env_or_architecture_is_refused(trained_run):
    """An env that does not fit the agent is exit code 4 (README), naming the tensor and both shapes."""
    from rlkit.errors import EnvError

    with pytest.raises(EnvError, match=r"does not fit MountainCarContinuous-v0 .*: actor\.0\.weight is \[64, \d+\] in "
                                       r"the checkpoint, \[64, 2\] for this env"):
        evaluate(str(trained_run), episodes=1, env_id="MountainCarContinuous-v0")


@pytest.mark.parametrize("damage", ["truncate_model", "corrupt_state", "empty_optimizer"])
def test_damaged_checkpoints_give_clear_errors(trained_run, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    folder = list_checkpoints(str(run))[-1]
    if damage == "truncate_model":
        path = os.path.join(folder, "model.safetensors")
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
        match = "model.safetensors is truncated or corrupted"
    elif damage == "corrupt_state":
        open(os.path.join(folder, "state.json"), "w").write('{"config": {"seed": 1')
        match = "state.json is truncated or corrupted"
    else:
        open(os.path.join(folder, "optimizer.safetensors"), "wb").write(b"")
        match = "optimizer.safetensors is truncated or corrupted"
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(str(run))
    assert main(["train", "--resume", str(run)]) == 5  # a checkpoint error (rlkit.errors.EXIT_CODES)


def test_missing_run_dir_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope")]) == 5  # a checkpoint error
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--resume", str(empty)]) == 5
    assert "no checkpoint in" in capsys.readouterr().err


def test_save_checkpoint_round_trip_of_numpy_and_python_state(tmp_path):
    state = {"a": np.arange(3, dtype=np.float32) / 3, "b": (1, 2.5), "rng": np.random.get_state()}
    save_checkpoint(str(tmp_path), 1, {"t": {"x": torch.ones(2)}}, state)
    tensors, loaded = load_checkpoint(str(tmp_path))
    np.testing.assert_array_equal(loaded["a"], state["a"])
    assert loaded["a"].dtype == np.float32
    assert torch.equal(tensors["t"]["x"], torch.ones(2))
    np.random.set_state(tuple(loaded["rng"]))


def test_optimizer_state_of_channels_last_weights_survives_a_checkpoint(tmp_path):
    """The Atari CNN keeps its conv weights channels_last; the saved Adam moments are row-major.
    Loaded back as they are, fused Adam pairs them with the wrong weight elements (silently on
    CPU): the resumed step must equal the uninterrupted one."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 8, 3).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(conv.parameters(), lr=1e-2, fused=True)
    x, y = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for _ in range(3):
        optimizer.zero_grad()
        conv(x).pow(2).sum().backward()
        optimizer.step()
    tensors, groups = optimizer_tensors(optimizer)
    save_checkpoint(str(tmp_path), 1, {"model": conv.state_dict(), "optimizer": tensors}, {"groups": groups})
    loaded, state = load_checkpoint(str(tmp_path))
    resumed = torch.nn.Conv2d(4, 8, 3).to(memory_format=torch.channels_last)
    resumed.load_state_dict(loaded["model"])
    resumed_optimizer = torch.optim.Adam(resumed.parameters(), lr=1e-2, fused=True)
    load_optimizer_tensors(resumed_optimizer, loaded["optimizer"], state["groups"])
    for model, opt in ((conv, optimizer), (resumed, resumed_optimizer)):
        opt.zero_grad()
        model(y).pow(2).sum().backward()
        opt.step()
    assert torch.equal(resumed.weight, conv.weight) and torch.equal(resumed.bias, conv.bias)


def test_eval_records_one_video_per_episode(trained_run, tmp_path, monkeypatch):
    pytest.importorskip("moviepy", reason='video needs the "video" extra (moviepy, pygame)')
    pytest.importorskip("pygame", reason='video needs the "video" extra (moviepy, pygame)')
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    result = evaluate(str(trained_run), episodes=2, video_dir=str(tmp_path / "videos"))
    videos = sorted(p for p in os.listdir(tmp_path / "videos") if p.endswith(".mp4"))
    assert len(result["returns"]) == 2 and videos == ["rl-video-episode-0.mp4", "rl-video-episode-1.mp4"]
    assert all(os.path.getsize(tmp_path / "videos" / v) > 10_000 for v in videos)


def test_bytes_flipped_inside_a_tensor_file_are_caught(tmp_path):
    """Bug: 100 bytes XOR-ed near the end of model.safetensors (its size unchanged) loaded silently and trained
    on with weights of 16,048; each file's SHA-256 is now recorded in state.json and checked on load."""
    from rlkit.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
    from rlkit.ppo import PPOConfig, train

    cfg = PPOConfig(env_id="CartPole-v1", num_envs=2, num_steps=16, num_minibatches=2, update_epochs=1,
                    total_timesteps=2 * 16 * 2, checkpoint_interval=1, device="cpu", run_dir=str(tmp_path))
    run = train(cfg, run_name="r", progress=False).run_dir
    newest = list_checkpoints(run)[-1]
    path = os.path.join(newest, "model.safetensors")
    data = bytearray(open(path, "rb").read())
    for i in range(len(data) - 120, len(data) - 20):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupted .*newest intact checkpoint is .*update_0000001"):
        load_checkpoint(run)
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(newest)
    tensors, state = load_checkpoint(list_checkpoints(run)[0])  # the older one is intact
    assert "file_sha256" not in state and state["iteration"] == 1
