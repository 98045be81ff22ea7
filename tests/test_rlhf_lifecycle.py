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


@pytest.mark.parametrize("schedule", [{}, {"lr_schedule": "cosine", "warmup_updates": 2, "eval_interval": 1},
                                      {"advantage_estimator": "grpo", "samples_per_prompt": 4, "kl_mode": "k3_loss"}],
                         ids=["constant", "cosine_warmup_eval", "grpo"])
def test_sigterm_checkpoints_and_resume_matches_the_uninterrupted_run(tiny_base, tmp_path, schedule):
    full = train(_cfg(tmp_path, tiny_base, **schedule), run_name="full", progress=False)
    assert full.interrupted is None and full.updates == 4

    cut = train(_cfg(tmp_path, tiny_base, **schedule), run_name="cut", progress=False, callbacks=[SignalAt(2)])
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
    value_head = (run / "checkpoint" / "value_head.safetensors").exists()
    assert (run / "summary.json").exists() and value_head == (schedule.get("advantage_estimator", "gae") == "gae")
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
    assert resumed.evaluations == full.evaluations and _eval_lines(run) == [e["update"] for e in full.evaluations]
    cfg = _cfg(tmp_path, tiny_base, **schedule)  # the resumed half followed the schedule, not the checkpoint's last lr
    assert [h["learning_rate"] for h in resumed.history] == [ppo_lm.scheduled_learning_rate(cfg, u) for u in range(1, 5)]


def _eval_lines(run_dir) -> list[int]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r["iteration"] for r in map(json.loads, f) if r["kind"] == "eval"]


# ---------------------------------------------------------------------------------
# Learning-rate schedule
# ---------------------------------------------------------------------------------


def test_learning_rate_schedules_at_known_updates():
    def lr(schedule: str, update: int, warmup: int = 2) -> float:
        cfg = RLHFConfig(learning_rate=0.1, num_updates=10, lr_schedule=schedule, warmup_updates=warmup).validate()
        return ppo_lm.scheduled_learning_rate(cfg, update)

    def approx(value: float):  # the hand-computed values below have 7 decimals
        return pytest.approx(value, abs=1e-7)

    # warmup 2 of 10 updates: 0.1 * 1/3, 0.1 * 2/3, then the full 0.1 at update 3 whatever the schedule
    for schedule in ("constant", "linear", "cosine"):
        assert lr(schedule, 1) == approx(0.0333333) and lr(schedule, 2) == approx(0.0666667)
        assert lr(schedule, 3) == approx(0.1)  # progress (3 - 1 - 2) / 8 = 0
    assert [lr("constant", u) for u in (5, 10)] == [0.1, 0.1]
    # linear, progress (u - 3) / 8: u 7 -> 0.1 * 4/8, u 10 -> 0.1 * 1/8
    assert lr("linear", 7) == approx(0.05) and lr("linear", 10) == approx(0.0125)
    # cosine: u 5 -> 0.05 * (1 + cos(pi/4)) = 0.0853553; u 7 -> 0.05 * (1 + cos(pi/2)); u 10 -> 0.05 * (1 + cos(7pi/8))
    assert lr("cosine", 5) == approx(0.0853553) and lr("cosine", 7) == approx(0.05)
    assert lr("cosine", 10) == approx(0.0038060)
    # no warmup, linear: the same annealing as the core's (rlkit.runtime.linear_lr)
    from rlkit.runtime import linear_lr

    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.1)
    for update in range(1, 11):
        linear_lr(optimizer, update, 10, 0.1)
        assert lr("linear", update, warmup=0) == pytest.approx(optimizer.param_groups[0]["lr"])
    # the default is the constant learning rate, exactly (no float drift on the old behaviour)
    default = RLHFConfig(learning_rate=3e-4).validate()
    assert {ppo_lm.scheduled_learning_rate(default, u) for u in range(1, default.num_updates + 1)} == {3e-4}


def test_schedule_and_eval_interval_errors_name_the_key_and_the_valid_values():
    from rlkit.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=r"lr_schedule must be one of constant, linear, cosine, got 'exp'"):
        config_from_dict(RLHFConfig, {"lr_schedule": "exp"}, "test")
    for bad in (-1, 60):
        with pytest.raises(ConfigError, match=rf"warmup_updates must be in \[0, num_updates\) = \[0, 60\), got {bad}"):
            config_from_dict(RLHFConfig, {"warmup_updates": bad, "num_updates": 60}, "test")
    with pytest.raises(ConfigError, match="eval_interval must be >= 0, got -2"):
        config_from_dict(RLHFConfig, {"eval_interval": -2}, "test")


