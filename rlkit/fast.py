"""Speed-only code: the same math as the plain version, faster on small networks.

A reader of the algorithm may skip this file.  Each piece says why it exists and which
benchmark justifies it; each has a plain equivalent that a test holds it against.

- :func:`run_layers`: nn.Sequential without hook dispatch (benchmarks/ppo_profile.py).
- :func:`flatten_parameters`: one flat tensor for all MLP parameters, so gradient clipping and
  Adam are one op each (benchmarks/ppo_profile.py, benchmarks/sps_vs_revision.py).
- :func:`compiled`, :func:`compiled_policy_step`: torch.compile wrappers (config ``torch_compile``;
  benchmarks/sps_vs_sb3.py).
- :func:`stacked_mlp_forward`: the batched-seed rollout's forward as one batched matmul per layer
  instead of vmap (benchmarks/multiseed.py).
- :class:`NumpyStaging`: the rollout's rewards and dones written into numpy per step and moved
  to torch once per rollout (benchmarks/sps_vs_revision.py).
"""

from __future__ import annotations

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
