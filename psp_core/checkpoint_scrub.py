"""Removing deleted contexts from a checkpoint file already on disk.

A context that is deleted must not come back: not through the rehearsal buffer of a checkpoint
restored later, nor from a file left on disk. The live learner forgets it at once
(`ReplayBuffer.purge`, `ContextScaler.forget`); this rewrites the files kept from before, so
that no kept checkpoint holds the context's rows or input statistics.

The weights and the optimiser state are left as they are: they hold no row of anyone, and the
context's bank row is the registry's to give to another context.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as save_tensors

from psp_core.checkpoint import _read, write_checkpoint
from psp_core.replay import ReplayBuffer


def held_contexts(path: str | Path) -> set[int]:
    """The context ids whose rows or statistics a checkpoint holds."""
    tensors, _ = _read(Path(path), ("replay.ids", "scaler.ids"))
    return {int(i) for t in tensors.values() for i in t.tolist()}


def forget_contexts_in(path: str | Path, context_ids: set[int]) -> int:
    """Rewrites the checkpoint at `path` without the rehearsal rows and input statistics of
    `context_ids`, atomically; a file that holds none of them is left untouched.

    The buffer is rebuilt as `ReplayBuffer.purge` leaves a live one, so a learner restored from
    the rewritten file is the learner that forgot the contexts, and it refuses their rows too.

    Returns:
        How many rehearsal rows were dropped (0 when the file was left untouched).
    """
    path = Path(path)
    if not held_contexts(path) & context_ids:  # reads the ids alone
        return 0
    tensors, header = _read(path)
    wanted = np.fromiter(context_ids, dtype=np.int64, count=len(context_ids))
    replay_ids = tensors.get("replay.ids")
    scaler_ids = tensors.get("scaler.ids")
    in_replay = replay_ids is not None and bool(np.isin(replay_ids.numpy(), wanted).any())
    in_scaler = scaler_ids is not None and bool(np.isin(scaler_ids.numpy(), wanted).any())
    if not (in_replay or in_scaler):
        return 0
    dropped = 0
    if in_replay:
        dropped = _purge_replay(tensors, header, context_ids)
    if in_scaler:
        assert scaler_ids is not None
        kept = torch.from_numpy(~np.isin(scaler_ids.numpy(), wanted))
        for name in [n for n in tensors if n.startswith("scaler.")]:
            tensors[name] = tensors[name][kept].contiguous()
    write_checkpoint(path, bytes(save_tensors(tensors, metadata={"psp": json.dumps(header)})))
    return dropped


def _purge_replay(
    tensors: dict[str, torch.Tensor], header: dict[str, object], context_ids: set[int]
) -> int:
    """Replaces the `replay.*` tensors and header with those of the buffer without
    `context_ids`."""
    saved = {k.removeprefix("replay."): v for k, v in tensors.items() if k.startswith("replay.")}
    replay_header = header["replay"]
    assert isinstance(replay_header, dict)
    width = int(saved["inputs"].shape[1])
    buffer = ReplayBuffer(int(replay_header["capacity"]), width)
    buffer.load_state_tensors(saved, replay_header)
    dropped = buffer.purge(context_ids)
    purged, header["replay"] = buffer.state_tensors()
    tensors.update({f"replay.{name}": t for name, t in purged.items()})
    return dropped
