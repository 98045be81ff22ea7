"""N seeds of one PPO config in one process, as one batched computation.

The N agents' parameters are stacked along a leading seed dimension
(``torch.func.stack_module_state``); every forward pass, loss and backward runs once
for all seeds (the update through ``torch.func.vmap``, the rollout's forward as one
batched matmul per layer), so the per-call overhead that dominates small-network PPO
on CPU is paid once instead of N times.

It trains through rlkit.ppo's rollout (:func:`rlkit.ppo.collect_rollout`, over the N seeds'
envs side by side in one vector env), rlkit.ppo's update (:func:`rlkit.ppo.ppo_update`) and
rlkit.runtime's lifecycle (a checkpoint per seed, SIGINT/SIGTERM, the non-finite guard,
callbacks).  What it supplies: :class:`BatchedSeedPolicy` and :class:`BatchedSeedLearner`.

What stays per seed, so the seeds are independent runs: the envs and their normalisers' statistics
(``make_envs(cfg, groups=N)``: seed k's envs are rows k*E:(k+1)*E, each seed's normalisers see
only its own envs, and rlkit.envs.EnvGroup is seed k's part for its checkpoint), the
initial weights, the action-sampling and minibatch-shuffling random streams (the very streams
``rlkit.ppo.train`` with that seed uses), the advantage normalisation, the gradient-norm clip
and Adam's state (Adam is elementwise, so one Adam over stacked parameters is N Adams).  Seed
k batched therefore follows seed k of ``rlkit.ppo.train`` up to float rounding (batched matmuls
sum in another order; tested).  Each seed's checkpoint is an ordinary rlkit.ppo checkpoint:
``rlkit eval``, ``rlkit export`` and ``rlkit train --resume`` take it alone.

Refused up front (``check_batchable``): target_kl (seeds would stop at different epochs),
MultiDiscrete (and MultiBinary) actions, the Nature CNN, torch_compile.  Action masks work.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import replace

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap

from rlkit.checkpoint import CheckpointError, checkpoint_update, folder_problem, list_checkpoints, load_checkpoint
from rlkit.envs import EnvGroup, normalizer_state
from rlkit.fast import EpochRows, FusedMLPLoss, FusedPolicyStep, NumpyStaging, stacked_mlp_forward
from rlkit.logger import RunLogger
from rlkit.envs.factory import env_action_shape
from rlkit.networks import resolve_network
from rlkit.ppo import (
    Batch,
    EnvCursor,
    EpisodeLog,
    Learner,
    PPOConfig,
    Rollout,
    RolloutPolicy,
    TrainResult,
    categorical_sample_and_score,
    checkpoint_payload,
    collect_rollout,
    explained_variance,
    gae,
    log_update,
    make_agent,
    make_envs,
    minibatch_loss,
    normal_sample_and_score,
    action_mask_from_info,
    ppo_update,
    refuse,
    resolve_device,
    restore_training_state,
    restores_exactly,
    resume_reset_seed,
    use_fused_update,
)
from rlkit.runtime import Callback, Lifecycle, check_finite, default_run_name, linear_lr, open_run_folder


def check_batchable(cfg: PPOConfig, envs: gym.vector.VectorEnv) -> None:
    problems = []
    if cfg.target_kl is not None:
        problems.append("target_kl (seeds would stop their epochs at different times)")
    if cfg.torch_compile:
        problems.append("torch_compile")
    network = resolve_network(envs.single_observation_space) if cfg.network == "auto" else cfg.network
    if network != "mlp":
        problems.append(f"network={cfg.network!r}" if cfg.network == network
                        else f"network='auto', which is {network!r} for these observations")
    if cfg.eval_interval:
        problems.append("eval_interval (evaluate the seeds' checkpoints with rlkit eval)")
    if isinstance(envs.single_action_space, gym.spaces.MultiDiscrete):
        flattened = env_action_shape(envs)
        problems.append("MultiDiscrete actions" if flattened is None or flattened[0] == "MultiDiscrete"
                        else "MultiBinary actions (the agent takes them as MultiDiscrete)")
    if "trackio" in cfg.track:
        problems.append("track=['trackio'] (trackio keeps one open run per process; wandb and mlflow work)")
    refuse("batched multi-seed training", problems, "run the seeds as separate processes (rlkit bench without --batched)")


class BatchedSeedPolicy(RolloutPolicy):
    """Acts for all seeds at once: one stacked forward, then each seed samples from its own generator."""

    def __init__(self, template, params: dict, buffers: dict, generators: list[torch.Generator], per_seed: int,
                 fused: bool = False):
        self.template, self.params, self.buffers, self.generators, self.per_seed = template, params, buffers, generators, per_seed
        self.n = len(generators)
        # update_backend auto / fused: all seeds' actors and critics as one chain of batched matmuls
        self.fused = FusedPolicyStep(template, params) if fused else None

    def begin(self) -> None:
        if self.fused is not None:
            self.fused.refresh()  # the weights the last update left

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """(policy out [n, E, A], value [n, E]) of observations [n, E, obs_dim]."""
        return stacked_mlp_forward(self.template, self.params, obs) if self.fused is None else self.fused.forward(obs)

    def seed_view(self, x: Tensor) -> Tensor:  # [n * E, ...] -> [n, E, ...]
        return x.reshape(self.n, self.per_seed, *x.shape[1:])

    def act(self, obs: Tensor, action_mask: Tensor | None, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        policy_out, value = self.forward(self.seed_view(obs))
        mask = None if action_mask is None else self.seed_view(action_mask)
        if self.template.continuous:
            # the draw rlkit.ppo.train makes from torch's global generator, here from the seed's own
            noise = torch.stack([torch.randn(policy_out.shape[1:], generator=g, device=obs.device) for g in self.generators])
            if self.fused is not None and not deterministic:
                action, log_prob = self.fused.normal_sample(policy_out, noise)
            else:
                action = policy_out if deterministic else policy_out + self.params["actor_logstd"].exp() * noise
                _, log_prob, _ = normal_sample_and_score(policy_out, self.params["actor_logstd"], action)
        else:
            logits = policy_out if mask is None else policy_out.masked_fill(~mask, torch.finfo(policy_out.dtype).min)
            probs = torch.log_softmax(logits, dim=-1).exp()
            action = logits.argmax(-1) if deterministic else torch.stack(
                [torch.multinomial(probs[i], 1, generator=g).squeeze(-1) for i, g in enumerate(self.generators)])
            _, log_prob, _ = categorical_sample_and_score(policy_out, None, action, action_mask=mask)
        return action.reshape(-1, *action.shape[2:]), log_prob.reshape(-1), value.reshape(-1)

    def final_values(self, final_obs: Tensor, env_index: np.ndarray) -> Tensor:
        values = torch.empty(len(env_index), device=final_obs.device)
        seeds = env_index // self.per_seed
        for i in np.unique(seeds):
            rows = torch.as_tensor(np.flatnonzero(seeds == i), device=final_obs.device)
            p, b = ({k: v[i] for k, v in d.items()} for d in (self.params, self.buffers))
            values[rows] = functional_call(self.template, (p, b), (final_obs[rows],))[1]
        return values

    def bootstrap_value(self, obs: Tensor) -> Tensor:
        return self.forward(self.seed_view(obs))[1].reshape(-1)


class BatchedSeedLearner(Learner):
    """Each seed's own shuffled minibatches, the loss of all seeds in one vmap, each seed's gradient clipped alone."""

    def __init__(self, template, params: dict, buffers: dict, optimizer, cfg: PPOConfig, generators: list[torch.Generator]):
        self.template, self.params, self.buffers, self.optimizer, self.cfg = template, params, buffers, optimizer, cfg
        self.generators = generators
        self.seed_index = torch.arange(len(generators), device=next(iter(params.values())).device).unsqueeze(1)

        def seed_loss(p, b, obs, actions, masks, *targets):
            policy_out, value = functional_call(template, (p, b), (obs,))
            if template.continuous:
                _, log_prob, entropy = normal_sample_and_score(policy_out, p["actor_logstd"], actions)
            else:
                _, log_prob, entropy = categorical_sample_and_score(policy_out, None, actions, action_mask=masks)
            loss, pg_loss, v_loss, entropy_loss, stats = minibatch_loss(
                log_prob, entropy, value, *targets, cfg.norm_adv, cfg.clip_coef, cfg.clip_vloss, cfg.ent_coef, cfg.vf_coef)
            return loss, (pg_loss, v_loss, entropy_loss, stats["approx_kl"], stats["clipfrac"], stats["max_ratio_error"])

        self.batched_loss = vmap(seed_loss)
        self.unmasked_loss = vmap(seed_loss, in_dims=(0, 0, 0, 0, None, 0, 0, 0, 0))
        # update_backend: all seeds' gradients by hand, as one chain of batched matmuls (rlkit.fast.FusedMLPLoss)
        self.fused = FusedMLPLoss(template, params, cfg) if use_fused_update(cfg, template) else None
        self.rows = EpochRows()
        self.backend = "fused" if self.fused else "autograd"

    def minibatches(self, batch: Batch) -> list:
        return self.index_minibatches(batch) if self.fused is None else self.fused_minibatches(batch)

    def index_minibatches(self, batch: Batch) -> list[tuple[Tensor, Tensor]]:
        size = batch.log_probs.shape[1]
        order = torch.stack([torch.randperm(size, generator=g) for g in self.generators]).to(self.seed_index.device)
        return [(self.seed_index, order[:, s : s + self.cfg.minibatch_size]) for s in range(0, size, self.cfg.minibatch_size)]

    def loss(self, batch: Batch, mb: tuple[Tensor, Tensor]):
        masks = None if batch.action_masks is None else batch.action_masks[mb]
        loss_fn = self.unmasked_loss if masks is None else self.batched_loss
        losses, (pg_loss, v_loss, entropy, approx_kl, clipfrac, ratio_error) = loss_fn(
            self.params, self.buffers, batch.obs[mb], batch.actions[mb], masks, batch.log_probs[mb], batch.advantages[mb],
            batch.returns[mb], batch.values[mb])
        # seeds share no parameters: the sum's gradient is each seed's own
        return losses.sum(), pg_loss, v_loss, entropy, {"approx_kl": approx_kl, "clipfrac": clipfrac,
                                                          "max_ratio_error": ratio_error}

    def fused_minibatches(self, batch: Batch) -> list[tuple[int, int]]:
        """The same minibatches, gathered once per epoch; each is then a slice of rows (rlkit.fast.EpochRows)."""
        return self.rows.gather(batch, [order for _, order in self.index_minibatches(batch)], self.seed_index)

    def loss_and_gradients(self, batch: Batch, mb):
        if self.fused is None:
            return super().loss_and_gradients(batch, mb)
        return self.fused(*self.rows.minibatch(*mb, batch.action_masks))

    def clip_gradients(self, max_norm: float) -> Tensor:
        return clip_per_seed(self.params, max_norm)  # [core 11], per seed


def per_seed_batch(rollout: Rollout, advantages: Tensor, returns: Tensor, n: int) -> Batch:
    """[T, n * E, ...] -> [n, T * E, ...]: each seed's rows in rlkit.ppo.train's time-major order."""

    def per_seed(x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], n, -1, *x.shape[2:]).transpose(0, 1)
        return x.reshape(n, -1, *x.shape[3:])

    masks = None if rollout.action_masks is None else per_seed(rollout.action_masks)
    return Batch(per_seed(rollout.obs), per_seed(rollout.actions), per_seed(rollout.log_probs), per_seed(advantages),
                 per_seed(returns), per_seed(rollout.values), masks)


def seed_optimizer_state(optimizer: torch.optim.Optimizer, i: int) -> tuple[dict[str, Tensor], list[dict]]:
    """Seed i's slice of the stacked Adam state, as per-parameter state rlkit.ppo.train can resume from."""
    state = optimizer.state_dict()
    tensors = {f"{pid}.{name}": (value if name == "step" else value[i]).detach().cpu().contiguous()
               for pid, param_state in state["state"].items() for name, value in param_state.items()}
    return tensors, state["param_groups"]


