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

import gymnasium as gym

from rlkit.checkpoint import CheckpointError, load_checkpoint, write_checkpoint_folder
from rlkit.envs import (
    is_atari_id,
    load_normalizer_state,
    make_atari_vector_env,
    make_vector_env,
    normalizer_state,
    normalizes_observations,
    set_normalizer_updates,
)
from rlkit.envs.atari import VIDEO_FPS
from rlkit.envs.factory import action_start, env_action_shape
from rlkit.envs.observations import ObservationLayout, is_image_space
from rlkit.envs.sources import USER_PREFIX, resolve_env_id
from rlkit.fast import flatten_parameters
from rlkit.runtime import Callback
from rlkit.ppo import (ActorCriticBase, FeedForward, PPOConfig, action_mask_from_info, resolve_device, saved_config_values,
                       user_fields, variant_named)

EXPORT_FILES = ("config.json", "model.safetensors")


def _config(values: dict, variant: FeedForward) -> PPOConfig:
    known = set(user_fields(variant.config_class))
    return variant.config_class(**{k: v for k, v in saved_config_values(values).items() if k in known}).validate()


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
    variant = variant_of(cfg)
    agent = variant.make_agent(cfg, envs)
    expected = agent.state_dict()
    wrong = [(k, tuple(weights[k].shape), tuple(v.shape)) for k, v in expected.items()
             if k in weights and tuple(weights[k].shape) != tuple(v.shape)]
    if wrong:  # the env's spaces (or the network settings) are not the ones the agent was trained for
        from rlkit.errors import EnvError

        name, saved_shape, needed = wrong[0]
        raise EnvError(f"the saved agent does not fit {cfg.env_id} (hidden_size={cfg.hidden_size}, shared_network="
                       f"{cfg.shared_network}): {name} is {list(saved_shape)} in the checkpoint, {list(needed)} for "
                       f"this env ({len(wrong)} tensor(s) differ); evaluate it on the env it was trained on")
    try:
        agent.load_state_dict(weights)
    except RuntimeError as error:
        missing = sorted(set(expected) - set(weights))[:3]
        unexpected = sorted(set(weights) - set(expected))[:3]
        raise CheckpointError(
            f"the saved agent does not fit {cfg.env_id} with hidden_size={cfg.hidden_size}, "
            f"shared_network={cfg.shared_network}: missing {missing}, unexpected {unexpected}"
        ) from None
    agent = agent.to(device).eval()
    if variant.flat(agent):  # the memory layout it trained in: bitwise the same actions
        flatten_parameters(agent)
    return agent


def make_eval_envs(cfg: PPOConfig, video_dir: str | None = None, episodes: int = 10) -> gym.vector.VectorEnv:
    """One env built as for training (observation normaliser included, reward wrappers not), optionally recording video."""
    env_id = resolve_env_id(cfg.env_id, cfg.env_module)
    wrappers, env_kwargs = None, dict(cfg.env_kwargs)
    if video_dir is not None:
        try:
            import moviepy  # noqa: F401  (RecordVideo needs it)
        except ImportError:
            raise CheckpointError('video recording needs moviepy: pip install "rlkit[video]"') from None
        from gymnasium.wrappers import RecordVideo

        from rlkit.video import prepare_rendering

        prepare_rendering(env_id)  # no display: SDL's dummy driver, MuJoCo's EGL / OSMesa, or one line saying what is missing
        own_object = env_id.startswith(USER_PREFIX)  # an env object handed to rlkit.PPO: made as the user made it
        if not own_object:
            env_kwargs["render_mode"] = "rgb_array"
        fps = VIDEO_FPS if is_atari_id(env_id) else None  # Atari: one frame per agent step

        def recorded(env: gym.Env) -> gym.Env:
            if own_object and env.render_mode != "rgb_array":
                from rlkit.errors import EnvError

                raise EnvError(f"a video needs frames: this env object renders {env.render_mode!r}; make it with "
                               "render_mode='rgb_array' (e.g. lambda: gym.make(ID, render_mode='rgb_array')) and "
                               "pass it again: PPO.load(path, env=...)")
            return RecordVideo(env, video_dir, episode_trigger=lambda i: i < episodes, fps=fps, disable_logger=True)

        wrappers = [recorded]
    if is_atari_id(env_id):
        if video_dir is not None:  # the python stack (pixel for pixel the C++ one) renders the whole colour game
            return make_atari_vector_env(env_id, 1, "python", render_mode="rgb_array", game_wrapper=wrappers[0])
        return make_atari_vector_env(env_id, 1, cfg.atari_backend)
    return make_vector_env(env_id, 1, clip_actions=cfg.clip_actions, normalize_obs=cfg.normalize_obs,
                           obs_clip=cfg.obs_clip, env_kwargs=env_kwargs, sub_env_wrappers=wrappers)


