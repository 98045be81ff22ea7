"""The RLHF loop on rlkit.runtime's lifecycle: SIGTERM -> checkpoint -> resume, the non-finite guard,
callbacks, and the CLI's faces of them.  Tiny synthetic runs (a GPT-2 pretrained 30 steps, gold reward,
8 prompts per update) take a few seconds each on CPU."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from rlkit.envs import text_task
from safetensors.torch import load_file

from rlkit.checkpoint import list_checkpoints, load_checkpoint
from rlkit.cli import main
from rlkit.rlhf import ppo_lm
from rlkit.rlhf.config import RLHFConfig
from rlkit.rlhf.ppo_lm import train
from rlkit.runtime import Callback, NonFiniteError

# statistics that measure the machine, not the run: they differ between any two runs
TIMINGS = ("generate_tokens_per_s", "train_tokens_per_s", "episodes_per_s", "peak_rss_mb")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("lifecycle_base"))
    torch.manual_seed(0)
    return text_task.pretrain_base_model(path, seed=0, steps=30, batch_size=32, log=None)


def _cfg(tmp_path, tiny_base: str, **overrides) -> RLHFConfig:
    values = dict(policy=tiny_base, reward="gold", batch_size=8, num_minibatches=2, ppo_epochs=2, num_updates=4,
                  max_new_tokens=6, eval_samples=8, learning_rate=1e-3, device="cpu", run_dir=str(tmp_path / "runs"),
                  artifacts_dir=str(tmp_path / "artifacts"))
    return RLHFConfig(**{**values, **overrides}).validate()


class SignalAt(Callback):
    """Sends this process a signal after update ``at``, as a scheduler's SIGTERM would arrive mid-run."""

    def __init__(self, at: int, signum: int = signal.SIGTERM):
        self.at, self.signum = at, signum

    def on_update(self, run, iteration: int, stats: dict[str, float]) -> bool:
        if iteration == self.at:
            os.kill(os.getpid(), self.signum)
        return True


class StopAfter(Callback):
    def __init__(self, at: int):
        self.at, self.rollouts = at, []

    def on_rollout(self, run, iteration: int) -> bool:
        self.rollouts.append(iteration)
        return True

    def on_update(self, run, iteration: int, stats: dict[str, float]) -> bool:
        assert run.context["config"].lora and "score" in stats
        return iteration < self.at


def _final_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(list_checkpoints(str(run_dir))[-1], "model.safetensors"))


def _update_lines(run_dir) -> list[int]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r["iteration"] for r in map(json.loads, f) if r["kind"] == "update"]


def test_sigterm_checkpoints_and_resume_matches_the_uninterrupted_run(tiny_base, tmp_path):
    full = train(_cfg(tmp_path, tiny_base), run_name="full", progress=False)
    assert full.interrupted is None and full.updates == 4

    cut = train(_cfg(tmp_path, tiny_base), run_name="cut", progress=False, callbacks=[SignalAt(2)])
    run = tmp_path / "runs" / "cut"
    assert cut.interrupted == signal.SIGTERM and cut.updates == 2 and cut.final == {}
    assert cut.checkpoint == str(run / "checkpoints" / "update_0000002")
    assert os.path.isfile(os.path.join(cut.checkpoint, "state.json"))
    assert not (run / "summary.json").exists() and not (run / "checkpoint").exists()  # not a finished run
    with open(run / "metrics.jsonl", "a") as f:  # a line the abandoned attempt wrote after its checkpoint
        f.write(json.dumps({"kind": "update", "iteration": 99}) + "\n")

    resumed = train(resume=str(run), progress=False)
    assert resumed.interrupted is None and resumed.updates == 4
    assert [h["update"] for h in resumed.history] == [1, 2, 3, 4]
    assert (run / "summary.json").exists() and (run / "checkpoint" / "value_head.safetensors").exists()
    assert _update_lines(run) == [1, 2, 3, 4]  # cut at the checkpoint's offset, then continued
    # On CPU every step is deterministic (one thread, fixed seeds, RNG and Adam state restored
    # exactly, floats through JSON round-trip), so the resumed run is bit-for-bit the uninterrupted one.
    expected, got = _final_weights(tmp_path / "runs" / "full"), _final_weights(run)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    for a, b in zip(full.history, resumed.history):
        assert {k: v for k, v in a.items() if k not in TIMINGS} == {k: v for k, v in b.items() if k not in TIMINGS}
    assert resumed.final == full.final and resumed.initial == full.initial


def test_nan_reward_stops_with_a_message_naming_rewards_and_update(tiny_base, tmp_path):
    def nan_reward(prompts, responses):
        return torch.full((len(responses),), float("nan"))

    with pytest.raises(NonFiniteError, match=r"non-finite rewards at update 1 .*no checkpoint was written yet"):
        train(_cfg(tmp_path, tiny_base, num_updates=2), run_name="nan", progress=False, reward_fn=nan_reward)
    assert not (tmp_path / "runs" / "nan" / "summary.json").exists()


def test_callback_returning_false_stops_with_a_checkpoint(tiny_base, tmp_path):
    cfg = _cfg(tmp_path, tiny_base, lora=True, lora_r=4, lora_alpha=8, checkpoint_interval=1, keep_checkpoints=1)
    stop = StopAfter(2)
    result = train(cfg, run_name="early", progress=False, callbacks=[stop])
    run = tmp_path / "runs" / "early"
    assert result.interrupted is None and result.updates == 2 and len(result.history) == 2 and stop.rollouts == [1, 2]
    assert list_checkpoints(str(run)) == [str(run / "checkpoints" / "update_0000002")]  # keep_checkpoints = 1
    tensors, state = load_checkpoint(str(run))
    assert state["update"] == 2 and state["config"]["lora"] is True
    # LoRA: the checkpoint holds the adapter and the value head, not the frozen base
    assert tensors["model"] and all("lora_" in k or k.startswith("value_head") for k in tensors["model"])
    assert (run / "summary.json").exists()  # stopped on purpose, not interrupted: the run is finished


def test_cli_sigterm_exit_code_and_resume(tiny_base, tmp_path, capsys, monkeypatch):
    real_update = ppo_lm.run_update

    def update_then_sigterm(run, update):
        stats = real_update(run, update)
        if update == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return stats

    monkeypatch.setattr(ppo_lm, "run_update", update_then_sigterm)
    run = tmp_path / "runs" / "cli"
    args = ["rlhf", "rlhf-synthetic", "--policy", tiny_base, "--reward", "gold", "--num_updates", "2", "--batch_size", "8",
            "--num_minibatches", "2", "--ppo_epochs", "1", "--max_new_tokens", "6", "--eval_samples", "8", "--device", "cpu",
            "--run_dir", str(tmp_path / "runs"), "--run-name", "cli", "--no-progress"]
    assert main(args) == 128 + signal.SIGTERM
    out = capsys.readouterr().out
    assert f"stopped by SIGTERM after 1 updates; checkpoint: {run / 'checkpoints' / 'update_0000001'}" in out
    assert f"resume with: rlkit rlhf --resume {run}" in out
    monkeypatch.setattr(ppo_lm, "run_update", real_update)
    assert main(["rlhf", "--resume", str(run), "--no-progress"]) == 0
    assert "for 2 updates" in capsys.readouterr().out
    assert (run / "summary.json").exists() and _update_lines(run) == [1, 2]


def test_cli_resume_of_a_missing_run_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert main(["rlhf", "--resume", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err and str(missing) in err
    (tmp_path / "empty").mkdir()
    assert main(["rlhf", "--resume", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no checkpoint" in err
