"""rlkit.envs: probe environments and vector-env factories (installed as rlkit.envs).

Importing this package registers the probes as ``rlkit/<Name>-{Discrete,Continuous}-v0``.
Nothing here imports the agent.
"""

from .factory import load_normalizer_state, make_vector_env, normalizer_state, set_normalizer_updates
from .probes import PROBES, probe_id, register_probes
from .wrappers import NormalizeObservation, NormalizeReward, RunningMeanStd

register_probes()

__all__ = [
    "PROBES",
    "NormalizeObservation",
    "NormalizeReward",
    "RunningMeanStd",
    "load_normalizer_state",
    "make_vector_env",
    "normalizer_state",
    "probe_id",
    "register_probes",
    "set_normalizer_updates",
]
