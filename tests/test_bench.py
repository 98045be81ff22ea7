"""The multi-seed launcher (rlkit bench) and the aggregation (rlkit report).

The launcher tests share one module fixture that launches three times into one
folder (3 seeds on 2 workers; the same again, all skipped; a good and a broken env
id side by side plus an interrupted run to resume), because each run is a fresh
Python process (~5-10 s of imports).
"""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest

from rlkit.bench import launch, plan_runs
from rlkit.cli import cmd_bench
from rlkit.config import ConfigError
from rlkit.report import aggregate, binned_curve, bootstrap_ci, cmd_report, iqm, render_report, write_report

PROBE = "rlkit/ConstantReward-Discrete-v0"
PROBE_DIR = PROBE.replace("/", "_")
BROKEN = "rlkit/NoSuchProbe-v0"
RECIPE = """
[ppo]
env_id = "rlkit/ConstantReward-Discrete-v0"
total_timesteps = 256
num_envs = 2
num_steps = 32
num_minibatches = 2
update_epochs = 1
normalize_obs = false
normalize_reward = false
device = "cpu"
"""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("recipe") / "probe.toml"
    path.write_text(RECIPE)
    return str(path)


@pytest.fixture(scope="module")
def bench(recipe, tmp_path_factory):
    """Three launches into one folder; what each returned."""
    out = str(tmp_path_factory.mktemp("bench") / "out")
    first_code = cmd_bench([recipe, "--seeds", "1", "2", "3", "--workers", "2", "--out", out])
    def mtimes():
        paths = {s: os.path.join(out, PROBE_DIR, f"seed_{s}", "summary.json") for s in (1, 2, 3)}
        return {s: os.path.getmtime(p) for s, p in paths.items() if os.path.isfile(p)}

    before = mtimes()
    second = launch(plan_runs(recipe, None, [1, 2, 3], ["cpu"], out), workers=2, progress=False)
    after = mtimes()
    # An interrupted run: seed 3 loses its summary.json but keeps its checkpoints/ (the last one is final).
    os.remove(os.path.join(out, PROBE_DIR, "seed_3", "summary.json"))
    with open(os.path.join(out, PROBE_DIR, "seed_3", "metrics.jsonl")) as f:
        seed3_lines = f.readlines()
    # A crashed earlier attempt of (probe, seed 4): stale metrics that must not survive the rerun.
    stale = os.path.join(out, PROBE_DIR, "seed_4")
    os.makedirs(stale)
    with open(os.path.join(stale, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"kind": "episode", "global_step": 2, "return": -999.0, "length": 1}) + "\n")
    third_runs = plan_runs(recipe, [PROBE, BROKEN], [4], ["cpu"], out) + plan_runs(recipe, [PROBE], [3], ["cpu"], out)
    assert [r.resumable for r in third_runs] == [False, False, True]
    third = launch(third_runs, workers=2, progress=False)
    third_code = cmd_bench([recipe, "--env-ids", PROBE, BROKEN, "--seeds", "4", "--out", out])  # all done or broken
    return {"out": out, "first_code": first_code, "before": before, "after": after, "seed3_lines": seed3_lines,
            "second": second, "third": third, "third_code": third_code}


def test_launcher_three_seeds_two_workers(bench):
    assert bench["first_code"] == 0
    for seed in (1, 2, 3):
        run_dir = os.path.join(bench["out"], PROBE_DIR, f"seed_{seed}")
        with open(os.path.join(run_dir, "config.json")) as f:
            config = json.load(f)
        assert config["seed"] == seed and config["env_id"] == PROBE and config["device"] == "cpu"
        with open(os.path.join(run_dir, "summary.json")) as f:
            assert json.load(f)["global_step"] == 256
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
        assert any(r["kind"] == "episode" for r in records) and any(r["kind"] == "update" for r in records)
        assert os.path.isfile(run_dir + ".log")


