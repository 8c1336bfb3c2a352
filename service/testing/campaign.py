"""A randomized fault campaign: real `psp` processes on a PostgreSQL and a Redis of their own,
several tenants' traffic, faults drawn from a seeded generator, and the invariants checked after.

The test (tests/service/faults/test_campaign.py) runs a short campaign; the benchmark
(benchmarks/fault_campaign.py) a long one. Both run `run_campaign`.

Processes (`topology`):

- `split`: one `psp serve` with `PSP_ROLE=api` and one `psp worker` for shard 0, sharing a data
  folder as the compose stack's containers share a volume. Its faults: kill -9 of the API
  process, kill -9 of the worker.
- `all`: one `psp serve` with `PSP_ROLE=all`, whose training steps run in a child process (the
  only role that has one). Its faults: kill -9 of that process, kill -9 of the step child.

Faults of both: Redis restarted (kill -9, then started again on the same port with its
append-only file, fsynced on every write as the compose stack runs it, so a 202 survives it);
PostgreSQL restarted (an immediate shutdown, a crash to the server, then started again);
checkpoint writes failing for a while (`PSP_FAULTS__DISK_FULL_WHILE`); a rollback to a kept
version; a second `psp worker` for shard 0 on a data folder of its own, which the writer lease
must turn away: exit status 2 and one line starting `psp:` (`second_writer=False` leaves it
out). A store outage or a full disk may
hold a second fault inside it (a kill or a rollback), so that faults also meet each other.

Traffic, from a few client threads: train batches with an Idempotency-Key, with and without
`?wait=true`; predictions; feedback (a prediction with `?remember=true`, then its labels);
registrations and deletes of short-lived tenants. A request whose answer was lost is sent again
as it is (same Idempotency-Key, same prediction ids) until an answer settles whether it was
accepted, as a careful client would.

Invariants, checked after the last fault has healed and the trainer has drained:

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

Faults come in rounds, each kind once per round in an order the seed draws, and a campaign
ends with a whole round, so even a short one meets every kind. The seed fixes the sequence of
faults (their kinds, how long each lasts, which ones nest) and the traffic's content; when each
lands against the traffic depends on the machine, so a failure a seed shows once may take a
few runs of that seed to show again.

PostgreSQL and Redis are private servers started here (PostgreSQL's binaries from
`PSP_TEST_POSTGRES_BINDIR`, else the newest under /usr/lib/postgresql), never the shared ones,
which other tests use. PostgreSQL refuses to run as root: under root its server runs as the
`postgres` user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import redis
from safetensors import SafetensorError, safe_open

from service.checkpoints.store import CheckpointStore
from service.feedback.service import _idempotency_key as feedback_idempotency_key
from service.queue.keys import ShardKeys
from service.testing.processes import (
    RedisServer,
    ServerProcess,
    free_port,
    psp_serve,
    psp_worker,
    wait_until,
)

Topology = Literal["split", "all"]

KEY_PREFIX = "psp-campaign:"
STABLE_TENANTS = ("tenant-0", "tenant-1", "tenant-2", "tenant-3")
"""Tenants that live through the whole campaign; short-lived ones come and go beside them."""
MAX_SHORT_LIVED = 3
INPUT_WIDTH = 64
NUM_CLASSES = 10

SETTLE_SECONDS = 120.0
"""How long a client sends a request again before it gives up on settling it."""

DELETE_GRACE_SECONDS = 10.0
"""How long after a delete was answered a new checkpoint may still hold the context's rows:
the writer's registry poll (1 s), its next checkpoint (1 s) and a PostgreSQL restart."""

NESTING_SHARE = 0.3
"""The share of store outages and full disks that hold a second fault inside them."""


# Private stores -------------------------------------------------------------------------------


def postgres_binaries() -> Path:
    """The directory of `initdb` and `pg_ctl`.

    Raises:
        RuntimeError: None is found; the message says what to install or set.
    """
    configured = os.environ.get("PSP_TEST_POSTGRES_BINDIR")
    candidates = [Path(configured)] if configured else []
    installed = Path("/usr/lib/postgresql")
    if installed.is_dir():
        versions = sorted(
            (p for p in installed.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        )
        candidates += [version / "bin" for version in reversed(versions)]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).parent)
    for candidate in candidates:
        if (candidate / "pg_ctl").exists() and (candidate / "initdb").exists():
            return candidate
    raise RuntimeError(
        "no PostgreSQL server binaries (initdb, pg_ctl) found under /usr/lib/postgresql or on "
        "PATH; install PostgreSQL 15 or set PSP_TEST_POSTGRES_BINDIR to their directory"
    )


