"""One campaign from start to end: the processes up, the clients' traffic and the watches
running while the faults land, then the drain and the checks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from service.testing.campaign.checks import drain_and_check
from service.testing.campaign.clients import (
    SETTLE_SECONDS,
    ClientRecord,
    register_stable_tenants,
)
from service.testing.campaign.faults import FaultInjector
from service.testing.campaign.plan import CampaignPlan, CampaignResult, Check
from service.testing.campaign.topology import CampaignProcesses
from service.testing.campaign.traffic import Traffic
from service.testing.campaign.watches import CheckpointWatch, VersionWatch


def run_campaign(
    plan: CampaignPlan, directory: Path, log: Callable[[str], None] = print
) -> CampaignResult:
    """Runs one campaign in `directory` (its data folders, Redis files and process logs).

    Raises:
        RuntimeError: A private store could not be set up (the message says why).
    """
    started = time.monotonic()
    processes = CampaignProcesses(plan.topology, directory, log)
    record = ClientRecord()
    injector = FaultInjector(plan, processes, record, log)
    log(f"fault campaign: seed {plan.seed}, topology {plan.topology}, logs {processes.logs}")
    with processes.running():
        register_stable_tenants(processes.base_url, record)
        phases = {"start-up": time.monotonic() - started}
        checks = _faults_under_traffic(processes, injector, phases)
    return CampaignResult(
        seed=plan.seed,
        topology=plan.topology,
        seconds=time.monotonic() - started,
        faults=injector.faults,
        skipped=injector.skipped,
        requests=+record.requests,
        checks=checks,
        logs=processes.logs,
        command=plan.command(),
        phases=phases,
    )


def _faults_under_traffic(
    processes: CampaignProcesses, injector: FaultInjector, phases: dict[str, float]
) -> list[Check]:
    """Injects the plan's faults while the clients send traffic and the watches look on, then
    drains and checks; adds the time of both to `phases`."""
    plan, record = injector.plan, injector.record
    stop = threading.Event()
    versions = VersionWatch(processes.base_url, stop)
    checkpoint_watch = CheckpointWatch(processes.checkpoints, record, stop)
    clients = [
        Traffic(n, processes.base_url, record, plan.seed, stop, processes.redis.url)
        for n in range(plan.clients)
    ]
    for thread in [versions, checkpoint_watch, *clients]:
        thread.start()
    faults_started = time.monotonic()
    try:
        injector.run(faults_started)
    finally:
        stop.set()
        for thread in clients:
            thread.join(SETTLE_SECONDS + 30)
    failures = [thread.failure for thread in clients if thread.failure is not None]
    versions.join(5)
    checkpoint_watch.join(5)
    checks_started = time.monotonic()
    phases["faults"] = checks_started - faults_started
    checks = drain_and_check(
        processes.base_url, processes.checkpoints, injector, versions, checkpoint_watch
    )
    phases["drain and checks"] = time.monotonic() - checks_started
    if failures:
        checks.append(Check("clients ran to the end", False, repr(failures[-1])))
    return checks