def test_resume_skips_finished_runs(bench):
    second = bench["second"]
    assert [s.seed for s in second["skipped"]] == [1, 2, 3]
    assert second["finished"] == [] and second["failed"] == []
    assert len(bench["before"]) == 3 and bench["after"] == bench["before"]  # nothing rewritten


def test_interrupted_run_resumes_from_its_checkpoint(bench):
    third = bench["third"]
    assert f"{PROBE}/seed_3" in [s.name for s in third["finished"]]
    run_dir = os.path.join(bench["out"], PROBE_DIR, "seed_3")
    assert "resuming from the latest checkpoint" in open(run_dir + ".log").read()
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        lines = f.readlines()
    # The old records survive (the folder was not wiped) and no episode is counted twice.
    assert lines[:len(bench["seed3_lines"])] == bench["seed3_lines"]
    episodes = [json.loads(line) for line in lines if json.loads(line)["kind"] == "episode"]
    assert len(episodes) == 256  # 256 one-step episodes in 256 steps


def test_failing_run_is_reported_and_others_finish(bench):
    third = bench["third"]
    assert sorted(s.name for s in third["finished"]) == [f"{PROBE}/seed_3", f"{PROBE}/seed_4"]
    assert [s.name for s in third["failed"]] == [f"{BROKEN}/seed_4"]
    log = third["failed"][0].log_path
    assert os.path.isfile(log) and "NoSuchProbe" in open(log).read()
    # The rerun of the stale seed_4 started clean: no record of the crashed attempt.
    with open(os.path.join(bench["out"], PROBE_DIR, "seed_4", "metrics.jsonl")) as f:
        assert all(json.loads(line).get("return") != -999.0 for line in f)
    assert bench["third_code"] == 1  # the CLI's exit code says a run failed


def test_plan_runs_rejects_overrides_the_launcher_owns(recipe, tmp_path):
    with pytest.raises(ConfigError, match="--seeds"):
        plan_runs(recipe, None, [1], ["cpu"], str(tmp_path), ["--seed", "3"])
    with pytest.raises(ConfigError, match="--env-ids"):
        plan_runs(recipe, None, [1], ["cpu"], str(tmp_path), ["--env-id=CartPole-v1"])
    runs = plan_runs(recipe, ["A-v0", "B-v0"], [1, 2, 2], ["cuda:0", "cuda:1"], str(tmp_path), ["--total_timesteps", "64"])
    assert [(r.env_id, r.seed, r.device) for r in runs] == [
        ("A-v0", 1, "cuda:0"), ("A-v0", 2, "cuda:1"), ("B-v0", 1, "cuda:0"), ("B-v0", 2, "cuda:1")]
    assert all(os.path.isabs(r.run_dir) and os.path.isabs(r.recipe) for r in runs)
    assert runs[0].command()[-2:] == ["--total_timesteps", "64"]


def test_report_on_bench_output(bench):
    results, markdown, files = write_report(bench["out"], reps=2000)
    probe = results[PROBE]
    assert probe.seeds == [1, 2, 3, 4]
    np.testing.assert_allclose(probe.scores, 1.0)  # ConstantReward pays exactly 1 per episode
    assert probe.iqm == 1.0 and probe.iqm_ci == (1.0, 1.0) and probe.std == 0.0
    assert results[BROKEN].runs == [] and len(results[BROKEN].unfinished) == 1
    assert "unfinished" in markdown and f"`{PROBE}` | 4 |" in markdown
    assert os.path.isfile(os.path.join(bench["out"], f"{PROBE_DIR}.png"))


# ---------------------------------------------------------------------------------
# Aggregation against a hand-computed example
# ---------------------------------------------------------------------------------


