"""The campaign's faults: what each kind does, what heals it, and the loop that injects them.

Faults of both topologies: Redis restarted (kill -9, then started again on the same port with
its append-only file, fsynced on every write as the compose stack runs it, so a 202 survives
it); PostgreSQL restarted (an immediate shutdown, a crash to the server, then started again);
checkpoint writes failing for a while (`PSP_FAULTS__DISK_FULL_WHILE`); a rollback to a kept
version; a second `psp worker` for shard 0 on a data folder of its own, which the writer lease
must turn away: exit status 2 and one line starting `psp:`. `split` adds kill -9 of the API
process and of the worker; `all` kill -9 of the server and of its step child. A store outage or
a full disk may hold a second fault inside it (a kill or a rollback), so that faults also meet
each other.

Faults come in rounds, each kind once per round in an order the seed draws, and a campaign
ends with a whole round, so even a short one meets every kind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx
import numpy as np

from service.testing.campaign.clients import INPUT_WIDTH, STABLE_TENANTS, ClientRecord
from service.testing.campaign.plan import CampaignPlan
from service.testing.campaign.topology import CampaignProcesses, step_children
from service.testing.processes import psp_worker

NESTING_SHARE = 0.3
"""The share of store outages and full disks that hold a second fault inside them."""

OUTAGES = ("restart_redis", "restart_postgres", "disk_full")
"""Faults that last a while, and may hold another fault inside them."""

INSIDE_AN_OUTAGE = ("kill_api", "kill_worker", "kill_server", "kill_step_child", "rollback")
"""Faults that may land inside an outage. A killed process is started again inside it (or,
when it will not start without the store, once the store is back); a rollback's answer is
awaited after the outage."""

Heal = Callable[[], bool]
"""Heals a fault; True once healed, False when it should be tried again later."""


class FaultInjector:
    """Injects the faults of one campaign into its processes, and keeps what they did.

    Attributes:
        faults: Faults injected, by kind.
        skipped: Faults drawn but with nothing to inject them into (no step child yet).
        recoveries: Seconds until a prediction answered after each fault healed.
        slow_recoveries: Faults after which no prediction answered in time.
        heal_failures: Faults whose process would not start again.
        second_writers: Second writers that were not turned away as documented.
        rollbacks: How rollbacks were answered, by status or reason.
    """

    def __init__(
        self,
        plan: CampaignPlan,
        processes: CampaignProcesses,
        record: ClientRecord,
        log: Callable[[str], None],
    ) -> None:
        self.plan = plan
        self.processes = processes
        self.record = record
        self.log = log
        self.rng = np.random.default_rng([plan.seed, 0])
        self.deck: list[str] = []  # the kinds still to come in this round
        self.faults: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.recoveries: list[float] = []
        self.slow_recoveries: list[str] = []
        self.heal_failures: list[str] = []
        self.second_writers: list[str] = []
        self.rollbacks: Counter[str] = Counter()
        self.second_writer_runs = 0

    @property
    def fault_count(self) -> int:
        return sum(self.faults.values())

    def run(self, started: float) -> None:
        """Injects faults until the plan's count and minutes are reached and the round is
        whole; leaves the disk writable."""
        plan = self.plan
        try:
            while (
                self.fault_count < plan.faults
                or time.monotonic() - started < plan.minutes * 60
                or self.deck  # rounds end whole
            ):
                self.pause(started)
                self.inject()
        finally:
            self.processes.disk_full_flag.unlink(missing_ok=True)

    def pause(self, started: float) -> None:
        """Waits a random while, so that the faults spread over the plan's minutes."""
        plan = self.plan
        left = plan.minutes * 60 - (time.monotonic() - started)
        remaining = max(plan.faults - self.fault_count, 1)
        mean = max(plan.pause_seconds, left / remaining - 4.0) if left > 0 else plan.pause_seconds
        time.sleep(float(self.rng.uniform(0, 2 * mean)))

    def inject(self) -> None:
        """One fault (or an outage with a second fault inside it), healed before returning."""
        kinds = self.plan.kinds()
        if not self.deck:
            # Every kind once per round, in a random order: a short campaign meets them all.
            self.deck = [kinds[i] for i in self.rng.permutation(len(kinds))]
        kind = self.deck.pop()
        hold = float(self.rng.uniform(0.3, 3.0))
        nested = float(self.rng.random()) < NESTING_SHARE
        inner_choice, fraction, inner_fraction = (float(x) for x in self.rng.random(3))
        first = self.fault_count + 1
        began = time.monotonic()
        heal = self._begin(kind, fraction)
        if heal is None:
            self.skipped[kind] += 1
            return
        self.faults[kind] += 1
        described = kind
        deferred: list[Heal] = []
        if kind in OUTAGES and nested:
            inside = [k for k in INSIDE_AN_OUTAGE if k in kinds]
            inner = inside[int(inner_choice * len(inside))]
            described, deferred = self._hold_with_inner(kind, inner, inner_fraction, hold)
        else:
            time.sleep(hold)
        if not heal():
            deferred.append(heal)
        for pending in deferred:
            if not any(pending() for _ in range(3)):  # `any` stops at the first success
                self.heal_failures.append(f"{described}: a process would not start again")
        numbers = f"{first}-{self.fault_count}" if self.fault_count > first else f"{first}"
        self._recovery()
        took = time.monotonic() - began
        self.log(
            f"  {time.strftime('%H:%M:%S')} fault {numbers}: {described}, held {hold:.1f} s, "
            f"healed in {took:.1f} s"
        )

    def _hold_with_inner(
        self, outer: str, inner: str, fraction: float, hold: float
    ) -> tuple[str, list[Heal]]:
        """Holds the outage `outer` for `hold` seconds with `inner` injected half way.

        Returns:
            What was injected, in words, and the heals left for after the outage (a rollback's
            answer, a process that would not start without the store).
        """
        time.sleep(hold / 2)
        inner_heal = self._begin(inner, fraction)
        described = outer
        deferred: list[Heal] = []
        if inner_heal is None:
            self.skipped[inner] += 1
        else:
            self.faults[inner] += 1
            described = f"{outer} holding {inner}"
            if inner == "rollback" or not inner_heal():
                deferred.append(inner_heal)
        time.sleep(hold / 2)
        return described, deferred

    def _begin(self, kind: str, fraction: float) -> Heal | None:
        """Injects one fault; returns what heals it, or None when there was nothing to inject
        it into."""
        processes = self.processes
        if kind == "kill_api" or kind == "kill_server":
            processes.api.kill()
            return lambda: processes.restart(processes.api)
        if kind == "kill_worker":
            worker = processes.worker
            assert worker is not None
            worker.kill()
            return lambda: processes.restart(worker)
        if kind == "kill_step_child":
            return self._kill_step_children()
        if kind == "restart_redis":
            processes.redis.kill()
            return _healed_by(processes.redis.start)
        if kind == "restart_postgres":
            processes.postgres.crash()
            return _healed_by(processes.postgres.start)
        if kind == "disk_full":
            processes.disk_full_flag.touch()
            return _healed_by(lambda: processes.disk_full_flag.unlink(missing_ok=True))
        if kind == "rollback":
            return self._ask_rollback(fraction)
        if kind == "second_writer":
            return self._start_second_writer()
        raise ValueError(f"unknown fault {kind}")

    def _kill_step_children(self) -> Heal | None:
        children = step_children(self.processes.api.pid)
        if not children:
            return None
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        return lambda: True  # the service starts a new child by itself

    def _ask_rollback(self, fraction: float) -> Heal:
        """Asks for a rollback beside the other faults: its answer may wait for a store or the
        disk to heal."""
        asked = threading.Thread(target=self._rollback, args=(fraction,), daemon=True)
        asked.start()

        def answered() -> bool:
            asked.join(75)  # the API answers within its 30 s (60 s for the client)
            return True

        return answered

    def _rollback(self, fraction: float) -> None:
        """Rolls back to the kept version at `fraction` of the list, and notes the answer."""
        with httpx.Client(base_url=self.processes.base_url, timeout=70) as client:
            try:
                kept = client.get("/model").json()["checkpoints"]
            except (httpx.HTTPError, ValueError, KeyError):
                self.rollbacks["model unreadable"] += 1
                return
            if not kept:
                self.rollbacks["no checkpoint kept yet"] += 1
                return
            version = int(kept[int(fraction * len(kept))])
            try:
                response = client.post("/model/rollback", json={"version": version})
            except httpx.TransportError:
                self.rollbacks["no answer"] += 1
                return
        self.rollbacks[str(response.status_code)] += 1
        if response.status_code == 200:
            outcome = f"served as version {response.json()['model_version']}"
        else:
            outcome = response.text[:200]
        self.log(f"  rollback to version {version}: {response.status_code}, {outcome}")
        if response.status_code not in (200, 404, 503, 504):
            self.record.note_unexpected(f"rollback to {version}", response)

    def _start_second_writer(self) -> Heal:
        """Starts a second `psp worker` for shard 0; its heal checks that the writer lease
        turned it away."""
        self.second_writer_runs += 1
        env = {
            **self.processes.env(),
            "PSP_DATA_DIR": str(self.processes.directory / "second-writer-data"),
            # It gives up on the lease after a second instead of the default 30.
            "PSP_WRITER__WAIT_SECONDS": "1",
        }
        name = f"second-writer-{self.second_writer_runs}"
        writer = psp_worker(name, env, self.processes.logs)
        stderr = self.processes.logs / f"{name}.stderr"
        with open(stderr, "wb") as errors, open(writer.log, "ab") as output:
            process = subprocess.Popen(
                writer.command, env={**os.environ, **writer.env}, stdout=output, stderr=errors
            )

        def heal() -> bool:
            try:
                code = process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
                self.second_writers.append(f"{name} still ran after 60 s (killed)")
                return True
            lines = stderr.read_text().strip().splitlines()
            said = [line for line in lines if line.startswith("psp:")]
            if code != 2 or len(said) != 1 or lines[-1] != said[0]:
                self.second_writers.append(f"{name} exited {code} with {lines[-3:]}")
            return True

        return heal

    def _recovery(self) -> None:
        """Times how soon a prediction answers after a fault healed."""
        started = time.monotonic()
        limit = self.plan.recovery_seconds
        body = {"inputs": [[0.5] * INPUT_WIDTH]}
        with httpx.Client(base_url=self.processes.base_url, timeout=5) as client:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if client.post(f"/predict/{STABLE_TENANTS[0]}", json=body).status_code == 200:
                        break
                if time.monotonic() - started > limit:
                    self.slow_recoveries.append(f"no prediction within {limit:g} s")
                    return
                time.sleep(0.1)
        self.recoveries.append(time.monotonic() - started)


def _healed_by(action: Callable[[], object]) -> Heal:
    """A heal that does `action` and is then healed."""

    def heal() -> bool:
        action()
        return True

    return heal
