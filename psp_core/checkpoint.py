"""Checkpoints in safetensors: weights, optimiser state, config, version and caller metadata.

A checkpoint is self-contained: it also stores every context's spec, so loading one alone
reproduces predictions exactly. Writes go to a temporary file that is fsynced and renamed over
the target, so a crash leaves either the old checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_tensors

from psp_core.contexts import ContextSpec
from psp_core.learner import OnlineLearner, TrainingConfig
from psp_core.models import ModelConfig, build_model
from psp_core.replay import ReplayBuffer

FORMAT = "psp-checkpoint/1"


class CheckpointError(Exception):
    """A checkpoint is torn, not ours, or does not fit the model it is loaded into."""


def _tensors_of(learner: OnlineLearner) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {
        f"model.{name}": t.detach().contiguous().cpu()
        for name, t in learner.model.state_dict().items()
    }
    optim_state = learner.optimizer.state_dict()
    for param_id, state in optim_state["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{param_id}.{name}"] = value.detach().contiguous().cpu()
    if learner.scaler is not None:
        tensors.update({f"scaler.{n}": t for n, t in learner.scaler.state_tensors().items()})
    replay_header = None
    if learner.replay is not None:
        replay_tensors, replay_header = learner.replay.state_tensors()
        tensors.update({f"replay.{name}": t for name, t in replay_tensors.items()})
    specs = learner.model.bank.specs
    if learner.model.config.context_kind.uses_power:
        tensors["bank.power"] = torch.tensor([s.power for s in specs], dtype=torch.float64)
    else:
        tensors["bank.seed"] = torch.tensor([s.seed or 0 for s in specs], dtype=torch.int64)
    header = {
        "format": FORMAT,
        "model_config": learner.model.config.to_dict(),
        "training_config": learner.config.to_dict(),
        "model_version": learner.model_version,
        "optim_param_groups": optim_state["param_groups"],
        "replay": replay_header,
    }
    return tensors, header


def save_checkpoint(
    path: str | Path, learner: OnlineLearner, metadata: dict[str, str] | None = None
) -> None:
    """Writes the learner's complete state to `path` atomically.

    Args:
        path: Target file; its directory must exist.
        learner: The learner to save.
        metadata: Caller strings kept beside the state, e.g. the last applied queue entry id.
    """
    write_checkpoint(path, checkpoint_bytes(learner, metadata))


def checkpoint_bytes(learner: OnlineLearner, metadata: dict[str, str] | None = None) -> bytes:
    """The checkpoint of the learner's state as it is now, in memory (the first half of
    `save_checkpoint`): a caller that must keep the learner still while it is read can let go
    before `write_checkpoint` waits for the disk."""
    tensors, header = _tensors_of(learner)
    header["user"] = metadata or {}
    return bytes(save_tensors(tensors, metadata={"psp": json.dumps(header)}))


def write_checkpoint(path: str | Path, checkpoint: bytes) -> None:
    """Writes `checkpoint_bytes` to `path` atomically and durably: a temporary file, fsynced,
    renamed over the target, and the rename fsynced too."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(checkpoint)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _read(
    path: Path, prefixes: tuple[str, ...] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The checkpoint's tensors whose names start with one of `prefixes` (all when None), and
    its header. Only the requested tensors are read from disk."""
    try:
        # safetensors checks the header's offsets against the file's size, so a torn file fails.
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if "psp" not in meta:
                raise CheckpointError(f"{path} is a safetensors file but not a psp checkpoint")
            header = json.loads(meta["psp"])
            if header.get("format") != FORMAT:
                raise CheckpointError(
                    f"{path} has format {header.get('format')!r}, expected {FORMAT!r}"
                )
            stored: list[str] = handle.keys()
            names = [n for n in stored if prefixes is None or n.startswith(prefixes)]
            tensors = {name: handle.get_tensor(name) for name in names}
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    except (SafetensorError, ValueError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"checkpoint {path} is torn or not a safetensors file: {err}"
        ) from err
    return tensors, header


def _specs(tensors: dict[str, torch.Tensor]) -> list[ContextSpec]:
    if "bank.power" in tensors:
        return [ContextSpec(power=float(p)) for p in tensors["bank.power"].tolist()]
    return [ContextSpec(seed=int(s)) for s in tensors["bank.seed"].tolist()]


@dataclass(frozen=True)
class StoredCheckpoint:
    """A whole checkpoint file, read into memory (`read_checkpoint`)."""

    path: Path
    tensors: dict[str, torch.Tensor]
    header: dict[str, Any]


def read_checkpoint(path: str | Path) -> StoredCheckpoint:
    """Reads a whole checkpoint, the first half of `restore_checkpoint`: a caller that must keep
    the learner still while it changes can read the file before it stops anything.

    Raises:
        CheckpointError: The file is torn or not a psp checkpoint.
    """
    tensors, header = _read(Path(path))
    return StoredCheckpoint(Path(path), tensors, header)


def restore_checkpoint(
    checkpoint: str | Path | StoredCheckpoint,
    learner: OnlineLearner,
    *,
    verify_contexts: bool = True,
) -> dict[str, str]:
    """Loads a checkpoint (a path, or one `read_checkpoint` read) into an existing learner whose
    model has the same config.

    With `verify_contexts`, the learner's bank must hold the checkpoint's contexts as a prefix
    (more may have been registered since). A caller that keeps contexts elsewhere (a registry)
    can turn the check off. The weights, optimiser state and version are replaced.

    Returns:
        The caller metadata stored with the checkpoint.

    Raises:
        CheckpointError: The file is torn, not a psp checkpoint, or written for another model.
    """
    if not isinstance(checkpoint, StoredCheckpoint):
        checkpoint = read_checkpoint(checkpoint)
    return _apply(checkpoint, learner, verify_contexts=verify_contexts)


def _require_full(path: Path, header: dict[str, Any]) -> None:
    """Only a full checkpoint can restore a learner: an export has no optimiser state."""
    if header.get("weights_only"):
        raise CheckpointError(
            f"checkpoint {path} holds weights only (exported for serving); restore the full "
            "checkpoint it was exported from"
        )


def _apply(
    checkpoint: StoredCheckpoint, learner: OnlineLearner, *, verify_contexts: bool = True
) -> dict[str, str]:
    path, tensors, header = checkpoint.path, checkpoint.tensors, checkpoint.header
    _require_full(path, header)
    stored = ModelConfig.from_dict(header["model_config"])
    if stored != learner.model.config:
        raise CheckpointError(
            f"checkpoint {path} was written for {stored}, but the model is "
            f"{learner.model.config}; load it into a model with the same config"
        )
    specs = _specs(tensors)
    if verify_contexts and learner.model.bank.specs[: len(specs)] != specs:
        raise CheckpointError(
            f"checkpoint {path} holds {len(specs)} contexts that differ from the model's bank"
        )
    device = learner.device
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    try:
        learner.model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {err}") from err
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, param_id, key = name.split(".", 2)
            state.setdefault(int(param_id), {})[key] = value.to(device)
    stored_training = TrainingConfig(**header["training_config"])
    if stored_training.optimizer != learner.config.optimizer:
        raise CheckpointError(
            f"checkpoint {path} holds {stored_training.optimizer} state but the learner uses "
            f"{learner.config.optimizer}; use the same optimizer"
        )
    optimizer = learner.config.build(learner.model.parameters())
    optimizer.load_state_dict({"state": state, "param_groups": header["optim_param_groups"]})
    # The learner's hyperparameters win over the stored ones, so a restart can change them.
    fresh_groups = learner.config.build(learner.model.parameters()).param_groups
    for group, fresh in zip(optimizer.param_groups, fresh_groups, strict=True):
        group.update({k: v for k, v in fresh.items() if k != "params"})
    learner.optimizer = optimizer
    learner.discard_prepared_step()
    learner.model_version = int(header["model_version"])
    if learner.scaler is not None:
        learner.scaler.load_state_tensors(_scaler_tensors(tensors))
    if learner.replay is not None:
        # Rows learned after this checkpoint will be learned (and kept) again on replay.
        saved = {
            k.removeprefix("replay."): v for k, v in tensors.items() if k.startswith("replay.")
        }
        if saved and header.get("replay"):
            learner.replay.load_state_tensors(saved, header["replay"])
        else:
            learner.replay.clear()
    return dict(header.get("user", {}))


def load_checkpoint(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[OnlineLearner, dict[str, str]]:
    """Builds a learner from a checkpoint alone.

    Returns:
        The learner (model, optimiser and version restored, contexts re-registered) and the
        caller metadata.
    """
    checkpoint = read_checkpoint(path)
    header = checkpoint.header
    _require_full(checkpoint.path, header)
    config = ModelConfig.from_dict(header["model_config"])
    model = build_model(config, device)
    model.bank.extend(_specs(checkpoint.tensors))
    replay = None
    if header.get("replay"):
        replay = ReplayBuffer(int(header["replay"]["capacity"]), config.input_size)
    learner = OnlineLearner(model, TrainingConfig(**header["training_config"]), replay=replay)
    return learner, _apply(checkpoint, learner)


_SERVING = ("model.", "scaler.")
"""The tensors a reader that only predicts needs: the weights and the input statistics."""


def _scaler_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("scaler."): v for k, v in tensors.items() if k.startswith("scaler.")}


@dataclass(frozen=True)
class ServingWeights:
    """What a reader that only predicts loads from a checkpoint (`read_weights`).

    Attributes:
        weights: The model's state dict (CPU tensors).
        scaler: The input scaler's state (`ContextScaler.load_state_tensors`); empty when the
            model does not scale its inputs.
        header: The checkpoint header.
    """

    weights: dict[str, torch.Tensor]
    scaler: dict[str, torch.Tensor]
    header: dict[str, Any]


def read_weights(path: str | Path, config: ModelConfig) -> ServingWeights:
    """The model weights and input statistics of a checkpoint (no optimiser state), checked
    against `config`.

    Readers that only serve predictions load these into their model with `load_state_dict`,
    which keeps the time they hold their model lock to a memory copy.

    Raises:
        CheckpointError: The file is torn, not a psp checkpoint, or for another config.
    """
    tensors, header = _read(Path(path), prefixes=_SERVING)
    stored = ModelConfig.from_dict(header["model_config"])
    if stored != config:
        raise CheckpointError(f"checkpoint {path} was written for {stored}, not {config}")
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    return ServingWeights(weights, _scaler_tensors(tensors), header)


def export_weights(path: str | Path) -> bytes:
    """A checkpoint file holding only the model weights, input statistics, config and version
    of `path`.

    This is all a reader that only predicts needs (`read_weights` reads it like a full
    checkpoint), without the optimiser state or the rehearsal rows, so it is a fraction of the
    size and holds none of the training data. Exporting the same checkpoint twice gives the
    same bytes, so a checksum of the export identifies it.

    Raises:
        CheckpointError: `path` is torn or not a psp checkpoint.
    """
    tensors, header = _read(Path(path), prefixes=_SERVING)
    weights_header = {
        "format": FORMAT,
        "weights_only": True,
        "model_config": header["model_config"],
        "model_version": header["model_version"],
    }
    return bytes(save_tensors(tensors, metadata={"psp": json.dumps(weights_header)}))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The checkpoint's header (config, version, caller metadata) without building a model."""
    _, header = _read(Path(path), prefixes=())
    return header