class PrivatePostgres:
    """A PostgreSQL cluster of its own in a temporary folder, on a free port, trust auth, to
    crash and restart without touching the shared server.

    `fsync` is off: the faults kill processes, never the machine, and what a killed server
    wrote is in the kernel's page cache, so a crash loses no commit while the disk is spared.
    """

    def __init__(self) -> None:
        self.binaries = postgres_binaries()
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="psp-campaign-postgres-"))
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "PostgreSQL does not run as root, and there is no `postgres` user to run "
                    "it as; create one or run the campaign as another user"
                ) from None
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
            self._as_owner = ["runuser", "-u", "postgres", "--"]
        self._run(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *arguments: str) -> None:
        command = [*self._as_owner, str(self.binaries / program), *arguments]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}")

    def start(self) -> None:
        """Starts the server and waits until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", "60", "start")  # fmt: skip

    def crash(self) -> None:
        """An immediate shutdown: every backend quits at once, and the next start recovers
        from the write-ahead log, as after a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def close(self) -> None:
        """Stops the server, if it runs, and removes its folder."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)


class DurableRedis(RedisServer):
    """A private redis-server that keeps its data across a kill -9, as the compose stack runs
    Redis: every write is appended to a file and fsynced before Redis answers."""

    def start(self) -> None:
        binary = self.binary
        self.process = subprocess.Popen(
            [
                binary,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
                *("--maxmemory-policy", "noeviction", "--dir", str(self.directory)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Loading the append-only file may take a moment: Redis answers LOADING until then.
        wait_until(self._answers, 30, 0.05, what=f"redis-server on port {self.port}")


# What the clients were told -------------------------------------------------------------------


@dataclass
class Tenant:
    """A context the clients registered, and the examples the service accepted for it."""

    key: str
    index: int
    short_lived: bool
    accepted: int = 0
    deleting: bool = False
    deleted: bool = False
    deleted_at: float | None = None  # Unix time the delete was answered


@dataclass
class ClientRecord:
    """Everything the clients were answered, shared by their threads."""

    tenants: dict[str, Tenant] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    unsettled: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    labels_lost: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str, amount: int = 1) -> None:
        with self.lock:
            self.requests[what] += amount

    def accept(self, key: str, rows: int) -> None:
        with self.lock:
            self.tenants[key].accepted += rows

    def trainable(self) -> list[str]:
        with self.lock:
            return [t.key for t in self.tenants.values() if not (t.deleting or t.deleted)]

    def short_lived(self) -> list[str]:
        with self.lock:
            return [
                t.key
                for t in self.tenants.values()
                if t.short_lived and not (t.deleting or t.deleted)
            ]

    def note_unsettled(self, what: str) -> None:
        with self.lock:
            self.unsettled.append(what)

    def note_unexpected(self, what: str, response: httpx.Response) -> None:
        with self.lock:
            self.unexpected.append(f"{what}: {response.status_code} {response.text[:300]}")


@dataclass
class Answer:
    """The answer that settled a request, or None when none did within the time allowed.

    Attributes:
        response: The settling answer.
        ambiguous: Some earlier try may have been carried out without its answer reaching the
            client (a dropped connection, a timeout, a 5xx).
    """

    response: httpx.Response | None
    ambiguous: bool

    @property
    def status(self) -> int | None:
        return None if self.response is None else self.response.status_code


def send_until_settled(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    settled_by: Callable[[int], bool] = lambda status: status < 500 and status != 429,
    seconds: float = SETTLE_SECONDS,
    **request: Any,
) -> Answer:
    """Sends the same request again until an answer settles it.

    A refused connection carried nothing; any other transport error, and a 5xx, may have been
    carried out, so the request stays ambiguous until an answer settles it. 429 and 5xx are
    sent again after a short wait (a store may be restarting).
    """
    ambiguous = False
    deadline = time.monotonic() + seconds
    while True:
        try:
            response = client.request(method, url, **request)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            pass
        except httpx.TransportError:
            ambiguous = True
        else:
            if settled_by(response.status_code):
                return Answer(response, ambiguous)
            if response.status_code >= 500:
                ambiguous = True
        if time.monotonic() > deadline:
            return Answer(None, ambiguous)
        time.sleep(0.25)


def feedback_token(prefix: str, index: int, prediction_ids: list[str]) -> str:
    """The Redis key that marks a feedback batch as queued: the queue's put token under the
    idempotency key that `FeedbackService.label` derives from the context and the ids (its own
    function, so that the two cannot drift apart)."""
    return ShardKeys(prefix).put_token(feedback_idempotency_key(index, prediction_ids))


class Traffic(threading.Thread):
    """One client: trains, predicts, sends feedback, and (the first client) registers and
    deletes short-lived tenants, until told to stop; every request settled before the next."""

    def __init__(
        self,
        number: int,
        base_url: str,
        record: ClientRecord,
        seed: int,
        stop: threading.Event,
        redis_url: str,
    ) -> None:
        super().__init__(name=f"campaign-traffic-{number}", daemon=True)
        self.number = number
        self.record = record
        self.rng = np.random.default_rng([seed, 1, number])
        self.seed = seed
        self.stop = stop
        self.redis_url = redis_url
        self.client = httpx.Client(base_url=base_url, timeout=15)
        self.sent = 0
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.step()
                time.sleep(float(self.rng.uniform(0, 0.05)))
        except BaseException as error:  # reported by the campaign, which would not see it
            self.failure = error
        finally:
            self.client.close()

    def step(self) -> None:
        draw = float(self.rng.random())
        if draw < 0.40:
            self.train(wait=False)
        elif draw < 0.55:
            self.train(wait=True)
        elif draw < 0.80:
            self.predict()
        elif draw < 0.90:
            self.feedback()
        elif self.number == 0:
            self.register_or_delete(delete=draw >= 0.95)
        else:
            self.predict()

    def _rows(self, most: int) -> tuple[int, list[list[float]], list[int]]:
        rows = int(self.rng.integers(1, most + 1))
        inputs = self.rng.random((rows, INPUT_WIDTH)).round(3).tolist()
        labels = self.rng.integers(0, NUM_CLASSES, rows).tolist()
        return rows, inputs, labels

    def _pick(self, keys: list[str]) -> str:
        # One draw whatever the list, so the traffic's draws stay in step across runs.
        return keys[int(self.rng.random() * len(keys))]

    def train(self, wait: bool) -> None:
        key = self._pick(self.record.trainable())
        rows, inputs, labels = self._rows(16)
        self.sent += 1
        idempotency_key = f"{self.seed}-{self.number}-{self.sent}"
        what = f"train{'?wait' if wait else ''} {key} ({idempotency_key})"
        answer = send_until_settled(
            self.client,
            "POST",
            f"/train/{key}",
            params={"wait": "true"} if wait else None,
            json={"inputs": inputs, "labels": labels},
            headers={"Idempotency-Key": idempotency_key},
            # Waiting, 504 says the batch is queued and will be applied.
            settled_by=lambda s: (s < 500 and s != 429) or (wait and s == 504),
        )
        route = "train_wait" if wait else "train"
        if answer.status in (200, 202, 504):
            self.record.accept(key, rows)
            self.record.count(f"{route} accepted")
        elif answer.status == 404 and self.record.tenants[key].deleting:
            self.record.count(f"{route} of a deleted context")
        elif answer.response is None:
            self.record.count(f"{route} unsettled")
            if answer.ambiguous:
                self.record.note_unsettled(what)
        else:
            self.record.note_unexpected(what, answer.response)

    def predict(self) -> None:
        key = self._pick(self.record.trainable())
        _, inputs, _ = self._rows(8)
        try:
            response = self.client.post(f"/predict/{key}", json={"inputs": inputs})
        except httpx.TransportError:
            self.record.count("predict failed")
            return
        if response.status_code == 200:
            self.record.count("predict answered")
        elif response.status_code == 404 and self.record.tenants[key].deleting:
            self.record.count("predict of a deleted context")
        elif response.status_code >= 500:
            self.record.count("predict failed")
        else:
            self.record.note_unexpected(f"predict {key}", response)

    def feedback(self) -> None:
        key = self._pick(self.record.trainable())
        rows, inputs, labels = self._rows(8)
        predicted = send_until_settled(
            self.client,
            "POST",
            f"/predict/{key}",
            params={"remember": "true"},
            json={"inputs": inputs},
            seconds=10,
        )
        if predicted.status != 200:
            self.record.count("feedback without a prediction")
            return
        assert predicted.response is not None
        ids: list[str] = predicted.response.json()["prediction_ids"]
        what = f"feedback {key} ({len(ids)} ids)"
        answer = send_until_settled(
            self.client,
            "POST",
            f"/feedback/{key}",
            json={"prediction_ids": ids, "labels": labels},
        )
        if answer.status == 202:
            self.record.accept(key, rows)
            self.record.count("feedback accepted")
        elif answer.status == 409 and answer.ambiguous:
            # An earlier try claimed the ids: whether it queued them is in Redis.
            if self._feedback_was_queued(key, ids):
                self.record.accept(key, rows)
                self.record.count("feedback accepted")
            else:
                # The service says the ids have their labels, yet it never queued them.
                self.record.count("feedback claimed but never queued")
                with self.record.lock:
                    self.record.labels_lost.append(
                        f"{key}: {len(ids)} ids at {time.strftime('%H:%M:%S')}"
                    )
        elif answer.status == 404 and self.record.tenants[key].deleting:
            self.record.count("feedback of a deleted context")
        elif answer.response is None:
            self.record.count("feedback unsettled")
            if answer.ambiguous:
                self.record.note_unsettled(what)
        else:
            self.record.note_unexpected(what, answer.response)

    def _feedback_was_queued(self, key: str, ids: list[str]) -> bool:
        token = feedback_token(KEY_PREFIX, self.record.tenants[key].index, ids)
        found: list[bool] = []

        def look() -> bool:
            with redis.Redis.from_url(self.redis_url, socket_timeout=2) as client:
                found.append(bool(client.exists(token)))
            return True

        wait_until(look, SETTLE_SECONDS, 0.25, what="Redis answering")
        return found[-1]

    def register_or_delete(self, delete: bool) -> None:
        short_lived = self.record.short_lived()
        if delete and short_lived:
            self.delete(self._pick(short_lived))
        elif len(short_lived) < MAX_SHORT_LIVED:
            self.sent += 1
            self.register(f"short-{self.seed}-{self.sent}")
        else:
            self.predict()

    def register(self, key: str) -> None:
        answer = send_until_settled(self.client, "POST", "/contexts", json={"key": key})
        if answer.status in (200, 201):
            assert answer.response is not None
            tenant = Tenant(key, int(answer.response.json()["index"]), short_lived=True)
            with self.record.lock:
                self.record.tenants[key] = tenant
            self.record.count("register")
        elif answer.response is None:
            self.record.count("register unsettled")
            if answer.ambiguous:
                self.record.note_unsettled(f"register {key}")
        else:
            self.record.note_unexpected(f"register {key}", answer.response)

    def delete(self, key: str) -> None:
        tenant = self.record.tenants[key]
        with self.record.lock:
            tenant.deleting = True
        answer = send_until_settled(self.client, "DELETE", f"/contexts/{key}")
        # A 404 after an ambiguous try: that try deleted it.
        if answer.status == 204 or (answer.status == 404 and answer.ambiguous):
            with self.record.lock:
                tenant.deleted = True
                tenant.deleted_at = time.time()
            self.record.count("delete")
        elif answer.response is None:
            self.record.count("delete unsettled")
            self.record.note_unsettled(f"delete {key}")
        else:
            self.record.note_unexpected(f"delete {key}", answer.response)


def replay_contexts(path: Path) -> Counter[int]:
    """The rehearsal rows of a checkpoint file, counted by context index (registry index).

    Raises:
        OSError, SafetensorError: The file went (pruned) or is not a checkpoint.
    """
    with safe_open(str(path), framework="pt") as handle:
        stored: list[str] = handle.keys()
        if "replay.ids" not in stored:
            return Counter()
        return Counter(int(i) for i in handle.get_tensor("replay.ids").tolist())


class CheckpointWatch(threading.Thread):
    """Reads every checkpoint the writer publishes, soon after, and keeps each one that holds
    rows of a context deleted more than `DELETE_GRACE_SECONDS` before it was written: a delete
    reaches the writer within its registry poll, and its next checkpoint leaves the rows out
    (a rollback or a restore included)."""

    def __init__(self, directory: Path, record: ClientRecord, stop: threading.Event) -> None:
        super().__init__(name="campaign-checkpoint-watch", daemon=True)
        self.directory = directory
        self.record = record
        self.stop = stop
        self.read: set[str] = set()
        self.holding: list[str] = []

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.look()

    def look(self) -> None:
        if not self.directory.is_dir():
            return
        with self.record.lock:
            deleted = {
                t.index: (t.key, t.deleted_at)
                for t in self.record.tenants.values()
                if t.deleted_at is not None
            }
        for path in sorted(self.directory.glob("ckpt-*.safetensors")):
            if path.name in self.read:
                continue
            try:
                written = path.stat().st_mtime
                rows = replay_contexts(path)
            except (OSError, SafetensorError):
                continue  # pruned meanwhile
            self.read.add(path.name)
            for index, count in rows.items():
                key, deleted_at = deleted.get(index, ("", None))
                if deleted_at is not None and written - deleted_at > DELETE_GRACE_SECONDS:
                    self.holding.append(
                        f"{path.name} holds {count} rows of {key}, written "
                        f"{written - deleted_at:.0f} s after its delete"
                    )


class VersionWatch(threading.Thread):
    """Reads the served `model_version` of shard 0 every quarter second, and keeps every time
    it went down."""

    def __init__(self, base_url: str, stop: threading.Event) -> None:
        super().__init__(name="campaign-version-watch", daemon=True)
        self.base_url = base_url
        self.stop = stop
        self.samples = 0
        self.highest = 0
        self.decreases: list[str] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=5) as client:
            while not self.stop.wait(0.25):
                try:
                    version = int(client.get("/model").json()["model_version"])
                except (httpx.HTTPError, ValueError, KeyError):
                    continue
                self.samples += 1
                if version < self.highest:
                    self.decreases.append(f"{self.highest} -> {version} at {time.time():.3f}")
                self.highest = max(self.highest, version)


# The processes --------------------------------------------------------------------------------


def descendants(pid: int) -> dict[int, int]:
    """Every process below `pid`, mapped to its parent, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # The command name may hold spaces and parentheses: the fields follow the last ")".
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parents[int(entry.name)] = int(fields[1])
    below: dict[int, int] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in below:
                below[child] = parent
                frontier.append(child)
    return below