def load_stacked_optimizer_state(optimizer: torch.optim.Optimizer, saved: list[tuple[dict, dict]]) -> None:
    """Each seed's per-parameter Adam state, stacked back along the seed dimension."""
    first_tensors, first_state = saved[0]
    state: dict[int, dict[str, Tensor]] = {}
    for key in first_tensors["optimizer"]:
        pid, name = key.split(".", 1)
        values = [tensors["optimizer"][key] for tensors, _ in saved]
        state.setdefault(int(pid), {})[name] = values[0].clone() if name == "step" else torch.stack(values)
    optimizer.load_state_dict({"state": state, "param_groups": first_state["optimizer_param_groups"]})


def open_seed_folders(cfg: PPOConfig, seeds: list[int], run_dirs: list[str] | None, resume: bool, log: bool):
    """(each seed's run folder, claimed and locked; the seeds' newest checkpoints when resuming, else None).

    Explicit folders without a checkpoint (resume) start fresh, their files kept aside."""
    given = run_dirs is not None
    run_dirs = run_dirs or [os.path.join(cfg.run_dir, default_run_name(cfg.env_id, cfg.exp_name, s)) for s in seeds]
    found = _saved_checkpoints(run_dirs) if resume else None
    saved, checkpoints = found if found is not None else (None, None)
    folders = [open_run_folder(d, checkpoints[i], saved[i][1], enabled=log) if saved is not None else
               open_run_folder(d, enabled=log, if_exists="abandon" if resume else "refuse" if given else "number")
               for i, d in enumerate(run_dirs)]
    return folders, saved


