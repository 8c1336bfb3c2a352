"""What each page shows, gathered from the registry and the running shards.

The functions here read; the routes (`service.ui.routes`) validate the request, check the
caller and render. A caller whose key is limited to a prefix sees only the contexts under it,
and the dead letters (every tenant's train entries) only with an admin key without a prefix.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import REGISTRY

from service.api.auth import Principal
from service.queue.base import DeadLetter, QueueUnavailable
from service.registry.accuracy import AccuracyHour, hour_of
from service.registry.drift import DriftEvent, judge
from service.registry.models import ContextRow
from service.registry.overview import ContextSummary, SortKey
from service.runtime.runtime import Runtime
from service.settings import Settings
from service.ui import charts

SPARKLINE_HOURS = 48
DEAD_LETTERS_SHOWN = 5


@dataclass(frozen=True)
class ListQuery:
    """The list page's sorting, paging and filter, as the request gave them."""

    sort: SortKey
    descending: bool
    page: int
    per_page: int
    prefix: str


@dataclass(frozen=True)
class ContextLine:
    """One row of the list."""

    summary: ContextSummary
    state: str
    sparkline: charts.Markup


@dataclass(frozen=True)
class ShardLine:
    """One shard in the model panel; None where this process cannot tell."""

    number: int
    version: int
    live: int
    capacity: int | None
    queue_examples: int | None
    queue_lag_s: float | None
    divergences: int | None
    dead_letters: int | None


async def context_list(runtime: Runtime, caller: Principal, query: ListQuery) -> dict[str, Any]:
    """The list page: a sorted page of the caller's contexts with their sparklines."""
    registry = runtime.contexts.registry
    prefix = caller.listing_prefix(query.prefix)
    offset = (query.page - 1) * query.per_page
    summaries, total = await registry.overview(
        prefix, query.sort, query.descending, query.per_page, offset
    )
    now = datetime.now(UTC)
    slots = _hour_slots(now, SPARKLINE_HOURS)
    histories = await registry.accuracy_histories([s.index for s in summaries], slots[0])
    config = registry.history.drift
    recent = timedelta(hours=runtime.settings.accuracy.window_hours)
    lines = [
        ContextLine(
            summary,
            judge(summary.detectors, summary.last_drift_at, config=config, recent=recent, now=now),
            charts.sparkline(_train_accuracy(slots, histories[summary.index])),
        )
        for summary in summaries
    ]
    return {
        "lines": lines,
        "total": total,
        "pages": max(1, math.ceil(total / query.per_page)),
        "query": query,
        "prefix": prefix,
        "sparkline_hours": SPARKLINE_HOURS,
    }


async def model_panel(runtime: Runtime, caller: Principal) -> dict[str, Any]:
    """The model: its configuration, each shard's version, load and queue, and what went
    wrong lately (divergences, dead letters)."""
    live = await runtime.registry.live_per_shard()
    whole_model = "admin" in caller.scopes and not caller.key_prefix
    shards, letters = [], []
    for shard in runtime.shards:
        stats, total = None, None
        with contextlib.suppress(QueueUnavailable):  # shown as unknown
            stats = await shard.queue.stats()
            if whole_model:
                newest, total = await shard.queue.dead_letters(DEAD_LETTERS_SHOWN)
                letters += [(shard.number, letter) for letter in newest]
        shards.append(
            ShardLine(
                number=shard.number,
                version=shard.host.model_version,
                live=live[shard.number] if shard.number < len(live) else 0,
                capacity=runtime.settings.shards.capacity,
                queue_examples=None if stats is None else stats.pending_examples,
                queue_lag_s=None if stats is None else stats.oldest_age_seconds,
                divergences=_divergences(shard.number),
                dead_letters=total,
            )
        )
    letters.sort(key=lambda pair: pair[1].dead_lettered_at, reverse=True)
    del letters[DEAD_LETTERS_SHOWN:]
    host = runtime.shards[0].host
    return {
        "shards": shards,
        "dead_letters": [_letter(number, letter) for number, letter in letters],
        "dead_letters_visible": whole_model,
        "model": {
            "kind": runtime.settings.model.kind,
            "arch": runtime.settings.model.arch,
            "parameters": host.parameter_count,
            "device": str(host.device),
            "role": runtime.settings.role,
        },
    }