def test_the_scheduled_learning_rate_is_the_one_adam_steps_with(tiny_base, tmp_path):
    cfg = _cfg(tmp_path, tiny_base, lr_schedule="linear", warmup_updates=1, checkpoint_interval=1, keep_checkpoints=0)
    result = train(cfg, run_name="lr", progress=False)
    expected = [ppo_lm.scheduled_learning_rate(cfg, u) for u in range(1, 5)]
    assert len(set(expected)) == 4  # warmup then decay: four different rates, or the test proves nothing
    assert [h["learning_rate"] for h in result.history] == expected
    saved = [load_checkpoint(folder)[1]["optimizer_param_groups"][0]["lr"] for folder in list_checkpoints(result.run_dir)]
    assert saved == expected  # Adam stepped with them
    with open(os.path.join(result.run_dir, "metrics.jsonl")) as f:
        assert [r["learning_rate"] for r in map(json.loads, f) if r["kind"] == "update"] == expected


# ---------------------------------------------------------------------------------
# Periodic evaluation
# ---------------------------------------------------------------------------------


class RecordEvals(Callback):
    def __init__(self, stop_at: int | None = None):
        self.calls: list[tuple[int, dict]] = []
        self.stop_at = stop_at

    def on_eval(self, run, iteration: int, result: dict) -> bool:
        self.calls.append((iteration, result))
        return iteration != self.stop_at


def test_periodic_evaluation_logs_under_eval_calls_on_eval_and_leaves_training_alone(tiny_base, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    seen = RecordEvals()
    periodic = train(_cfg(tmp_path, tiny_base, eval_interval=2), run_name="periodic", progress=False, callbacks=[seen])
    assert [i for i, _ in seen.calls] == [2, 4] and [e["update"] for e in periodic.evaluations] == [0, 2, 4]
    assert seen.calls[-1][1] == periodic.final and periodic.evaluations[0] == {"update": 0, "episodes": 0, **periodic.initial}
    for _, result in seen.calls:  # proxy (here the gold reward function), each component, gold, KL, length
        assert {"score", "reward/gold", "gold", "kl_k1", "kl_k3", "response_length", "eos_frac"} <= result.keys()
    with open(os.path.join(periodic.run_dir, "metrics.jsonl")) as f:
        lines = [r for r in map(json.loads, f) if r["kind"] == "eval"]
    assert [r["iteration"] for r in lines] == [0, 2, 4] and [r["global_step"] for r in lines] == [0, 16, 32]
    assert lines[1]["gold"] == periodic.evaluations[1]["gold"]
    assert len(lines[1]["samples"]) == ppo_lm.EVAL_LOG_ROWS and {"prompt", "response", "score", "gold"} <= lines[1]["samples"][0].keys()
    events = EventAccumulator(periodic.run_dir, size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in events.Scalars("eval/gold")] == [0, 16, 32]
    assert [e.step for e in events.Scalars("charts/learning_rate")] == [8, 16, 24, 32]

    # eval_interval 0: only before the first and after the last update, as before; the evaluations
    # restore the RNGs, so training is bitwise the same with or without them
    plain = train(_cfg(tmp_path, tiny_base), run_name="plain", progress=False)
    assert [e["update"] for e in plain.evaluations] == [0, 4] and plain.final == periodic.final
    for a, b in zip(plain.history, periodic.history, strict=True):
        assert {k: v for k, v in a.items() if k not in TIMINGS} == {k: v for k, v in b.items() if k not in TIMINGS}


def test_on_eval_returning_false_stops_the_run_with_a_checkpoint(tiny_base, tmp_path):
    stop = RecordEvals(stop_at=1)
    result = train(_cfg(tmp_path, tiny_base, eval_interval=1), run_name="evalstop", progress=False, callbacks=[stop])
    assert result.updates == 1 and [i for i, _ in stop.calls] == [1] and result.interrupted is None
    assert load_checkpoint(result.run_dir)[1]["update"] == 1
    assert result.final == stop.calls[0][1]  # the final evaluation is the one at the stop, not a second one
    assert [e["update"] for e in result.evaluations] == [0, 1]


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
    assert main(["rlhf", "--resume", str(missing)]) == 5  # a checkpoint error (rlkit.errors.EXIT_CODES)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err and str(missing) in err
    (tmp_path / "empty").mkdir()
    assert main(["rlhf", "--resume", str(tmp_path / "empty")]) == 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no checkpoint" in err


def test_resume_extends_a_finished_run_to_more_updates(tiny_base, tmp_path, capsys):
    """`rlkit rlhf --resume RUN --num_updates N` continues a finished run to N updates (it took no overrides);
    without it, a finished run is left as it is."""
    from rlkit.cli import main

    run = tmp_path / "runs" / "grow"
    first = train(_cfg(tmp_path, tiny_base, num_updates=2, checkpoint_interval=1), run_name="grow", progress=False)
    assert first.updates == 2
    assert main(["rlhf", "--resume", str(run), "--no-progress"]) == 0
    assert "already complete (2 updates); nothing trained" in capsys.readouterr().out
    assert main(["rlhf", "--resume", str(run), "--num_updates", "3", "--no-progress"]) == 0
    tensors, state = load_checkpoint(str(run))
    assert state["update"] == 3 and len(state["history"]) == 3 and state["config"]["num_updates"] == 3
    assert main(["rlhf", "--resume", str(run), "--num_updates", "1", "--no-progress"]) == 2  # fewer than it ran
