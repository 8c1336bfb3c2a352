"""Adversarial requests against a live `psp serve`, while a prober times `GET /healthz`.

One server on defaults (complex 2x256, SQLite, the in-process queue) with one admin key, so
that authentication is on. Each case sends its request `--repeat` times from `--senders`
concurrent clients; a separate process asks `/healthz` every 10 ms throughout and reads the
server's resident memory (VmRSS of the API process) and its threads' CPU use (the kernel's
scheduler statistics) at each probe. Per case the table gives the answers' statuses, the
request's median latency, `/healthz`'s median, p99 and worst latency while the case ran, for
the worst probe how long the server's event loop ran and how long it waited for a CPU
meanwhile, the event loop's CPU time per request, and the API process's RSS above its level
before the first case. A slow probe whose loop ran all along is the server's own stall; one
whose loop waited for a CPU is the machine's.

The cases: bodies of millions of empty lists or objects (JSON, msgpack, gzip of each), sent
without a key and with one; deep nesting; 16 MB of whitespace or of one string; 30,000
repeated prediction ids, and as many as one call may carry; numbers with 400 digits;
malformed Open Inference Protocol requests; lists over their caps (multi-predict rows, infer
rows, contexts to register); and the largest valid train, predict, multi-predict and infer
requests, for comparison.

Targets: `/healthz` p99 below 50 ms over every case, RSS growth below 100 MB, no 5xx.

    python benchmarks/adversarial.py
    python benchmarks/adversarial.py --repeat 3 --cases feedback-30k-repeats,json-bomb
    PYTHONPATH=/path/to/other/checkout python benchmarks/adversarial.py   # another tree's server
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, NamedTuple

import httpx
from _adversarial_cases import WIDTH, Case, cases
from _harness import machine_line, percentile, print_table, save_json, throwaway_dir

from service.api.auth import issue_key
from service.testing.processes import psp_serve

ADMIN, ADMIN_SPEC = issue_key(["admin", "predict", "train"])
AUTH = {"X-API-Key": ADMIN}
PROBE_SECONDS = 0.01


# The prober: a process of its own, so that the load generator's work never delays it. --------


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _cpu_ns(pid: int) -> tuple[int, int, int]:
    """The server's CPU use so far, from the kernel's scheduler statistics: how long its event
    loop (the main thread) has run and has waited, runnable, for a CPU, and how long its other
    threads have run (a thread that has ended no longer counts)."""
    loop_ran = loop_waited = others_ran = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                ran, waited, _ = (int(field) for field in stat.read().split())
        except (OSError, ValueError):  # the thread ended meanwhile
            continue
        if int(tid) == pid:
            loop_ran, loop_waited = ran, waited
        else:
            others_ran += ran
    return loop_ran, loop_waited, others_ran


class Probe(NamedTuple):
    """One `GET /healthz`: when it was answered, how long it took, the server's RSS then, and
    what the server's threads did meanwhile (seconds): a slow probe whose event loop ran all
    along is the server's own stall; one whose loop waited for a CPU is the machine's."""

    at: float
    latency: float
    rss: int
    loop_ran: float
    loop_waited: float
    others_ran: float
    loop_ran_total: float  # since the server started, when the probe was answered


def probe(base_url: str, pid: int, started: Any, stop: Any, out: Any) -> None:
    """Times `GET /healthz` every `PROBE_SECONDS` and reads the server's RSS and CPU use,
    until `stop`; sets `started` once the first probe is answered."""
    samples = []
    with httpx.Client(base_url=base_url, timeout=60) as client:
        while not stop.is_set():
            cpu_before = _cpu_ns(pid)
            began = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):  # a probe that fails counts its wait
                client.get("/healthz")
            ended = time.perf_counter()
            cpu_after = _cpu_ns(pid)
            ran, waited, others = (
                max(0, a - b) / 1e9 for a, b in zip(cpu_after, cpu_before, strict=True)
            )
            rss = _rss_bytes(pid)
            samples.append(
                Probe(time.time(), ended - began, rss, ran, waited, others, cpu_after[0] / 1e9)
            )
            started.set()
            time.sleep(max(0.0, PROBE_SECONDS - (time.perf_counter() - began)))
    out.put(samples)


# The attack ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    case: str
    reference: bool
    began: float
    ended: float
    statuses: Counter[int]
    latencies: list[float]


async def attack(base_url: str, case: Case, repeat: int, senders: int) -> Outcome:
    headers = {**case.headers, **(AUTH if case.keyed else {})}
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    left = repeat

    async def sender() -> None:
        nonlocal left
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
            while left > 0:
                left -= 1
                began = time.perf_counter()
                try:
                    answer = await client.post(case.path, content=case.body, headers=headers)
                    statuses[answer.status_code] += 1
                except httpx.TransportError:
                    statuses[0] += 1  # no answer: the server closed the connection
                latencies.append(time.perf_counter() - began)

    began = time.time()
    await asyncio.gather(*(sender() for _ in range(senders)))
    return Outcome(case.name, case.reference, began, time.time(), statuses, latencies)


def prepare(base_url: str) -> None:
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=60) as client:
        client.post("/contexts", json={"key": "a"}).raise_for_status()
        client.post("/predict/a", json={"inputs": [[0.5] * WIDTH]}).raise_for_status()


def during(samples: list[Probe], outcome: Outcome) -> list[Probe]:
    return [probe for probe in samples if outcome.began <= probe.at <= outcome.ended]


def loop_seconds_per_request(samples: list[Probe], outcome: Outcome) -> float:
    """The event loop's CPU time while the case ran, per request sent (the probes' own share,
    well under a millisecond each, included)."""
    before = [probe for probe in samples if probe.at < outcome.began] or samples[:1]
    window = during(samples, outcome)
    return (window[-1].loop_ran_total - before[-1].loop_ran_total) / len(outcome.latencies)


SLOW_PROBE = 0.05
"""The target of `/healthz`'s p99: the probes slower than this are broken down."""


