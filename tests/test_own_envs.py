"""A practitioner's own env through rlkit.PPO and the CLI: Discrete / MultiDiscrete actions that do not start at
0, an env instance evaluated while it trains, an env's own random generators and dict state at resume, batches
of Discrete / Tuple observations in predict, on_eval stopping a run, and errors raised by the env's own code."""

from __future__ import annotations

import json
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlkit import PPO
from rlkit.cli import main
from rlkit.runtime import Callback

TINY = dict(num_steps=32, num_minibatches=2, update_epochs=1, torch_threads=1, device="cpu")


class Shifted(gym.Env):
    """Actions start at -1 (Discrete) or at [-1, 10] (MultiDiscrete); the env refuses any other."""

    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)

    def __init__(self, multi: bool = False):
        self.action_space = gym.spaces.MultiDiscrete([3, 2], start=[-1, 10]) if multi else gym.spaces.Discrete(3, start=-1)
        self.seen = set()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        assert self.action_space.contains(np.asarray(action, dtype=self.action_space.dtype)), action
        self.seen.add(tuple(np.atleast_1d(action).tolist()))
        self.t += 1
        return np.zeros(2, np.float32), 0.0, False, self.t >= 10, {}


@pytest.mark.parametrize("multi", [False, True])
def test_actions_that_start_elsewhere_reach_the_env_in_its_space(multi, tmp_path):
    """Bug: the env got the agent's 0-based actions (0..2 for Discrete(3, start=-1)) and predict returned them."""
    env = Shifted(multi)
    model = PPO(env, run_dir=str(tmp_path), **TINY).learn(128, progress=False)
    expected = {(-1,), (0,), (1,)} if not multi else {(a, b) for a in (-1, 0, 1) for b in (10, 11)}
    assert env.seen == expected
    assert model.action_space() == env.action_space
    model.save(str(tmp_path / "agent"))
    loaded = PPO.load(str(tmp_path / "agent"))
    for model_ in (model, loaded):
        actions = [model_.predict(np.zeros(2, np.float32), deterministic=False)[0] for _ in range(40)]
        assert all(env.action_space.contains(np.asarray(a, dtype=env.action_space.dtype)) for a in actions)
    batch = np.zeros((5, 2), np.float32)
    assert np.array_equal(model.predict(batch)[0], loaded.predict(batch)[0])