def _divergences(shard: int) -> int | None:
    """Divergences this process's trainer restored from, or None where it runs no trainer
    (role `api`: the shard's worker counts them in psp_trainer_divergences_total)."""
    value = REGISTRY.get_sample_value("psp_trainer_divergences_total", {"shard": str(shard)})
    return None if value is None else int(value)


def _letter(shard: int, letter: DeadLetter) -> dict[str, Any]:
    return {
        "shard": shard,
        "at": datetime.fromtimestamp(letter.dead_lettered_at, UTC),
        "context_index": letter.context_index,
        "examples": letter.examples,
        "reason": letter.reason,
    }


async def context_detail(
    runtime: Runtime, row: ContextRow, hours: int, base_url: str
) -> dict[str, Any]:
    """One context's page: its accuracy curves, rows per hour, drifts and how to call it."""
    registry = runtime.contexts.registry
    now = datetime.now(UTC)
    slots = _hour_slots(now, hours)
    buckets = await registry.accuracy_history(row.index, slots[0])
    window = runtime.settings.accuracy.window_hours
    drift = await registry.context_drift(row.index, window)
    events = await registry.drift_events(row.index, slots[0])
    train, feedback = await registry.accuracy_window(row.index, window)
    by_hour = {bucket.hour: bucket for bucket in buckets}
    series = [
        charts.Series("test-then-train", "train", _train_accuracy(slots, buckets)),
        charts.Series(
            "late labels",
            "feedback",
            [_accuracy_of(by_hour, hour, feedback=True) for hour in slots],
        ),
    ]
    slot_of = {hour: slot for slot, hour in enumerate(slots)}
    markers = [
        charts.Marker(slot_of[hour_of(event.at)], _event_label(event))
        for event in events
        if hour_of(event.at) in slot_of
    ]
    rows = [by_hour[hour].train.seen if hour in by_hour else 0 for hour in slots]
    return {
        "row": row,
        "kind": runtime.settings.model.kind,
        "hours": hours,
        "accuracy_chart": charts.accuracy_chart(slots, series, markers),
        "rows_chart": charts.bar_chart(slots, rows),
        "drift": drift,
        "recent": {"hours": window, "train": train, "feedback": feedback},
        "calls": _calls(base_url, row.key, runtime.settings),
    }


def _hour_slots(now: datetime, hours: int) -> list[datetime]:
    """The last `hours` hours, the current one included, oldest first."""
    current = hour_of(now)
    return [current - timedelta(hours=back) for back in range(hours - 1, -1, -1)]


def _train_accuracy(slots: list[datetime], buckets: list[AccuracyHour]) -> list[float | None]:
    by_hour = {bucket.hour: bucket for bucket in buckets}
    return [_accuracy_of(by_hour, hour, feedback=False) for hour in slots]


def _accuracy_of(
    by_hour: dict[datetime, AccuracyHour], hour: datetime, *, feedback: bool
) -> float | None:
    bucket = by_hour.get(hour)
    if bucket is None:
        return None
    return (bucket.feedback if feedback else bucket.train).accuracy


def _event_label(event: DriftEvent) -> str:
    return (
        f"drift at {event.at:%Y-%m-%d %H:%M} UTC: {event.source} accuracy fell from "
        f"{event.accuracy_before:.3f} to {event.accuracy_after:.3f} over {event.rows} rows"
    )


def _calls(base_url: str, key: str, settings: Settings) -> list[tuple[str, str]]:
    """How to call the context, as copyable shell lines (the key alphabet needs no quoting)."""
    width = math.prod(settings.model.input_shape)
    auth = '-H "Authorization: Bearer $PSP_API_KEY"'
    json = '-H "Content-Type: application/json"'
    url = "$PSP_URL"
    return [
        (
            "Set up once",
            f"export PSP_URL={base_url} PSP_API_KEY=<your key>\n"
            f"ROW=\"$(python3 -c 'print([0.0] * {width})')\"   # one input row: {width} numbers",
        ),
        (
            "Predict",
            f'curl -s {auth} {json} \\\n  -d "{{\\"inputs\\": [$ROW]}}" "{url}/predict/{key}"',
        ),
        (
            "Train (label 3)",
            f'curl -s {auth} {json} \\\n  -d "{{\\"inputs\\": [$ROW], \\"labels\\": [3]}}" '
            f'"{url}/train/{key}"',
        ),
        ("Read", f'curl -s {auth} "{url}/contexts/{key}"'),
        ("Hourly history", f'curl -s {auth} "{url}/contexts/{key}/history?hours=168"'),
    ]
