"""Learning tests: the shipped recipes solve their tasks on fixed seeds (minutes; marked slow)."""

import pytest

from rlkit.config import config_from_dict, read_recipe
from rlkit.ppo import PPOConfig, train


def _recipe(name, **overrides):
    _, values, source = read_recipe(name)
    return config_from_dict(PPOConfig, {**values, **overrides, "device": "cpu"}, source)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_cartpole_recipe_reaches_475_within_its_budget(seed):
    result = train(_recipe("cartpole", seed=seed), log=False, progress=False)
    last = result.last_returns(100)
    assert last.size == 100
    assert last.mean() >= 475, f"seed {seed}: mean return of the last 100 episodes {last.mean():.1f}"


@pytest.mark.slow
def test_pendulum_recipe_solves_pendulum_within_200k_steps():
    result = train(_recipe("pendulum", seed=1), log=False, progress=False)
    assert result.global_step <= 200_000
    last = result.last_returns(100)
    assert last.mean() >= -250, f"mean return of the last 100 episodes {last.mean():.1f}"