class SignPattern(gym.Env):
    """Reward: the share of the action's entries equal to the observation's sign pattern (1 where > 0); the env
    refuses an action outside its own space (shape and dtype)."""

    def __init__(self, action_space: gym.Space):
        self.action_space = action_space
        self.observation_space = gym.spaces.Box(-1, 1, (int(np.prod(action_space.shape)),), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.obs = 0, self.np_random.uniform(-1, 1, self.observation_space.shape).astype(np.float32)
        return self.obs, {}

    def step(self, action):
        assert isinstance(action, np.ndarray) and action.dtype == self.action_space.dtype, action
        assert self.action_space.contains(action), action
        target = (self.obs > 0).astype(np.int64).reshape(self.action_space.shape)
        reward = float(np.mean(action == target))
        self.t, self.obs = self.t + 1, self.np_random.uniform(-1, 1, self.observation_space.shape).astype(np.float32)
        return self.obs, reward, False, self.t >= 20, {}


@pytest.mark.parametrize("space", [gym.spaces.MultiBinary(4), gym.spaces.MultiBinary((2, 3)),
                                   gym.spaces.MultiDiscrete([[2, 2], [2, 2]])], ids=["binary", "binary_2d", "multi_2d"])
def test_multibinary_and_many_dimensional_multidiscrete_actions_learn_and_predict_in_the_envs_space(space, tmp_path):
    """These were refused ("unsupported action space MultiBinary", "MultiDiscrete actions must be 1-d"); SB3 takes
    MultiBinary.  Random actions score 10 per 20-step episode, matching every entry 20."""
    model = PPO(lambda: SignPattern(space), num_envs=4, num_steps=64, num_minibatches=4, update_epochs=4,
                learning_rate=3e-3, ent_coef=0.0, seed=1, run_dir=str(tmp_path), torch_threads=1, device="cpu")
    model.learn(12_288, progress=False)
    assert model.evaluate(episodes=10)["mean"] > 17  # measured: 19.1-19.8
    observation = SignPattern(space).reset(seed=3)[0]
    action, _ = model.predict(observation)
    assert action.shape == space.shape and action.dtype == space.dtype and space.contains(action)
    batch = np.stack([observation] * 3)
    assert model.predict(batch)[0].shape == (3, *space.shape)
    model.save(str(tmp_path / "agent"))
    loaded = PPO.load(str(tmp_path / "agent"))
    assert np.array_equal(loaded.predict(observation)[0], action) and loaded.predict(observation)[0].dtype == space.dtype


def test_multibinary_actions_in_the_recurrent_agent_and_refused_by_batched_seeds(tmp_path):
    from rlkit.ppo import PPOConfig
    from rlkit.ppo_lstm import RecurrentPPOConfig
    from rlkit.ppo_lstm import train as train_lstm
    from rlkit.ppo_multiseed import train_seeds

    gym.register("rlkit-test/SignPattern-v0", entry_point=lambda: SignPattern(gym.spaces.MultiBinary(3)))
    try:
        cfg = RecurrentPPOConfig(env_id="rlkit-test/SignPattern-v0", num_envs=2, total_timesteps=128, run_dir=str(tmp_path),
                                 **TINY)
        assert train_lstm(cfg, run_name="lstm", progress=False).agent.action_dim == 6  # 3 entries x {0, 1}
        with pytest.raises(ValueError, match="batched multi-seed training does not support MultiBinary actions"):
            train_seeds(PPOConfig(env_id="rlkit-test/SignPattern-v0", total_timesteps=64, run_dir=str(tmp_path), **TINY),
                        [1, 2], progress=False)
    finally:
        gym.registry.pop("rlkit-test/SignPattern-v0")


class NarrowBox(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Box(-0.01, 0.01, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, True, {}


@pytest.mark.parametrize("clip_actions", [True, False])
def test_predict_clips_box_actions_as_the_env_did_in_training(clip_actions, tmp_path):
    """Bug: predict clipped to the bounds even with clip_actions = false, which sent the env unclipped actions."""
    model = PPO(NarrowBox(), clip_actions=clip_actions, run_dir=str(tmp_path), **TINY).learn(64, progress=False)
    actions = np.array([model.predict(np.zeros(2, np.float32), deterministic=False)[0] for _ in range(50)])
    outside = np.mean(np.abs(actions) > 0.01)
    assert outside == 0.0 if clip_actions else outside > 0.5  # std ~1 against a bound of 0.01


class Counter(gym.Env):
    """Terminates after exactly 10 steps; observation t / 10."""

    observation_space = gym.spaces.Dict({"t": gym.spaces.Box(0, 1, (1,), np.float32)})
    action_space = gym.spaces.Discrete(2)

    def __init__(self):
        self.closed = False

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return {"t": np.array([0.0], np.float32)}, {}

    def step(self, action):
        assert not self.closed
        self.t += 1
        return {"t": np.array([self.t / 10], np.float32)}, 1.0, self.t >= 10, False, {}

    def close(self):
        self.closed = True


def test_an_env_instance_is_not_stepped_by_its_evaluation_nor_closed(tmp_path):
    """Bug: the periodic evaluation made 'another' env from the instance's id, got the same object, and reset and
    stepped it in the middle of a training episode (a 14-step episode of a 10-step env); predict closed it."""
    env = Counter()
    model = PPO(env, run_dir=str(tmp_path), eval_interval=1, eval_episodes=1, **{**TINY, "num_steps": 64})
    model.learn(256, progress=False)
    episodes = [r for r in map(json.loads, open(f"{model.run_dir}/metrics.jsonl")) if r["kind"] == "episode"]
    assert len(episodes) >= 20 and {r["length"] for r in episodes} == {10}
    assert not env.closed
    model.predict({"t": np.array([0.5], np.float32)})
    model.evaluate(episodes=1)
    assert not env.closed


class OwnGenerator(gym.Env):
    """Observations from the env's own generator, made at the first seeded reset."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.t = 0
        return self.rng.normal(size=1).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        return self.rng.normal(size=1).astype(np.float32), -float(action[0]) ** 2, False, self.t >= 10, {}


class DictState(gym.Env):
    """State kept in a dict attribute, which rlkit does not save."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.s = {"x": float(self.np_random.uniform(-1, 1)), "t": 0}
        return np.array([self.s["x"]], np.float32), {}

    def step(self, action):
        self.s["x"] += 0.1 * float(action[0])
        self.s["t"] += 1
        return np.array([self.s["x"]], np.float32), -self.s["x"] ** 2, False, self.s["t"] >= 10, {}


def _episode_returns(model) -> list[float]:
    return [r["return"] for r in map(json.loads, open(f"{model.run_dir}/metrics.jsonl")) if r["kind"] == "episode"]


def test_resume_saves_an_envs_own_generators_and_says_when_dict_state_is_not_saved(tmp_path, capsys):
    """Bug: resume said 'exact env state restored' for envs keeping state in their own np.random.Generator or in
    a dict, and then diverged.  Generators are saved now (bit-for-bit resume); dict state makes the envs
    restart from a seeded reset, and the note says so."""
    settings = dict(seed=5, num_envs=2, anneal_lr=False, **{**TINY, "update_epochs": 2})
    gym.register("rlkit-test/OwnGenerator-v0", entry_point=OwnGenerator)
    gym.register("rlkit-test/DictState-v0", entry_point=DictState)
    halves = PPO("rlkit-test/OwnGenerator-v0", run_dir=str(tmp_path / "a"), **settings).learn(128, progress=False)
    halves.learn(128, progress=False)
    assert "exact env state restored" in capsys.readouterr().out
    whole = PPO("rlkit-test/OwnGenerator-v0", run_dir=str(tmp_path / "b"), **settings).learn(256, progress=False)
    assert _episode_returns(halves) == _episode_returns(whole)
    a, b = halves.agent.state_dict(), whole.agent.state_dict()
    assert all(bool((a[k] == b[k]).all()) for k in a)

    dict_state = PPO("rlkit-test/DictState-v0", run_dir=str(tmp_path / "c"), **settings).learn(128, progress=False)
    capsys.readouterr()
    dict_state.learn(128, progress=False)
    note = capsys.readouterr().out
    assert "cannot be saved exactly, so the envs restart from a seeded reset" in note and "exact env state" not in note


def test_predict_takes_batches_of_discrete_and_tuple_observations(tmp_path):
    """Bugs: np.array([0, 1, 2, 3]) of a Discrete(4) env was read as one one-hot observation (one action back);
    a list of Tuple observations raised numpy's 'inhomogeneous shape' error."""
    class Grid(gym.Env):
        observation_space = gym.spaces.Discrete(4)
        action_space = gym.spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.s = 0
            return 0, {}

        def step(self, action):
            self.s = min(3, self.s + int(action))
            return self.s, float(self.s == 3), self.s == 3, False, {}

    grid = PPO(lambda: gym.wrappers.TimeLimit(Grid(), 10), run_dir=str(tmp_path), **TINY).learn(64, progress=False)
    assert grid.predict(np.array([0, 1, 2, 3]))[0].shape == (4,)
    assert grid.predict(np.array([0, 0, 0, 0]))[0].shape == (4,)
    assert np.array_equal(grid.predict(np.array([0, 1, 2, 3]))[0], grid.predict([0, 1, 2, 3])[0])
    assert np.ndim(grid.predict(2)[0]) == 0
    one_hot = np.eye(4, dtype=np.float32)[2]  # rlkit's own adapted observation still works
    assert grid.predict(one_hot)[0] == grid.predict(2)[0]

    class Pair(Grid):
        observation_space = gym.spaces.Tuple((gym.spaces.Box(-1, 1, (2,), np.float32), gym.spaces.Discrete(3)))

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return self.observation_space.sample(), {}

        def step(self, action):
            return self.observation_space.sample(), 0.0, False, False, {}

    pair = PPO(lambda: gym.wrappers.TimeLimit(Pair(), 10), run_dir=str(tmp_path), **TINY).learn(64, progress=False)
    observations = [(np.array([0.1, -0.2], np.float32), 1), (np.array([0.5, 0.5], np.float32), 2)]
    actions = pair.predict(observations)[0]
    assert actions.shape == (2,) and actions[1] == pair.predict(observations[1])[0]


def test_on_eval_returning_false_stops_the_run(tmp_path):
    """Bug: on_eval's answer was dropped (the README: False from any hook stops training)."""
    class StopAtSecondEval(Callback):
        def on_eval(self, run, iteration, result):
            return iteration < 2

    model = PPO("CartPole-v1", run_dir=str(tmp_path), num_envs=2, eval_interval=1, eval_episodes=1, **TINY)
    model.learn(640, callbacks=[StopAtSecondEval()], progress=False)
    assert model.num_timesteps == 2 * 64


def test_learn_on_a_loaded_agent_folder_is_refused_not_restarted(tmp_path):
    """Bug: PPO.load(export).learn() silently trained a new agent from scratch."""
    model = PPO("CartPole-v1", run_dir=str(tmp_path), **TINY).learn(64, progress=False)
    assert main(["export", model.run_dir, str(tmp_path / "export"), "--episodes", "1"]) == 0
    loaded = PPO.load(str(tmp_path / "export"))
    with pytest.raises(ValueError, match="holds weights but no run to continue"):
        loaded.learn(64)
    with pytest.raises(ValueError, match="whole number"):
        model.learn("64")
    assert PPO.load(model.run_dir).learn(64, progress=False).num_timesteps == 128  # a run folder continues


ENVS = '''
import gymnasium as gym, numpy as np

class Base(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)
    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed); self.t = 0; return np.zeros(3, np.float32), {}
    def step(self, action):
        self.t += 1
        if self.t == 5:
            raise RuntimeError("sensor disconnected")
        return np.zeros(3, np.float32), 0.0, False, False, {}

class BadInit(Base):
    def __init__(self):
        raise RuntimeError("license server unreachable")

class WrongShape(Base):
    def step(self, action):
        return np.zeros(4, np.float32), 0.0, False, False, {}

class MissingMap(Base):
    def __init__(self):
        open("maps/level1.txt")

gym.register("Crashy-v0", entry_point=Base, max_episode_steps=10)
gym.register("MissingMap-v0", entry_point=MissingMap)
gym.register("BadInit-v0", entry_point=BadInit)
gym.register("WrongShape-v0", entry_point=WrongShape, max_episode_steps=10)
'''


@pytest.mark.parametrize("env_id,says", [
    ("Crashy-v0", "the environment raised RuntimeError: sensor disconnected (user_envs_for_errors.py:"),
    ("BadInit-v0", "the environment raised RuntimeError: license server unreachable"),
    ("WrongShape-v0", "sub-env 0 returned an observation of shape (4,)"),
    # an OSError of the env's own (a file it opens) is the env's, not rlkit's files: it once exited 8, "writing"
    ("MissingMap-v0", "the environment raised FileNotFoundError: [Errno 2] No such file or directory: 'maps/level1.txt'"),
])
def test_the_envs_own_errors_exit_4_not_as_a_bug_in_rlkit(env_id, says, tmp_path, monkeypatch, capsys):
    """Bug: an exception from the user's env code ended as 'unexpected RuntimeError ... (a bug in rlkit)', exit 70."""
    (tmp_path / "user_envs_for_errors.py").write_text(ENVS)
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["train", "cartpole", "--env_id", f"user_envs_for_errors:{env_id}", "--num_envs", "1", "--num_steps",
                 "32", "--total_timesteps", "64", "--run_dir", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 4 and says in err and "a bug in rlkit" not in err, err
    code = main(["train", "cartpole", "--env_kwargs", '{"no_such_argument": 1}', "--total_timesteps", "64",
                 "--run_dir", str(tmp_path / "runs"), "--no-progress"])
    assert code == 4 and "no_such_argument" in capsys.readouterr().err


def test_an_unsupported_observation_space_exits_4_and_help_shows_real_defaults(tmp_path, capsys):
    class Words(gym.Env):
        observation_space = gym.spaces.Text(8)
        action_space = gym.spaces.Discrete(2)

    with pytest.raises(ValueError, match="Text spaces are not supported") as refused:
        PPO(Words(), run_dir=str(tmp_path), **TINY).learn(64, progress=False)
    from rlkit.errors import classify

    assert classify(refused.value)[0] == "env"
    with pytest.raises(SystemExit):
        main(["train", "cartpole", "--help"])
    assert "_MISSING_TYPE" not in capsys.readouterr().out


def test_predict_refuses_masks_and_states_that_do_not_fit(tmp_path):
    """Bugs: a mask of the wrong length raised torch's size error, an all-False mask returned action 0, and a
    recurrent state for one env was silently broadcast over a batch of two observations."""
    model = PPO("CartPole-v1", run_dir=str(tmp_path), **TINY).learn(64, progress=False)
    obs = np.zeros(4, np.float32)
    assert model.predict(obs, action_mask=np.array([False, True]))[0] == 1
    with pytest.raises(ValueError, match=r"action_mask has shape \(3,\)"):
        model.predict(obs, action_mask=np.array([True, True, False]))
    with pytest.raises(ValueError, match="allows no action for observation 1"):
        model.predict(np.zeros((2, 4), np.float32), action_mask=np.array([[True, False], [False, False]]))
    recurrent = PPO("CartPole-v1", recipe="cartpole-novel-lstm", run_dir=str(tmp_path),
                    **{**TINY, "num_minibatches": 1}).learn(64, progress=False)
    _, state = recurrent.predict(obs)
    with pytest.raises(ValueError, match="LSTM states of shape"):
        recurrent.predict(np.zeros((2, 4), np.float32), state=state)


def test_an_evaluation_of_an_env_that_never_ends_is_refused_not_a_hang(tmp_path, monkeypatch):
    """Bug: the README's PPO.load(path, env=PointMass) (the class: no registered time limit) evaluated forever."""
    import rlkit.evaluate as evaluate_module

    class Endless(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        action_space = gym.spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros(2, np.float32), {}

        def step(self, action):
            return np.zeros(2, np.float32), 0.0, False, False, {}

    model = PPO(Endless(), run_dir=str(tmp_path), **TINY).learn(64, progress=False)
    monkeypatch.setattr(evaluate_module, "EVAL_STEP_LIMIT", 500)
    with pytest.raises(ValueError, match="ran 500 steps without ending: the env has no time limit"):
        model.evaluate(episodes=1)


def test_a_run_refused_before_it_starts_leaves_no_folder(tmp_path):
    """Bug: `--network nature_cnn` on CartPole was refused (exit 2) but left a run folder holding only rlkit.lock."""
    code = main(["train", "cartpole", "--network", "nature_cnn", "--run_dir", str(tmp_path), "--run-name", "r",
                 "--no-progress"])
    assert code == 2 and not (tmp_path / "r").exists()


class SpaceNoise(gym.Env):
    """Observations drawn from its own observation_space: state in a generator that space holds."""

    observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.observation_space.seed(seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), float(action), False, self.t >= 20, {}


class Locked(gym.Wrapper):
    def __init__(self, env):
        import threading

        super().__init__(env)
        self.lock = threading.Lock()


@pytest.mark.parametrize("make, exact", [
    (lambda: gym.make("CartPole-v1"), True),
    (lambda: gym.wrappers.FrameStackObservation(gym.make("CartPole-v1"), 4), False),  # a deque in a wrapper
    (lambda: gym.wrappers.TimeLimit(SpaceNoise(), 20), False),  # a generator in its space
    (lambda: Locked(gym.make("CartPole-v1")), False),  # once: "cannot pickle '_thread.lock'", exit 70
], ids=["plain", "frame_stack", "space_sampling", "lock"])
def test_a_resume_says_exact_only_when_it_is(make, exact, tmp_path, capsys):
    """Bug: state kept in a wrapper or in a space's generator was not saved, yet the resume said "exact env state
    restored" and went on differently."""
    settings = dict(num_envs=2, num_steps=32, num_minibatches=2, update_epochs=2, anneal_lr=False, seed=3,
                    run_dir=str(tmp_path), torch_threads=1, device="cpu")
    whole = PPO(make, **settings).learn(256, progress=False)
    cut = PPO(make, **settings).learn(128, progress=False)
    capsys.readouterr()
    resumed = cut.learn(128, progress=False)
    printed = capsys.readouterr()
    notes = printed.out + printed.err
    assert "resumed at update" in notes
    assert ("exact env state restored" in notes) == exact, notes
    if exact:
        assert all(torch.equal(a, b) for a, b in zip(whole.agent.state_dict().values(), resumed.agent.state_dict().values()))


def test_an_env_module_in_the_current_folder_imports_under_the_console_script(tmp_path):
    """Bug: `rlkit train ... --env_id myenvs:My-v0` failed ("is it on PYTHONPATH?") for myenvs.py in the current
    folder: the console script leaves the current folder off sys.path."""
    import subprocess
    import sys

    (tmp_path / "myenvs.py").write_text("import gymnasium as gym\n"
                                        "gym.register('My-v0', entry_point='gymnasium.envs.classic_control:CartPoleEnv',"
                                        " max_episode_steps=50)\n")
    probe = ("import sys; sys.path = [p for p in sys.path if p not in ('', '.')]; "
             "from rlkit.envs.sources import resolve_env_id; print(resolve_env_id('myenvs:My-v0'))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "My-v0", out.stderr[-500:]


class RowObs(gym.Env):
    """Observations of shape (1, 4): one observation, not a batch of one."""

    observation_space = gym.spaces.Box(-1, 1, (1, 4), np.float32)
    action_space = gym.spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros((1, 4), np.float32), {}

    def step(self, action):
        assert self.action_space.contains(action), action
        return np.zeros((1, 4), np.float32), 0.0, False, True, {}


class DictObs(gym.Env):
    observation_space = gym.spaces.Dict({"a": gym.spaces.Discrete(3), "b": gym.spaces.Box(-1, 1, (2,), np.float32)})
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return {"a": 1, "b": np.zeros(2, np.float32)}, {}

    def step(self, action):
        return {"a": 1, "b": np.zeros(2, np.float32)}, 0.0, False, True, {}


def test_predict_reads_single_and_batched_observations_by_the_envs_own_space(tmp_path):
    """Bugs: one (1, 4) observation was taken as a batch of one (an array action the env refused); a gymnasium
    vector env's batch of Dict observations (one array per key) was refused."""
    model = PPO(RowObs(), run_dir=str(tmp_path), **TINY).learn(64, progress=False)
    env = RowObs()
    action, _ = model.predict(env.reset()[0])
    assert np.ndim(action) == 0 and env.action_space.contains(action)
    env.step(action)
    assert model.predict(np.zeros((5, 1, 4), np.float32))[0].shape == (5,)
    model = PPO(DictObs(), run_dir=str(tmp_path), **TINY).learn(64, progress=False)
    vector = gym.vector.SyncVectorEnv([DictObs] * 3)
    actions, _ = model.predict(vector.reset(seed=0)[0])
    assert actions.shape == (3,) and np.ndim(model.predict(DictObs().reset()[0])[0]) == 0


def test_env_kwargs_are_plain_values_and_a_loaded_model_on_an_env_object_drops_the_saved_ones(tmp_path):
    """Bugs: numpy kwargs crashed mid-write of config.json (a half-written run folder, then refused as a run);
    PPO.load(path, env=factory) passed the saved id's env_kwargs to the factory."""
    with pytest.raises(ValueError, match="env_kwargs must be plain JSON values"):
        PPO("CartPole-v1", env_kwargs={"sutton_barto_reward": np.bool_(True)}, run_dir=str(tmp_path), **TINY)
    assert not os.listdir(tmp_path)
    model = PPO("CartPole-v1", env_kwargs={"sutton_barto_reward": True}, run_dir=str(tmp_path), **TINY)
    model.learn(64, progress=False).save(str(tmp_path / "agent"))
    loaded = PPO.load(str(tmp_path / "agent"), env=lambda: gym.make("CartPole-v1", sutton_barto_reward=True))
    assert loaded.evaluate(episodes=1)["episodes"] == 1


class Masked(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Discrete(3)

    def __init__(self, mask):
        self.mask = np.asarray(mask, np.int8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {"action_mask": self.mask}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, True, {"action_mask": self.mask}


@pytest.mark.parametrize("mask, says", [([1, 1], "has shape \\(2,\\) per env; Discrete\\(3\\) actions need \\(3,\\)"),
                                        ([0, 0, 0], "of env 0 allows no action")])
def test_an_action_mask_that_does_not_fit_is_the_envs_error_in_one_line(mask, says, tmp_path):
    """Bugs: a mask of the wrong width ended in 'unexpected RuntimeError ... a bug in rlkit' (exit 70); one that
    allowed nothing trained on, sampling masked actions."""
    from rlkit.errors import EnvError

    with pytest.raises(EnvError, match=says):
        PPO(lambda: Masked(mask), run_dir=str(tmp_path), **TINY).learn(64, progress=False)


def test_a_video_of_an_agent_trained_on_an_env_object(tmp_path):
    """Bug: the video path passed render_mode to the user's factory (TypeError) or refused the instance; now the
    object renders as the user made it, and one without rgb_array frames is refused saying how to make it."""
    pytest.importorskip("moviepy")
    from rlkit.errors import EnvError
    from rlkit.evaluate import evaluate

    model = PPO(lambda: gym.make("CartPole-v1", render_mode="rgb_array"), run_dir=str(tmp_path), **TINY)
    model.learn(64, progress=False)
    evaluate(model.run_dir, episodes=1, video_dir=str(tmp_path / "video"))
    assert [n for n in os.listdir(tmp_path / "video") if n.endswith(".mp4")]
    plain = PPO(lambda: gym.make("CartPole-v1"), run_dir=str(tmp_path), **TINY).learn(64, progress=False)
    with pytest.raises(EnvError, match="this env object renders None; make it with render_mode='rgb_array'"):
        evaluate(plain.run_dir, episodes=1, video_dir=str(tmp_path / "video2"))
