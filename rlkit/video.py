"""What ``rlkit eval --video`` needs from the machine: a headless renderer picked by itself.

Without a display (no ``DISPLAY`` / ``WAYLAND_DISPLAY``, as on a server or in CI):

- pygame (classic control) gets ``SDL_VIDEODRIVER=dummy``, so SDL does not complain about the missing
  display or ``XDG_RUNTIME_DIR``;
- MuJoCo gets ``MUJOCO_GL=egl`` when libEGL loads, else ``MUJOCO_GL=osmesa`` when libOSMesa does
  (gymnasium would otherwise try GLFW first, which fails later with an OpenGL-context traceback); with
  neither, one line says what to install.

A variable the user set is never changed.
"""

from __future__ import annotations

import ctypes.util
import os

from rlkit.checkpoint import CheckpointError


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def headless_mujoco_backend() -> str | None:
    """egl or osmesa, whichever library this machine can load (None: neither)."""
    if ctypes.util.find_library("EGL"):
        return "egl"
    if ctypes.util.find_library("OSMesa"):
        return "osmesa"
    return None


def prepare_rendering(env_id: str = "") -> dict[str, str]:
    """Set the headless rendering variables that are not set yet; returns those it set."""
    if has_display():
        return {}
    chosen = {}
    if "SDL_VIDEODRIVER" not in os.environ:
        chosen["SDL_VIDEODRIVER"] = "dummy"
    if "MUJOCO_GL" not in os.environ and _is_mujoco(env_id):
        backend = headless_mujoco_backend()
        if backend is None:
            raise CheckpointError("MuJoCo video without a display needs EGL or OSMesa: install one (e.g. apt-get install "
                                  "libegl1, or libosmesa6) and, if it is not found by itself, set MUJOCO_GL=egl or osmesa")
        chosen["MUJOCO_GL"] = backend
        if backend == "osmesa":
            chosen.setdefault("PYOPENGL_PLATFORM", "osmesa")
    for key, value in chosen.items():
        os.environ.setdefault(key, value)
    return chosen


def _is_mujoco(env_id: str) -> bool:
    """A gymnasium MuJoCo env (or an id we cannot tell: asking for a backend costs nothing then)."""
    if not env_id:
        return True
    try:
        import gymnasium as gym

        spec = gym.spec(env_id)
    except Exception:  # noqa: BLE001 - not registered yet ("module:Id"): assume it may be
        return True
    entry = spec.entry_point if isinstance(spec.entry_point, str) else getattr(spec.entry_point, "__module__", "")
    return "mujoco" in str(entry).lower()