def slow_probes(probes: list[Probe]) -> dict[str, float]:
    """The probes over `SLOW_PROBE`, and the shares of their time in which the event loop ran,
    waited for a CPU, and neither (it waited for the GIL or for the probe's bytes)."""
    slow = [p for p in probes if p.latency > SLOW_PROBE]
    total = sum(p.latency for p in slow) or float("nan")
    ran = sum(p.loop_ran for p in slow) / total
    waited = sum(p.loop_waited for p in slow) / total
    return {
        "count": len(slow),
        "loop_ran_share": ran,
        "loop_waited_for_cpu_share": waited,
        "other_threads_ran_share": sum(p.others_ran for p in slow) / total,
    }


def report(samples: list[Probe], outcomes: list[Outcome]) -> dict[str, Any]:
    """Prints the table of every case and the overall figures against the targets, and
    returns the figures."""
    baseline_rss = samples[0].rss
    figures = {o.case: case_figures(samples, o, baseline_rss) for o in outcomes}
    rows = [_table_row(o, figures[o.case]) for o in outcomes]
    headers = ["case", "statuses", "request ms", "healthz p50", "p99", "max"]
    print_table([*headers, "max: loop ran / waited ms", "loop ms/request", "RSS +MB"], rows)
    overall = overall_figures(samples, outcomes, figures)
    _print_overall(overall)
    return {"cases": figures, "overall": overall}


def case_figures(samples: list[Probe], outcome: Outcome, baseline_rss: int) -> dict[str, Any]:
    """One case's answers, its requests' median latency, and `/healthz` and the server while
    it ran."""
    window = during(samples, outcome)
    if not window:
        raise RuntimeError(f"no /healthz probe was answered during {outcome.case}")
    probes = [p.latency for p in window]
    worst = max(window, key=lambda p: p.latency)
    return {
        "statuses": dict(outcome.statuses),
        "request_median_ms": statistics.median(outcome.latencies) * 1e3,
        "healthz_p50_ms": percentile(probes, 50) * 1e3,
        "healthz_p99_ms": percentile(probes, 99) * 1e3,
        "healthz_max_ms": worst.latency * 1e3,
        "loop_cpu_per_request_ms": loop_seconds_per_request(samples, outcome) * 1e3,
        "worst_probe_loop_ran_ms": worst.loop_ran * 1e3,
        "worst_probe_loop_waited_ms": worst.loop_waited * 1e3,
        "rss_growth_mb": (max(p.rss for p in window) - baseline_rss) / 2**20,
    }