def freeze_normalizer(envs: gym.vector.VectorEnv, cfg: PPOConfig, normalizer: dict[str, np.ndarray], where: str) -> None:
    """Give the eval env the training statistics of the observation normaliser, frozen (cleanrl#310)."""
    if not normalizes_observations(envs):  # normalize_obs is off, or the observation is pixels / one-hot only
        return
    if not normalizer:
        raise CheckpointError(f"{where} has no observation-normaliser statistics, but the agent was trained with them")
    try:
        load_normalizer_state(envs, {k: v for k, v in normalizer.items() if k.startswith("obs.")})
    except ValueError as error:
        raise CheckpointError(f"the saved normaliser does not fit {cfg.env_id}: {error}") from None
    set_normalizer_updates(envs, False)


EVAL_STEP_LIMIT = 1_000_000
"""steps an evaluation episode may take before it is refused as endless (Atari's longest: 27,000 agent steps)"""


def run_episodes(agent: ActorCriticBase, cfg: PPOConfig, envs: gym.vector.VectorEnv, episodes: int, deterministic: bool,
                 seed: int, device: torch.device) -> dict:
    """Play ``episodes`` episodes on a one-env vector env; mean/std/min/max, returns and lengths.

    Torch's random state is saved and restored around it, so an evaluation in the middle of training
    leaves the training run's random streams where they were.
    """
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        policy = variant_of(cfg).rollout_policy(agent, cfg, 1)  # carries a recurrent agent's state
        obs, infos = envs.reset(seed=seed)
        returns, lengths = [], []
        steps = 0  # of the current episode
        while len(returns) < episodes:
            steps += 1
            if steps > EVAL_STEP_LIMIT:
                from rlkit.errors import EnvError

                raise EnvError(f"an evaluation episode of {cfg.env_id} ran {EVAL_STEP_LIMIT:,} steps without ending: "
                               "the env has no time limit; wrap it in gymnasium.wrappers.TimeLimit (or register it with "
                               "max_episode_steps)")
            with torch.inference_mode():
                action, _, _ = policy.act(torch.as_tensor(obs, dtype=torch.float32, device=device),
                                          action_mask_from_info(infos, device, envs.single_action_space),
                                          deterministic=deterministic)
            obs, _, terminations, truncations, infos = envs.step(action.cpu().numpy())
            policy.after_step((terminations | truncations).astype(np.float32))
            if "_episode" in infos and infos["_episode"][0]:
                returns.append(float(infos["episode"]["r"][0]))
                lengths.append(int(infos["episode"]["l"][0]))
                steps = 0
    values = np.asarray(returns)
    return {"env_id": cfg.env_id, "episodes": episodes, "deterministic": deterministic, "mean": float(values.mean()),
            "std": float(values.std()), "min": float(values.min()), "max": float(values.max()),
            "returns": returns, "lengths": lengths}


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
    envs = make_eval_envs(cfg, video_dir, episodes)
    torch_device = resolve_device(device)
    try:
        agent = build_agent(cfg, weights, envs, torch_device)
        freeze_normalizer(envs, cfg, normalizer, path)
        result = run_episodes(agent, cfg, envs, episodes, deterministic, seed, torch_device)
    finally:
        envs.close()
    return {**result, "video_dir": video_dir}


def agent_spaces(cfg: PPOConfig) -> dict:
    """The observation shape and action space an agent folder records (so it loads without the env)."""
    env_id = resolve_env_id(cfg.env_id, cfg.env_module)
    envs = make_atari_vector_env(env_id, 1, cfg.atari_backend) if is_atari_id(env_id) else make_vector_env(
        env_id, 1, env_kwargs=cfg.env_kwargs)
    try:
        return spaces_of(envs)
    finally:
        envs.close()


