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
from rlkit.ppo import PPOConfig, train

PROBE_GAMMA = 0.5
"""Discount for the probes: makes V(first obs) of the two-step probe 0.5, far from 1."""

VALUE_TOLERANCE = 0.1
POLICY_TOLERANCE = 0.1

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

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def env_id(self) -> str:
        return probe_id(self.name, self.continuous)


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
    return ProbeResult(name, continuous, checks, time.time() - start)


def run_probe_suite(seed: int = 1, only: list[str] | None = None, shared_network: bool = False, progress: bool = False) -> list[ProbeResult]:
    names = list(PROBES) if only is None else only
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        raise ValueError(f"unknown probe(s) {unknown}; probes: {', '.join(PROBES)}")
    results = []
    for name in names:
        for continuous in (False, True):
            result = run_probe(name, continuous, seed=seed, shared_network=shared_network)
            results.append(result)
            if progress:
                print(f"  {'ok  ' if result.passed else 'FAIL'} {result.env_id} ({result.seconds:.1f} s)", flush=True)
    return results


def print_report(results: list[ProbeResult]) -> int:
    """A table of every check; returns the exit code (0 when all pass)."""
    print(f"\n{'probe':44s} {'check':26s} {'learned':>9s} {'expected':>9s}  result")
    for r in results:
        for c in r.checks:
            print(f"{r.env_id:44s} {c.what:26s} {c.learned:9.3f} {c.expected:9.3f}  "
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
        }
        print(f"first failure: {first.env_id}: look at {hints[first.name]}")
        return 1
    return 0
