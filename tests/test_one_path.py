"""One PPO path for every variant: each setting works in each variant or is refused by name,
checkpoints / resume / eval / the non-finite guard exist everywhere, and batched seeds are tied
to the single-seed loop."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlkit.checkpoint import list_checkpoints
from rlkit.evaluate import evaluate, export
from rlkit.ppo import NonFiniteError, PPOConfig, train
from rlkit.ppo_lstm import RecurrentPPOConfig
from rlkit.ppo_lstm import train as train_recurrent
from rlkit.ppo_multiseed import train_seeds
from rlkit.runtime import Callback

TINY = dict(num_envs=4, num_steps=16, num_minibatches=2, update_epochs=2, total_timesteps=4 * 16 * 3,
            normalize_obs=False, normalize_reward=False, device="cpu", checkpoint_interval=0)


class NaNRewardAfter(gym.Wrapper):
    """Reward NaN from the 10th step of each env on: the guard must stop the run in update 1."""

    def __init__(self, env):
        super().__init__(env)
        self.steps = 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        return obs, float("nan") if self.steps >= 10 else reward, terminated, truncated, info


gym.register("rlkit-test/NaNReward-v0", entry_point=lambda: NaNRewardAfter(gym.make("CartPole-v1")))


def run_variant(variant: str, tmp_path, **settings):
    """Train a tiny run of ``variant`` (ppo, ppo_lstm, batched); returns one TrainResult."""
    env_id = settings.pop("env_id", "CartPole-v1")
    values = {**TINY, "env_id": env_id, "run_dir": str(tmp_path), **settings}
    if variant == "ppo":
        return train(PPOConfig(**values), run_name="r", progress=False)
    if variant == "ppo_lstm":
        return train_recurrent(RecurrentPPOConfig(**values), run_name="r", progress=False)
    return train_seeds(PPOConfig(**values), [1, 2], run_dirs=[str(tmp_path / "s1"), str(tmp_path / "s2")], progress=False)[0]


def honoured(setting: str, result, tmp_path) -> bool:
    """Evidence that a setting took effect, not only that the run did not fail."""
    agent = result.agent
    return {
        "target_kl": lambda: result.last_update["epochs"] == 1,
        "action_masks": lambda: max(result.episode_returns) <= 1.0,  # the masked action (pays 10) never taken
        "multidiscrete": lambda: agent.nvec == [2, 3],
        "shared_network": lambda: hasattr(agent, "torso") or hasattr(agent, "lstm"),
        "separate_networks": lambda: hasattr(agent, "actor") and hasattr(agent, "critic") and not hasattr(agent, "torso"),
        "checkpoint_interval": lambda: len(list_checkpoints(result.run_dir)) == 3,
        "normalize_obs": lambda: "obs.mean" in result.normalizer,
        "update_epochs": lambda: result.last_update["epochs"] == 3,
        "fused_update": lambda: result.update_backend == "fused",
        "autograd_update": lambda: result.update_backend == "autograd",
    }[setting]()


SETTINGS = {
    "target_kl": dict(target_kl=1e-12, update_epochs=4),
    "action_masks": dict(env_id="rlkit/MaskedActionProbe-v0"),
    "multidiscrete": dict(env_id="rlkit/MultiDiscreteProbe-v0"),
    "shared_network": dict(shared_network=True),
    "separate_networks": dict(shared_network=False),
    "checkpoint_interval": dict(checkpoint_interval=1, keep_checkpoints=5),
    "normalize_obs": dict(normalize_obs=True, normalize_reward=True),
    "update_epochs": dict(update_epochs=3),
    "torch_compile": dict(torch_compile=True),
    "nature_cnn": dict(network="nature_cnn"),
    "fused_update": dict(update_backend="fused"),
    "autograd_update": dict(update_backend="autograd"),
}
# works: the setting is honoured (checked); refused: a ValueError naming the key and the variant.
# "elsewhere": works, and is checked by a test of its own (compiling or an image env is slow here).
EXPECTED = {
    "ppo": {"torch_compile": "elsewhere", "nature_cnn": "elsewhere"},
    "ppo_lstm": {"separate_networks": "refused", "torch_compile": "refused", "nature_cnn": "refused",
                 "fused_update": "refused"},
    "batched": {"target_kl": "refused", "multidiscrete": "refused", "torch_compile": "refused", "nature_cnn": "refused"},
}
ELSEWHERE = {("ppo", "torch_compile"): "test_ppo_agent.py::test_torch_compile_gives_the_same_update_up_to_float_rounding",
             ("ppo", "nature_cnn"): "test_atari.py (Nature CNN agent on Atari frames)"}
KEY = {"action_masks": "mask", "multidiscrete": "MultiDiscrete", "separate_networks": "shared_network",
       "nature_cnn": "network", "fused_update": "update_backend"}
VARIANT_NAME = {"ppo_lstm": "recurrent", "batched": "batched"}


@pytest.mark.parametrize("variant", ["ppo", "ppo_lstm", "batched"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_every_setting_works_or_is_refused_in_every_variant(variant, setting, tmp_path):
    expected = EXPECTED[variant].get(setting, "works")
    if expected == "elsewhere":
        assert (variant, setting) in ELSEWHERE
        return
    if expected == "refused":
        with pytest.raises(ValueError) as error:
            run_variant(variant, tmp_path, **SETTINGS[setting])
        message = str(error.value)
        assert KEY.get(setting, setting) in message and VARIANT_NAME[variant] in message, message
        return
    result = run_variant(variant, tmp_path, **SETTINGS[setting])
    assert honoured(setting, result, tmp_path), (variant, setting, result.last_update)


@pytest.mark.parametrize("variant", ["ppo", "ppo_lstm", "batched"])
def test_the_non_finite_guard_speaks_the_same_way_in_every_variant(variant, tmp_path):
    with pytest.raises(NonFiniteError, match=r"^non-finite rewards at update 1 \(global step \d+"):
        run_variant(variant, tmp_path, env_id="rlkit-test/NaNReward-v0")


class StopAt(Callback):
    def __init__(self, iteration: int):
        self.iteration, self.seen = iteration, []

    def on_update(self, run, iteration, stats):
        self.seen.append(iteration)
        return iteration < self.iteration


@pytest.mark.parametrize("variant", ["ppo", "ppo_lstm"])
def test_a_callback_stops_the_run_with_a_checkpoint(variant, tmp_path):
    stop = StopAt(2)
    values = {**TINY, "env_id": "CartPole-v1", "run_dir": str(tmp_path), "total_timesteps": 4 * 16 * 6}
    if variant == "ppo":
        result = train(PPOConfig(**values), run_name="r", progress=False, callbacks=[stop])
    else:
        result = train_recurrent(RecurrentPPOConfig(**values), run_name="r", progress=False, callbacks=[stop])
    assert stop.seen == [1, 2]
    assert result.global_step == 2 * 4 * 16
    assert os.path.basename(list_checkpoints(result.run_dir)[-1]) == "update_0000002"
    # the run ended there (bug: a resume trained on, and did so on every resume); more steps continue it
    again = train(resume=result.run_dir, progress=False)
    assert again.updates_run == 0 and again.global_step == 2 * 4 * 16
    more = train(resume=result.run_dir, progress=False, total_timesteps=4 * 16 * 3)
    assert more.updates_run == 1 and more.global_step == 3 * 4 * 16


def test_batched_seeds_stopped_by_a_callback_stay_stopped_on_a_plain_resume(tmp_path):
    """Bug: a resume of batched seeds a callback had stopped trained on to the end (rlkit.ppo.train's did not)."""
    values = {**TINY, "env_id": "CartPole-v1", "run_dir": str(tmp_path), "total_timesteps": 4 * 16 * 4}
    dirs = [str(tmp_path / "s1"), str(tmp_path / "s2")]
    first = train_seeds(PPOConfig(**values), [1, 2], run_dirs=dirs, progress=False, callbacks=[StopAt(2)])
    assert [r.global_step for r in first] == [2 * 64, 2 * 64]
    again = train_seeds(PPOConfig(**values), [1, 2], run_dirs=dirs, progress=False, resume=True)
    assert [r.global_step for r in again] == [2 * 64, 2 * 64] and again[0].updates_run == 0
    more = train_seeds(PPOConfig(**{**values, "total_timesteps": 4 * 16 * 5}), [1, 2], run_dirs=dirs, progress=False,
                       resume=True)
    assert [r.global_step for r in more] == [5 * 64, 5 * 64]


def test_batched_seeds_callbacks_see_each_rollout_and_the_runs_context(tmp_path):
    """Bug: train_seeds never called on_rollout (returning False from it could not stop) and run.context was {}."""
    class Probe(Callback):
        def __init__(self):
            self.rollouts, self.steps = [], []

        def on_rollout(self, run, iteration):
            self.rollouts.append(iteration)
            return iteration < 2

        def on_update(self, run, iteration, stats):
            self.steps.append(run.context["cursor"].global_step)
            assert run.context["params"] and len(run.context["seed_envs"]) == 2 and run.context["config"].num_envs == 4

    probe = Probe()
    values = {**TINY, "env_id": "CartPole-v1", "run_dir": str(tmp_path)}
    results = train_seeds(PPOConfig(**values), [1, 2], run_dirs=[str(tmp_path / "s1"), str(tmp_path / "s2")],
                          progress=False, callbacks=[probe])
    assert probe.rollouts == [1, 2] and probe.steps == [64, 128] and results[0].global_step == 128


@pytest.mark.parametrize("variant", ["ppo", "ppo_lstm"])
def test_a_resumed_run_keeps_its_best_and_its_evaluations(variant, tmp_path):
    """Bug: the periodic evaluation started from -inf on resume: the first evaluation after it replaced best/
    however it scored, and TrainResult.evaluations held only the evaluations since the resume."""
    import json

    values = {**TINY, "env_id": "CartPole-v1", "run_dir": str(tmp_path), "total_timesteps": 4 * 16 * 4,
              "eval_interval": 1, "eval_episodes": 2}
    run = train if variant == "ppo" else train_recurrent
    config = PPOConfig(**values) if variant == "ppo" else RecurrentPPOConfig(**values)
    first = run(config, run_name="r", progress=False, callbacks=[StopAt(2)])
    best = json.load(open(os.path.join(first.run_dir, "best", "state.json")))["eval"]["mean_return"]
    state = os.path.join(first.run_dir, "best", "state.json")
    record = json.load(open(state))
    record["eval"]["mean_return"] = 1e9  # as if update 1 or 2 had scored higher than any later update will
    json.dump(record, open(state, "w"))
    resumed = train(resume=first.run_dir, progress=False, total_timesteps=4 * 16 * 4)
    assert [e["iteration"] for e in resumed.evaluations] == [1, 2, 3, 4]
    assert json.load(open(state))["eval"]["mean_return"] == 1e9 and best < 1e9  # not replaced by a worse one


def test_a_resume_from_an_older_checkpoint_moves_aside_a_best_evaluated_after_it(tmp_path):
    """Bug: best/ written after the checkpoint a resume starts from stayed, and its score (from the abandoned
    lineage, whose evaluations metrics.jsonl no longer holds) kept every evaluation of the new lineage out."""
    import glob
    import json

    values = {**TINY, "env_id": "CartPole-v1", "run_dir": str(tmp_path), "total_timesteps": 4 * 16 * 4,
              "eval_interval": 1, "eval_episodes": 2, "checkpoint_interval": 1}
    first = train(PPOConfig(**values), run_name="r", progress=False)
    state = os.path.join(first.run_dir, "best", "state.json")
    record = json.load(open(state))
    record.update(iteration=4)
    record["eval"]["mean_return"] = 1e9  # as if update 4 had scored higher than anything before it
    json.dump(record, open(state, "w"))
    older = os.path.join(first.run_dir, "checkpoints", "update_0000002")
    resumed = train(resume=older, progress=False, total_timesteps=4 * 16 * 4)
    assert [e["iteration"] for e in resumed.evaluations] == [1, 2, 3, 4]
    (moved,) = glob.glob(os.path.join(first.run_dir, "abandoned", "*", "best", "state.json"))
    assert json.load(open(moved))["eval"]["mean_return"] == 1e9
    kept = json.load(open(state))  # the new lineage's own best: of its evaluations since the resume
    assert kept["eval"]["mean_return"] == max(e["mean_return"] for e in resumed.evaluations if e["iteration"] > 2)


def _weights(result) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in result.agent.state_dict().items()}


