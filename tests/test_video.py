"""rlkit eval --video: a CartPole run recorded to mp4 (a frame per step plus the first), and the
headless renderer choice (SDL's dummy driver; MuJoCo's EGL / OSMesa, or one line saying what is missing)."""

from __future__ import annotations

import os

import pytest

from rlkit.checkpoint import CheckpointError
from rlkit.video import prepare_rendering


def test_cartpole_video_has_one_frame_per_step(tmp_path, monkeypatch):
    pytest.importorskip("moviepy", reason='video needs pip install "rlkit[video]"')
    pytest.importorskip("pygame", reason='CartPole rendering needs pip install "rlkit[video]"')
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    from rlkit.cli import main
    from rlkit.ppo import PPOConfig, train

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("SDL_VIDEODRIVER", raising=False)
    cfg = PPOConfig(env_id="CartPole-v1", total_timesteps=128, num_steps=64, num_envs=2, num_minibatches=2, device="cpu",
                    normalize_obs=False, normalize_reward=False, run_dir=str(tmp_path))
    run = train(cfg, run_name="r", progress=False)
    videos = tmp_path / "videos"
    json_path = tmp_path / "eval.json"
    assert main(["eval", run.run_dir, "--episodes", "2", "--video", str(videos), "--json", str(json_path)]) == 0
    assert os.environ["SDL_VIDEODRIVER"] == "dummy"  # no display: chosen by itself
    import json

    lengths = json.load(open(json_path))["lengths"]
    files = sorted(videos.glob("*.mp4"))
    assert [f.name for f in files] == ["rl-video-episode-0.mp4", "rl-video-episode-1.mp4"]
    for path, length in zip(files, lengths):
        frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
        # RecordVideo keeps the reset frame and one per step; moviepy 2.x's writer can drop the last one
        # (duration = n / fps rounded down), so the file holds length + 1 frames, or length
        assert length <= frames <= length + 1, (path.name, frames, length)


def test_mujoco_picks_a_headless_backend_or_says_what_to_install(monkeypatch):
    import ctypes.util

    for key in ("DISPLAY", "WAYLAND_DISPLAY", "MUJOCO_GL", "PYOPENGL_PLATFORM", "SDL_VIDEODRIVER"):
        monkeypatch.delenv(key, raising=False)
    found = {"EGL": None, "OSMesa": "libOSMesa.so.8"}
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: found.get(name))
    assert prepare_rendering("HalfCheetah-v5")["MUJOCO_GL"] == "osmesa" and os.environ["PYOPENGL_PLATFORM"] == "osmesa"
    monkeypatch.delenv("MUJOCO_GL")
    found["EGL"] = "libEGL.so.1"
    assert prepare_rendering("HalfCheetah-v5")["MUJOCO_GL"] == "egl"
    monkeypatch.delenv("MUJOCO_GL")
    assert "MUJOCO_GL" not in prepare_rendering("CartPole-v1")  # not a MuJoCo env
    found.clear()
    with pytest.raises(CheckpointError, match="needs EGL or OSMesa: install one"):
        prepare_rendering("HalfCheetah-v5")
    monkeypatch.setenv("MUJOCO_GL", "glfw")  # the user's choice is kept
    assert "MUJOCO_GL" not in prepare_rendering("HalfCheetah-v5") and os.environ["MUJOCO_GL"] == "glfw"
    monkeypatch.setenv("DISPLAY", ":0")
    assert prepare_rendering("HalfCheetah-v5") == {}


def test_breakout_video_records_every_frame_of_whole_games(tmp_path, monkeypatch):
    """Atari evaluation records the colour game (210x160, a frame per agent step at 15 fps, one file per game, lost
    lives included) through the python stack, which plays pixel for pixel like the C++ one the run trained on."""
    pytest.importorskip("ale_py", reason='Atari needs pip install "rlkit[atari]"')
    pytest.importorskip("moviepy", reason='video needs pip install "rlkit[video]"')
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    from rlkit.cli import main
    from rlkit.ppo import PPOConfig, train

    monkeypatch.delenv("DISPLAY", raising=False)
    cfg = PPOConfig(env_id="BreakoutNoFrameskip-v4", network="nature_cnn", normalize_obs=False, normalize_reward=False,
                    total_timesteps=128, num_envs=2, num_steps=64, num_minibatches=2, update_epochs=1,
                    run_dir=str(tmp_path))
    run = train(cfg, run_name="r", progress=False)
    videos, json_path = tmp_path / "videos", tmp_path / "eval.json"
    assert main(["eval", run.run_dir, "--episodes", "1", "--video", str(videos), "--json", str(json_path)]) == 0
    import json

    lengths = json.load(open(json_path))["lengths"]  # whole games, in emulator frames
    files = sorted(videos.glob("*.mp4"))
    assert [f.name for f in files] == ["rl-video-episode-0.mp4"]
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(files[0]))
    # the game's length counts emulator frames, 4 per agent step, plus up to 30 no-op frames at reset that
    # AtariPreprocessing plays before the recorder sees a step
    assert lengths[0] > 100 and lengths[0] / 4 - 9 <= frames <= lengths[0] / 4 + 1, (frames, lengths)
    assert abs(seconds - frames / 15) < 0.2  # real time: 15 agent steps (60 game frames) per second
    reader = imageio_ffmpeg.read_frames(str(files[0]))
    meta = next(reader)
    assert tuple(meta["size"]) in ((160, 210), (160, 224))  # width x height (macro-block padded by some encoders)