def train_seeds(cfg: PPOConfig, seeds: list[int], run_dirs: list[str] | None = None, progress: bool = True,
                log: bool = True, resume: bool = False, callbacks: list[Callback] = ()) -> list[TrainResult]:
    """Train ``cfg`` once per seed, all seeds batched; one TrainResult per seed, in order.

    ``run_dirs[i]`` is seed i's run folder (default ``<run_dir>/<env>__<exp_name>__<seed>__<time>``).
    ``resume``: continue from the seeds' newest checkpoints there (all at the same update).
    """
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and non-empty, got {seeds}")
    cfg = replace(cfg, seed=seeds[0]).validate()
    n = len(seeds)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    torch.backends.cudnn.deterministic = cfg.torch_deterministic  # what seed_everything sets (seeds: seed_agents)
    configs = [replace(cfg, seed=s).validate() for s in seeds]
    envs = make_envs(cfg, groups=n)  # seed k's envs are rows k*E:(k+1)*E, with normalisers of their own
    try:
        check_batchable(cfg, envs)  # before any run folder is claimed: a refusal leaves nothing behind
        folders, saved = open_seed_folders(cfg, seeds, run_dirs, resume, log)
    except BaseException:
        envs.close()
        raise
    run_dirs = [f.path for f in folders]
    seed_envs = [EnvGroup(envs, i, n) for i in range(n)]
    agents, sample_generators = seed_agents(cfg, seeds, envs, device)
    shuffle_generators = [torch.Generator().manual_seed(s) for s in seeds]
    cursor = reset_seed_envs(envs, seeds, cfg.num_envs, device)
    cursors = [EnvCursor(cursor.obs[g.rows], None if cursor.mask is None else cursor.mask[g.rows]) for g in seed_envs]
    episodes = [EpisodeLog() for _ in seeds]
    start_iteration, elapsed_before, notes = 1, 0.0, []
    if saved is not None:
        for i, (tensors, state) in enumerate(saved):
            notes.append(restore_training_state(state, tensors, agents[i], None, {"shuffle": shuffle_generators[i]},
                                                seed_envs[i], cursors[i], RolloutPolicy(agents[i]), configs[i], device,
                                                reset_envs=False))
            sample_generators[i].set_state(tensors["rng"]["torch"])
            episodes[i] = EpisodeLog.from_state(state["episodes"])
        exact = {restores_exactly(state, g) for (_, state), g in zip(saved, seed_envs)}
        if exact == {False}:  # all seeds' envs restart from the reset each seed's run alone would make
            fresh = reset_seed_envs(envs, [resume_reset_seed(c, state) for c, (_, state) in zip(configs, saved)],
                                    cfg.num_envs, device)
            for c, g in zip(cursors, seed_envs):
                c.obs, c.mask = fresh.obs[g.rows], None if fresh.mask is None else fresh.mask[g.rows]
        elif len(exact) > 1:
            raise CheckpointError("some seeds' env state was saved exactly and some not; resume them separately")
        start_iteration, elapsed_before = saved[0][1]["iteration"] + 1, saved[0][1]["wall_time"]
        same_length = all(state["config"].get("total_timesteps") == cfg.total_timesteps for _, state in saved)
        if any(state.get("stopped_by_callback") for _, state in saved) and same_length:
            start_iteration = cfg.num_iterations + 1  # it ended where a callback stopped it, as rlkit.ppo.train's
            notes.append(f"the seeds' run ended at update {saved[0][1]['iteration']}, stopped by a callback; nothing "
                         "to train: give a larger total_timesteps to continue it")
        if len({c.mask is None for c in cursors}) > 1:
            raise CheckpointError("some seeds' checkpoints hold an action mask and some not; resume them separately")
        cursor = EnvCursor(torch.cat([c.obs for c in cursors]), None if cursors[0].mask is None else
                           torch.cat([c.mask for c in cursors]), cursors[0].global_step)
    params, buffers = stack_module_state(agents)  # {name: [n, ...]} leaves with requires_grad
    template = copy.deepcopy(agents[0]).to("meta")
    optimizer = torch.optim.Adam(list(params.values()), lr=cfg.learning_rate, eps=1e-5, fused=True)  # [core 3], as rlkit.ppo
    if saved is not None:
        load_stacked_optimizer_state(optimizer, saved)
    rollout = Rollout.allocate(cfg.num_steps, envs.num_envs, envs.single_observation_space.shape, template, device,
                               cursor.mask is not None)
    staging = NumpyStaging(cfg.num_steps, envs.num_envs)
    policy = BatchedSeedPolicy(template, params, buffers, sample_generators, cfg.num_envs, use_fused_update(cfg, template))
    learner = BatchedSeedLearner(template, params, buffers, optimizer, cfg, shuffle_generators)

    loggers = [RunLogger(d, {**c.to_dict(), "batched_seeds": seeds}, enabled=log, progress=progress and i == 0,
                         total=cfg.num_iterations * cfg.batch_size * n,
                         resume_metrics_at=saved[i][1]["metrics_offset"] if saved is not None else None)
               for i, (d, c) in enumerate(zip(run_dirs, configs))]
    loggers[0].bar.set_description(f"{n} seeds")
    loggers[0].advance(cursor.global_step * n, cursor.global_step * n, 0.0)
    for note in [text for f in folders for text in f.notes] + notes[:1]:
        loggers[0].note(note)
    lifecycle = Lifecycle(run_dirs, cfg.num_iterations, cfg.checkpoint_interval, cfg.keep_checkpoints, enabled=log,
                          callbacks=list(callbacks), folders=folders)
    start_time = time.time() - elapsed_before
    per_seed_stats: list[dict] = [{} for _ in seeds]

    def record(infos: dict, global_step: int) -> None:
        for i in range(n):
            episodes[i].record(infos, global_step, loggers[i], seed_envs[i].rows)

    def iterate(iteration: int) -> dict[str, float]:
        if cfg.anneal_lr:
            linear_lr(optimizer, iteration, cfg.num_iterations, cfg.learning_rate)  # [core 4]
        next_value = collect_rollout(envs, policy, rollout, staging, cursor, cfg, record)
        lifecycle.emit("on_rollout")
        advantages, returns = gae(rollout.rewards, rollout.values, rollout.dones, next_value, cfg.gamma, cfg.gae_lambda)
        batch = per_seed_batch(rollout, advantages, returns, n)
        stats = ppo_update(batch, learner, cfg)
        for name, value in params.items():
            check_finite(f"parameter {name}", value)
        elapsed = time.time() - start_time
        for i in range(n):
            per_seed_stats[i] = {k: v if isinstance(v, int) else float(v[i]) for k, v in stats.items()}
            per_seed_stats[i].update(explained_variance=explained_variance(batch.values[i], batch.returns[i]),
                                     learning_rate=optimizer.param_groups[0]["lr"], SPS=cursor.global_step / elapsed,
                                     SPS_all_seeds=cursor.global_step * n / elapsed)
            log_update(loggers[i], cfg, iteration, cursor.global_step, per_seed_stats[i], steps=0)
        loggers[0].advance(cursor.global_step * n, cfg.batch_size * n, cursor.global_step * n / elapsed)
        return per_seed_stats[0]

    def capture(iteration: int) -> list[tuple[dict, dict]]:
        out = []
        for i in range(n):
            model = {k: v[i].detach() for k, v in {**params, **buffers}.items()}
            sl = seed_envs[i].rows
            seed_cursor = EnvCursor(cursor.obs[sl], None if cursor.mask is None else cursor.mask[sl], cursor.global_step)
            out.append(checkpoint_payload(configs[i], seed_envs[i], model, seed_optimizer_state(optimizer, i),
                                          {"shuffle": shuffle_generators[i]}, seed_cursor, {}, episodes[i], loggers[i],
                                          iteration, time.time() - start_time, torch_rng=sample_generators[i].get_state(),
                                          extra={"variant": "ppo", "batched_seeds": seeds}))
        return out

    # what rlkit.ppo.train's callbacks see, per seed where it differs: the seeds' parameters are stacked (params,
    # [n, ...] each) and become the seeds' agents at the end; envs is the one grouped vector env of all seeds
    lifecycle.context.update(envs=envs, seed_envs=seed_envs, logger=loggers[0], loggers=loggers, config=cfg,
                             configs=configs, cursor=cursor, capture=capture, params=params, seeds=seeds)
    try:
        lifecycle.run(start_iteration, iterate, capture, where=lambda: f" (global step {cursor.global_step}, seeds {seeds})")
    finally:
        wall_time = time.time() - start_time
        normalizers = [normalizer_state(e) for e in seed_envs]
        envs.close()
        for logger in loggers:
            logger.close(pending_summary=lifecycle.interrupted is None)  # trackers stay open for the summary

    results = []
    for i, (agent, c) in enumerate(zip(agents, configs)):
        with torch.no_grad():
            agent.load_state_dict({k: v[i].detach().clone() for k, v in {**params, **buffers}.items()})
        last = lifecycle.last_checkpoint
        results.append(TrainResult(loggers[i].run_dir, episodes[i].returns, episodes[i].lengths, episodes[i].steps,
                                   per_seed_stats[i], cursor.global_step, wall_time, agent, normalizers[i],
                                   lifecycle.interrupted, last and os.path.join(run_dirs[i], "checkpoints", os.path.basename(last)),
                                   updates_run=lifecycle.updates_run, update_backend=learner.backend))
        if lifecycle.interrupted is None:
            loggers[i].summary({**results[-1].summary(c), "batched_seeds": seeds})
    for folder in folders:
        folder.release()
    return results