def step_children(server_pid: int) -> list[int]:
    """The training step children of a `psp serve` with `PSP_ROLE=all`: they fork from its
    multiprocessing fork server, so they are that server's children."""
    found = []
    for child, parent in descendants(server_pid).items():
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{parent}/cmdline").read_bytes()
            if parent != server_pid and b"multiprocessing.forkserver" in command:
                found.append(child)
    return found


def start_together(*servers: ServerProcess) -> None:
    """Starts the servers at once (each imports torch: seconds) and waits until all are
    healthy.

    Raises:
        RuntimeError, TimeoutError: One did not start (the first such error).
    """
    errors: list[BaseException] = []

    def start(server: ServerProcess) -> None:
        try:
            server.start()
        except (RuntimeError, TimeoutError) as error:
            errors.append(error)

    threads = [threading.Thread(target=start, args=(server,)) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


@dataclass
class Check:
    """One invariant's result: passed, failed or (None) not checked, and what was seen."""

    name: str
    passed: bool | None
    detail: str


@dataclass
class CampaignResult:
    """What a campaign did and found."""

    seed: int
    topology: Topology
    seconds: float
    faults: Counter[str]
    skipped: Counter[str]
    requests: Counter[str]
    checks: list[Check]
    logs: Path
    command: str
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def fault_count(self) -> int:
        return sum(self.faults.values())

    @property
    def passed(self) -> bool:
        return all(check.passed is not False for check in self.checks)

    def summary(self) -> str:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.faults.items()))
        lines = [
            f"fault campaign: seed {self.seed}, topology {self.topology}, "
            f"{self.seconds:.0f} s, {self.fault_count} faults ({kinds})",
        ]
        if self.phases:
            phases = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.phases.items())
            lines.append(f"  time: {phases}")
        if self.skipped:
            skipped = ", ".join(f"{kind} {n}" for kind, n in sorted(self.skipped.items()))
            lines.append(f"  not injected: {skipped}")
        requests = ", ".join(f"{what} {n}" for what, n in sorted(self.requests.items()))
        lines.append(f"  requests: {requests}")
        for check in self.checks:
            verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[check.passed]
            lines.append(f"  {verdict} {check.name}: {check.detail}")
        lines.append(f"  {'PASSED' if self.passed else 'FAILED'}; process logs in {self.logs}")
        lines.append(f"  reproduce: {self.command}")
        return "\n".join(lines)