def test_recurrent_resume_is_bit_exact_and_eval_export_work(tmp_path):
    values = {**TINY, "env_id": "rlkit/CartPoleNoVelocity-v1", "total_timesteps": 4 * 16 * 4, "checkpoint_interval": 2,
              "normalize_obs": True, "normalize_reward": True, "run_dir": str(tmp_path)}
    whole = train_recurrent(RecurrentPPOConfig(**values), run_name="whole", progress=False)
    first = train_recurrent(RecurrentPPOConfig(**values), run_name="cut", progress=False)
    shutil.rmtree(list_checkpoints(first.run_dir)[-1])  # back to update 2, as if stopped there
    os.remove(os.path.join(first.run_dir, "summary.json"))
    resumed = train_recurrent(resume=first.run_dir, progress=False)
    for name, value in _weights(whole).items():
        assert torch.equal(_weights(resumed)[name], value), name
    assert resumed.episode_returns == whole.episode_returns
    assert evaluate(resumed.run_dir, episodes=2)["episodes"] == 2
    exported = export(resumed.run_dir, str(tmp_path / "export"), episodes=2)
    assert evaluate(str(tmp_path / "export"), episodes=2, deterministic=True)["episodes"] == exported["episodes"]


def test_plain_resume_of_a_recurrent_run_picks_the_recurrent_variant(tmp_path):
    from rlkit.cli import main

    values = {**TINY, "env_id": "rlkit/MemoryProbe-v0", "total_timesteps": 4 * 16 * 2, "checkpoint_interval": 1,
              "run_dir": str(tmp_path)}
    first = train_recurrent(RecurrentPPOConfig(**values), run_name="r", progress=False)
    shutil.rmtree(list_checkpoints(first.run_dir)[-1])
    assert main(["train", "--resume", first.run_dir, "--no-progress"]) == 0