def _fake_run(out, env_id, seed, returns, total=1000, finished=True):
    run_dir = out / env_id.replace("/", "_") / f"seed_{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"env_id": env_id, "seed": seed}))
    steps = np.linspace(total / len(returns), total, len(returns)).round().astype(int)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for i, (step, ret) in enumerate(zip(steps, returns)):
            f.write(json.dumps({"kind": "episode", "global_step": int(step), "return": float(ret), "length": 5}) + "\n")
            if i % 10 == 0:
                f.write(json.dumps({"kind": "update", "global_step": int(step), "iteration": i, "policy_loss": 123.0}) + "\n")
    if finished:
        (run_dir / "summary.json").write_text(json.dumps({"env_id": env_id, "seed": seed, "global_step": total}))


@pytest.fixture
def fake_out(tmp_path):
    out = tmp_path / "out"
    _fake_run(out, "Fake-v0", 1, [1000.0] * 50 + [1.0] * 100)  # the first 50 are outside the last 100: score 1
    _fake_run(out, "Fake-v0", 2, [1.0, 3.0] * 50)  # score 2
    _fake_run(out, "Fake-v0", 3, [3.0] * 30)  # fewer than 100 episodes: all of them, score 3
    _fake_run(out, "Fake-v0", 4, [4.0, 16.0] * 60)  # last 100 of 120: 50 x 4 + 50 x 16, score 10
    _fake_run(out, "Fake-v0", 5, [500.0] * 100, finished=False)  # no summary.json: unfinished, left out
    _fake_run(out, "Other/Fake-v1", 7, [2.5] * 10)
    return out


def test_aggregate_matches_hand_computed_numbers(fake_out):
    results = aggregate(str(fake_out))
    assert list(results) == ["Fake-v0", "Other/Fake-v1"]
    r = results["Fake-v0"]
    assert r.seeds == [1, 2, 3, 4]
    np.testing.assert_allclose(r.scores, [1.0, 2.0, 3.0, 10.0])
    assert r.mean == pytest.approx(4.0)
    assert r.std == pytest.approx(math.sqrt((9 + 4 + 1 + 36) / 4))  # ddof=0: sqrt(12.5)
    assert r.iqm == pytest.approx(2.5)  # 4 seeds: drop int(0.25 * 4) = 1 at each end, mean(2, 3)
    low, high = r.iqm_ci
    assert 1.0 <= low <= r.iqm <= high <= 10.0 and low < high
    assert [os.path.basename(d) for d in r.unfinished] == ["seed_5"]
    single = results["Other/Fake-v1"]
    assert single.seeds == [7] and single.iqm == 2.5 and single.iqm_ci == (2.5, 2.5) and single.std == 0.0
    # Curves: 100 bins of 10 steps; the last bin (990, 1000] holds seed 1's 1, seed 2's last 3, seed 3's 3 and
    # seed 4's last two episodes (steps 992 and 1000: returns 4 and 16).
    assert r.curve_seeds.shape == (4, 100) and r.curve_steps[-1] == 1000
    np.testing.assert_allclose(r.curve_seeds[:, -1], [1.0, 3.0, 3.0, 10.0])
    assert r.curve_mean[-1] == pytest.approx(4.25)
    filled = ~np.isnan(r.curve_mean)  # NaN until every seed has finished an episode (seed 3: step 33)
    assert filled.tolist() == [False] * 3 + [True] * 97
    assert np.all(r.curve_low[filled] <= r.curve_mean[filled]) and np.all(r.curve_mean[filled] <= r.curve_high[filled])


def test_iqm_and_bootstrap_follow_rliable_semantics():
    assert iqm([5.0, 1.0, 3.0]) == pytest.approx(3.0)  # 3 seeds: int(0.75) = 0 cut, the plain mean
    assert iqm([1.0, 2.0, 3.0, 4.0, 100.0]) == pytest.approx(3.0)  # 5: cut 1 each end, mean(2, 3, 4)
    assert iqm(np.arange(10.0)) == pytest.approx(4.5)  # 10: cut 2 each end
    # Two seeds: the resampled IQM is a, b or (a+b)/2 with probabilities 1/4, 1/4, 1/2.
    low, high = bootstrap_ci([0.0, 4.0], reps=20_000)
    assert (low, high) == (0.0, 4.0)
    assert bootstrap_ci([3.0, 3.0, 3.0]) == (3.0, 3.0)
    assert bootstrap_ci([1.0, 2.0, 3.0, 10.0], seed=5) == bootstrap_ci([1.0, 2.0, 3.0, 10.0], seed=5)


