"""Contexts: register (one or many), read, list and delete."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from service.api.deps import Admin, KeyPath, Reader, RuntimeDep, check_context_keys
from service.api.json_route import BoundedBodyRoute
from service.api.schemas import (
    KEY_PREFIX_PATTERN,
    AccuracyHistory,
    AccuracyHourOut,
    ContextBatchCreate,
    ContextBatchOut,
    ContextCreate,
    ContextOut,
    ContextPage,
    DriftEventOut,
    DriftOut,
    RecentAccuracy,
    problems,
)
from service.registry.accuracy import hour_of
from service.registry.drift import DriftEvent
from service.registry.models import ContextRow

router = APIRouter(tags=["contexts"], route_class=BoundedBodyRoute)
MAX_HISTORY_HOURS = 24 * 366


def _out(row: ContextRow, kind: str) -> ContextOut:
    return ContextOut(
        key=row.key,
        index=row.index,
        kind=kind,
        seed=row.seed,
        power=row.power,
        shard=row.shard,
        created_at=row.created_at,
        examples_seen=row.examples_seen,
        refused=row.refused or 0,
        prequential_accuracy=row.prequential_accuracy,
    )


@router.post(
    "/contexts",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": ContextOut}, **problems(409, 422, 503)},
)
async def register_context(
    body: ContextCreate, runtime: RuntimeDep, response: Response, caller: Admin
) -> ContextOut:
    """Register a context; 200 with the same body if the key already exists identically."""
    check_context_keys(runtime, caller, "admin", [body.key])
    row, created = await runtime.contexts.register(body.key, body.seed, body.power)
    if not created:
        response.status_code = status.HTTP_200_OK
    return _out(row, runtime.settings.model.kind)


@router.post("/contexts:batch", status_code=status.HTTP_200_OK, responses=problems(409, 422, 503))
async def register_contexts(
    body: ContextBatchCreate, runtime: RuntimeDep, caller: Admin
) -> ContextBatchOut:
    """Register up to 10 000 contexts in one transaction."""
    check_context_keys(runtime, caller, "admin", [c.key for c in body.contexts])
    items = [(c.key, c.seed, c.power) for c in body.contexts]
    results = await runtime.contexts.register_many(items)
    kind = runtime.settings.model.kind
    return ContextBatchOut(
        items=[_out(row, kind) for row, _ in results],
        created=sum(1 for _, created in results if created),
    )


@router.get("/contexts", responses=problems(422, 503))
async def list_contexts(
    runtime: RuntimeDep,
    caller: Reader,
    limit: Annotated[int, Query(ge=0, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, lt=2**63)] = 0,
    prefix: Annotated[
        str,
        Query(
            pattern=KEY_PREFIX_PATTERN,
            description="Only contexts whose keys start with this.",
        ),
    ] = "",
) -> ContextPage:
    """List live contexts in registration order; a prefixed API key sees only its own."""
    rows, total = await runtime.contexts.page(limit, offset, caller.listing_prefix(prefix))
    kind = runtime.settings.model.kind
    return ContextPage(items=[_out(row, kind) for row in rows], total=total)


@router.get("/contexts/{key}", responses=problems(404, 422, 503))
async def get_context(key: KeyPath, runtime: RuntimeDep, caller: Reader) -> ContextOut:
    """One context, with its examples seen, prequential accuracy, rolling-window accuracy
    of its train scores and scored feedback, and its drift detection."""
    row = await runtime.contexts.get(key)
    hours = runtime.settings.accuracy.window_hours
    registry = runtime.contexts.registry
    train, feedback = await registry.accuracy_window(row.index, hours)
    drift = await registry.context_drift(row.index, hours)
    out = _out(row, runtime.settings.model.kind)
    out.recent = RecentAccuracy(
        window_hours=hours,
        train_seen=train.seen,
        train_accuracy=train.accuracy,
        feedback_seen=feedback.seen,
        feedback_accuracy=feedback.accuracy,
    )
    out.drift = DriftOut(
        state=drift.state,
        drifts=drift.drifts,
        last_drift_at=drift.last_drift_at,
        events=[_event_out(event) for event in drift.events],
    )
    return out


def _event_out(event: DriftEvent) -> DriftEventOut:
    return DriftEventOut(
        at=event.at,
        source=event.source,
        accuracy_before=event.accuracy_before,
        accuracy_after=event.accuracy_after,
        rows=event.rows,
    )


@router.get("/contexts/{key}/history", responses=problems(404, 422, 503))
async def get_context_history(
    key: KeyPath,
    runtime: RuntimeDep,
    caller: Reader,
    hours: Annotated[
        int, Query(ge=1, le=MAX_HISTORY_HOURS, description="The current hour and those before.")
    ] = 24,
) -> AccuracyHistory:
    """Hourly buckets of a context's train and feedback scores, oldest first (hours without
    scores are left out), and the drifts found in those hours."""
    row = await runtime.contexts.get(key)
    since = hour_of(datetime.now(UTC)) - timedelta(hours=hours - 1)
    buckets = await runtime.contexts.registry.accuracy_history(row.index, since)
    drifts = await runtime.contexts.registry.drift_events(row.index, since)
    return AccuracyHistory(
        key=key,
        hours=hours,
        buckets=[
            AccuracyHourOut(
                hour=bucket.hour,
                train_seen=bucket.train.seen,
                train_correct=bucket.train.correct,
                train_accuracy=bucket.train.accuracy,
                feedback_seen=bucket.feedback.seen,
                feedback_correct=bucket.feedback.correct,
                feedback_accuracy=bucket.feedback.accuracy,
            )
            for bucket in buckets
        ],
        drifts=[_event_out(event) for event in drifts],
    )


@router.delete(
    "/contexts/{key}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problems(404, 422, 503),
)
async def delete_context(key: KeyPath, runtime: RuntimeDep, caller: Admin) -> Response:
    """Retire a context; its key stops answering and its index is never reused."""
    await runtime.contexts.delete(key)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