def test_batched_seeds_checkpoint_resume_bit_exact_and_each_seed_stands_alone(tmp_path):
    cfg = PPOConfig(**{**TINY, "env_id": "Pendulum-v1", "total_timesteps": 4 * 16 * 4, "checkpoint_interval": 2,
                       "normalize_obs": True, "normalize_reward": True})
    dirs = lambda name: [str(tmp_path / name / "s3"), str(tmp_path / name / "s4")]  # noqa: E731
    whole = train_seeds(cfg, [3, 4], run_dirs=dirs("whole"), progress=False)
    train_seeds(cfg, [3, 4], run_dirs=dirs("cut"), progress=False)
    for d in dirs("cut"):
        shutil.rmtree(list_checkpoints(d)[-1])
        os.remove(os.path.join(d, "summary.json"))
    resumed = train_seeds(cfg, [3, 4], run_dirs=dirs("cut"), progress=False, resume=True)
    for a, b in zip(whole, resumed):
        for name, value in _weights(a).items():
            assert torch.equal(_weights(b)[name], value), name
        assert a.episode_returns == b.episode_returns
    # one seed's checkpoint is an ordinary rlkit.ppo checkpoint: eval, and resume alone
    assert evaluate(dirs("whole")[1], episodes=2)["episodes"] == 2
    shutil.rmtree(list_checkpoints(dirs("whole")[1])[-1])
    alone = train(resume=dirs("whole")[1], progress=False)
    assert alone.global_step == whole[1].global_step
    for name, value in _weights(whole[1]).items():  # the seed's run goes on alone as it went on batched
        torch.testing.assert_close(_weights(alone)[name], value, atol=1e-5, rtol=0)
    assert alone.episode_returns == pytest.approx(whole[1].episode_returns, rel=1e-5)


