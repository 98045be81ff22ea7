"""rlkit as a library for the user's own problem: the PPO object, custom envs from the CLI and
Python, callbacks, periodic evaluation, run-lifecycle commands, one-line errors."""

from __future__ import annotations

import json
import os
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlkit import PPO
from rlkit.cli import main
from rlkit.runtime import Callback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "custom_envs"))  # where the user's own module `mymod` lives


def _metrics(run_dir: str, kind: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


@pytest.mark.slow
def test_a_users_point_mass_env_trains_from_python_and_the_cli(tmp_path, capsys):
    # Python: "module:Id" imports the user's module, as gymnasium.make does; doing nothing scores ~ -17
    model = PPO("mymod:PointMass-v0", recipe="pendulum", run_dir=str(tmp_path), seed=1).learn(32_000, progress=False)
    assert model.evaluate(10)["mean"] > -4.0
    # CLI: the same id, then eval and export of the run (they import the module again from the run's config)
    code = main(["train", "pendulum", "--env_id", "mymod:PointMass-v0", "--total_timesteps", "32000",
                 "--run_dir", str(tmp_path), "--run-name", "cli", "--no-progress", "--env_kwargs", '{"mass": 1.0}'])
    assert code == 0
    run = str(tmp_path / "cli")
    assert main(["eval", run, "--episodes", "5", "--deterministic", "--json", str(tmp_path / "e.json")]) == 0
    assert json.load(open(tmp_path / "e.json"))["mean"] > -4.0
    assert main(["export", run, str(tmp_path / "export"), "--episodes", "3"]) == 0
    assert json.load(open(tmp_path / "export" / "config.json"))["ppo"]["env_kwargs"] == {"mass": 1.0}


def test_env_module_and_env_kwargs_reach_gymnasium(tmp_path):
    model = PPO("PointMass-v0", env_module=["mymod"], env_kwargs={"mass": 4.0}, num_steps=64, num_minibatches=2,
                update_epochs=1, run_dir=str(tmp_path))
    model.learn(64, progress=False)
    from rlkit.ppo import make_envs

    envs = make_envs(model.config)
    assert envs.unwrapped.envs[0].unwrapped.mass == 4.0
    envs.close()
    with pytest.raises(ValueError, match="cannot import env module 'nomod'"):
        PPO("PointMass-v0", env_module=["nomod"], num_steps=64, num_minibatches=2).learn(64, progress=False)


def _learned(env, recipe, tmp_path, steps=4096, **overrides):
    return PPO(env, recipe=recipe, run_dir=str(tmp_path), **overrides).learn(steps, progress=False)


@pytest.mark.parametrize("env, recipe, overrides", [
    ("Pendulum-v1", "pendulum", {}),
    ("CartPole-v1", "cartpole", {}),
    ("rlkit/MultiDiscreteProbe-v0", None, {"num_steps": 256, "num_minibatches": 4, "normalize_obs": False}),
])
def test_load_predict_is_bitwise_the_model_before_save(env, recipe, overrides, tmp_path):
    model = _learned(env, recipe, tmp_path, steps=1024 if recipe is None else 4096, **overrides)
    observations = gym.make(env).observation_space.sample()
    batch = np.stack([gym.make(env).observation_space.sample() for _ in range(32)])
    model.save(str(tmp_path / "agent"))
    loaded = PPO.load(str(tmp_path / "agent"))
    np.testing.assert_array_equal(loaded.predict(batch)[0], model.predict(batch)[0])
    np.testing.assert_array_equal(loaded.predict(observations)[0], model.predict(observations)[0])
    action, state = loaded.predict(observations)
    assert state is None and gym.make(env).action_space.contains(np.asarray(action, dtype=gym.make(env).action_space.dtype))
    # the run folder loads too, and rlkit eval reads the agent folder
    np.testing.assert_array_equal(PPO.load(model.run_dir).predict(batch)[0], model.predict(batch)[0])
    assert main(["eval", str(tmp_path / "agent"), "--episodes", "2"]) == 0


def test_recurrent_predict_carries_its_state_and_survives_save_load(tmp_path):
    model = _learned("rlkit/CartPoleNoVelocity-v1", "cartpole-novel-lstm", tmp_path, steps=1024)
    env = gym.make("rlkit/CartPoleNoVelocity-v1")
    obs, _ = env.reset(seed=0)
    model.save(str(tmp_path / "agent"))
    loaded = PPO.load(str(tmp_path / "agent"))
    state_a = state_b = None
    start = np.ones(1)
    for _ in range(20):
        action_a, state_a = model.predict(obs[None], state_a, start)
        action_b, state_b = loaded.predict(obs[None], state_b, start)
        np.testing.assert_array_equal(action_a, action_b)
        np.testing.assert_array_equal(state_a[0], state_b[0])
        obs, _, terminated, truncated, _ = env.step(int(action_a[0]))
        start = np.array([float(terminated or truncated)])
    assert np.abs(state_a[0]).sum() > 0  # the state moved


def test_learn_again_continues_the_same_run(tmp_path):
    model = PPO("CartPole-v1", recipe="cartpole", run_dir=str(tmp_path))
    model.learn(1024, progress=False)
    run_dir = model.run_dir
    model.learn(1024, progress=False)
    assert model.run_dir == run_dir and model.num_timesteps == 2048
    assert [u["iteration"] for u in _metrics(run_dir, "update")] == [1, 2, 3, 4]


def test_a_resume_on_another_device_takes_it_and_a_new_run_refuses_the_argument(tmp_path):
    from rlkit.cli import main
    from rlkit.ppo import PPOConfig, open_run, train

    cfg = PPOConfig(env_id="CartPole-v1", num_steps=32, num_minibatches=2, update_epochs=1, total_timesteps=64,
                    device="auto", run_dir=str(tmp_path))
    run = train(cfg, run_name="r", progress=False)
    assert open_run(None, None, run.run_dir, device="cpu")[0].device == "cpu"
    assert open_run(None, None, run.run_dir)[0].device == "auto"
    with pytest.raises(ValueError, match="device= are for resume="):
        train(cfg, run_name="s", progress=False, device="cpu")
    assert main(["train", "--resume", run.run_dir, "--device", "cpu", "--total_timesteps", "128", "--no-progress"]) == 0
    assert json.load(open(os.path.join(run.run_dir, "config.json")))["total_timesteps"] == 128


def test_an_env_object_or_factory_trains_and_predicts(tmp_path):
    model = PPO(gym.make("CartPole-v1"), num_steps=64, num_minibatches=2, update_epochs=1, run_dir=str(tmp_path))
    model.learn(128, progress=False)
    assert model.predict(np.zeros(4))[0] in (0, 1)
    factory = PPO(lambda: gym.make("CartPole-v1"), num_envs=2, num_steps=32, num_minibatches=2, run_dir=str(tmp_path))
    assert factory.learn(128, progress=False).num_timesteps == 128
    with pytest.raises(ValueError, match="factory"):
        PPO(gym.make("CartPole-v1"), num_envs=2)


class StopAfter(Callback):
    def __init__(self, n):
        self.n, self.rollouts = n, 0

    def on_rollout(self, run, iteration):
        self.rollouts += 1

    def on_update(self, run, iteration, stats):
        assert "policy_loss" in stats and run.context["agent"] is not None
        return iteration < self.n


def test_a_callback_stops_learn_early(tmp_path):
    stop = StopAfter(2)
    model = PPO("CartPole-v1", recipe="cartpole", run_dir=str(tmp_path)).learn(512 * 10, callbacks=[stop], progress=False)
    assert model.num_timesteps == 2 * 512 and stop.rollouts == 2
    assert os.path.isfile(os.path.join(model.run_dir, "summary.json"))
    # loaded again, it knows the steps the run reached, not the 5,120 asked for: learn(n) is n more (it once
    # went to 5,120 + n)
    loaded = PPO.load(model.run_dir)
    assert loaded.num_timesteps == 2 * 512
    assert loaded.learn(512, progress=False).num_timesteps == 3 * 512


def test_periodic_evaluation_logs_eval_curve_keeps_best_and_stops_at_threshold(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rlkit.evaluate import evaluate

    model = PPO("CartPole-v1", recipe="cartpole", run_dir=str(tmp_path), eval_interval=2, eval_episodes=3,
                stop_at_return=400.0).learn(512 * 40, progress=False)
    evals = _metrics(model.run_dir, "eval")
    assert evals and [e["iteration"] for e in evals] == list(range(2, 2 * len(evals) + 1, 2))
    tb = EventAccumulator(model.run_dir)
    tb.Reload()
    assert len(tb.Scalars("eval/mean_return")) == len(evals)
    best = max(e["mean_return"] for e in evals)
    # best/ holds the best-evaluated weights: evaluating them again (same seed, deterministic) gives that score
    again = evaluate(os.path.join(model.run_dir, "best"), episodes=3, deterministic=True, seed=model.config.eval_seed)
    assert again["mean"] == pytest.approx(best)
    if evals[-1]["mean_return"] >= 400.0:  # the threshold stopped it early
        assert model.num_timesteps < 512 * 40


def test_resume_extends_a_run_and_a_finished_run_says_so(tmp_path, capsys):
    args = ["--run_dir", str(tmp_path), "--run-name", "r", "--no-progress", "--total_timesteps", "1024"]
    assert main(["train", "cartpole", *args]) == 0
    run = str(tmp_path / "r")
    capsys.readouterr()
    assert main(["train", "--resume", run, "--no-progress"]) == 0
    assert "already complete" in capsys.readouterr().out
    assert main(["train", "--resume", run, "--total_timesteps", "2048", "--no-progress"]) == 0
    assert json.load(open(os.path.join(run, "summary.json")))["global_step"] == 2048
    # a run's own config.json runs again
    assert main(["train", os.path.join(run, "config.json"), "--run-name", "again", "--run_dir", str(tmp_path),
                 "--total_timesteps", "512", "--no-progress"]) == 0


def test_total_timesteps_round_up_to_whole_updates_and_say_so(tmp_path, capsys):
    assert main(["train", "cartpole", "--total_timesteps", "600", "--run_dir", str(tmp_path), "--run-name", "r",
                 "--no-progress"]) == 0
    assert json.load(open(tmp_path / "r" / "summary.json"))["global_step"] == 1024
    assert any("not a multiple of the batch" in n["text"] for n in _metrics(str(tmp_path / "r"), "note"))


@pytest.mark.parametrize("argv", [
    ["train", "pendulum", "--env_id", "CartPole-v9"],
    ["train", "pendulum", "--env_id", "nomodule:Thing-v0"],
    ["eval", "nowhere", "--episodes", "0"],
    ["doctor", "--only", "Foo"],
    ["train", "pendulum", "--env_kwargs", "{not json"],
])
def test_bad_input_is_one_line_and_exit_code_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlkit: ") and "Traceback" not in err[0], err


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("rlkit ")


def test_the_torch_module_is_untouched_by_predict(tmp_path):
    model = PPO("CartPole-v1", num_steps=64, num_minibatches=2, update_epochs=1, run_dir=str(tmp_path)).learn(64, progress=False)
    state = torch.get_rng_state()
    model.predict(np.zeros(4), deterministic=True)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("env_id, kwargs, overrides", [
    ("FrozenLake-v1", {"is_slippery": False}, {}),                       # Discrete: one-hot
    ("Blackjack-v1", {}, {}),                                            # Tuple of Discretes, normaliser off by itself
    ("rlkit/HWCImageProbe-v0", {}, {"network": "auto"}),                 # HWC uint8 image: transposed
    ("rlkit/DictImageVectorProbe-v0", {}, {"network": "auto"}),          # Dict: image part + normalised vector part
])
def test_predict_takes_the_envs_own_observations(env_id, kwargs, overrides, tmp_path):
    # what the env returns (a Discrete int, a Tuple, an HWC image, a Dict) gives the same action as the
    # adapted observation the training env stack hands the agent
    model = PPO(env_id, env_kwargs=kwargs, num_steps=64, num_minibatches=2, update_epochs=1, run_dir=str(tmp_path),
                **overrides).learn(64, progress=False)
    raw_env = gym.make(env_id, **kwargs)
    from rlkit.envs import adapt_observations

    adapted_env = adapt_observations(gym.make(env_id, **kwargs))
    raws, adapted = [], []
    for seed in range(4):
        raws.append(raw_env.reset(seed=seed)[0])
        adapted.append(adapted_env.reset(seed=seed)[0])
    one_raw, one_adapted = model.predict(raws[0])[0], model.predict(adapted[0])[0]
    np.testing.assert_array_equal(one_raw, one_adapted)
    np.testing.assert_array_equal(model.predict(raws)[0], model.predict(np.stack(adapted))[0])
    loaded = PPO.load(model.save(str(tmp_path / "agent")))
    np.testing.assert_array_equal(loaded.predict(raws)[0], model.predict(raws)[0])
    with pytest.raises(ValueError, match="does not fit this agent"):
        model.predict({"nonsense": 1})


def test_a_gymnasium_vector_env_gives_its_sub_envs_and_size(tmp_path):
    made = []

    def factory():
        made.append(1)
        return gym.make("CartPole-v1")

    for envs in (gym.vector.SyncVectorEnv([factory, factory, factory]),   # env_fns
                 gym.make_vec("CartPole-v1", num_envs=3)):                  # gymnasium's own CartPoleVectorEnv
        model = PPO(envs, num_steps=32, num_minibatches=2, update_epochs=1, run_dir=str(tmp_path)).learn(96, progress=False)
        assert model.config.num_envs == 3 and model.num_timesteps == 96
        assert model.predict(np.zeros((3, 4)))[0].shape == (3,)
        envs.close()
    assert len(made) >= 6  # the user's factories built rlkit's sub-envs (3 by the user's vector env, 3 by rlkit)
    with pytest.raises(ValueError, match="num_envs = 2 but the vector env holds 3"):
        PPO(gym.make_vec("CartPole-v1", num_envs=3), num_envs=2)
