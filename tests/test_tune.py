"""rlkit tune: tiny Optuna studies on CartPole (a few updates of 2 x 32 steps per trial) that complete,
prune, resume, share one SQLite study between processes, and write a best recipe `rlkit train` runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

optuna = pytest.importorskip("optuna", reason='rlkit tune needs optuna: pip install "rlkit[tune]"')

from rlkit.cli import main  # noqa: E402
from rlkit.config import ConfigError, read_recipe  # noqa: E402
from rlkit.tune import default_space, make_setup, toml_value, tune  # noqa: E402

SPACE = """[space]
num_steps = {choices = [16, 32]}
num_minibatches = {choices = [2, 4]}
update_epochs = {low = 1, high = 2}
learning_rate = {low = 1e-4, high = 1e-2, log = true}
hidden_size = 16          # fixed, not searched
"""
TINY = ["--", "--total_timesteps", "128", "--num_envs", "2", "--device", "cpu"]


@pytest.fixture
def space(tmp_path) -> str:
    path = tmp_path / "space.toml"
    path.write_text(SPACE)
    return str(path)


def _args(tmp_path, space: str, trials: int, *extra: str) -> list[str]:
    return ["tune", "cartpole", "--trials", str(trials), "--space", space, "--evals", "2", "--eval-episodes", "2",
            "--storage", f"sqlite:///{tmp_path}/study.db", "--run-dir", str(tmp_path / "runs"),
            "--best", str(tmp_path / "best.toml"), "--no-progress", *extra, *TINY]


def _study(tmp_path):
    return optuna.load_study(study_name="cartpole-tune", storage=f"sqlite:///{tmp_path}/study.db")


def test_a_study_completes_resumes_and_writes_a_recipe_rlkit_train_runs(tmp_path, space, capsys):
    assert main(_args(tmp_path, space, 2, "--sampler-seed", "0")) == 0
    study = _study(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    printed = capsys.readouterr().out
    assert "top trials of 'cartpole-tune'" in printed and "2 of 2 trials finished" in printed

    # re-running with more trials continues the same study: only the missing one runs
    assert main(_args(tmp_path, space, 3)) == 0
    study = _study(tmp_path)
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert "3 of 3 trials finished (1 run now" in capsys.readouterr().out
    assert main(_args(tmp_path, space, 3)) == 0  # nothing left to do
    assert len(_study(tmp_path).trials) == 3

    best = study.best_trial
    table, values, _ = read_recipe(str(tmp_path / "best.toml"))
    assert table == "ppo" and values["hidden_size"] == 16 and values["env_id"] == "CartPole-v1"
    for key, value in best.params.items():
        assert values[key] == (best.user_attrs["config"].get(key, value)), key
    assert "seed" not in values and "eval_interval" not in values  # the tuning's own settings stay out
    # the objective is the mean final evaluation return, and each trial's run folder holds its evaluations
    run = tmp_path / "runs" / "cartpole-tune" / f"trial_{best.number:03d}" / "seed_1"
    evals = [json.loads(line) for line in open(run / "metrics.jsonl") if '"kind": "eval"' in line]
    assert best.value == pytest.approx(evals[-1]["mean_return"])

    assert main(["train", str(tmp_path / "best.toml"), "--total_timesteps", "64", "--run_dir", str(tmp_path / "retrain"),
                 "--no-progress"]) == 0


def test_the_pruner_stops_a_trial_at_an_evaluation(tmp_path, space):
    setup = make_setup("cartpole", TINY[1:] + ["--total_timesteps", "256"], space_file=space, evals=4, eval_episodes=2,
                       run_dir=str(tmp_path / "runs"))
    outcome = tune(setup, 1, storage=None, pruner=optuna.pruners.ThresholdPruner(lower=1e9), progress=False,
                   echo=lambda *a: None, best_path=str(tmp_path / "best.toml"))
    (trial,) = outcome["study"].trials
    assert trial.state.name == "PRUNED" and len(trial.intermediate_values) == 1
    summary = json.load(open(tmp_path / "runs" / "cartpole-tune" / "trial_000" / "seed_1" / "summary.json"))
    assert summary["global_step"] < 256  # the run stopped at its first evaluation
    assert outcome["best_path"] is None  # no complete trial: no recipe


def test_a_trial_stopped_by_a_signal_is_not_counted_and_is_replaced(tmp_path, space, monkeypatch):
    setup = make_setup("cartpole", TINY[1:], space_file=space, evals=2, eval_episodes=2, run_dir=str(tmp_path / "runs"))
    storage = f"sqlite:///{tmp_path}/study.db"
    real = type(setup).train
    monkeypatch.setattr(type(setup), "train", property(lambda self: lambda cfg, **kw: SimpleNamespace(interrupted=15)))
    best = str(tmp_path / "best.toml")
    outcome = tune(setup, 2, storage, progress=False, echo=lambda *a: None, best_path=best)
    assert outcome["interrupted"] == 15 and outcome["finished"] == 0
    monkeypatch.setattr(type(setup), "train", real)
    outcome = tune(setup, 2, storage, progress=False, echo=lambda *a: None, best_path=best)
    states = [t.state.name for t in outcome["study"].trials]
    assert states == ["FAIL", "COMPLETE", "COMPLETE"] and outcome["finished"] == 2


def test_processes_share_one_sqlite_study(tmp_path, space):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "rlkit.cli", *_args(tmp_path, space, 4)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    trials = _study(tmp_path).trials
    # 5: both processes started a last trial at once; from the 4th trial on the median pruner may act
    assert 4 <= len(trials) <= 5 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert len({t.number for t in trials}) == len(trials)
    assert all("trials finished" in out for out in outputs)


def test_the_recipe_trial_is_not_enqueued(tmp_path, space, monkeypatch):
    """Bug: trial 0 was an enqueued (WAITING) trial; on SQLite two processes starting together could both pop it
    (no row locks, Optuna #4002) and race for one trial folder (test_processes_share_one_sqlite_study failed
    with exits [7, 2]).  Trial 0 now draws the recipe's values from the sampler: no trial ever waits."""
    def refuse(*args, **kwargs):
        raise AssertionError("a WAITING trial can be popped by two processes on SQLite")

    monkeypatch.setattr(optuna.Study, "enqueue_trial", refuse)
    assert main(_args(tmp_path, space, 2, "--sampler-seed", "0")) == 0
    first, second = _study(tmp_path).trials
    _, recipe, _ = read_recipe("cartpole")
    assert first.user_attrs["from_recipe"] and first.params["learning_rate"] == recipe["learning_rate"]
    assert "from_recipe" not in second.user_attrs and second.params["learning_rate"] != recipe["learning_rate"]
    assert first.state.name == second.state.name == "COMPLETE"


