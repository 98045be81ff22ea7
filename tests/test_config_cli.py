"""Recipes, config validation and the command line."""

import json
import os

import pytest

from rlkit.cli import main
from rlkit.config import ConfigError, available_recipes, config_from_dict, field_docs, read_recipe
from rlkit.ppo import PPOConfig, user_fields


def test_every_shipped_recipe_loads_and_validates():
    names = available_recipes()
    assert {"cartpole", "pendulum", "mujoco"} <= set(names)
    for name in names:
        table, values, source = read_recipe(name)
        if table == "ppo":
            config = config_from_dict(PPOConfig, values, source)
            assert config.batch_size == config.num_envs * config.num_steps


def test_every_config_field_has_a_doc():
    docs = field_docs(PPOConfig)
    missing = [k for k in user_fields() if not docs.get(k)]
    assert not missing


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(ConfigError, match=r"unknown key 'lerning_rate'.*Did you mean 'learning_rate'.*Valid keys"):
        config_from_dict(PPOConfig, {"lerning_rate": 1e-3})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"num_envs": "four"}, "num_envs must be int"),
        ({"num_envs": 2.5}, "num_envs must be int"),
        ({"anneal_lr": 3}, "anneal_lr must be bool"),
        ({"gamma": 1.5}, r"gamma must be in \[0, 1\]"),
        ({"num_envs": 0}, "num_envs must be > 0"),
        ({"num_minibatches": 3, "num_envs": 1, "num_steps": 10}, "must divide"),
        ({"device": "tpu"}, "device must be"),
        ({"target_kl": -1.0}, "target_kl must be > 0"),
        ({"seed": None}, "seed cannot be none"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(values, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(PPOConfig, values)


def test_strings_from_the_command_line_are_typed():
    config = config_from_dict(PPOConfig, {"num_envs": "4", "anneal_lr": "false", "target_kl": "none", "learning_rate": "1e-3"})
    assert config.num_envs == 4 and config.anneal_lr is False and config.target_kl is None and config.learning_rate == 1e-3


def test_help_lists_every_key_with_its_doc(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "pendulum", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    docs = field_docs(PPOConfig)
    for key in user_fields():
        assert f"--{key}" in out
    assert docs["gae_lambda"].split()[0] in out
    assert "recipe: 198400" in out  # pendulum's total_timesteps (62 updates of 16 x 200) shown as the default


def test_cli_errors_are_one_line_not_tracebacks(capsys):
    assert main(["train", "pendulum", "--lerning-rate", "3"]) == 2
    assert "Did you mean 'learning_rate'" in capsys.readouterr().err
    assert main(["train", "pendulm"]) == 2
    assert "Did you mean 'pendulum'" in capsys.readouterr().err
    assert main(["train", "pendulum", "--gamma", "2"]) == 2
    assert "gamma must be in [0, 1]" in capsys.readouterr().err
    assert main(["nonsense"]) == 2


def test_train_command_writes_config_metrics_and_tensorboard(tmp_path, capsys):
    code = main(["train", "cartpole", "--total_timesteps", "2048", "--run_dir", str(tmp_path), "--run-name", "smoke",
                 "--no-progress"])
    assert code == 0
    run = tmp_path / "smoke"
    config = json.loads((run / "config.json").read_text())
    assert config["env_id"] == "CartPole-v1" and config["total_timesteps"] == 2048
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in records}
    assert kinds == {"episode", "update"}
    update = next(r for r in records if r["kind"] == "update")
    for key in ["policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "explained_variance", "learning_rate", "SPS"]:
        assert key in update
    # learning rate annealed linearly from 2.5e-4 towards 0 [core 4]
    rates = [r["learning_rate"] for r in records if r["kind"] == "update"]
    assert rates[0] == pytest.approx(2.5e-4) and len(rates) == 4
    assert rates == pytest.approx([2.5e-4 * (1 - i / 4) for i in range(4)])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 2048 and summary["episodes"] > 0
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(run)).Reload().Tags()["scalars"]
    for tag in ["charts/episodic_return", "charts/episodic_length", "charts/SPS", "charts/learning_rate",
                "losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl", "losses/clipfrac",
                "losses/explained_variance"]:
        assert tag in tags
    out = capsys.readouterr().out
    assert "return over the last" in out and str(run) in out and "SPS" in out


def test_recipes_command_lists_recipes(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "pendulum" in out and "Pendulum-v1" in out


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_KEYS = st.sampled_from(user_fields() + ["lerning_rate", "batch_size", "", "env-id"])
_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=6))
def test_fuzzed_recipe_values_give_a_config_or_a_config_error(values):
    try:
        config = config_from_dict(PPOConfig, values)
    except ConfigError as error:
        assert str(error)
    else:
        assert config.batch_size == config.num_envs * config.num_steps > 0


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_KEYS, st.text(max_size=12), max_size=6))
def test_fuzzed_command_line_strings_give_a_config_or_a_config_error(values):
    try:
        config_from_dict(PPOConfig, values, source="command line")
    except ConfigError as error:
        assert str(error).startswith("command line")



def test_small_cli_faces_say_what_is_true(tmp_path, capsys):
    """Bugs: `--resume --help` was a usage error; a run without TensorBoard was summarised with 'TensorBoard
    events' and a tensorboard command; an export without normalizer.json listed it."""
    from rlkit.cli import main

    assert main(["train", "--resume", "--help"]) == 0 and "--total_timesteps" in capsys.readouterr().out
    assert main(["rlhf", "--resume", "--help"]) == 0 and "--num_updates" in capsys.readouterr().out
    assert main(["train", "cartpole", "--total_timesteps", "64", "--track", "[]", "--normalize_obs", "false",
                 "--run_dir", str(tmp_path), "--run-name", "r", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "TensorBoard" not in out and "tensorboard --logdir" not in out
    assert main(["export", str(tmp_path / "r"), str(tmp_path / "out"), "--episodes", "1"]) == 0
    assert "normalizer.json" not in capsys.readouterr().out


def test_a_search_space_with_unknown_or_impossible_fields_is_refused(tmp_path):
    pytest.importorskip("optuna")
    from rlkit.tune import make_setup

    for text, says in [("learning_rate = {low = 1e-4, high = 1e-3, lg = true}", "unknown field"),
                       ("learning_rate = {low = -1.0, high = 1e-3, log = true}", "log scale"),
                       ('num_steps = {low = "a", high = 2}', "low <= high")]:
        path = tmp_path / "space.toml"
        path.write_text(f"[space]\n{text}\n")
        with pytest.raises(ConfigError, match=says):
            make_setup("cartpole", [], space_file=str(path))
