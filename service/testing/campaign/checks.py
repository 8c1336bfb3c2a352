"""The invariants, checked after the last fault has healed and the trainer has drained.

- exactly once: for every live context, `examples_seen` = accepted - refused - dead-lettered;
- deleted contexts' rows are neither in the rehearsal buffer of the newest checkpoint nor in any
  kept checkpoint once the writer checkpointed after the delete, and no checkpoint written
  `DELETE_GRACE_SECONDS` after a delete holds them (every checkpoint is read as it comes, so a
  rollback that brings rows back is seen even when later checkpoints drop them again);
- predictions answer within `recovery_seconds` of each fault's healing;
- the served `model_version` never goes down (a rollback is a new, higher version);
- with `second_writer`: each second writer was turned away;
- every request was settled, and answered as documented;
- feedback ids answered 409 (already labelled) after a lost answer were queued (Redis keeps the
  queue's idempotency token of every queued feedback batch for five minutes).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from pathlib import Path

import httpx
from safetensors import SafetensorError

from service.checkpoints.store import CheckpointStore
from service.testing.campaign.clients import (
    INPUT_WIDTH,
    STABLE_TENANTS,
    ClientRecord,
    send_until_settled,
)
from service.testing.campaign.faults import FaultInjector
from service.testing.campaign.plan import Check
from service.testing.campaign.watches import (
    DELETE_GRACE_SECONDS,
    CheckpointWatch,
    VersionWatch,
    replay_contexts,
)
from service.testing.processes import wait_until


def drain_and_check(
    base_url: str,
    checkpoints: Path,
    injector: FaultInjector,
    versions: VersionWatch,
    checkpoint_watch: CheckpointWatch,
) -> list[Check]:
    """Drains the trainer and checks every invariant.

    Args:
        base_url: The service's.
        checkpoints: The writer's checkpoint folder.
        injector: What the faults did; its record, what the clients were answered.
        versions, checkpoint_watch: What the watches saw while the faults landed.
    """
    record = injector.record
    with httpx.Client(base_url=base_url, timeout=30) as client:
        _last_batch(client, injector.plan.seed, record)
        checks = [_exactly_once(client, record)]
    checks += _deleted_rows(record, checkpoints, checkpoint_watch)
    checks += _fault_checks(injector, versions)
    checks += _client_checks(record)
    return checks


def _last_batch(client: httpx.Client, seed: int, record: ClientRecord) -> None:
    """Trains one batch and waits for it once deletes have reached the writer: the checkpoint
    after it is taken after the writer forgot the deleted contexts."""
    time.sleep(2.5)  # the writer's registry poll, then the batch after it
    last = send_until_settled(
        client,
        "POST",
        f"/train/{STABLE_TENANTS[0]}",
        params={"wait": "true"},
        json={"inputs": [[0.25] * INPUT_WIDTH], "labels": [1]},
        headers={"Idempotency-Key": f"{seed}-last"},
        settled_by=lambda s: s < 500 and s != 429,
    )
    if last.status == 200:
        record.accept(STABLE_TENANTS[0], 1)


def _counted(client: httpx.Client, record: ClientRecord) -> dict[str, int]:
    """seen + refused + dead-lettered examples of every live context the clients made."""
    letters = client.get("/model/dead-letters", params={"limit": 1000}).json()["items"]
    dead: Counter[int] = Counter()
    for letter in letters:
        if letter["context_index"] is not None:
            dead[int(letter["context_index"])] += int(letter["examples"])
    counted = {}
    for tenant in record.tenants.values():
        if tenant.deleting or tenant.deleted:
            continue
        body = client.get(f"/contexts/{tenant.key}").json()
        counted[tenant.key] = body["examples_seen"] + body["refused"] + dead[tenant.index]
    return counted


def _exactly_once(client: httpx.Client, record: ClientRecord) -> Check:
    expected = {t.key: t.accepted for t in record.tenants.values() if not (t.deleting or t.deleted)}
    counted: dict[str, int] = {}

    def matches() -> bool:
        counted.clear()
        counted.update(_counted(client, record))
        return counted == expected

    with contextlib.suppress(TimeoutError):
        wait_until(matches, 120, 0.5, what="every accepted example counted")
    time.sleep(2.0)  # nothing may be counted twice later either
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
        matches()
    lost = {k: expected[k] - counted.get(k, 0) for k in expected}
    missing = {k: n for k, n in lost.items() if n > 0}
    doubled = {k: -n for k, n in lost.items() if n < 0}
    return Check(
        "every accepted example applied exactly once",
        counted == expected,
        f"{len(expected)} live contexts, {sum(expected.values())} examples accepted; "
        f"lost {sum(missing.values())} {missing or ''}, "
        f"duplicated {sum(doubled.values())} {doubled or ''}",
    )


def _deleted_rows(record: ClientRecord, checkpoints: Path, watch: CheckpointWatch) -> list[Check]:
    """The newest checkpoint and every kept one, read after the drain: a delete's rows leave
    the buffer and, at the writer's next checkpoint, every kept file."""
    deleted = {t.index: t.key for t in record.tenants.values() if t.deleted}
    kept = CheckpointStore(checkpoints, keep=1_000_000).list()
    if not kept:
        return [Check("no deleted context's rows in the newest checkpoint", False, "none")]
    holding: dict[str, dict[str, int]] = {}
    for info in kept:
        with contextlib.suppress(OSError, SafetensorError):  # pruned meanwhile
            found = {deleted[i]: n for i, n in replay_contexts(info.path).items() if i in deleted}
            if found:
                holding[info.path.name] = found
    newest = kept[-1].path.name
    older = [name for name in holding if name != newest]
    watch.look()
    return [
        Check(
            "no deleted context's rows in the newest checkpoint",
            newest not in holding,
            f"{len(deleted)} contexts deleted; {newest} holds "
            f"{holding.get(newest, 'none of their rows')}",
        ),
        Check(
            "no deleted context's rows in kept checkpoints",
            not older,
            f"{len(older)} of {len(kept) - 1} older kept checkpoints hold some {older[:3]}",
        ),
        Check(
            f"no checkpoint written {DELETE_GRACE_SECONDS:g} s after a delete holds its rows",
            not watch.holding,
            f"{len(watch.read)} checkpoints read as they came, {len(watch.holding)} held "
            f"rows of a deleted context {watch.holding[:3]}",
        ),
    ]


