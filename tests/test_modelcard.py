"""Model cards carry the YAML front matter a model hub reads: library_name, tags with the env id, and a
model-index whose metric is the evaluation's mean +/- std (control exports and RLHF exports)."""

from __future__ import annotations

import json

import pytest

yaml = pytest.importorskip("yaml")

from rlkit.evaluate import export  # noqa: E402
from rlkit.ppo import PPOConfig, train  # noqa: E402


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    head, _, body = card[4:].partition("\n---\n")
    assert body.lstrip().startswith("# ")  # the card itself follows
    return yaml.safe_load(head)


def test_a_control_export_has_hub_metadata(tmp_path):
    cfg = PPOConfig(env_id="CartPole-v1", total_timesteps=128, num_steps=64, num_envs=2, num_minibatches=2, device="cpu",
                    normalize_obs=False, normalize_reward=False, run_dir=str(tmp_path))
    run = train(cfg, run_name="r", progress=False)
    result = export(run.run_dir, str(tmp_path / "agent"), episodes=3)
    meta = front_matter((tmp_path / "agent" / "README.md").read_text())
    assert meta["library_name"] == "rlkit"
    assert {"reinforcement-learning", "CartPole-v1", "ppo"} <= set(meta["tags"])
    (entry,) = meta["model-index"]
    (res,) = entry["results"]
    assert res["task"]["type"] == "reinforcement-learning" and res["dataset"]["name"] == "CartPole-v1"
    (metric,) = res["metrics"]
    assert metric["type"] == "mean_reward" and metric["value"] == f"{result['mean']:.2f} +/- {result['std']:.2f}"
    assert metric["mean"] == pytest.approx(result["mean"]) and metric["std"] == pytest.approx(result["std"])
    assert metric["episodes"] == 3


def test_an_rlhf_export_card_has_hub_metadata(tmp_path):
    from rlkit.rlhf.export import model_card

    samples = [{"prompt": "a", "response": "b", "score": 1.0, "gold": 0.5},
               {"prompt": "c", "response": "d: \"quoted\" | piped", "score": 3.0, "gold": 1.5}]
    (tmp_path / "summary.json").write_text(json.dumps({
        "initial": {"score": 0.1, "gold": 0.2, "kl_k1": 0.0},
        "final": {"score": 2.0, "gold": 1.0, "kl_k1": 1.25}, "final_samples": samples}))
    (tmp_path / "config.json").write_text(json.dumps({"reward_resolved": "gold"}))
    config = {"task": "synthetic", "policy": "HuggingFaceTB/SmolLM2-135M", "kl_mode": "k1_in_reward", "kl_coef": 0.05}
    card = model_card(str(tmp_path), config, "the fine-tuned policy", "run/checkpoint")
    meta = front_matter(card)
    assert meta["library_name"] == "rlkit" and meta["pipeline_tag"] == "text-generation"
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M"
    assert {"reinforcement-learning", "rlhf", "rlkit-synthetic"} <= set(meta["tags"])
    metrics = {m["type"]: m for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["mean_gold"]["value"] == "1.00 +/- 0.50" and metrics["mean_gold"]["samples"] == 2
    assert metrics["mean_score"]["std"] == pytest.approx(1.0)
    assert metrics["kl_to_reference"]["mean"] == pytest.approx(1.25)
    assert "| gold |" in card  # the card's own table is unchanged below the front matter

    config["policy"] = str(tmp_path)  # a local folder is not a hub id: no base_model
    assert "base_model" not in front_matter(model_card(str(tmp_path), config, "x", "y"))