def _table_row(outcome: Outcome, f: dict[str, Any]) -> list[str]:
    statuses = " ".join(f"{s}x{n}" for s, n in sorted(outcome.statuses.items()))
    return [
        f"{outcome.case} (valid)" if outcome.reference else outcome.case,
        statuses,
        f"{f['request_median_ms']:.0f}",
        f"{f['healthz_p50_ms']:.1f}",
        f"{f['healthz_p99_ms']:.1f}",
        f"{f['healthz_max_ms']:.1f}",
        f"{f['worst_probe_loop_ran_ms']:.0f} / {f['worst_probe_loop_waited_ms']:.0f}",
        f"{f['loop_cpu_per_request_ms']:.0f}",
        f"{f['rss_growth_mb']:.0f}",
    ]


def overall_figures(
    samples: list[Probe], outcomes: list[Outcome], figures: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """`/healthz` and RSS over every adversarial case (the valid ones left out), and the
    answers that failed over every case."""
    adversarial = [o for o in outcomes if not o.reference]
    attacked = [probe for outcome in adversarial for probe in during(samples, outcome)]
    latencies = [p.latency for p in attacked]
    return {
        "healthz_p99_ms": percentile(latencies, 99) * 1e3,
        "healthz_max_ms": max(latencies) * 1e3,
        "healthz_probes": len(attacked),
        "slow_probes": slow_probes(attacked),
        "rss_growth_mb": max(figures[o.case]["rss_growth_mb"] for o in adversarial),
        "rss_before_mb": samples[0].rss / 2**20,
        "server_errors": sum(n for o in outcomes for s, n in o.statuses.items() if s >= 500),
        "no_answer": sum(o.statuses[0] for o in outcomes),
    }


def _print_overall(overall: dict[str, Any]) -> None:
    slow = overall["slow_probes"]
    print(
        "\n/healthz over every adversarial case (the valid ones left out): p99 "
        f"{overall['healthz_p99_ms']:.1f} ms, worst "
        f"{overall['healthz_max_ms']:.1f} ms ({overall['healthz_probes']} probes; target p99 < "
        f"50 ms); RSS {overall['rss_before_mb']:.0f} MB before, at most "
        f"+{overall['rss_growth_mb']:.0f} MB (target < 100 MB); 5xx: "
        f"{overall['server_errors']}, no answer: {overall['no_answer']}"
    )
    if slow["count"]:
        print(
            f"{slow['count']} probes over {SLOW_PROBE * 1e3:.0f} ms; in their time the event "
            f"loop ran {slow['loop_ran_share']:.0%} and waited for a CPU "
            f"{slow['loop_waited_for_cpu_share']:.0%}; the server's other threads ran "
            f"{slow['other_threads_ran_share']:.0%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=6, help="requests per case")
    parser.add_argument("--senders", type=int, default=2, help="concurrent clients per case")
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    print(machine_line())
    chosen = [c for c in cases() if not args.cases or c.name in args.cases.split(",")]
    context = multiprocessing.get_context("spawn")
    with throwaway_dir() as directory:
        env = {
            "PSP_DATA_DIR": str(directory / "data"),
            "PSP_API_KEYS": f"[{ADMIN_SPEC.model_dump_json()}]",
        }
        server = psp_serve("adversarial", env, directory)
        server.start()
        try:
            prepare(server.base_url)
            started, stop, out = context.Event(), context.Event(), context.Queue()
            prober = context.Process(
                target=probe, args=(server.base_url, server.pid, started, stop, out)
            )
            prober.start()
            # A spawned prober imports for a second or more on a busy machine: no case may
            # begin before it probes, or that case would have no figures.
            if not started.wait(60):
                raise RuntimeError("the /healthz prober did not start within 60 s")
            time.sleep(1.0)  # the RSS before the first case
            outcomes = [
                asyncio.run(attack(server.base_url, case, args.repeat, args.senders))
                for case in chosen
            ]
            time.sleep(0.5)
            stop.set()
            samples = out.get(timeout=120)
            prober.join(30)
        finally:
            server.stop()
    save_json(args.json, report(samples, outcomes))


if __name__ == "__main__":
    main()