def _fault_checks(injector: FaultInjector, versions: VersionWatch) -> list[Check]:
    """Recovery after each fault, versions, rollbacks, second writers and restarts."""
    plan = injector.plan
    recovered = max(injector.recoveries, default=0.0)
    slow = injector.slow_recoveries
    rollbacks = ", ".join(f"{k}: {n}" for k, n in sorted(injector.rollbacks.items()))
    if plan.second_writer:
        second_writers = Check(
            "second writers turned away",
            not injector.second_writers,
            f"{injector.second_writer_runs} started; {injector.second_writers or 'all refused'}",
        )
    else:
        second_writers = Check("second writers turned away", None, "off (--no-second-writer)")
    return [
        Check(
            f"predictions within {plan.recovery_seconds:g} s of healing",
            not slow,
            f"{len(injector.recoveries)} recoveries, slowest {recovered:.1f} s"
            + (f"; {slow}" if slow else ""),
        ),
        Check(
            "versions only grow",
            not versions.decreases and versions.samples > 0,
            f"{versions.samples} reads up to version {versions.highest}, "
            f"{len(versions.decreases)} decreases {versions.decreases[:5]}",
        ),
        Check("rollbacks answered", None, rollbacks or "none asked"),
        second_writers,
        Check(
            "processes healed",
            not injector.heal_failures,
            "; ".join(injector.heal_failures) or "every killed process started again",
        ),
    ]


def _client_checks(record: ClientRecord) -> list[Check]:
    """Every request settled and answered as documented, and no feedback lost."""
    return [
        Check(
            "requests settled",
            not record.unsettled,
            f"{len(record.unsettled)} unsettled {record.unsettled[:5]}",
        ),
        Check(
            "answers as documented",
            not record.unexpected,
            f"{len(record.unexpected)} unexpected {record.unexpected[:5]}",
        ),
        Check(
            "feedback ids answered 409 were learned",
            not record.labels_lost,
            f"{len(record.labels_lost)} calls whose ids were taken but never queued "
            f"{record.labels_lost[:5]}",
        ),
    ]