@dataclass
class CampaignPlan:
    """What to run.

    Attributes:
        seed: Seeds the faults and the traffic.
        faults: Faults to inject at least.
        minutes: Minutes to go on injecting at least (faults spread over them).
        topology: `split` (API + worker) or `all` (one process, steps in a child).
        second_writer: Whether a second `psp worker` for shard 0 is among the faults.
        recovery_seconds: How soon predictions must answer after a fault healed.
        clients: Traffic threads.
        pause_seconds: The mean pause between faults when `minutes` sets none longer.
    """

    seed: int
    faults: int
    minutes: float = 0.0
    topology: Topology = "split"
    second_writer: bool = True
    recovery_seconds: float = 30.0
    clients: int = 2
    pause_seconds: float = 0.5

    def kinds(self) -> list[str]:
        own = ["kill_api", "kill_worker"] if self.topology == "split" else ["kill_server"]
        if self.topology == "all":
            own.append("kill_step_child")
        shared = ["restart_redis", "restart_postgres", "disk_full", "rollback"]
        return own + shared + (["second_writer"] if self.second_writer else [])

    def command(self) -> str:
        flags = "" if self.second_writer else " --no-second-writer"
        if self.recovery_seconds != 30.0:
            flags += f" --recovery-seconds {self.recovery_seconds:g}"
        if self.pause_seconds != 0.5:
            flags += f" --pause-seconds {self.pause_seconds:g}"
        return (
            f"python benchmarks/fault_campaign.py --seed {self.seed} --faults {self.faults} "
            f"--minutes {self.minutes:g} --topology {self.topology}{flags}"
        )