def spaces_of(envs: gym.vector.VectorEnv) -> dict:
    observation = envs.single_observation_space
    spaces = {"observation_shape": list(observation.shape)}
    # what the network builder needs besides the shape: which input is pixels (rlkit.networks)
    if is_image_space(observation):
        spaces["observation_layout"] = "image"
    elif isinstance(observation, ObservationLayout):
        spaces["observation_layout"] = [{"name": p.name, "kind": p.kind, "start": p.start, "stop": p.stop,
                                         "shape": list(p.shape)} for p in observation.parts]
    space = envs.single_action_space
    start = action_start(envs)  # the env's actions start there; the agent's start at 0 (ZeroBasedActions)
    if hasattr(space, "n"):
        spaces["action"] = {"type": "Discrete", "n": int(space.n), **({"start": start} if start is not None else {})}
    elif hasattr(space, "nvec"):
        spaces["action"] = {"type": "MultiDiscrete", "nvec": [int(k) for k in space.nvec],
                            **({"start": start} if start is not None else {})}
        flattened = env_action_shape(envs)  # MultiBinary / a many-dimensional MultiDiscrete (FlatDiscreteActions)
        if flattened is not None:
            spaces["action"].update(env_type=flattened[0], env_shape=flattened[1])
    else:
        base = envs.unwrapped.single_action_space  # before ClipAction widened it to +-inf
        spaces["action"] = {"type": "Box", "shape": list(base.shape), "low": base.low.tolist(), "high": base.high.tolist()}
    return spaces


AGENT_FORMAT = "rlkit-ppo-agent/1"
AGENT_FILES = {"README.md", "config.json", "model.safetensors", "normalizer.json"}