def test_search_spaces_and_refusals(tmp_path):
    space = default_space("pendulum", {})
    assert {"learning_rate", "num_steps", "num_minibatches", "update_epochs", "gamma", "gae_lambda", "clip_coef",
            "ent_coef", "hidden_size"} <= set(space)
    for steps in space["num_steps"]["choices"]:  # every choice divides every pendulum batch (16 envs)
        assert all(16 * steps % m == 0 for m in space["num_minibatches"]["choices"])
    assert "hidden_size" not in default_space("atari", {})
    assert default_space("my.toml", {"num_steps": 64, "num_minibatches": 4})["num_steps"] == {"choices": [32, 64, 128]}
    rlhf = make_setup("rlhf-synthetic", [])  # [rlhf] recipes get the RLHF space, around the recipe's learning rate
    assert rlhf.table == "rlhf" and rlhf.rlhf is not None
    assert rlhf.space["learning_rate"] == {"low": 1e-5, "high": 1e-3, "log": True} and "kl_coef" in rlhf.space
    with pytest.raises(ConfigError, match="--seed is set by rlkit tune"):
        make_setup("cartpole", ["--seed", "3"])
    # an image env's CNN has no hidden_size: not searched (a study of one once died on trial 0)
    assert "hidden_size" not in default_space("images.toml", {"env_id": "rlkit/HWCImageProbe-v0"})
    assert "hidden_size" in default_space("dict.toml", {"env_id": "rlkit/DictImageVectorProbe-v0"})  # multi_input's MLP
    # settings every trial overrides were once taken and dropped (and written into the best recipe)
    for key, value in (("exp_name", "mine"), ("eval_deterministic", "false"), ("checkpoint_interval", "5"),
                       ("stop_at_return", "400")):
        with pytest.raises(ConfigError, match=f"--{key} is fixed by rlkit tune for every trial"):
            make_setup("cartpole", [f"--{key}", value])
    with pytest.raises(ConfigError, match="--checkpoint_interval is fixed by rlkit tune"):
        make_setup("rlhf-synthetic", ["--checkpoint_interval", "5"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[space]\nlearning_rat = {low = 1e-4, high = 1e-3}\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        make_setup("cartpole", [], space_file=str(bad))
    assert main(["tune", "pendulum", "--show-space"]) == 0
    assert toml_value({"low": 1e-05, "log": True}) == "{low = 1e-05, log = true}"


def test_a_new_study_starts_from_the_recipe_itself(tmp_path, space):
    """Trial 0 is the recipe's own values (a range clamps, a value not among the choices is sampled), so the
    best trial is never worse than the recipe on the tuning objective; --no-recipe-trial leaves it out."""
    from rlkit.tune import recipe_params

    assert recipe_params({"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "epochs": {"low": 1, "high": 2},
                          "steps": {"choices": [16, 32]}, "ent": {"low": 1e-8, "high": 1e-2}},
                         {"lr": 2.5e-4, "epochs": 4, "steps": 128, "ent": 0.0}) == {"lr": 2.5e-4, "epochs": 2, "ent": 1e-8}
    # a range with an int low but a float high is searched as floats: the recipe's 0.01 stays 0.01, not int(0.01)
    assert recipe_params({"ent": {"low": 0, "high": 0.05}, "n": {"low": 1, "high": 9}}, {"ent": 0.01, "n": 3.6}) == \
        {"ent": 0.01, "n": 4}
    assert main(_args(tmp_path, space, 1)) == 0
    first = _study(tmp_path).trials[0]
    _, recipe, _ = read_recipe("cartpole")
    assert first.user_attrs["from_recipe"] and first.params["learning_rate"] == recipe["learning_rate"]
    assert first.params["update_epochs"] == min(2, recipe["update_epochs"])
    other = tmp_path / "other"
    other.mkdir()
    assert main(_args(other, space, 1, "--no-recipe-trial", "--sampler-seed", "0")) == 0
    assert "from_recipe" not in _study(other).trials[0].user_attrs


def test_an_rlhf_recipe_is_tuned_for_gold_within_a_kl_budget(tmp_path, capsys):
    """[rlhf] recipes: the held-out evaluations feed the pruner; the objective is the best gold among the
    evaluations within --kl-budget; the best trial is a recipe that `rlkit rlhf` runs."""
    import torch
    from rlkit.envs import text_task

    from rlkit.tune import RLHFObjective

    torch.manual_seed(0)
    base = text_task.pretrain_base_model(str(tmp_path / "base"), seed=0, steps=30, batch_size=32, log=None)
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(f'[rlhf]\npolicy = "{base}"\nreward = "gold"\nbatch_size = 8\nnum_minibatches = 2\nppo_epochs = 1\n'
                      f'num_updates = 4\nmax_new_tokens = 6\neval_samples = 8\nlearning_rate = 1e-3\ndevice = "cpu"\n'
                      f'artifacts_dir = "{tmp_path / "artifacts"}"\n')
    space = tmp_path / "space.toml"
    space.write_text("[space]\nlearning_rate = {low = 1e-4, high = 3e-3, log = true}\nppo_epochs = 1\n")
    args = ["tune", str(recipe), "--trials", "2", "--evals", "2", "--kl-budget", "50", "--space", str(space),
            "--storage", f"sqlite:///{tmp_path}/study.db", "--run-dir", str(tmp_path / "runs"),
            "--best", str(tmp_path / "best.toml"), "--no-progress", "--sampler-seed", "0"]
    assert main(args) == 0
    study = optuna.load_study(study_name="tiny-tune", storage=f"sqlite:///{tmp_path}/study.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert study.trials[0].user_attrs["from_recipe"] and study.trials[0].params["learning_rate"] == 1e-3
    # the value is the best held-out gold within the budget, read back from the trial's run folder
    run = tmp_path / "runs" / "tiny-tune" / "trial_000" / "seed_1"
    evals = [json.loads(line) for line in open(run / "metrics.jsonl") if '"kind": "eval"' in line]
    assert len(evals) >= 2 and study.trials[0].value == pytest.approx(max(e["gold"] for e in evals if e["kl_k1"] <= 50))
    table, values, _ = read_recipe(str(tmp_path / "best.toml"))
    assert table == "rlhf" and values["policy"] == base and "rlkit rlhf <this file>" in (tmp_path / "best.toml").read_text()
    assert "within KL <= 50 nats" in (tmp_path / "best.toml").read_text()
    assert f"rlkit rlhf {tmp_path / 'best.toml'}" in capsys.readouterr().out
    # the objective's rule, and refusals
    evaluations = [{"gold": 0.1, "kl_k1": 0.0}, {"gold": 0.9, "kl_k1": 7.0}, {"gold": 0.5, "kl_k1": 3.0}]
    assert RLHFObjective("gold", 5.0).value(evaluations) == 0.5 and RLHFObjective().value(evaluations) == 0.5
    assert RLHFObjective("gold", None).value(evaluations[:2]) == 0.9
    with pytest.raises(ConfigError, match="no 'gold'"):
        RLHFObjective("gold").value([{"score": 1.0, "kl_k1": 0.0}])
    with pytest.raises(ConfigError, match="--eval-episodes is for control recipes"):
        make_setup(str(recipe), [], eval_episodes=3)
    with pytest.raises(ConfigError, match="are for RLHF recipes"):
        make_setup("cartpole", [], kl_budget=3.0)


def test_a_study_continues_only_with_its_own_settings(tmp_path, space):
    """Bug: re-running with another budget or other seeds continued the study silently, ranked trials scored on
    different budgets together, and wrote a best recipe mixing the best trial with the new command's settings."""
    assert main(_args(tmp_path, space, 1, "--sampler-seed", "0")) == 0
    assert main(_args(tmp_path, space, 2, "--sampler-seed", "0")) == 0  # the same settings: continues
    assert len(_study(tmp_path).trials) == 2
    other = _args(tmp_path, space, 3)
    other[other.index("128")] = "192"  # --total_timesteps 192
    assert main(other) == 2
    assert main(_args(tmp_path, space, 3, "--seeds", "1", "2")) == 2
    assert len(_study(tmp_path).trials) == 2


def test_the_recipe_trial_takes_defaulted_keys_too_and_invalid_trials_say_why(tmp_path, capsys):
    """Bugs: trial 0 sampled a key the recipe file leaves to its default (so it was not the recipe); a trial whose
    config was invalid printed 'pruned' with no reason, and a study of only invalid trials exited 0."""
    from rlkit.ppo import PPOConfig

    defaulted = tmp_path / "defaulted.toml"
    defaulted.write_text("[space]\nclip_coef = {low = 0.05, high = 0.3}\nhidden_size = 16\n")
    assert main(_args(tmp_path, str(defaulted), 1)) == 0  # cartpole's recipe does not set clip_coef
    assert _study(tmp_path).trials[0].params["clip_coef"] == PPOConfig().clip_coef
    bad = tmp_path / "bad.toml"
    bad.write_text('[space]\nnum_envs = {choices = [0, -1]}\n')
    capsys.readouterr()
    code = main(["tune", "cartpole", "--trials", "2", "--space", str(bad), "--evals", "2", "--no-recipe-trial",
                 "--storage", f"sqlite:///{tmp_path}/bad.db", "--run-dir", str(tmp_path / "bad_runs"),
                 "--best", str(tmp_path / "bad_best.toml"), "--no-progress", *TINY])
    out = capsys.readouterr()
    assert code == 2 and "every trial's config was invalid" in out.err
    assert "pruned" in out.out and "invalid config: " in out.out and "num_envs" in out.out


def test_a_second_study_of_the_same_name_in_another_storage_says_how_to_separate_them(tmp_path, space, capsys):
    """Bug: its trial 0 found the first study's trial_000 folder and the refusal suggested rlkit train's
    --resume / --run-name / --new-folder, none of which rlkit tune takes."""
    assert main(_args(tmp_path, space, 1)) == 0
    other = _args(tmp_path, space, 1)
    other[other.index(f"sqlite:///{tmp_path}/study.db")] = f"sqlite:///{tmp_path}/other.db"
    capsys.readouterr()
    assert main(other) == 7
    assert "another --study-name or --run-dir" in capsys.readouterr().err
