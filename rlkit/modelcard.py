"""The YAML front matter a model hub reads at the top of a model card (README.md).

Hugging Face's model-card metadata, in the form the RL leaderboards parse (as Stable-Baselines3 /
RL-Zoo write it): ``library_name``, ``tags`` (``reinforcement-learning``, the env id, the algorithm),
and a ``model-index`` whose metrics carry the evaluation as ``"mean +/- std"`` (``mean_reward``), plus
the mean and std as numbers.  Written by hand (strings JSON-quoted, which YAML reads as double-quoted
scalars), so no YAML package is needed to export.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ".nan"
    return json.dumps(str(value))


def front_matter(model_name: str, dataset: str, tags: list[str], metrics: list[dict], task: str = "reinforcement-learning",
                 extra: dict[str, Any] | None = None) -> str:
    """``---`` ... ``---`` block.  ``metrics``: dicts with name, mean and std (std may be None), or name and value."""
    lines = ["---", "library_name: rlkit"]
    for key, value in (extra or {}).items():
        lines.append(f"{key}: {_scalar(value)}")
    lines.append("tags:")
    lines += [f"- {_scalar(tag)}" for tag in dict.fromkeys(tags)]
    lines += ["model-index:", f"- name: {_scalar(model_name)}", "  results:", "  - task:",
              f"      type: {_scalar(task)}", f"      name: {_scalar(task)}", "    dataset:",
              f"      name: {_scalar(dataset)}", f"      type: {_scalar(dataset)}", "    metrics:"]
    for metric in metrics:
        if "mean" in metric:
            std = metric.get("std")
            value = f"{metric['mean']:.2f} +/- {std:.2f}" if std is not None else f"{metric['mean']:.4g}"
        else:
            value = metric["value"]
        lines += [f"    - type: {_scalar(metric['name'])}", f"      name: {_scalar(metric['name'])}",
                  f"      value: {_scalar(value)}", "      verified: false"]
        for key in ("mean", "std", "episodes", "samples"):
            if metric.get(key) is not None:
                lines.append(f"      {key}: {_scalar(metric[key])}")
    lines.append("---")
    return "\n".join(lines) + "\n\n"


def control_front_matter(env_id: str, result: dict, variant: str = "ppo") -> str:
    """A control export: the evaluation's mean return +/- std over its episodes."""
    tags = ["reinforcement-learning", "deep-reinforcement-learning", env_id, variant, "rlkit"]
    metric = {"name": "mean_reward", "mean": float(result["mean"]), "std": float(result["std"]),
              "episodes": int(result["episodes"])}
    return front_matter(f"PPO-{env_id}", env_id, tags, [metric])


def rlhf_front_matter(task: str, final: dict, samples: list[dict], base_model: str | None = None) -> str:
    """An RLHF export: the final evaluation's gold (when the task has one) and reward score, mean +/- std
    over its samples, and the KL to the reference."""
    metrics = []
    for key in ("gold", "score"):
        values = [float(row[key]) for row in samples if isinstance(row.get(key), (int, float))]
        if key in final and final[key] is not None:
            std = float((sum((v - sum(values) / len(values)) ** 2 for v in values) / len(values)) ** 0.5) if values else None
            metrics.append({"name": f"mean_{key}", "mean": float(final[key]), "std": std, "samples": len(values) or None})
    if final.get("kl_k1") is not None:
        metrics.append({"name": "kl_to_reference", "mean": float(final["kl_k1"]), "std": None})
    extra = {"pipeline_tag": "text-generation"}
    if base_model and re.fullmatch(r"[\w.-]+/[\w.-]+", base_model) and not os.path.exists(base_model):
        extra["base_model"] = base_model  # a hub id, not a local folder
    tags = ["reinforcement-learning", "rlhf", "ppo", "text-generation", f"rlkit-{task}", "rlkit"]
    return front_matter(f"PPO-RLHF-{task}", f"rlkit-{task}", tags, metrics, task="text-generation", extra=extra)