def agent_folder_extras(path: str) -> list[str] | None:
    """The files an earlier export / save holds that rlkit did not write there; None if it is not one."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            fmt = json.load(f).get("format", "")
    except (OSError, ValueError, AttributeError):
        return None
    return sorted(set(os.listdir(path)) - AGENT_FILES) if str(fmt).startswith("rlkit-ppo-agent/") else None


def is_agent_folder(path: str) -> bool:
    """An earlier export / save holding nothing else: it may be replaced whole."""
    return agent_folder_extras(path) == []


def check_finite_agent(weights: dict[str, torch.Tensor], normalizer: dict[str, np.ndarray], where: str) -> None:
    """An export of NaN / inf weights or normaliser statistics would act on garbage: refuse it."""
    from rlkit.errors import ExportError

    for name, tensor in weights.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ExportError(f"{where}: the weight {name} holds NaN or inf; export an earlier checkpoint of the run "
                              "(rlkit export RUN/checkpoints/update_<k> OUT)")
    for name, value in normalizer.items():
        if not np.all(np.isfinite(np.asarray(value, dtype=np.float64))):
            raise ExportError(f"{where}: the normaliser statistic {name} holds NaN or inf; export an earlier checkpoint")


def write_agent_folder(out: str, cfg: PPOConfig, weights: dict[str, torch.Tensor], normalizer: dict[str, np.ndarray],
                       spaces: dict) -> None:
    """config.json (config, variant, spaces), model.safetensors and normalizer.json: what PPO.load and rlkit eval read.

    Written atomically (a temporary sibling renamed into place) into a new or empty folder, or over an
    earlier agent folder, which it replaces completely; other non-empty folders are refused, as are
    non-finite weights (rlkit.errors.ExportError)."""
    from rlkit.runfolder import replace_folder

    check_finite_agent(weights, normalizer, "the agent")
    with replace_folder(out, is_agent_folder, extras=agent_folder_extras) as staging:
        _write_agent_files(staging, cfg, weights, normalizer, spaces)


def _write_agent_files(out: str, cfg: PPOConfig, weights: dict[str, torch.Tensor], normalizer: dict[str, np.ndarray],
                       spaces: dict) -> None:
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({"format": AGENT_FORMAT, "variant": variant_of(cfg).name,
                   "ppo": {k: getattr(cfg, k) for k in user_fields(type(cfg))}, **spaces}, f, indent=2)
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, os.path.join(out, "model.safetensors"))
    if "obs.mean" in normalizer:  # trained with an observation normaliser (none for pixels / one-hot only)
        with open(os.path.join(out, "normalizer.json"), "w") as f:
            json.dump({"mean": normalizer["obs.mean"].tolist(), "var": normalizer["obs.var"].tolist(),
                       "count": float(normalizer["obs.count"]), "clip": cfg.obs_clip, "epsilon": 1e-8}, f, indent=2)


def export(path: str, out: str, episodes: int = 10, deterministic: bool = True) -> dict:
    """Write the self-contained export folder ``out`` and return the evaluation it reports."""
    from rlkit.runfolder import replace_folder

    cfg, weights, normalizer = load_agent(path)
    check_finite_agent(weights, normalizer, path)  # NaN weights: no export (and no model card of garbage)
    with replace_folder(out, is_agent_folder, extras=agent_folder_extras) as staging:  # new, empty, or an earlier export replaced whole
        _write_agent_files(staging, cfg, weights, normalizer, agent_spaces(cfg))
        result = evaluate(staging, episodes=episodes, deterministic=deterministic)  # the exported files themselves
        with open(os.path.join(staging, "README.md"), "w") as f:
            f.write(_model_card(cfg, result))
    return result


class PeriodicEvaluation(Callback):
    """Every ``eval_interval`` updates: ``eval_episodes`` episodes on a separate env with the training
    normaliser statistics frozen, logged under ``eval/`` (TensorBoard and metrics.jsonl), the best
    weights so far kept in ``<run>/best/`` (a checkpoint folder), and a stop once ``stop_at_return``
    is reached.  Other callbacks' ``on_eval(run, iteration, result)`` see each result."""

    def __init__(self, cfg: PPOConfig):
        self.cfg = cfg
        self.envs = None
        self.best = -np.inf
        self.history: list[dict] = []

    def on_start(self, run) -> None:
        """A resumed run: the evaluations before it (its metrics.jsonl, already cut at the checkpoint) and the
        best score kept in best/, so a worse evaluation after the resume does not replace best/."""
        if not run.enabled or run.last_checkpoint is None:  # a new run: nothing before it
            return
        folder = run.run_dirs[0]
        try:
            with open(os.path.join(folder, "metrics.jsonl")) as f:
                rows = [json.loads(line) for line in f if '"kind": "eval"' in line]
            self.history = [{"iteration": r["iteration"], "global_step": r["global_step"],
                             **{k: r[k] for k in ("mean_return", "std_return", "mean_length") if k in r}} for r in rows]
            with open(os.path.join(folder, "best", "state.json")) as f:
                self.best = float(json.load(f)["eval"]["mean_return"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a new run, or no best/ yet

    def on_update(self, run, iteration: int, stats: dict) -> bool:
        cfg = self.cfg
        if iteration % cfg.eval_interval and iteration != run.num_iterations:
            return True
        context = run.context
        if self.envs is None:
            self.envs = make_eval_envs(cfg)
        freeze_normalizer(self.envs, cfg, normalizer_state(context["envs"]), "the training env")
        agent = context["agent"]
        result = run_episodes(agent, cfg, self.envs, cfg.eval_episodes, cfg.eval_deterministic, cfg.eval_seed,
                              next(agent.parameters()).device)
        step = context["cursor"].global_step
        record = {"mean_return": result["mean"], "std_return": result["std"], "mean_length": float(np.mean(result["lengths"]))}
        context["logger"].evaluation(step, iteration, record)
        self.history.append({"iteration": iteration, "global_step": step, **record})
        if result["mean"] > self.best and run.enabled:
            self.best = result["mean"]
            files, state = context["capture"](iteration)
            write_checkpoint_folder(os.path.join(run.run_dirs[0], "best"), files, {**state, "eval": record})
        run.emit("on_eval", result)  # False from any callback's on_eval stops the run after this iteration
        return cfg.stop_at_return is None or result["mean"] < cfg.stop_at_return

    def on_end(self, run) -> None:
        if self.envs is not None:
            self.envs.close()


def _model_card(cfg: PPOConfig, result: dict) -> str:
    rows = "\n".join(f"| {k} | {getattr(cfg, k)} |" for k in user_fields(type(cfg)))
    policy = "deterministic (mean / argmax)" if result["deterministic"] else "stochastic"
    from rlkit.modelcard import control_front_matter  # the YAML metadata a model hub reads

    return control_front_matter(cfg.env_id, result, variant_of(cfg).name) + f"""# PPO agent for {cfg.env_id}

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
