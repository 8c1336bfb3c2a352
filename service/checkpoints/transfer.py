"""Checkpoints handed from a shard's worker to the API replicas over HTTP, checksummed.

API replicas need not share the worker's volume (on Kubernetes each worker pod has its own).
After writing a checkpoint the worker exports its weights (no optimiser state, no rehearsal
rows: all a reader needs, and none of the training data), hashes the export with SHA-256, and
serves it at `GET /shards/<k>/checkpoints/<file>` on its health and metrics port. The
announcement in Redis carries that URL and the hash. A replica that does not find the file on
its own volume downloads it, checks the hash, writes it to its own checkpoint directory and only
then swaps it in; a failed download or a wrong hash leaves the served weights as they are, and
the next poll tries again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import httpx
from pydantic import SecretStr

from psp_core.checkpoint import CheckpointError, export_weights
from service import metrics
from service.api.auth import Unauthorized
from service.checkpoints.store import CheckpointInfo, CheckpointStore

# Exports kept in memory: the newest, and the one before for a replica that is one behind.
_EXPORTS_KEPT = 2


class _ChecksumMismatch(CheckpointError):
    """A download whose bytes are not the ones announced."""


class ExportNotFound(LookupError):
    """This worker does not write that shard, or no longer keeps that checkpoint."""


def check_fetch_token(expected: SecretStr | None, authorization: str | None) -> None:
    """Lets a download through when no token is configured or the request carries it.

    Raises:
        Unauthorized: A token is configured and the request does not carry it.
    """
    if expected is None:
        return
    sent = (authorization or "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(sent.encode(), expected.get_secret_value().encode()):
        raise Unauthorized(
            "checkpoints are served only with PSP_CHECKPOINT__FETCH_TOKEN; send it as "
            "'Authorization: Bearer <token>'"
        )


@dataclass(frozen=True)
class ExportedCheckpoint:
    """The weights of one checkpoint, as the bytes of a weights-only checkpoint file."""

    file: str
    blob: bytes
    sha256: str


class CheckpointExports:
    """The worker's side: exports of its newest checkpoints, by file name."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store
        self._exports: OrderedDict[str, ExportedCheckpoint] = OrderedDict()
        self._lock = threading.Lock()  # exports are made in worker threads

    def export(self, checkpoint: CheckpointInfo) -> ExportedCheckpoint:
        """Exports a checkpoint file and keeps the export (blocking: run it in a thread)."""
        blob = export_weights(checkpoint.path)
        exported = ExportedCheckpoint(checkpoint.path.name, blob, hashlib.sha256(blob).hexdigest())
        with self._lock:
            self._exports[exported.file] = exported
            while len(self._exports) > _EXPORTS_KEPT:
                self._exports.popitem(last=False)
        return exported

    def get(self, file: str) -> ExportedCheckpoint | None:
        """The export of `file`: kept, or made now if the store still holds the checkpoint
        (after a restart, the newest announcement names a file written before it); blocking."""
        with self._lock:
            kept = self._exports.get(file)
        if kept is not None:
            return kept
        info = self.store.info(file)
        if info is None:
            return None
        try:
            return self.export(info)
        except CheckpointError:
            return None  # pruned between the look and the read


class CheckpointFetcher:
    """The API replica's side: downloads an announced checkpoint into its own store."""

    def __init__(
        self,
        store: CheckpointStore,
        shard: int,
        token: str | None,
        timeout_seconds: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store = store
        self.shard = shard
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(
            headers=headers, timeout=timeout_seconds, transport=transport
        )

    async def fetch(self, file: str, url: str, sha256: str | None) -> CheckpointInfo:
        """Downloads `url`, checks that its SHA-256 is `sha256`, and stores it as `file`.

        Raises:
            CheckpointError: The worker did not answer with the file, or the bytes are not the
                ones announced; nothing was stored.
        """
        try:
            blob = await self._download(file, url)
            digest = hashlib.sha256(blob).hexdigest()
            if sha256 is None or digest != sha256:
                raise _ChecksumMismatch(
                    f"checkpoint {file} from {url} has SHA-256 {digest}, but {sha256} was "
                    "announced; keeping the weights served now"
                )
            info = await asyncio.to_thread(self._store, file, blob)
        except _ChecksumMismatch:
            self._count("checksum_mismatch")
            raise
        except CheckpointError:
            self._count("unavailable")
            raise
        self._count("ok")
        return info

    def _count(self, outcome: str) -> None:
        metrics.CHECKPOINT_FETCHES.labels(shard=str(self.shard), outcome=outcome).inc()

    async def _download(self, file: str, url: str) -> bytes:
        try:
            answer = await self._client.get(url)
        except httpx.HTTPError as err:
            raise CheckpointError(f"cannot download checkpoint {file} from {url}: {err}") from err
        if answer.status_code != 200:
            raise CheckpointError(
                f"cannot download checkpoint {file} from {url}: the worker answered "
                f"{answer.status_code} {answer.text[:200]}"
            )
        return answer.content

    def _store(self, file: str, blob: bytes) -> CheckpointInfo:
        """Writes the download under its own name (atomically) and prunes older ones."""
        info = self.store.named(file)
        if info is None:
            raise CheckpointError(f"{file!r} is not a checkpoint file name")
        partial = info.path.with_name(f".{file}.part-{os.getpid()}")
        partial.write_bytes(blob)
        os.replace(partial, info.path)
        self.store.prune()
        return info

    async def close(self) -> None:
        await self._client.aclose()
