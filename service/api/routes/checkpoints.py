"""A worker's checkpoint downloads, for API replicas that do not share its volume."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Response

from service.api.deps import RuntimeDep
from service.checkpoints.transfer import check_fetch_token

router = APIRouter(tags=["checkpoints"])

FILE_PATTERN = r"^ckpt-\d{10}-v\d+\.safetensors$"


@router.get(
    "/shards/{shard}/checkpoints/{file}",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        401: {"description": "PSP_CHECKPOINT__FETCH_TOKEN is set and was not sent."},
        404: {"description": "Not this worker's shard, or no longer kept."},
    },
)
async def checkpoint_weights(
    runtime: RuntimeDep,
    shard: Annotated[int, Path(ge=0)],
    file: Annotated[str, Path(pattern=FILE_PATTERN)],
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    """The weights of one announced checkpoint, as a weights-only checkpoint file; its SHA-256
    is in the announcement and in `X-Checkpoint-SHA256`."""
    check_fetch_token(runtime.settings.checkpoint.fetch_token, authorization)
    exported = await runtime.checkpoint_export(shard, file)
    return Response(
        exported.blob,
        media_type="application/octet-stream",
        headers={"X-Checkpoint-SHA256": exported.sha256},
    )
