"""Checkpoints: tensors in safetensors, everything else in JSON, written atomically.

A checkpoint is a folder ``<run_dir>/checkpoints/update_<k>/`` holding

- ``model.safetensors``      the agent's parameters
- ``optimizer.safetensors``  Adam's moments and step counts
- ``rng.safetensors``        torch RNG states (global, CUDA, the minibatch shuffler)
- ``state.json``             config, global step, update index, python/numpy RNG
                             states, normaliser statistics, environment state,
                             the episode log so far, the metrics-file offset

It is written into a temporary folder, every file fsynced, then renamed into
place, so a crash (even ``kill -9``) mid-write leaves the previous checkpoint
intact; older checkpoints beyond ``keep`` are deleted only after the rename.
Nothing is pickled; nothing here calls ``torch.load``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CHECKPOINT_DIR = "checkpoints"
PREFIX = "update_"
FORMAT_VERSION = 1


from rlkit.errors import CheckpointError  # noqa: E402  (a ValueError; the CLI's exit code 5)


def to_json(value: Any) -> Any:
    """numpy arrays and scalars -> tagged JSON (exact round trip for float32/float64)."""
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return to_json(np.asarray(value))
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=value["dtype"]).reshape(value["shape"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def optimized_parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The tensors the optimizer steps (one flat tensor after rlkit.ppo.flatten_parameters)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Flatten an optimizer's state into named tensors + JSON-able param groups."""
    state = optimizer.state_dict()
    tensors = {}
    for param_id, param_state in state["state"].items():
        for name, value in param_state.items():
            tensors[f"{param_id}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, state["param_groups"]


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        param_id, name = key.split(".", 1)
        state.setdefault(int(param_id), {})[name] = value
    flat = optimized_parameters(optimizer)
    if len(flat) == 1 and len(state) > 1 and len(groups) == 1 and flat[0].dim() == 1:
        state, groups = _concatenated_state(state, groups, flat[0].numel())
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    # Files hold row-major tensors. A moment must have its parameter's memory layout again
    # (channels_last conv weights): fused Adam pairs elements by memory position, so on CPU a
    # row-major moment beside a channels_last weight updates the wrong elements, silently,
    # and CUDA refuses it.
    for group in optimizer.param_groups:
        for param in group["params"]:
            param_state = optimizer.state.get(param, {})
            for name, value in param_state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    param_state[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _concatenated_state(state: dict[int, dict[str, torch.Tensor]], groups: list[dict], numel: int
                        ) -> tuple[dict[int, dict[str, torch.Tensor]], list[dict]]:
    """Per-parameter Adam state (checkpoints written before rlkit.ppo flattened the MLP's parameters)
    as the state of the one flat parameter: moments concatenated in parameter order."""
    ids = sorted(state)
    if ids != sorted(groups[0]["params"]):
        raise ValueError("optimizer state and param groups name different parameters")
    merged: dict[str, torch.Tensor] = {}
    for name in state[ids[0]]:
        values = [state[i][name] for i in ids]
        if name == "step":
            if any(not torch.equal(v, values[0]) for v in values):
                raise ValueError("per-parameter Adam steps differ; they cannot share one flat state")
            merged[name] = values[0].clone()  # Adam increments it in place
        else:
            merged[name] = torch.cat([v.reshape(-1) for v in values])
    if any(v.numel() != numel for k, v in merged.items() if k != "step"):
        raise ValueError(f"the saved optimizer state has a different number of elements than this agent ({numel})")
    return {0: merged}, [{**groups[0], "params": [0]}]


def _fsync_file(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_update(path: str) -> int | None:
    """The update number in a checkpoint folder's name (``update_0000042`` -> 42), None for other names."""
    name = os.path.basename(os.path.normpath(path))
    digits = name[len(PREFIX):]
    return int(digits) if name.startswith(PREFIX) and digits.isdigit() else None


def list_checkpoints(run_dir: str) -> list[str]:
    """Checkpoint folders of a run, oldest first by update (temporary folders are ignored)."""
    folder = os.path.join(run_dir, CHECKPOINT_DIR)
    if not os.path.isdir(folder):
        return []
    names = sorted((n for n in os.listdir(folder) if checkpoint_update(n) is not None), key=checkpoint_update)
    return [os.path.join(folder, n) for n in names]


def save_checkpoint(
    run_dir: str,
    update: int,
    tensor_files: dict[str, dict[str, torch.Tensor]],
    state: dict[str, Any],
    keep: int = 3,
) -> str:
    """Write ``<name>.safetensors`` for each entry of ``tensor_files`` and ``state.json``, atomically."""
    folder = os.path.join(run_dir, CHECKPOINT_DIR)
    final = write_checkpoint_folder(os.path.join(folder, f"{PREFIX}{update:07d}"), tensor_files, state)
    # Pruning counts this lineage only: the checkpoints up to this one.  A checkpoint numbered
    # after it is not this run's past (rlkit.runfolder moves those aside when a run branches).
    lineage = [c for c in list_checkpoints(run_dir) if checkpoint_update(c) <= update]
    for old in lineage[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


DIGESTS = "file_sha256"
"""state.json's record of each tensor file's SHA-256, written with it: damage inside a file (bytes flipped,
its size unchanged), which safetensors' own header checks cannot see, is caught when it is loaded"""


_VERIFIED: dict[tuple[str, int, int], str] = {}
"""(real path, size, mtime_ns) -> SHA-256 already computed in this process: a resume resolves its checkpoint
several times, and each file is hashed once"""


def file_sha256(path: str) -> str:
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = _sha256(path)
    return _VERIFIED[key]


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digest_problem(folder: str, state: dict) -> str | None:
    """The tensor file whose bytes differ from those state.json recorded, or None (also for older checkpoints,
    which recorded none)."""
    recorded = state.get(DIGESTS) if isinstance(state, dict) else None
    if not isinstance(recorded, dict):
        return None
    for name, expected in sorted(recorded.items()):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and file_sha256(path) != expected:
            return f"{path} is truncated or corrupted (its SHA-256 is not the one recorded when it was written)"
    return None


def write_checkpoint_folder(final: str, tensor_files: dict[str, dict[str, torch.Tensor]], state: dict[str, Any]) -> str:
    """One checkpoint folder, written into a temporary sibling, fsynced, then renamed into place."""
    folder = os.path.dirname(os.path.abspath(final))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".tmp-{os.path.basename(final)}-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    try:
        digests = {}
        for name, tensors in tensor_files.items():
            path = os.path.join(temporary, f"{name}.safetensors")
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path)
            _fsync_file(path)
            digests[f"{name}.safetensors"] = file_sha256(path)
        path = os.path.join(temporary, "state.json")
        with open(path, "w") as f:
            json.dump({"format_version": FORMAT_VERSION, **to_json(state), DIGESTS: digests}, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(temporary)
    except BaseException:  # a full disk, say: the previous checkpoint stays the newest
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if os.path.exists(final):  # re-saving the same update (e.g. final == last periodic)
        shutil.rmtree(final)
    os.rename(temporary, final)
    _fsync_dir(folder)
    return final


STATE_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "common": {"config": dict, "python_rng": list, "numpy_rng": (list, tuple), "optimizer_param_groups": list,
               "metrics_offset": int, "wall_time": (int, float)},
    "ppo": {"global_step": int, "iteration": int, "env_exact": bool, "env_state": (dict, type(None)),
            "normalizers": dict, "spaces": dict, "episodes": dict},
    "ppo_lm": {"update": int, "episodes": int, "kl_coef": (int, float), "history": list, "initial": dict,
               "initial_samples": list, "policy_path": str, "reward": str},
}
"""The keys of state.json and their types, by the variant that wrote it (ppo_lstm: ppo's)."""

INCOMPLETE = "incomplete"  # a problem() prefix: skipped when loading a run folder


TRAINING_KEYS = ("config", "variant", "iteration", "update", "global_step", "metrics_offset")
"""A state.json holding any of these was written by a training loop (the schema applies); others,
written by callers of save_checkpoint for their own use, are only JSON."""


def is_training_state(state: Any) -> bool:
    return not isinstance(state, dict) or any(k in state for k in TRAINING_KEYS)


def state_problem(state: Any) -> str | None:
    """Why a training checkpoint's state.json cannot be used (a missing key, a wrong type), or None."""
    if not isinstance(state, dict):
        return f"state.json holds a {type(state).__name__}, not an object"
    if state.get("format_version") != FORMAT_VERSION:
        return f"unknown checkpoint format {state.get('format_version')!r}"
    if not is_training_state(state):
        return None
    variant = state.get("variant", "ppo")
    table = {**STATE_SCHEMA["common"], **STATE_SCHEMA["ppo_lm" if variant == "ppo_lm" else "ppo"]}
    for key, kind in table.items():
        if key not in state:
            return f"state.json has no {key!r}"
        value = state[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            return f"state.json's {key!r} must be {names}, got {type(value).__name__}"
        if key in ("metrics_offset", "global_step", "iteration", "update", "episodes") and isinstance(value, int) \
                and value < 0:
            return f"state.json's {key!r} must be >= 0, got {value}"
    if variant != "ppo_lm":
        spaces, episodes = state["spaces"], state["episodes"]
        if not isinstance(spaces.get("observation_shape"), list) or not isinstance(spaces.get("action_space"), str):
            return "state.json's 'spaces' needs observation_shape (a list) and action_space (a string)"
        if not all(isinstance(episodes.get(k), list) for k in ("returns", "lengths", "steps")):
            return "state.json's 'episodes' needs the lists returns, lengths and steps"
    return None


def folder_problem(folder: str) -> str | None:
    """Why ``folder`` is not a usable checkpoint, or None: "incomplete: ..." for a folder a crash or a
    partial copy left (skipped when loading a run), otherwise damage (reported, never stepped over)."""
    state_path = os.path.join(folder, "state.json")
    if not os.path.isdir(folder):
        return f"{INCOMPLETE}: not a folder"
    if not os.path.isfile(state_path):
        return f"{INCOMPLETE}: state.json is missing" + (" (the folder is empty)" if not os.listdir(folder) else "")
    try:
        with open(state_path, "rb") as f:
            state = json.loads(f.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        return f"{state_path} is truncated or corrupted (not valid JSON: {error})"
    except OSError as error:
        return f"{state_path} cannot be read ({error.strerror or error})"
    problem = state_problem(state) or (missing_files(folder) if is_training_state(state) else None)
    if problem:
        return f"{INCOMPLETE}: {problem}"
    return digest_problem(folder, state)  # damage: reported, never stepped over


def missing_files(folder: str) -> str | None:
    """The tensor file a training checkpoint lacks, or None."""
    for name in ("model", "optimizer", "rng"):
        if not os.path.isfile(os.path.join(folder, f"{name}.safetensors")):
            return f"{name}.safetensors is missing"
    return None


_reported: set[tuple[str, str]] = set()


def _report_skipped(folder: str, problem: str, chosen: str | None) -> None:
    if (folder, problem) in _reported:
        return
    _reported.add((folder, problem))
    using = f"; using {os.path.basename(chosen)}" if chosen else ""
    print(f"rlkit: skipped checkpoint {folder}: {problem.removeprefix(INCOMPLETE + ': ')}{using}", file=sys.stderr)


def newest_valid_checkpoint(run_dir: str) -> tuple[str | None, list[tuple[str, str]]]:
    """(the newest complete checkpoint of a run or None, [(skipped folder, why)] newest first).

    Incomplete folders (state.json or model.safetensors missing, keys missing or of the wrong
    type) are skipped; a damaged one (a file truncated or corrupted) stops the search with a
    CheckpointError that names it and the newest intact checkpoint before it."""
    skipped: list[tuple[str, str]] = []
    found = list_checkpoints(run_dir)
    for folder in reversed(found):
        problem = folder_problem(folder)
        if problem is None:
            return folder, skipped
        if not problem.startswith(INCOMPLETE):
            older = next((f for f in reversed(found[:found.index(folder)]) if folder_problem(f) is None), None)
            hint = f"; the newest intact checkpoint is {older}: resume from it by naming it" if older else ""
            raise CheckpointError(f"{problem}{hint}")
        skipped.append((folder, problem))
    return None, skipped


def resolve_checkpoint(path: str) -> str:
    """A checkpoint folder from a run dir (its newest complete checkpoint; incomplete newer ones are
    skipped, each with a line on stderr saying why), a checkpoints/ dir, or the folder itself."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path!r} does not exist")
    if os.path.isfile(os.path.join(path, "state.json")):
        return path
    if checkpoint_update(path) is not None and os.path.basename(os.path.dirname(os.path.abspath(path))) == CHECKPOINT_DIR:
        problem = folder_problem(path) or "state.json is missing"
        raise CheckpointError(f"{path} is not a usable checkpoint ({problem.removeprefix(INCOMPLETE + ': ')}); "
                              "name the run folder to load its newest complete checkpoint")
    skipped_all: list[tuple[str, str]] = []
    for candidate in (path, os.path.dirname(path.rstrip("/"))):
        if not list_checkpoints(candidate):
            continue
        chosen, skipped = newest_valid_checkpoint(candidate)
        for folder, problem in skipped:
            _report_skipped(folder, problem, chosen)
        if chosen is not None:
            return chosen
        skipped_all += skipped
    if skipped_all:
        reasons = "; ".join(f"{os.path.basename(f)}: {p.removeprefix(INCOMPLETE + ': ')}" for f, p in skipped_all)
        raise CheckpointError(f"no complete checkpoint in {path!r} ({reasons})")
    raise CheckpointError(f"no checkpoint in {path!r} (looked for {CHECKPOINT_DIR}/{PREFIX}*/state.json)")


def load_checkpoint(path: str) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """(tensor files by name, state) of a checkpoint; clear errors for damaged or incomplete files."""
    folder = resolve_checkpoint(path)
    state_path = os.path.join(folder, "state.json")
    try:
        with open(state_path, "rb") as f:
            state = from_json(json.loads(f.read().decode("utf-8")))
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{state_path} is truncated or corrupted (not valid JSON: {error})") from None
    except OSError as error:
        raise CheckpointError(f"{state_path} cannot be read ({error.strerror or error})") from None
    if isinstance(state, dict) and state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{state_path}: unknown checkpoint format {state.get('format_version')!r}")
    problem = state_problem(state) or (missing_files(folder) if is_training_state(state) else None)
    if problem:
        raise CheckpointError(f"{folder}: {problem}: the checkpoint is incomplete or damaged; name an older one of the run")
    damaged = digest_problem(folder, state)
    if damaged:
        raise CheckpointError(f"{damaged}; name an older checkpoint of the run")
    state.pop(DIGESTS, None)
    tensors = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            file = os.path.join(folder, name)
            try:
                tensors[name[: -len(".safetensors")]] = load_file(file)
            except (SafetensorError, OSError, ValueError) as error:
                raise CheckpointError(f"{file} is truncated or corrupted ({error})") from None
    if is_training_state(state) and "torch" not in tensors["rng"]:
        raise CheckpointError(f"{folder}/rng.safetensors has no torch RNG state; the checkpoint is damaged")
    return tensors, state