def test_batched_seeds_killed_while_checkpointing_resume_from_the_update_every_seed_has(tmp_path):
    """Bug: a kill -9 between the seeds' checkpoint writes left seed 4 one checkpoint behind, and re-running
    refused ('newest checkpoints are at different updates [2, 4]'); every seed has update 2: resume there."""
    cfg = PPOConfig(**{**TINY, "env_id": "CartPole-v1", "total_timesteps": 4 * 16 * 4, "checkpoint_interval": 2})
    dirs = lambda name: [str(tmp_path / name / "s3"), str(tmp_path / name / "s4")]  # noqa: E731
    whole = train_seeds(cfg, [3, 4], run_dirs=dirs("whole"), progress=False)
    train_seeds(cfg, [3, 4], run_dirs=dirs("cut"), progress=False)
    for d in dirs("cut"):
        os.remove(os.path.join(d, "summary.json"))
    shutil.rmtree(list_checkpoints(dirs("cut")[1])[-1])  # seed 4's update 4 never written
    resumed = train_seeds(cfg, [3, 4], run_dirs=dirs("cut"), progress=False, resume=True)
    for a, b in zip(whole, resumed):
        assert b.updates_run == 2
        for name, value in _weights(a).items():
            assert torch.equal(_weights(b)[name], value), name
    assert os.listdir(os.path.join(dirs("cut")[0], "abandoned"))  # seed 3's update 4 moved aside, not deleted
    # both seeds' newest checkpoints incomplete (state.json never written): resume from the complete update 2
    train_seeds(cfg, [3, 4], run_dirs=dirs("both"), progress=False)
    for d in dirs("both"):
        os.remove(os.path.join(d, "summary.json"))
        os.remove(os.path.join(list_checkpoints(d)[-1], "state.json"))
    again = train_seeds(cfg, [3, 4], run_dirs=dirs("both"), progress=False, resume=True)
    assert [r.updates_run for r in again] == [2, 2]


