"""The answer of a route that queues rows for training: 202 once they are durably queued, or
with `?wait=true` 200 once the trainer is done with them, saying whether it learned them."""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from fastapi import Response, status
from pydantic import BaseModel

Answer = TypeVar("Answer", bound=BaseModel)


class Queued(Protocol):
    """What became of queued rows (`Submission` of a train batch, `Scored` of feedback)."""

    @property
    def batch_id(self) -> str: ...
    @property
    def accepted(self) -> int: ...
    @property
    def model_version(self) -> int | None: ...  # set only when the caller waited
    @property
    def refused(self) -> str | None: ...


def queued_answer(
    done: Queued,
    response: Response,
    accepted: type[Answer],
    applied: type[Answer],
    **fields: Any,
) -> Answer:
    """`accepted` with the batch id, the rows accepted and `fields`; once the trainer is done
    with the rows, `applied` (status 200), which adds whether it learned them and the model
    version."""
    queued = {"batch_id": done.batch_id, "accepted": done.accepted, **fields}
    if done.model_version is None:
        return accepted(**queued)
    response.status_code = status.HTTP_200_OK
    return applied(
        **queued,
        applied=done.refused is None,
        model_version=done.model_version,
        reason=done.refused,
    )
