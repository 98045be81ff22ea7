"""Evaluate and export trained agents.

``evaluate`` runs episodes with the observation-normaliser statistics saved with
the agent, frozen, so a reloaded agent sees exactly the inputs it was trained on
(cleanrl#310).  ``export`` writes a self-contained folder:

    config.json         the training config + the env's spaces
    model.safetensors   the agent's parameters
    normalizer.json     observation mean / var / clip (absent when not normalised)
    README.md           a model card with the evaluation numbers

``rlkit eval`` loads either a checkpoint or an export folder; the README shows a
plain-torch loader that needs neither rlkit nor gymnasium's wrappers.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rlkit.checkpoint import CheckpointError, load_checkpoint
from rlkit.envs import is_atari_id, load_normalizer_state, make_atari_vector_env, make_vector_env, set_normalizer_updates
from rlkit.ppo import ActorCriticBase, FeedForward, PPOConfig, action_mask_from_info, resolve_device, user_fields, variant_named

EXPORT_FILES = ("config.json", "model.safetensors")


def _config(values: dict, variant: FeedForward) -> PPOConfig:
    known = set(user_fields(variant.config_class))
    return variant.config_class(**{k: v for k, v in values.items() if k in known}).validate()


def load_agent(path: str) -> tuple[PPOConfig, dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """(config, agent weights, observation-normaliser state) from an export folder or a checkpoint/run folder.

    The config's class says which variant made the agent (rlkit.ppo's or rlkit.ppo_lstm's); see :func:`variant_of`.
    """
    if all(os.path.isfile(os.path.join(path, f)) for f in EXPORT_FILES):
        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
        try:
            weights = load_file(os.path.join(path, "model.safetensors"))
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{path}/model.safetensors is truncated or corrupted ({error})") from None
        normalizer = {}
        if os.path.isfile(os.path.join(path, "normalizer.json")):
            with open(os.path.join(path, "normalizer.json")) as f:
                saved = json.load(f)
            normalizer = {f"obs.{k}": np.asarray(saved[k], dtype=np.float64) for k in ("mean", "var", "count")}
        variant = variant_named(config.get("variant", "ppo"))
        return _config(config["ppo"], variant), weights, normalizer
    tensors, state = load_checkpoint(path)
    return _config(state["config"], variant_named(state.get("variant", "ppo"))), tensors["model"], state["normalizers"]


def variant_of(cfg: PPOConfig) -> FeedForward:
    """The training variant whose agent a config describes."""
    from rlkit.ppo import VARIANTS

    return next(variant_named(name) for name in VARIANTS if type(cfg) is variant_named(name).config_class)


def build_agent(cfg: PPOConfig, weights: dict[str, torch.Tensor], envs, device: torch.device) -> ActorCriticBase:
    agent = variant_of(cfg).make_agent(cfg, envs)
    try:
        agent.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(
            f"the saved agent does not fit {cfg.env_id} with hidden_size={cfg.hidden_size}, "
            f"shared_network={cfg.shared_network}: {str(error).splitlines()[0]}"
        ) from None
    return agent.to(device).eval()


def evaluate(
    path: str,
    episodes: int = 10,
    deterministic: bool = False,
    video_dir: str | None = None,
    seed: int = 10_000,
    device: str = "cpu",
    env_id: str | None = None,
) -> dict:
    """Run ``episodes`` episodes; returns mean/std/min/max and the list of returns.

    ``env_id`` evaluates on another env with the same spaces (e.g. another version).
    """
    if episodes <= 0:
        raise ValueError(f"episodes must be > 0, got {episodes}")
    cfg, weights, normalizer = load_agent(path)
    if env_id is not None:
        cfg = replace(cfg, env_id=env_id)
    wrappers, env_kwargs = None, None
    if video_dir is not None:
        try:
            import moviepy  # noqa: F401  (RecordVideo needs it)
        except ImportError:
            raise CheckpointError('video recording needs moviepy: pip install "rlkit[video]"') from None
        from gymnasium.wrappers import RecordVideo

        env_kwargs = {"render_mode": "rgb_array"}
        wrappers = [lambda env: RecordVideo(env, video_dir, episode_trigger=lambda i: i < episodes, disable_logger=True)]
    if is_atari_id(cfg.env_id):
        if video_dir is not None:
            raise CheckpointError("--video is not supported for Atari yet (the frames are the agent's 84x84 input)")
        envs = make_atari_vector_env(cfg.env_id, 1, cfg.atari_backend)
    else:
        envs = make_vector_env(cfg.env_id, 1, clip_actions=cfg.clip_actions, normalize_obs=cfg.normalize_obs,
                               obs_clip=cfg.obs_clip, env_kwargs=env_kwargs, sub_env_wrappers=wrappers)
    torch_device = resolve_device(device)
    try:
        agent = build_agent(cfg, weights, envs, torch_device)
        if cfg.normalize_obs:
            if not normalizer:
                raise CheckpointError(f"{path} has no observation-normaliser statistics, but the agent was trained with them")
            try:
                load_normalizer_state(envs, {k: v for k, v in normalizer.items() if k.startswith("obs.")})
            except ValueError as error:
                raise CheckpointError(f"the saved normaliser does not fit {cfg.env_id}: {error}") from None
            set_normalizer_updates(envs, False)
        torch.manual_seed(seed)
        policy = variant_of(cfg).rollout_policy(agent, cfg, 1)  # carries a recurrent agent's state
        obs, infos = envs.reset(seed=seed)
        returns, lengths = [], []
        while len(returns) < episodes:
            with torch.inference_mode():
                action, _, _ = policy.act(torch.as_tensor(obs, dtype=torch.float32, device=torch_device),
                                          action_mask_from_info(infos, torch_device), deterministic=deterministic)
            obs, _, terminations, truncations, infos = envs.step(action.cpu().numpy())
            policy.after_step((terminations | truncations).astype(np.float32))
            if "_episode" in infos and infos["_episode"][0]:
                returns.append(float(infos["episode"]["r"][0]))
                lengths.append(int(infos["episode"]["l"][0]))
    finally:
        envs.close()
    values = np.asarray(returns)
    return {"env_id": cfg.env_id, "episodes": episodes, "deterministic": deterministic, "mean": float(values.mean()),
            "std": float(values.std()), "min": float(values.min()), "max": float(values.max()),
            "returns": returns, "lengths": lengths, "video_dir": video_dir}


def export(path: str, out: str, episodes: int = 10, deterministic: bool = True) -> dict:
    """Write the self-contained export folder ``out`` and return the evaluation it reports."""
    cfg, weights, normalizer = load_agent(path)
    os.makedirs(out, exist_ok=True)
    envs = make_atari_vector_env(cfg.env_id, 1, cfg.atari_backend) if is_atari_id(cfg.env_id) else make_vector_env(cfg.env_id, 1)
    spaces = {"observation_shape": list(envs.single_observation_space.shape)}
    space = envs.single_action_space
    if hasattr(space, "n"):
        spaces["action"] = {"type": "Discrete", "n": int(space.n)}
    elif hasattr(space, "nvec"):
        spaces["action"] = {"type": "MultiDiscrete", "nvec": [int(k) for k in space.nvec]}
    else:
        base = envs.unwrapped.single_action_space  # before ClipAction widened it to +-inf
        spaces["action"] = {"type": "Box", "shape": list(base.shape), "low": base.low.tolist(), "high": base.high.tolist()}
    envs.close()
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({"format": "rlkit-ppo-agent/1", "variant": variant_of(cfg).name,
                   "ppo": {k: getattr(cfg, k) for k in user_fields(type(cfg))}, **spaces}, f, indent=2)
    save_file({k: v.contiguous() for k, v in weights.items()}, os.path.join(out, "model.safetensors"))
    if cfg.normalize_obs:
        with open(os.path.join(out, "normalizer.json"), "w") as f:
            json.dump({"mean": normalizer["obs.mean"].tolist(), "var": normalizer["obs.var"].tolist(),
                       "count": float(normalizer["obs.count"]), "clip": cfg.obs_clip, "epsilon": 1e-8}, f, indent=2)
    result = evaluate(out, episodes=episodes, deterministic=deterministic)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(_model_card(cfg, result))
    return result


def _model_card(cfg: PPOConfig, result: dict) -> str:
    rows = "\n".join(f"| {k} | {getattr(cfg, k)} |" for k in user_fields(type(cfg)))
    policy = "deterministic (mean / argmax)" if result["deterministic"] else "stochastic"
    return f"""# PPO agent for {cfg.env_id}

Trained with [rlkit](https://pypi.org/project/rlkit/) PPO, seed {cfg.seed}.

## Evaluation

{result['episodes']} episodes, {policy} policy, observation normaliser frozen at its training statistics:

| mean return | std | min | max |
|---|---|---|---|
| {result['mean']:.2f} | {result['std']:.2f} | {result['min']:.2f} | {result['max']:.2f} |

Reproduce: `rlkit eval <this folder> --episodes {result['episodes']}{' --deterministic' if result['deterministic'] else ''}`

## Files

- `config.json`: training config (`ppo`), observation shape and action space
- `model.safetensors`: the agent's parameters (`actor.*` / `critic.*`, or `torso.*` / `*_head.*` when shared; `actor_logstd` for Box actions)
- `normalizer.json`: observation mean / var; the agent expects `clip((obs - mean) / sqrt(var + 1e-8), -clip, clip)`

## Config

| key | value |
|---|---|
{rows}
"""