def reset_seed_envs(envs: gym.vector.VectorEnv, seeds: list[int], per_seed: int, device: torch.device) -> EnvCursor:
    """Reset all seeds' envs at once, seed k's E sub-envs seeded seeds[k] + 0..E-1: each seed's envs
    start where ``envs.reset(seed=seeds[k])`` of that seed's run alone starts them."""
    obs, info = envs.reset(seed=[seed + j for seed in seeds for j in range(per_seed)])
    return EnvCursor(torch.as_tensor(obs, dtype=torch.float32, device=device),
                     action_mask_from_info(info, device, envs.single_action_space))


def seed_agents(cfg: PPOConfig, seeds: list[int], envs: gym.vector.VectorEnv, device: torch.device
                ) -> tuple[list[torch.nn.Module], list[torch.Generator]]:
    """Each seed's agent with rlkit.ppo.train's initial weights for that seed, and the action-sampling
    stream that run continues with (torch's global generator, right after the weights are drawn)."""
    agents, generators = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        agents.append(make_agent(cfg, envs.single_observation_space, envs.single_action_space).to(device))
        stream = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()
        generators.append(torch.Generator(device=device).set_state(stream))
    return agents, generators


def _saved_checkpoints(run_dirs: list[str]) -> tuple[list[tuple[dict, dict]], list[str]] | None:
    """(every seed's (tensors, state), their checkpoint folders) at the newest update all seeds have a
    checkpoint of; None when no seed has one."""
    found = [list_checkpoints(d) for d in run_dirs]
    if not any(found):
        return None
    if not all(found):
        missing = [d for d, f in zip(run_dirs, found) if not f]
        raise CheckpointError(f"some seeds have checkpoints and these have none: {missing}; delete their folders to "
                              "start them fresh, or run them separately")
    # the newest update every seed has: a kill while the seeds' checkpoints were being written leaves some one
    # checkpoint ahead, and those resume from the common one (their newer checkpoint moves aside, a new lineage)
    by_update = [{checkpoint_update(os.path.basename(path)): path for path in paths if folder_problem(path) is None}
                 for paths in found]  # complete ones only (a kill mid-write leaves a folder without state.json)
    common = set.intersection(*(set(u) for u in by_update))
    if not common:
        newest = sorted({max(u) for u in by_update})
        raise CheckpointError(f"the seeds have no checkpoint at a common update (their newest: {newest}); "
                              "resume them separately with rlkit train --resume")
    update = max(common)
    saved = [load_checkpoint(u[update]) for u in by_update]
    if any(state["iteration"] != update for _, state in saved):
        raise CheckpointError(f"the seeds' checkpoints at update {update} do not all say update {update}")
    return saved, [u[update] for u in by_update]


def clip_per_seed(params: dict[str, Tensor], max_norm: float) -> Tensor:
    """clip_grad_norm_ applied to each seed's slice of the stacked gradients; returns the norms [n]."""
    grads = [p.grad for p in params.values() if p.grad is not None]
    norms = torch.stack([g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # torch.nn.utils.clip_grad_norm_'s formula
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))
    return norms
