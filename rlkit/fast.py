"""Speed-only code: the same math as the plain version, faster on small networks.

A reader of the algorithm may skip this file.  Each piece says why it exists and which
benchmark justifies it; each has a plain equivalent that a test holds it against.

- :func:`run_layers`: nn.Sequential without hook dispatch (benchmarks/ppo_profile.py).
- :func:`flatten_parameters`: one flat tensor for all MLP parameters, so gradient clipping and
  Adam are one op each (benchmarks/ppo_profile.py, benchmarks/sps_vs_revision.py).
- :func:`clip_grad_norm`: the global-norm clip of one flat parameter without torch's per-call
  grouping (benchmarks/ppo_profile.py).
- :func:`compiled`, :func:`compiled_policy_step`: torch.compile wrappers (config ``torch_compile``;
  benchmarks/sps_vs_sb3.py).
- :func:`stacked_mlp_forward`: the batched-seed rollout's forward as one batched matmul per layer
  instead of vmap (benchmarks/multiseed.py).
- :class:`FusedPolicyStep`: the MLP agent's rollout step with actor and critic stacked
  (config ``update_backend``; benchmarks/policy_step.py).
- :class:`NumpyStaging`: the rollout's rewards and dones written into numpy per step and moved
  to torch once per rollout (benchmarks/sps_vs_revision.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor


def run_layers(layers: nn.Sequential, x: Tensor) -> Tensor:
    """``layers(x)``, calling each layer's ``forward`` directly.

    Why: nn.Module.__call__'s hook handling costs ~2-3 µs a layer, as much as a 64-wide layer's
    math, and the MLP runs 12 layers per env step and per minibatch.  Module hooks registered on
    these layers are therefore not run (hooks on the agent itself are).
    """
    for layer in layers:
        x = layer.forward(x)
    return x


def flatten_parameters(module: nn.Module) -> nn.Parameter:
    """Make every parameter of ``module`` a view into one flat tensor, and every gradient a view
    into one flat gradient; returns the flat tensor as a Parameter whose ``.grad`` is that gradient.

    Why: at PPO's MuJoCo sizes (64-sample minibatches, 64-wide MLPs) a gradient step costs per-op
    dispatch, not arithmetic.  Over one tensor the norm clip and Adam are one op each instead of
    one per weight and bias (benchmarks/ppo_profile.py).  Adam's math is elementwise, so it is the
    same; the global norm is summed in another order (last-bit differences).  The module's
    state_dict is unchanged.  Gradients must be zeroed in place (``zero_grad(set_to_none=False)``):
    a fresh ``.grad`` tensor would no longer be a view of the flat one.
    """
    parameters = list(module.parameters())
    if not all(p.is_contiguous() for p in parameters):
        raise ValueError("flatten_parameters needs contiguous parameters (not channels_last convolutions)")
    flat = torch.cat([p.detach().reshape(-1) for p in parameters])
    flat_grad = torch.zeros_like(flat)
    offset = 0
    for p in parameters:
        n = p.numel()
        p.data = flat[offset:offset + n].view_as(p)
        p.grad = flat_grad[offset:offset + n].view_as(p)
        offset += n
    flat_parameter = nn.Parameter(flat)  # shares flat's memory, so stepping it moves the module's views
    flat_parameter.grad = flat_grad
    return flat_parameter


def clip_grad_norm(parameters: list[Tensor], max_norm: float) -> Tensor:
    """``nn.utils.clip_grad_norm_(parameters, max_norm)``: for one (flat) parameter its arithmetic written out.

    Why: torch's version groups tensors by device and dtype and checks its options every call, ~35 µs
    against ~14 µs for the four ops it runs on one tensor, 320 times per update.  The same ops in the
    same order (the norm of the one-element stack of norms included), so bitwise the same numbers
    (tests/test_fused_update.py).
    """
    if len(parameters) != 1 or parameters[0].grad is None:
        return nn.utils.clip_grad_norm_(parameters, max_norm)
    grad = parameters[0].grad
    total_norm = torch.linalg.vector_norm(torch.linalg.vector_norm(grad, 2.0).unsqueeze(0), 2.0)
    grad.mul_(torch.clamp(max_norm / (total_norm + 1e-6), max=1.0))
    return total_norm


_COMPILED: dict[Callable, Callable] = {}


def compiled(fn: Callable) -> Callable:
    """``fn`` through torch.compile, compiled once per function (config ``torch_compile``): for the
    minibatch loss the forward, the loss and their backward become a few fused kernels."""
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn]


def compiled_policy_step(agent: nn.Module) -> Callable:
    """agent.get_action_and_value through torch.compile, for the rollout (config ``torch_compile``).

    ``fallback_random``: the compiled step draws its samples from torch's generator as eager
    code does, so a seed gives the same actions; log-probs may differ in the last bit.
    """
    return torch.compile(agent.get_action_and_value, dynamic=False, options={"fallback_random": True})


def stacked_mlp_forward(template: nn.Module, params: dict[str, Tensor], obs: Tensor) -> tuple[Tensor, Tensor]:
    """The MLP agent's forward for all seeds at once: obs [n, E, obs_dim] -> (policy out [n, E, A], value [n, E]).

    Each Linear is one batched matmul over the seeds' stacked weights (torch.baddbmm): the math of
    ``vmap(functional_call(template))`` without vmap's per-call Python overhead, which the rollout
    would pay at every env step.  The update, which differentiates, keeps vmap.
    """

    def linear(name: str, x: Tensor) -> Tensor:
        return torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), x, params[f"{name}.weight"].transpose(1, 2))

    def run(prefix: str, layers: nn.Sequential, x: Tensor) -> Tensor:
        for index, layer in layers.named_children():
            x = linear(f"{prefix}.{index}", x) if isinstance(layer, nn.Linear) else layer.forward(x)  # else: activation
        return x

    if template.shared:
        hidden = run("torso", template.torso, obs)
        return linear("actor_head", hidden), linear("critic_head", hidden).squeeze(-1)
    return run("actor", template.actor, obs), run("critic", template.critic, obs).squeeze(-1)


class FusedPolicyStep:
    """rlkit.ppo.Agent's rollout step (sample an action, score it, value the state) in ~half the ops.

    Why: at one env a policy step is ~25 small ops, each a dispatch costing more than its math; with
    the actor's and critic's layers stacked side by side each layer pair is one batched matmul, and
    the log-prob of a Normal sample is read off its noise (benchmarks/policy_step.py).  The draws
    from torch's generator are the plain step's (``randn_like`` of the mean, ``multinomial`` of the
    probabilities), so a seed samples the same noise; actions, log-probs and values agree with
    ``agent.get_action_and_value`` to float32 rounding (tests/test_fused_update.py).

    ``params``: the agent's parameters (default), or all seeds' stacked along a leading dimension
    (batched seeds: :meth:`forward` and :meth:`normal_sample` then work on [seeds, envs, ...]).  The
    stacked weights are copies: :meth:`refresh` re-reads them after every update (RolloutPolicy.begin).
    """

    def __init__(self, agent: nn.Module, params: dict[str, Tensor] | None = None):
        from rlkit.ppo import categorical_sample_and_score  # rlkit.ppo imports this module

        self.categorical_sample_and_score = categorical_sample_and_score
        self.agent, self.seeds = agent, params is not None
        self.params = params if params is not None else dict(agent.named_parameters())
        self.refresh()

    def refresh(self) -> None:
        agent = self.agent
        with torch.no_grad():
            p = {k: v.detach() if self.seeds else v.detach().unsqueeze(0) for k, v in self.params.items()}  # [n, ...]
            weight_t = lambda name: p[f"{name}.weight"].transpose(1, 2)  # noqa: E731  [n, in, out]
            bias_row = lambda name: p[f"{name}.bias"].unsqueeze(1)  # noqa: E731  [n, 1, out]
            if agent.shared:  # one torso; the two heads as one [A + 1]-wide layer
                self.layers = [(weight_t(f"torso.{i}").contiguous(), bias_row(f"torso.{i}"))
                               for i in _linear_indices(agent.torso)]
                self.head = (torch.cat([weight_t("actor_head"), weight_t("critic_head")], 2).contiguous(),
                             torch.cat([bias_row("actor_head"), bias_row("critic_head")], 2))
            else:  # actor and critic side by side, [2n, in, out] per layer; the critic's 1-wide head padded to A
                actor = [f"actor.{i}" for i in _linear_indices(agent.actor)]
                critic = [f"critic.{i}" for i in _linear_indices(agent.critic)]
                self.layers = [(torch.cat([weight_t(a), weight_t(c)]).contiguous(), torch.cat([bias_row(a), bias_row(c)]))
                               for a, c in zip(actor[:-1], critic[:-1])]
                a, c = weight_t(actor[-1]), weight_t(critic[-1])
                weight = torch.cat([a, torch.zeros_like(a)])
                weight[len(a):, :, :1] = c
                a_bias = bias_row(actor[-1])
                bias = torch.cat([a_bias, torch.zeros_like(a_bias)])
                bias[len(a):, :, :1] = bias_row(critic[-1])
                self.head = (weight, bias)
            if agent.continuous:
                log_std = p["actor_logstd"]  # [n, 1, A]
                self.std = log_std.exp()
                # log N(a; mean, std) = -0.5 z^2 - log std - 0.5 log(2 pi), z the noise, summed over dims
                self.log_prob_offset = -(log_std + _HALF_LOG_2PI).sum(-1)  # [n, 1]

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """obs [n, E, obs_dim] -> (policy out [n, E, A], value [n, E])."""
        if self.agent.shared:
            x = obs
            for weight, bias in self.layers:
                x = torch.tanh(torch.baddbmm(bias, x, weight))
            out = torch.baddbmm(self.head[1], x, self.head[0])
            return out[..., :-1], out[..., -1]
        n = obs.shape[0]
        x = obs.expand(2, *obs.shape).reshape(2 * n, *obs.shape[1:])  # a view for one seed
        for weight, bias in self.layers:
            x = torch.tanh(torch.baddbmm(bias, x, weight))
        out = torch.baddbmm(self.head[1], x, self.head[0])
        return out[:n], out[n:, :, 0]

    def normal_sample(self, policy_out: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """(action, log-prob) of mean + std * noise, all [n, E, ...]."""
        action = policy_out + self.std * noise
        return action, torch.sub(self.log_prob_offset, (noise * noise).sum(-1), alpha=0.5)

    def __call__(self, obs: Tensor, action_mask: Tensor | None = None) -> tuple[Tensor, Tensor, None, Tensor]:
        """(action, log-prob, None, value), as ``agent.get_action_and_value(obs)`` returns them (no entropy)."""
        policy_out, value = self.forward(obs.unsqueeze(0))
        if not self.agent.continuous:
            action, log_prob, _ = self.categorical_sample_and_score(policy_out[0], None, None, False, action_mask)
            return action, log_prob, None, value[0]
        action, log_prob = self.normal_sample(policy_out, torch.randn(policy_out.shape[1:], device=obs.device))
        return action[0], log_prob[0], None, value[0]


class NumpyStaging:
    """Per-step rewards and dones of a rollout, kept in numpy until the rollout ends.

    Why: they arrive from the env as numpy, and per step a torch op costs several times a numpy
    one at these sizes; they move to the rollout's tensors once, with :meth:`to`.
    """

    def __init__(self, num_steps: int, num_envs: int):
        self.rewards = np.zeros((num_steps, num_envs), dtype=np.float32)
        self.dones = np.zeros((num_steps, num_envs), dtype=np.float32)

    def to(self, rewards: Tensor, dones: Tensor) -> None:
        rewards.copy_(torch.from_numpy(self.rewards))
        dones.copy_(torch.from_numpy(self.dones))


# ---------------------------------------------------------------------------------
# The fused minibatch update (config ``update_backend``; benchmarks/fused_update.py)
# ---------------------------------------------------------------------------------
#
# Why: a PPO gradient step at the MuJoCo sizes (64 samples, 64-wide MLPs) is ~240 aten ops
# dispatched one by one plus autograd's graph, and it runs 320 times per 2,048 env steps.
# Written by hand, the forward, the loss and the backward of both networks are ~80 ops and no
# graph: the same math as rlkit.ppo.minibatch_loss + loss.backward(), summed in another order
# (tests/test_fused_update.py holds the two together at float32 rounding).

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)  # as rlkit.ppo.normal_sample_and_score


class _Layer:
    """One Linear of the agent for the fused update: its parameters, the transposed weight the forward
    multiplies by, and the gradients it writes.  Weights [out, in], or [seeds, out, in] when stacked."""

    def __init__(self, weight: Tensor, bias: Tensor):
        self.stacked = weight.dim() == 3
        self.weight, self.bias = weight, bias
        # views of the parameters: Adam updates them in place, so they stay current
        self.weight_t = weight.transpose(-1, -2)
        self.bias_row = bias.unsqueeze(1) if self.stacked else bias
        for p in (weight, bias):
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias_row, x, self.weight_t) if self.stacked else torch.addmm(self.bias_row, x, self.weight_t)

    def backward(self, grad_out: Tensor, x: Tensor, input_grad: bool = True) -> Tensor | None:
        """Writes d(weight) = grad_out^T x and d(bias) = sum of grad_out; returns d(x) when asked."""
        if self.stacked:
            torch.bmm(grad_out.transpose(1, 2), x, out=self.weight.grad)
            torch.sum(grad_out, 1, out=self.bias.grad)
            return torch.bmm(grad_out, self.weight) if input_grad else None
        torch.mm(grad_out.t(), x, out=self.weight.grad)
        torch.sum(grad_out, 0, out=self.bias.grad)
        return torch.mm(grad_out, self.weight) if input_grad else None


def _tanh_layers(x: Tensor, layers: list[_Layer]) -> list[Tensor]:
    """[x, tanh(layer 1), tanh(layer 2), ...]: the inputs each backward needs."""
    activations = [x]
    for layer in layers:
        activations.append(torch.tanh(layer.forward(activations[-1])))
    return activations


def _tanh_layers_backward(grad: Tensor, activations: list[Tensor], layers: list[_Layer]) -> None:
    for i in range(len(layers) - 1, -1, -1):
        grad = layers[i].backward(torch.ops.aten.tanh_backward(grad, activations[i + 1]), activations[i], input_grad=i > 0)


class FusedMLPLoss:
    """rlkit.ppo.Agent's minibatch loss with its gradient written by hand into each parameter's ``.grad``.

    ``params`` maps the agent's parameter names to tensors: the agent's own (one seed) or stacked
    along a leading seed dimension (batched seeds, where every loss and statistic is per seed).
    Box actions (Normal, state-independent log-std) and Discrete actions (with or without masks);
    :func:`fused_update_support` says which agents qualify.  The math is rlkit.ppo.minibatch_loss's
    [core 7-10]; only where a gradient flows is written out here.
    """

    def __init__(self, agent: nn.Module, params: dict[str, Tensor], cfg):
        self.continuous = agent.continuous
        self.norm_adv, self.clip_coef, self.clip_vloss = cfg.norm_adv, cfg.clip_coef, cfg.clip_vloss
        self.ent_coef, self.vf_coef = cfg.ent_coef, cfg.vf_coef
        layer = lambda name: _Layer(params[f"{name}.weight"], params[f"{name}.bias"])  # noqa: E731
        if agent.shared:
            self.torso, self.actor, self.critic = [layer(f"torso.{i}") for i in _linear_indices(agent.torso)], [], []
            self.actor_head, self.critic_head = layer("actor_head"), layer("critic_head")
        else:
            actor, critic = _linear_indices(agent.actor), _linear_indices(agent.critic)
            self.torso = []
            self.actor, self.actor_head = [layer(f"actor.{i}") for i in actor[:-1]], layer(f"actor.{actor[-1]}")
            self.critic, self.critic_head = [layer(f"critic.{i}") for i in critic[:-1]], layer(f"critic.{critic[-1]}")
        self.log_std = params["actor_logstd"] if self.continuous else None
        if self.continuous and self.log_std.grad is None:
            self.log_std.grad = torch.zeros_like(self.log_std)
        layers = [*self.torso, *self.actor, *self.critic, self.actor_head, self.critic_head]
        covered = {id(t) for lay in layers for t in (lay.weight, lay.bias)}
        if self.continuous:
            covered.add(id(self.log_std))
        if covered != {id(p) for p in params.values()}:
            raise ValueError("the fused update does not cover every parameter of this agent")

    def __call__(self, obs: Tensor, actions: Tensor, action_mask: Tensor | None, old_log_prob: Tensor,
                 advantages: Tensor, returns: Tensor, old_value: Tensor):
        """(loss, policy loss, value loss, mean entropy, stats) as rlkit.ppo.minibatch_loss returns them, per
        seed when stacked (the loss summed over seeds); the loss's gradient is in every parameter's .grad."""
        with torch.no_grad():  # the parameters require gradients, but no graph is wanted
            return self._loss_and_gradients(obs, actions, action_mask, old_log_prob, advantages, returns, old_value)

    def _loss_and_gradients(self, obs, actions, action_mask, old_log_prob, advantages, returns, old_value):
        n = old_log_prob.shape[-1]
        torso = _tanh_layers(obs, self.torso)
        actor = _tanh_layers(torso[-1], self.actor)
        critic = _tanh_layers(torso[-1], self.critic)
        policy_out = self.actor_head.forward(actor[-1])
        value = self.critic_head.forward(critic[-1]).squeeze(-1)
        if self.continuous:
            std = self.log_std.exp()
            z = (actions - policy_out) / std
            z2 = z * z
            # summed as normal_sample_and_score sums it, so the first minibatch's ratio is exactly 1
            new_log_prob = (-0.5 * z2 - self.log_std - _HALF_LOG_2PI).sum(-1)
            entropy = (self.log_std.sum(-1) + z.shape[-1] * (0.5 + _HALF_LOG_2PI)).squeeze(-1)  # every sample's
        else:
            logits = policy_out if action_mask is None else policy_out.masked_fill(
                ~action_mask, torch.finfo(policy_out.dtype).min)
            log_probs = torch.log_softmax(logits, dim=-1)
            probs = log_probs.exp()
            taken = actions.long().unsqueeze(-1)
            new_log_prob = log_probs.gather(-1, taken).squeeze(-1)
            per_sample_entropy = -(probs * log_probs).sum(-1)
            entropy = per_sample_entropy.mean(-1)
        if self.norm_adv:  # per minibatch [core 7], as masked_whiten, with the sign the surrogate needs
            negative_advantages = (advantages.mean(-1, keepdim=True) - advantages) * torch.rsqrt(
                advantages.var(-1, keepdim=True) + 1e-8)
        else:
            negative_advantages = -advantages
        log_ratio = new_log_prob - old_log_prob
        ratio = log_ratio.exp()
        unclipped = negative_advantages * ratio
        clipped = negative_advantages * ratio.clamp(1 - self.clip_coef, 1 + self.clip_coef)
        pg_loss = torch.maximum(unclipped, clipped).mean(-1)
        error = value - returns
        squared = error * error
        if self.clip_vloss:
            value_step = value - old_value
            clipped_error = value_step.clamp(-self.clip_coef, self.clip_coef).add_(old_value).sub_(returns)
            clipped_squared = clipped_error * clipped_error
            v_loss = 0.5 * torch.maximum(squared, clipped_squared).mean(-1)
            # the gradient flows through the larger error, or through both where the clip is inactive
            flows = (squared >= clipped_squared).logical_or_(value_step.abs() <= self.clip_coef)
            grad_value = error.mul_(flows)
        else:
            v_loss = 0.5 * squared.mean(-1)
            grad_value = error
        loss = pg_loss - self.ent_coef * entropy + self.vf_coef * v_loss

        # d loss / d log-prob: through the larger surrogate (the clipped one has none)
        grad_log_prob = unclipped.mul_(unclipped >= clipped).unsqueeze(-1).mul_(1.0 / n)
        if self.continuous:
            grad_policy = grad_log_prob * z / std
            torch.sub((grad_log_prob * (z2 - 1.0)).sum(-2, keepdim=True).view_as(self.log_std), self.ent_coef,
                      out=self.log_std.grad)
        else:
            grad_policy = probs * (log_probs + per_sample_entropy.unsqueeze(-1)) * (self.ent_coef / n) \
                - probs * grad_log_prob
            grad_policy.scatter_add_(-1, taken, grad_log_prob)
        grad_actor = self.actor_head.backward(grad_policy, actor[-1])
        grad_critic = self.critic_head.backward(grad_value.unsqueeze(-1).mul_(self.vf_coef / n), critic[-1])
        if self.torso:
            _tanh_layers_backward(grad_actor + grad_critic, torso, self.torso)
        else:
            _tanh_layers_backward(grad_actor, actor, self.actor)
            _tanh_layers_backward(grad_critic, critic, self.critic)

        ratio_error = (ratio - 1.0).abs()
        stats = {"approx_kl": (torch.expm1(log_ratio) - log_ratio).mean(-1),
                 "clipfrac": (ratio_error > self.clip_coef).float().mean(-1),
                 "max_ratio_error": ratio_error.amax(-1)}
        return loss.sum(), pg_loss, v_loss, entropy, stats


class EpochRows:
    """A batch's per-sample tensors packed side by side once per update, gathered once per epoch in the
    minibatch order, so each minibatch is a slice (views) instead of seven index ops.

    Why: with 32 minibatches an epoch the gathers are ~10% of a fused gradient step
    (benchmarks/fused_update.py).  The rows and their order are the plain path's, so the math is unchanged.
    """

    def __init__(self):
        self.packed, self.source, self.rows, self.order = None, None, None, None

    def gather(self, batch, chunks: list[Tensor], seed_index: Tensor | None = None) -> list[tuple[int, int]]:
        """``chunks``: this epoch's minibatches as sample indices ([n] each, or [seeds, n] with ``seed_index``
        [seeds, 1]); gathers them in order and returns each minibatch's (start, stop) rows."""
        order = torch.cat(chunks, -1)
        if self.source is not batch:
            columns = [batch.obs, batch.actions if batch.actions.dim() > batch.log_probs.dim() else batch.actions.unsqueeze(-1),
                       *(t.unsqueeze(-1) for t in (batch.log_probs, batch.advantages, batch.returns, batch.values))]
            self.packed = torch.cat([c.to(batch.obs.dtype) for c in columns], -1)
            self.widths = [c.shape[-1] for c in columns]
            self.discrete = batch.actions.dim() == batch.log_probs.dim()
            self.source = batch
        self.rows = self.packed[order] if seed_index is None else self.packed[seed_index, order]
        self.order, self.seed_index = order, seed_index
        stops = torch.tensor([c.shape[-1] for c in chunks]).cumsum(0).tolist()
        return list(zip([0, *stops[:-1]], stops))

    def minibatch(self, start: int, stop: int, action_masks: Tensor | None):
        """(obs, actions, masks, old log-probs, advantages, returns, old values) of rows start:stop."""
        rows = self.rows[..., start:stop, :]
        obs, actions, *scalars = rows.split(self.widths, -1)
        actions = actions.squeeze(-1) if self.discrete else actions
        masks = None
        if action_masks is not None:
            index = self.order[..., start:stop]
            masks = action_masks[index] if self.seed_index is None else action_masks[self.seed_index, index]
        return (obs, actions, masks, *(s.squeeze(-1) for s in scalars))
def _linear_indices(layers: nn.Sequential) -> list[int]:
    return [int(name) for name, layer in layers.named_children() if isinstance(layer, nn.Linear)]


def fused_update_support(agent: nn.Module, masked: bool = False) -> str | None:
    """Why :class:`FusedMLPLoss` cannot take this agent (None when it can): it takes rlkit.ppo.Agent, the tanh
    MLP, with Box or Discrete actions."""
    from rlkit.ppo import Agent

    if type(agent) is not Agent:
        return f"the {type(agent).__name__} network (the fused update is the tanh MLP's)"
    if agent.nvec is not None:
        return "MultiDiscrete actions"
    branches = [agent.torso] if agent.shared else [agent.actor, agent.critic]
    if any(not isinstance(layer, (nn.Linear, nn.Tanh)) for branch in branches for layer in branch):
        return "layers other than Linear and Tanh"
    return None
