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

import json
import os
import shutil
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CHECKPOINT_DIR = "checkpoints"
PREFIX = "update_"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupted, or from another setup."""


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


def list_checkpoints(run_dir: str) -> list[str]:
    """Complete checkpoint folders of a run, oldest first (temporary folders are ignored)."""
    folder = os.path.join(run_dir, CHECKPOINT_DIR)
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if n.startswith(PREFIX) and n[len(PREFIX):].isdigit())
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
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_checkpoint_folder(final: str, tensor_files: dict[str, dict[str, torch.Tensor]], state: dict[str, Any]) -> str:
    """One checkpoint folder, written into a temporary sibling, fsynced, then renamed into place."""
    folder = os.path.dirname(os.path.abspath(final))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".tmp-{os.path.basename(final)}-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    for name, tensors in tensor_files.items():
        path = os.path.join(temporary, f"{name}.safetensors")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path)
        _fsync_file(path)
    path = os.path.join(temporary, "state.json")
    with open(path, "w") as f:
        json.dump({"format_version": FORMAT_VERSION, **to_json(state)}, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(temporary)
    if os.path.exists(final):  # re-saving the same update (e.g. final == last periodic)
        shutil.rmtree(final)
    os.rename(temporary, final)
    _fsync_dir(folder)
    return final


def resolve_checkpoint(path: str) -> str:
    """A checkpoint folder from a run dir (its latest checkpoint), a checkpoints/ dir, or the folder itself."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path!r} does not exist")
    if os.path.isfile(os.path.join(path, "state.json")):
        return path
    for candidate in (path, os.path.dirname(path.rstrip("/"))):
        found = list_checkpoints(candidate)
        if found:
            return found[-1]
    raise CheckpointError(f"no checkpoint in {path!r} (looked for {CHECKPOINT_DIR}/{PREFIX}*/state.json)")


def load_checkpoint(path: str) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """(tensor files by name, state) of a checkpoint; clear errors for damaged files."""
    folder = resolve_checkpoint(path)
    state_path = os.path.join(folder, "state.json")
    try:
        with open(state_path) as f:
            state = from_json(json.load(f))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{state_path} is truncated or corrupted (not valid JSON: {error})") from None
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{state_path}: unknown checkpoint format {state.get('format_version')!r}")
    tensors = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            file = os.path.join(folder, name)
            try:
                tensors[name[: -len(".safetensors")]] = load_file(file)
            except (SafetensorError, OSError, ValueError) as error:
                raise CheckpointError(f"{file} is truncated or corrupted ({error})") from None
    return tensors, state