def test_batched_seeds_resume_without_exact_env_state_restarts_each_seed_as_its_run_alone(tmp_path, capsys):
    """Envs whose state is not plain data (async workers here, MuJoCo in practice) restart from a seeded
    reset when resumed: batched, each seed's envs restart as that seed's checkpoint resumed alone restarts them."""
    cfg = PPOConfig(**{**TINY, "env_id": "Pendulum-v1", "num_envs": 2, "total_timesteps": 2 * 16 * 4,
                       "checkpoint_interval": 2, "vectorization": "async", "normalize_obs": True,
                       "normalize_reward": True})
    dirs = [str(tmp_path / "s3"), str(tmp_path / "s4")]
    train_seeds(cfg, [3, 4], run_dirs=dirs, progress=False)
    for d in dirs:
        shutil.rmtree(list_checkpoints(d)[-1])
        os.remove(os.path.join(d, "summary.json"))
    for d, name in zip(dirs, ("alone3", "alone4")):
        shutil.copytree(d, tmp_path / name)
    capsys.readouterr()
    resumed = train_seeds(cfg, [3, 4], run_dirs=dirs, progress=False, resume=True)
    assert "restart from a seeded reset" in capsys.readouterr().out
    for seed_resumed, name in zip(resumed, ("alone3", "alone4")):
        alone = train(resume=str(tmp_path / name), progress=False)
        assert seed_resumed.global_step == alone.global_step == 2 * 16 * 4
        for key, value in _weights(alone).items():
            torch.testing.assert_close(_weights(seed_resumed)[key], value, atol=1e-5, rtol=0)
        assert seed_resumed.episode_returns == pytest.approx(alone.episode_returns, rel=1e-5)


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_a_seed_trained_batched_matches_the_same_seed_trained_alone(env_id):
    """Same envs, initial weights, sampling and shuffling streams as rlkit.ppo.train: only float
    rounding differs (batched matmuls sum in another order).  Seen: max |weight diff| 3e-8 after 3 updates."""
    cfg = PPOConfig(env_id=env_id, num_envs=2, num_steps=128, total_timesteps=128 * 2 * 3, num_minibatches=4,
                    update_epochs=4, device="cpu")
    alone = train(replace(cfg, seed=7), log=False, progress=False)
    batched = train_seeds(cfg, [3, 7], log=False, progress=False)[1]
    for name, value in alone.agent.state_dict().items():
        torch.testing.assert_close(batched.agent.state_dict()[name], value, atol=1e-5, rtol=0)
    assert batched.episode_returns == pytest.approx(alone.episode_returns, rel=1e-5)
    assert batched.episode_lengths == alone.episode_lengths


def test_batched_seeds_learn_the_masked_probe_and_never_take_the_masked_action():
    from rlkit.doctor import PROBE_CONFIG

    cfg = replace(PROBE_CONFIG, env_id="rlkit/MaskedActionProbe-v0")
    for result in train_seeds(cfg, [1, 2], progress=False, log=False):
        assert max(result.episode_returns) <= 1.0
        assert np.mean(result.episode_returns[-50:]) > 0.9
        with torch.no_grad():
            logits, _ = result.agent(torch.zeros(1, 1))
            masked = torch.softmax(logits.masked_fill(torch.tensor([[False, False, True]]), float("-inf")), -1)
        assert masked[0, 2] == 0 and masked[0, 1] > 0.9
