"""rlkit.envs: probe environments and vector-env factories (installed as rlkit.envs).

Importing this package registers the probes as ``rlkit/<Name>-{Discrete,Continuous}-v0``.
Nothing here imports the agent.
"""

from .atari import ATARI_BACKENDS, is_atari_id, make_atari_vector_env
from .factory import (
    EnvGroup,
    env_state,
    load_env_state,
    load_normalizer_state,
    make_vector_env,
    normalizer_state,
    normalizes_observations,
    set_normalizer_updates,
    supports_exact_state,
)
from .observations import ObservationLayout, adapt_observations, check_observation_space, is_image_space
from .probes import EXTRA_PROBES, PROBES, probe_id, register_probes
from .wrappers import NormalizeObservation, NormalizeReward, RunningMeanStd

register_probes()

__all__ = [
    "ATARI_BACKENDS",
    "is_atari_id",
    "make_atari_vector_env",
    "EXTRA_PROBES",
    "PROBES",
    "NormalizeObservation",
    "NormalizeReward",
    "RunningMeanStd",
    "EnvGroup",
    "env_state",
    "load_env_state",
    "supports_exact_state",
    "load_normalizer_state",
    "make_vector_env",
    "normalizer_state",
    "normalizes_observations",
    "ObservationLayout",
    "adapt_observations",
    "check_observation_space",
    "is_image_space",
    "probe_id",
    "register_probes",
    "set_normalizer_updates",
]
