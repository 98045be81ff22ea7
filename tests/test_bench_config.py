"""rlkit bench never reuses a run made with another config: the same config is skipped, a changed one is
moved aside and trained again, or (--refuse-changed) refused in one line naming the keys."""

from __future__ import annotations

import glob
import json
import os

from rlkit.bench import plan_runs
from rlkit.cli import main

RECIPE = """
[ppo]
env_id = "rlkit/ConstantReward-Discrete-v0"
total_timesteps = 128
num_envs = 2
num_steps = 32
num_minibatches = 2
update_epochs = 1
normalize_obs = false
normalize_reward = false
device = "cpu"
"""
PROBE_DIR = "rlkit_ConstantReward-Discrete-v0"


def test_bench_compares_the_saved_config_with_the_requested_one(tmp_path, capsys):
    recipe = tmp_path / "probe.toml"
    recipe.write_text(RECIPE)
    out = str(tmp_path / "out")
    run = os.path.join(out, PROBE_DIR, "seed_1")
    bench = ["bench", str(recipe), "--seeds", "1", "--out", out]

    assert main(bench) == 0
    assert "1 runs finished, 0 skipped" in capsys.readouterr().out
    (spec,) = plan_runs(str(recipe), None, [1], ["cpu"], out)
    assert spec.config_changes() == []
    (other_device,) = plan_runs(str(recipe), None, [1], ["cuda:0"], out, ["--log_interval", "2"])
    assert other_device.config_changes() == []  # where and how a run is kept is not its config
    # a run an older rlkit wrote, with shared_network = false and hidden_size = 64 for "unset": the same config
    saved = json.load(open(os.path.join(run, "config.json")))
    json.dump({**saved, "shared_network": False, "hidden_size": 64}, open(os.path.join(run, "config.json"), "w"))
    assert spec.config_changes() == []

    assert main(bench) == 0  # the same config: skipped
    assert "0 runs finished, 1 skipped" in capsys.readouterr().out

    # another config: refused under the flag, in one line naming the keys; nothing moved
    assert main(bench + ["--refuse-changed", "--", "--total_timesteps", "256", "--gamma", "0.9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "total_timesteps 128 -> 256" in err and "gamma 0.99 -> 0.9" in err
    assert json.load(open(os.path.join(run, "summary.json")))["global_step"] == 128

    # by default: moved aside and trained again with the requested config
    assert main(bench + ["--", "--total_timesteps", "256"]) == 0
    printed = capsys.readouterr().out
    assert "was made with another config (total_timesteps 128 -> 256)" in printed and "1 runs finished, 0 skipped" in printed
    assert json.load(open(os.path.join(run, "summary.json")))["global_step"] == 256
    (aside,) = glob.glob(run + ".replaced-*[0-9]")
    assert json.load(open(os.path.join(aside, "summary.json")))["global_step"] == 128

    from rlkit.report import aggregate

    (result,) = aggregate(out).values()  # the report reads only the runs of the requested config
    assert len(result.runs) == 1 and result.runs[0].total_steps == 256
