"""``rlkit doctor``: train PPO on every probe env and compare with the known answers.

Probes are ordered so the first failure localises a bug (see rlkit.envs.probes):
value loss -> observation input -> discounting/bootstrapping -> policy gradient
-> policy and value together.  Each probe trains for a few seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from rlkit.envs import PROBES, probe_id
from rlkit.envs.probes import CONTINUOUS_TARGET
from rlkit.ppo import PPOConfig, train, user_fields

PROBE_GAMMA = 0.5
"""Discount for the probes: makes V(first obs) of the two-step probe 0.5, far from 1."""

VALUE_TOLERANCE = 0.1
POLICY_TOLERANCE = 0.1
RATIO_TOLERANCE = 1e-4
"""float32 rounding of the two log-prob computations is ~1e-6; a real mismatch is orders of magnitude larger"""

PROBE_CONFIG = PPOConfig(
    total_timesteps=12_288,
    num_envs=8,
    num_steps=32,
    learning_rate=3e-3,
    anneal_lr=False,
    gamma=PROBE_GAMMA,
    num_minibatches=4,
    update_epochs=4,
    ent_coef=0.0,
    normalize_obs=False,
    normalize_reward=False,
    device="cpu",
)
"""Shared settings of every probe run: small batches, no normalisation, a few seconds each."""


@dataclass
class Check:
    what: str
    learned: float
    expected: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.learned) and abs(self.learned - self.expected) <= self.tolerance)


@dataclass
class ProbeResult:
    name: str
    continuous: bool
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    env_id: str = ""

    def __post_init__(self):
        self.env_id = self.env_id or probe_id(self.name, self.continuous)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def _obs(value: float) -> torch.Tensor:
    return torch.tensor([[value]], dtype=torch.float32)


def _policy_checks(agent, name: str, continuous: bool) -> list[Check]:
    """What the learned policy does where the probe rewards a particular action."""
    observations = {"ActionDependentReward": [0.0], "ObsAndActionDependentReward": [-1.0, 1.0]}[name]
    checks = []
    for obs in observations:
        with torch.no_grad():
            policy_out, _ = agent(_obs(obs))
        if continuous:
            target = CONTINUOUS_TARGET if name == "ActionDependentReward" else CONTINUOUS_TARGET * obs
            checks.append(Check(f"mean action at obs {obs:+.0f}", float(policy_out[0, 0]), target, POLICY_TOLERANCE))
        else:
            best = 1 if (name == "ActionDependentReward" or obs > 0) else 0
            p_best = float(torch.softmax(policy_out, -1)[0, best])
            checks.append(Check(f"P(action {best}) at obs {obs:+.0f}", p_best, 1.0, POLICY_TOLERANCE))
    return checks


def _value_checks(agent, name: str) -> list[Check]:
    expected = {
        "ConstantReward": {0.0: 1.0},
        "ObsDependentReward": {-1.0: -1.0, 1.0: 1.0},
        "TwoStepDiscounted": {0.0: PROBE_GAMMA, 1.0: 1.0},
    }[name]
    with torch.no_grad():
        return [
            Check(f"V(obs {obs:+.0f})", float(agent.get_value(_obs(obs))[0]), value, VALUE_TOLERANCE)
            for obs, value in expected.items()
        ]


def run_probe(name: str, continuous: bool, seed: int = 1, shared_network: bool = False, config: PPOConfig | None = None) -> ProbeResult:
    """Train on one probe and check the learned value or policy."""
    cfg = replace(config or PROBE_CONFIG, env_id=probe_id(name, continuous), seed=seed, shared_network=shared_network)
    start = time.time()
    result = train(cfg, progress=False, log=False)
    agent = result.agent.cpu().eval()
    if name in ("ActionDependentReward", "ObsAndActionDependentReward"):
        checks = _policy_checks(agent, name, continuous)
    else:
        checks = _value_checks(agent, name)
    return ProbeResult(name, continuous, checks + [_ratio_check(result)], time.time() - start)


def _ratio_check(result) -> Check:
    """Before the first gradient step of an update the new policy IS the rollout's, so every ratio is 1: an error
    here means the rollout (the fused policy step included) and the update score actions differently."""
    return Check("first-minibatch |ratio - 1| (rollout vs update log-probs)",
                 float(result.last_update["first_ratio_error"]), 0.0, RATIO_TOLERANCE)


def _probability(agent, obs: float, index: int, mask=None, nvec_slice: slice | None = None) -> float:
    with torch.no_grad():
        logits, _ = agent(_obs(obs))
    if nvec_slice is not None:
        logits = logits[:, nvec_slice]
    if mask is not None:
        logits = logits.masked_fill(~torch.as_tensor(mask, dtype=torch.bool), torch.finfo(logits.dtype).min)
    return float(torch.softmax(logits, -1)[0, index])


def run_extra_probe(name: str, seed: int = 1) -> ProbeResult:
    """The probes with their own action spaces: MultiDiscrete, masked actions, memory (recurrent agent)."""
    env_id = f"rlkit/{name}-v0"
    start = time.time()
    if name == "MemoryProbe":
        from rlkit.ppo_lstm import RecurrentPPOConfig
        from rlkit.ppo_lstm import train as train_recurrent

        shared = {k: getattr(PROBE_CONFIG, k) for k in user_fields()}
        cfg = RecurrentPPOConfig(**{**shared, "env_id": env_id, "seed": seed, "shared_network": True, "total_timesteps": 4096, "num_steps": 16})
        result = train_recurrent(cfg, progress=False, log=False)
        score = float(np.mean(result.episode_returns[-100:]))
        checks = [Check("mean return, last 100 episodes", score, 1.0, VALUE_TOLERANCE)]
        return ProbeResult(name, False, checks, time.time() - start, env_id)
    result = train(replace(PROBE_CONFIG, env_id=env_id, seed=seed), progress=False, log=False)
    agent = result.agent.cpu().eval()
    if name == "MultiDiscreteProbe":
        checks = []
        for obs in (-1.0, 1.0):
            first, second = (1 if obs > 0 else 0), (2 if obs > 0 else 0)
            checks.append(Check(f"P(a[0]={first}) at obs {obs:+.0f}", _probability(agent, obs, first, nvec_slice=slice(0, 2)),
                                1.0, POLICY_TOLERANCE))
            checks.append(Check(f"P(a[1]={second}) at obs {obs:+.0f}", _probability(agent, obs, second, nvec_slice=slice(2, 5)),
                                1.0, POLICY_TOLERANCE))
    elif name == "MaskedActionProbe":
        from rlkit.envs.probes import MaskedActionProbe

        taken = sum(r >= 10 for r in result.episode_returns)  # only the masked action pays 10
        checks = [Check("P(action 1) under the mask", _probability(agent, 0.0, 1, mask=MaskedActionProbe.MASK), 1.0, POLICY_TOLERANCE),
                  Check("masked action taken (episodes)", float(taken), 0.0, 0.0)]
    else:
        raise ValueError(f"unknown probe {name!r}; extra probes: {', '.join(EXTRA_PROBE_NAMES)}")
    return ProbeResult(name, False, checks, time.time() - start, env_id)


EXTRA_PROBE_NAMES = ("MultiDiscreteProbe", "MaskedActionProbe", "MemoryProbe")


def run_probe_suite(seed: int = 1, only: list[str] | None = None, shared_network: bool = False, progress: bool = False) -> list[ProbeResult]:
    names = list(PROBES) + list(EXTRA_PROBE_NAMES) if only is None else only
    unknown = [n for n in names if n not in PROBES and n not in EXTRA_PROBE_NAMES]
    if unknown:
        raise ValueError(f"unknown probe(s) {unknown}; probes: {', '.join([*PROBES, *EXTRA_PROBE_NAMES])}")
    results = []

    def report(result: ProbeResult) -> None:
        results.append(result)
        if progress:
            print(f"  {'ok  ' if result.passed else 'FAIL'} {result.env_id} ({result.seconds:.1f} s)", flush=True)

    for name in names:
        if name in EXTRA_PROBE_NAMES:
            report(run_extra_probe(name, seed=seed))
            continue
        for continuous in (False, True):
            report(run_probe(name, continuous, seed=seed, shared_network=shared_network))
    return results


def print_report(results: list[ProbeResult]) -> int:
    """A table of every check; returns the exit code (0 when all pass)."""
    print(f"\n{'probe':48s} {'check':32s} {'learned':>9s} {'expected':>9s}  result")
    for r in results:
        for c in r.checks:
            print(f"{r.env_id:48s} {c.what:32s} {c.learned:9.3f} {c.expected:9.3f}  "
                  f"{'pass' if c.passed else f'FAIL (tolerance {c.tolerance})'}")
    failed = [r for r in results if not r.passed]
    total = sum(r.seconds for r in results)
    print(f"\n{len(results) - len(failed)}/{len(results)} probes passed in {total:.1f} s")
    if failed:
        first = failed[0]
        hints = {
            "ConstantReward": "the value loss or the value head (V should learn a constant)",
            "ObsDependentReward": "the observation path into the value net",
            "TwoStepDiscounted": "discounting / GAE / bootstrapping",
            "ActionDependentReward": "the policy gradient or log-prob computation",
            "ObsAndActionDependentReward": "the policy's use of the observation, or policy/value interplay",
            "MultiDiscreteProbe": "the per-dimension categoricals of MultiDiscrete actions",
            "MaskedActionProbe": "invalid-action masking in sampling, log-probs or the update",
            "MemoryProbe": "the recurrent agent: state resets, sequence minibatches, stored initial states",
        }
        print(f"first failure: {first.env_id}: look at {hints[first.name]}")
        return 1
    return 0