def test_binned_curve_forward_fills():
    edges = np.array([0.0, 25.0, 50.0, 75.0, 100.0])
    np.testing.assert_allclose(binned_curve([10, 20, 60], [1.0, 3.0, 5.0], edges), [2.0, 2.0, 5.0, 5.0])
    np.testing.assert_allclose(binned_curve([30, 100], [1.0, 7.0], edges), [np.nan, 1.0, 1.0, 7.0])


def test_report_files_and_reference(fake_out, capsys):
    reference = fake_out / "ref.json"
    reference.write_text(json.dumps({"Fake-v0": {"mean": 3.5, "std": 0.5, "source": "paper"}}))
    code = cmd_report([str(fake_out), "--reference", str(reference), "--reps", "2000"])
    assert code == 0
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if x.startswith("| `Fake-v0`"))
    first, *rest = line.split(" | ")[2:6]
    assert rest == ["1.00, 2.00, 3.00, 10.00", "4.00 ± 3.54", rest[2]] and rest[2].startswith("2.50 [")
    assert len(first.split(", ")) == 4  # the first-episodes score of each seed, where learning started
    assert "3.50 ± 0.50 (paper)" in printed and "seed_5: unfinished" in printed and "report.csv" in printed
    assert (fake_out / "report.md").read_text() == render_report(str(fake_out), str(reference), reps=2000)
    with open(fake_out / "report.csv") as f:
        rows = {row["env_id"]: row for row in csv.DictReader(f)}
    assert rows["Fake-v0"]["scores"] == "1.0 2.0 3.0 10.0" and float(rows["Fake-v0"]["iqm"]) == 2.5
    assert float(rows["Fake-v0"]["std"]) == pytest.approx(math.sqrt(12.5)) and rows["Fake-v0"]["unfinished"] == "1"
    for name in ("Fake-v0", "Other_Fake-v1"):
        assert (fake_out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (fake_out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # every env in one figure
    # links a markdown viewer opens: relative, and a module:Id folder's colon escaped (it read as a URI scheme)
    assert "[Fake-v0](./Fake-v0.png)" in (fake_out / "report.md").read_text()
    _fake_run(fake_out, "myenvs:Point-v0", 1, [1.0] * 10)
    assert cmd_report([str(fake_out), "--reps", "200"]) == 0
    assert "(./myenvs%3APoint-v0.png)" in (fake_out / "report.md").read_text()
    from rlkit.report import _reference_value

    assert _reference_value("3.50 ± 0.50 (paper)") == 3.5 and _reference_value("-1,234.50 (x)") == -1234.5
    assert _reference_value("") is None and _reference_value(None) is None


def test_report_cli_help_and_missing_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cmd_report(["--help"])
    assert exit_info.value.code == 0 and "IQM" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="no benchmark folder"):
        cmd_report([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()  # bug: an empty folder exited 1, the code of non-finite returns
    with pytest.raises(ConfigError, match="no OUT/<env>/seed_<s>/ runs under"):
        cmd_report([str(tmp_path / "empty")])


def test_report_without_plots_links_no_png(bench):
    """Bug: --no-plots wrote no PNG but report.md still linked one."""
    assert cmd_report([bench["out"], "--no-plots", "--reps", "200"]) == 0
    report = open(os.path.join(bench["out"], "report.md")).read()
    assert ".png" not in report


# ---------------------------------------------------------------------------------
# Ray backend
# ---------------------------------------------------------------------------------


@pytest.mark.ray
def test_ray_backend_on_local_ray(recipe, tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="the Ray backend needs ray: pip install 'rlkit[dist]'")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = str(tmp_path / "out")
    runs = plan_runs(recipe, [PROBE, BROKEN], [1], ["cpu"], out)
    outcome = launch(runs, workers=2, backend="ray", progress=False)
    assert [s.name for s in outcome["finished"]] == [f"{PROBE}/seed_1"]
    assert [s.name for s in outcome["failed"]] == [f"{BROKEN}/seed_1"]
    results = aggregate(out, reps=1000)
    np.testing.assert_allclose(results[PROBE].scores, [1.0])
    again = launch(plan_runs(recipe, [PROBE], [1], ["cpu"], out), backend="ray", progress=False)
    assert [s.name for s in again["skipped"]] == [f"{PROBE}/seed_1"]


def test_probability_of_improvement_follows_rliable():
    from rlkit.report import improvement_ci, probability_of_improvement, score_profile

    assert probability_of_improvement([2.0, 3.0], [1.0, 1.5]) == 1.0
    assert probability_of_improvement([1.0, 1.5], [2.0, 3.0]) == 0.0
    # 3 x 2 pairs: 3>1, 3>2, 2>1, 2=2 (1/2), 1=1 (1/2), 1<2  -> (3 + 0.5 + 0.5) / 6
    assert probability_of_improvement([3.0, 2.0, 1.0], [1.0, 2.0]) == pytest.approx(4 / 6)
    point, low, high = improvement_ci([([3.0, 2.0, 1.0], [1.0, 2.0])], reps=4000)
    assert point == pytest.approx(4 / 6) and 0.0 <= low < point < high <= 1.0
    point, low, high = improvement_ci([([5.0, 6.0], [1.0, 2.0]), ([0.0, 0.0], [1.0, 1.0])])
    assert (point, low, high) == (0.5, 0.5, 0.5)  # every resample: 1 on the first task, 0 on the second
    np.testing.assert_allclose(score_profile([1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 4.0]), [1.0, 0.5, 0.0])


def test_report_compares_two_bench_folders(tmp_path, capsys):
    new, old = tmp_path / "new", tmp_path / "old"
    for seed, score in enumerate([5.0, 6.0, 7.0, 8.0, 9.0], start=1):
        _fake_run(new, "Fake-v0", seed, [score] * 20)
        _fake_run(old, "Fake-v0", seed, [score - 2.5] * 20)  # 22 of the 25 pairs won, no ties: P = 0.88
    _fake_run(new, "Only-v0", 1, [1.0] * 5)
    assert cmd_report([str(new), "--compare", str(old), "--reps", "2000"]) == 0
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if x.startswith("| `Fake-v0` | 5 / 5 |"))  # the comparison's row
    assert line.rstrip(" |").split(" | ")[-1].startswith("0.88 [")
    assert "In one folder only (not compared): `Only-v0`" in printed
    assert (new / "compare.md").is_file() and (new / "compare_Fake-v0.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="no env has finished runs in both"):
        cmd_report([str(new), "--compare", str(tmp_path / "new" / "Only-v0")])


def test_a_bad_override_is_refused_before_any_run_starts(recipe, tmp_path, capsys):
    """Bug: `rlkit bench ... -- --bogus 1` launched every run, each failing in its own log, and exited 1."""
    from rlkit.cli import main

    assert main(["bench", recipe, "--seeds", "1", "2", "--out", str(tmp_path / "out"), "--", "--bogus", "1"]) == 2
    assert "bogus" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_an_interrupted_rlhf_run_in_a_bench_resumes_not_restarts(tmp_path):
    """Bug: RunSpec.resumable was False for every `rlkit rlhf` run, so a bench re-run deleted an interrupted
    RLHF run's folder (checkpoints included) and trained it from update 0."""
    from rlkit.bench import RunSpec

    run_dir = tmp_path / "out" / "task" / "seed_1"
    (run_dir / "checkpoints" / "update_0000004").mkdir(parents=True)
    (run_dir / "checkpoints" / "update_0000004" / "state.json").write_text("{}")
    spec = RunSpec(recipe="rlhf-synthetic", env_id=None, seed=1, device="cpu", run_dir=str(run_dir), overrides=[],
                   subcommand="rlhf", label="task")
    assert spec.resumable
    # on the device this launch assigns (the run's own was once kept, whatever --devices said)
    assert spec.command(resume=True)[-6:] == ["rlhf", "--resume", str(run_dir), "--device", "cpu", "--no-progress"]


def test_ctrl_c_of_the_launcher_starts_no_further_run(recipe, tmp_path):
    """Bug: after a Ctrl-C the launcher's pool still ran every queued run to its end before exiting 130."""
    import signal
    import subprocess
    import sys
    import time

    slow = tmp_path / "slow.toml"
    slow.write_text(RECIPE.replace("total_timesteps = 256", "total_timesteps = 2000000")
                    .replace("num_steps = 32", "num_steps = 8192"))  # ~1 s updates: a signal lands mid-update
    out = tmp_path / "out"
    launcher = subprocess.Popen([sys.executable, "-m", "rlkit.cli", "bench", str(slow), "--seeds", "1", "2", "3",
                                 "--workers", "1", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 start_new_session=True,  # its own process group, as a terminal's job
                                 # SIGINT as at a terminal: a `cmd &` of a non-interactive shell (CI) ignores it
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    started = out / PROBE_DIR / "seed_1" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (started.exists() and '"kind": "update"' in started.read_text()):
        time.sleep(0.2)  # seed 1 is in its training loop (its first update logged)
    os.killpg(launcher.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole process group
    try:
        code = launcher.wait(timeout=300)
    except subprocess.TimeoutExpired:
        launcher.kill()
        raise AssertionError(f"the launcher did not stop: {launcher.communicate()[0][-2000:]!r}") from None
    assert code == 130
    assert not (out / PROBE_DIR / "seed_2").exists() and not (out / PROBE_DIR / "seed_3").exists()
    # seed 1 got one SIGINT (a second would abort it without a checkpoint): it finished its update and checkpointed
    log = (out / PROBE_DIR / "seed_1.log").read_text()
    assert "stopped by SIGINT" in log, log[-500:]
    assert (out / PROBE_DIR / "seed_1" / "checkpoints").is_dir()


def test_an_rlhf_run_saved_with_absolute_paths_is_its_recipes_run(tmp_path, monkeypatch):
    """Bug: RLHF runs save their paths absolute, the recipe's are relative, so a bench re-run saw 'another
    config' and moved every finished or interrupted RLHF run aside."""
    from rlkit.bench import RunSpec
    from rlkit.rlhf.config import RLHFConfig

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "p.jsonl").write_text('{"prompt": "hi"}\n')
    (tmp_path / "r.toml").write_text('[rlhf]\ntask = "custom"\nprompts = "data/p.jsonl"\n'
                                  'reward = "rlkit.rlhf.example:mentions_noun"\n')
    run_dir = tmp_path / "out" / "task" / "seed_1"
    run_dir.mkdir(parents=True)
    spec = RunSpec(recipe=str(tmp_path / "r.toml"), env_id=None, seed=1, device="cpu", run_dir=str(run_dir),
                   overrides=[], subcommand="rlhf", label="task", cwd=str(tmp_path))
    saved = RLHFConfig(task="custom", prompts=str(tmp_path / "data" / "p.jsonl"),
                       reward="rlkit.rlhf.example:mentions_noun", seed=1,
                       run_dir=str(run_dir.parent), artifacts_dir=str(tmp_path / "artifacts")).to_dict()
    (run_dir / "config.json").write_text(json.dumps(saved))
    assert spec.config_changes() == []