OUTAGES = ("restart_redis", "restart_postgres", "disk_full")
"""Faults that last a while, and may hold another fault inside them."""

INSIDE_AN_OUTAGE = ("kill_api", "kill_worker", "kill_server", "kill_step_child", "rollback")
"""Faults that may land inside an outage. A killed process is started again inside it (or,
when it will not start without the store, once the store is back); a rollback's answer is
awaited after the outage."""


class Campaign:
    """The stores, the processes and the fault loop of one campaign (`run_campaign`)."""

    def __init__(self, plan: CampaignPlan, directory: Path, log: Callable[[str], None]) -> None:
        self.plan = plan
        self.directory = directory
        self.log = log
        self.logs = directory / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.disk_full_flag = directory / "disk-full"
        self.rng = np.random.default_rng([plan.seed, 0])
        self.deck: list[str] = []  # the kinds still to come in this round
        self.faults: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.recoveries: list[float] = []
        self.slow_recoveries: list[str] = []
        self.heal_failures: list[str] = []
        self.second_writers: list[str] = []
        self.rollbacks: Counter[str] = Counter()
        self.record = ClientRecord()
        self.postgres = PrivatePostgres()
        self.redis = DurableRedis(directory)
        self.api: ServerProcess
        self.worker: ServerProcess | None = None
        self.second_writer_runs = 0

    @property
    def base_url(self) -> str:
        return self.api.base_url

    @property
    def checkpoints(self) -> Path:
        """Where the writer of shard 0 keeps its checkpoints."""
        return self.directory / "data" / "checkpoints"

    def env(self) -> dict[str, str]:
        return {
            "PSP_DATA_DIR": str(self.directory / "data"),
            "PSP_DATABASE_URL": self.postgres.url,
            "PSP_REDIS_URL": self.redis.url,
            "PSP_KEY_PREFIX": KEY_PREFIX,
            "PSP_DEVICE": "cpu",
            "PSP_MODEL__KIND": "binary",
            "PSP_MODEL__HIDDEN": "[32]",
            "PSP_MODEL__INPUT_SHAPE": f"[{INPUT_WIDTH}]",
            "PSP_REGISTRY_POLL_SECONDS": "1",
            "PSP_CHECKPOINT__EVERY_STEPS": "20",
            "PSP_CHECKPOINT__EVERY_SECONDS": "1",
            # Rollbacks reach back minutes, past deletes that the writer's look back at recent
            # deletes (a minute) no longer sees; a small buffer keeps the files small.
            "PSP_CHECKPOINT__KEEP": "150",
            "PSP_REPLAY__ROWS": "2000",
            "PSP_LIMITS__WAIT_SECONDS": "10",
            "PSP_FAULTS__DISK_FULL_WHILE": str(self.disk_full_flag),
            "OMP_NUM_THREADS": "1",
        }

    # Set-up and tear-down ---------------------------------------------------------------------

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        try:
            self.postgres.start()
            self.redis.start()
            env = self.env()
            if self.plan.topology == "split":
                self.api = psp_serve("api", {**env, "PSP_ROLE": "api"}, self.logs)
                self.worker = psp_worker("worker", env, self.logs)
                start_together(self.api, self.worker)
            else:
                self.api = psp_serve("server", {**env, "PSP_ROLE": "all"}, self.logs)
                self.api.start()
            yield
        finally:
            for server in (self.worker, getattr(self, "api", None)):
                if server is not None:
                    server.kill()
            self.redis.kill()
            self.postgres.close()

    def register_stable_tenants(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=15) as client:
            for key in STABLE_TENANTS:
                answer = send_until_settled(client, "POST", "/contexts", json={"key": key})
                if answer.status not in (200, 201):
                    raise RuntimeError(f"registering {key} answered {answer.status}")
                assert answer.response is not None
                index = int(answer.response.json()["index"])
                self.record.tenants[key] = Tenant(key, index, short_lived=False)

    # Faults ----------------------------------------------------------------------------------

    def _restart(self, server: ServerProcess, timeout: float = 120.0) -> bool:
        """Starts a killed process again; False when it would not start (a store it needs may
        be down: it is started again once the store is back)."""
        try:
            server.start(timeout)
            return True
        except (RuntimeError, TimeoutError) as error:
            self.log(f"  {server.name} did not start: {str(error).splitlines()[0]}")
            server.kill()
            return False

    def _begin(self, kind: str, fraction: float) -> Callable[[], bool] | None:
        """Injects one fault; returns what heals it (True once healed), or None when there was
        nothing to inject it into."""
        if kind == "kill_api" or kind == "kill_server":
            self.api.kill()
            return lambda: self._restart(self.api)
        if kind == "kill_worker":
            worker = self.worker
            assert worker is not None
            worker.kill()
            return lambda: self._restart(worker)
        if kind == "kill_step_child":
            children = step_children(self.api.pid)
            if not children:
                return None
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            return lambda: True  # the service starts a new child by itself
        if kind == "restart_redis":
            self.redis.kill()
            return self._heal_redis
        if kind == "restart_postgres":
            self.postgres.crash()
            return self._heal_postgres
        if kind == "disk_full":
            self.disk_full_flag.touch()
            return self._heal_disk
        if kind == "rollback":
            # Sent beside the other faults: an answer may wait for a store or the disk to heal.
            asked = threading.Thread(target=self._rollback, args=(fraction,), daemon=True)
            asked.start()

            def answered() -> bool:
                asked.join(75)  # the API answers within its 30 s (60 s for the client)
                return True

            return answered
        if kind == "second_writer":
            return self._start_second_writer()
        raise ValueError(f"unknown fault {kind}")

    def _heal_redis(self) -> bool:
        self.redis.start()
        return True

    def _heal_postgres(self) -> bool:
        self.postgres.start()
        return True

    def _heal_disk(self) -> bool:
        self.disk_full_flag.unlink(missing_ok=True)
        return True

    def _rollback(self, fraction: float) -> None:
        with httpx.Client(base_url=self.base_url, timeout=70) as client:
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

    def _start_second_writer(self) -> Callable[[], bool]:
        self.second_writer_runs += 1
        env = {
            **self.env(),
            "PSP_DATA_DIR": str(self.directory / "second-writer-data"),
            # It gives up on the lease after a second instead of the default 30.
            "PSP_WRITER__WAIT_SECONDS": "1",
        }
        name = f"second-writer-{self.second_writer_runs}"
        writer = psp_worker(name, env, self.logs)
        stderr = self.logs / f"{name}.stderr"
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
        with httpx.Client(base_url=self.base_url, timeout=5) as client:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if client.post(f"/predict/{STABLE_TENANTS[0]}", json=body).status_code == 200:
                        break
                if time.monotonic() - started > limit:
                    self.slow_recoveries.append(f"no prediction within {limit:g} s")
                    return
                time.sleep(0.1)
        self.recoveries.append(time.monotonic() - started)

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
        deferred: list[Callable[[], bool]] = []
        if kind in OUTAGES and nested:
            inside = [k for k in INSIDE_AN_OUTAGE if k in kinds]
            inner = inside[int(inner_choice * len(inside))]
            time.sleep(hold / 2)
            inner_heal = self._begin(inner, inner_fraction)
            if inner_heal is None:
                self.skipped[inner] += 1
            else:
                self.faults[inner] += 1
                described = f"{kind} holding {inner}"
                if inner == "rollback" or not inner_heal():
                    deferred.append(inner_heal)
            time.sleep(hold / 2)
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

    @property
    def fault_count(self) -> int:
        return sum(self.faults.values())

    def pause(self, started: float) -> None:
        plan = self.plan
        left = plan.minutes * 60 - (time.monotonic() - started)
        remaining = max(plan.faults - self.fault_count, 1)
        mean = max(plan.pause_seconds, left / remaining - 4.0) if left > 0 else plan.pause_seconds
        time.sleep(float(self.rng.uniform(0, 2 * mean)))

    # Checks -----------------------------------------------------------------------------------

    def drain_and_check(self, watch: VersionWatch, checkpoints: CheckpointWatch) -> list[Check]:
        record = self.record
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            # Deletes reach the writer within its registry poll; the batch after them makes a
            # checkpoint, taken after the writer forgot the deleted contexts.
            time.sleep(2.5)
            last = send_until_settled(
                client,
                "POST",
                f"/train/{STABLE_TENANTS[0]}",
                params={"wait": "true"},
                json={"inputs": [[0.25] * INPUT_WIDTH], "labels": [1]},
                headers={"Idempotency-Key": f"{self.plan.seed}-last"},
                settled_by=lambda s: s < 500 and s != 429,
            )
            if last.status == 200:
                record.accept(STABLE_TENANTS[0], 1)
            checks = [self._exactly_once(client)]
        checks.extend(self._deleted_rows(checkpoints))
        recovered = max(self.recoveries, default=0.0)
        checks.append(
            Check(
                f"predictions within {self.plan.recovery_seconds:g} s of healing",
                not self.slow_recoveries,
                f"{len(self.recoveries)} recoveries, slowest {recovered:.1f} s"
                + (f"; {self.slow_recoveries}" if self.slow_recoveries else ""),
            )
        )
        checks.append(
            Check(
                "versions only grow",
                not watch.decreases and watch.samples > 0,
                f"{watch.samples} reads up to version {watch.highest}, "
                f"{len(watch.decreases)} decreases {watch.decreases[:5]}",
            )
        )
        rollbacks = ", ".join(f"{k}: {n}" for k, n in sorted(self.rollbacks.items()))
        checks.append(Check("rollbacks answered", None, rollbacks or "none asked"))
        if self.plan.second_writer:
            checks.append(
                Check(
                    "second writers turned away",
                    not self.second_writers,
                    f"{self.second_writer_runs} started; {self.second_writers or 'all refused'}",
                )
            )
        else:
            checks.append(Check("second writers turned away", None, "off (--no-second-writer)"))
        checks.append(
            Check(
                "processes healed",
                not self.heal_failures,
                "; ".join(self.heal_failures) or "every killed process started again",
            )
        )
        checks.append(
            Check(
                "requests settled",
                not record.unsettled,
                f"{len(record.unsettled)} unsettled {record.unsettled[:5]}",
            )
        )
        checks.append(
            Check(
                "answers as documented",
                not record.unexpected,
                f"{len(record.unexpected)} unexpected {record.unexpected[:5]}",
            )
        )
        checks.append(
            Check(
                "feedback ids answered 409 were learned",
                not record.labels_lost,
                f"{len(record.labels_lost)} calls whose ids were taken but never queued "
                f"{record.labels_lost[:5]}",
            )
        )
        return checks

    def _counted(self, client: httpx.Client) -> dict[str, int]:
        """seen + refused + dead-lettered examples of every live context the clients made."""
        letters = client.get("/model/dead-letters", params={"limit": 1000}).json()["items"]
        dead: Counter[int] = Counter()
        for letter in letters:
            if letter["context_index"] is not None:
                dead[int(letter["context_index"])] += int(letter["examples"])
        counted = {}
        for tenant in self.record.tenants.values():
            if tenant.deleting or tenant.deleted:
                continue
            body = client.get(f"/contexts/{tenant.key}").json()
            counted[tenant.key] = body["examples_seen"] + body["refused"] + dead[tenant.index]
        return counted

    def _exactly_once(self, client: httpx.Client) -> Check:
        expected = {
            t.key: t.accepted for t in self.record.tenants.values() if not (t.deleting or t.deleted)
        }
        counted: dict[str, int] = {}

        def matches() -> bool:
            counted.clear()
            counted.update(self._counted(client))
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

    def _deleted_rows(self, watch: CheckpointWatch) -> list[Check]:
        """The newest checkpoint and every kept one, read after the drain: a delete's rows
        leave the buffer and, at the writer's next checkpoint, every kept file."""
        deleted = {t.index: t.key for t in self.record.tenants.values() if t.deleted}
        kept = CheckpointStore(self.checkpoints, keep=1_000_000).list()
        if not kept:
            return [Check("no deleted context's rows in the newest checkpoint", False, "none")]
        holding: dict[str, dict[str, int]] = {}
        for info in kept:
            with contextlib.suppress(OSError, SafetensorError):  # pruned meanwhile
                found = {
                    deleted[i]: n for i, n in replay_contexts(info.path).items() if i in deleted
                }
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

    # The campaign -----------------------------------------------------------------------------

    def run(self) -> CampaignResult:
        started = time.monotonic()
        plan = self.plan
        self.log(f"fault campaign: seed {plan.seed}, topology {plan.topology}, logs {self.logs}")
        failure: BaseException | None = None
        with self.running():
            self.register_stable_tenants()
            stop = threading.Event()
            watch = VersionWatch(self.base_url, stop)
            checkpoints = CheckpointWatch(self.checkpoints, self.record, stop)
            clients = [
                Traffic(n, self.base_url, self.record, plan.seed, stop, self.redis.url)
                for n in range(plan.clients)
            ]
            for thread in [watch, checkpoints, *clients]:
                thread.start()
            campaign_started = time.monotonic()
            phases = {"start-up": campaign_started - started}
            try:
                while (
                    self.fault_count < plan.faults
                    or time.monotonic() - campaign_started < plan.minutes * 60
                    or self.deck  # rounds end whole
                ):
                    self.pause(campaign_started)
                    self.inject()
            finally:
                self.disk_full_flag.unlink(missing_ok=True)
                stop.set()
                for thread in clients:
                    thread.join(SETTLE_SECONDS + 30)
            for thread in clients:
                if thread.failure is not None:
                    failure = thread.failure
            watch.join(5)
            checkpoints.join(5)
            checks_started = time.monotonic()
            phases["faults"] = checks_started - campaign_started
            checks = self.drain_and_check(watch, checkpoints)
            phases["drain and checks"] = time.monotonic() - checks_started
        if failure is not None:
            checks.append(Check("clients ran to the end", False, repr(failure)))
        return CampaignResult(
            seed=plan.seed,
            topology=plan.topology,
            seconds=time.monotonic() - started,
            faults=self.faults,
            skipped=self.skipped,
            requests=+self.record.requests,
            checks=checks,
            logs=self.logs,
            command=plan.command(),
            phases=phases,
        )


def run_campaign(
    plan: CampaignPlan, directory: Path, log: Callable[[str], None] = print
) -> CampaignResult:
    """Runs one campaign in `directory` (its data folders, Redis files and process logs).

    Raises:
        RuntimeError: A private store could not be set up (the message says why).
    """
    return Campaign(plan, directory, log).run()


__all__ = [
    "CampaignPlan",
    "CampaignResult",
    "Check",
    "DurableRedis",
    "PrivatePostgres",
    "run_campaign",
]
