"""The soak's report: per-route table, error counts and verdict, printed and as JSON."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from _harness import machine_line, ms, percentile, print_table
from _load import Recorder
from _soak_clients import SoakClients

ROUTES = ("register", "train", "train?wait", "predict")


def route_rows(recorder: Recorder) -> list[list[Any]]:
    rows = []
    for route in ROUTES:
        latencies = recorder.latencies[route]
        statuses = {s: n for (r, s), n in sorted(recorder.statuses.items()) if r == route}
        rows.append(
            [
                route,
                len(latencies),
                ms(percentile(latencies, 50)),
                ms(percentile(latencies, 99)),
                ms(max(latencies, default=float("nan"))),
                " ".join(f"{s}:{n}" for s, n in statuses.items()),
                recorder.transport_errors[route],
            ]
        )
    return rows


def error_count(recorder: Recorder) -> int:
    """5xx answers and transport errors over every route."""
    fives = sum(n for (_, status), n in recorder.statuses.items() if status >= 500)
    return fives + sum(recorder.transport_errors.values())


def unexpected_count(recorder: Recorder) -> int:
    """4xx answers other than 429: the soak sends only valid requests."""
    return sum(
        n for (_, status), n in recorder.statuses.items() if 400 <= status < 500 and status != 429
    )


@dataclass
class SoakRun:
    """What the soak measured around its load.

    Attributes:
        seconds: Wall seconds of the mixed load.
        load_start: Load averages before the load.
        load_end: Load averages right after it.
        others: Which other processes used the CPU during the load.
        wrong: Contexts whose examples_seen differs from the rows accepted for them.
        drained: Seconds the trainer took to apply and count everything after the load.
        applied: Examples the trainer applied (psp_trainer_examples_total).
        problems: Error and traceback lines of the server's log.
    """

    seconds: float
    load_start: str
    load_end: str
    others: str
    wrong: dict[str, Any]
    drained: float
    applied: float
    problems: list[str]


def passed(clients: SoakClients, run: SoakRun) -> bool:
    """No error, no refusal, every train request settled, and the audit held."""
    recorder, state = clients.recorder, clients.state
    no_refusals = error_count(recorder) == 0 and unexpected_count(recorder) == 0
    return no_refusals and state.unsettled == 0 and not run.wrong


def request_count(recorder: Recorder) -> int:
    """Requests sent, answered or not."""
    return sum(recorder.statuses.values()) + sum(recorder.transport_errors.values())


def print_report(clients: SoakClients, run: SoakRun, initial_contexts: int) -> None:
    recorder, state = clients.recorder, clients.state
    requests = request_count(recorder)
    print(f"\n{requests:,} requests in {run.seconds:.1f} s = {requests / run.seconds:,.0f}/s")
    print_table(
        ["route", "answers", "p50 ms", "p99 ms", "max ms", "statuses", "transport errors"],
        route_rows(recorder),
    )
    live = len(state.keys) - initial_contexts
    print(f"  errors (5xx + transport): {error_count(recorder)}   goal 0")
    print(f"  429 answers honoured (Retry-After): {state.throttled}")
    print(
        f"  other 4xx answers: {unexpected_count(recorder)};  "
        f"unsettled train requests: {state.unsettled}"
    )
    print(f"  contexts: {len(state.keys):,} ({live:,} registered live)")
    print(f"  rows accepted: {sum(state.accepted.values()):,}; ", end="")
    print(f"trainer applied (psp_trainer_examples_total): {run.applied:,.0f}; ", end="")
    print(f"drain + count took {run.drained:.1f} s")
    print(f"  exactly-once audit: {len(run.wrong)} contexts differ", end="")
    print(f" e.g. {dict(list(run.wrong.items())[:3])}" if run.wrong else "")
    print(f"  server log error lines: {len(run.problems)}")
    for line in run.problems[:5]:
        print(f"    {line}")
    print(f"  load average at start {run.load_start}, end of load {run.load_end}; {run.others}")
    print("PASS" if passed(clients, run) else "FAIL")


def route_figures(recorder: Recorder) -> dict[str, Any]:
    """Answers, p50 / p99 latency, statuses and transport errors of every route, for JSON."""
    return {
        route: {
            "answers": len(recorder.latencies[route]),
            "p50_s": percentile(recorder.latencies[route], 50),
            "p99_s": percentile(recorder.latencies[route], 99),
            "statuses": {str(s): n for (r, s), n in recorder.statuses.items() if r == route},
            "transport_errors": recorder.transport_errors[route],
        }
        for route in ROUTES
    }


def soak_figures(
    args: argparse.Namespace, stack: str, clients: SoakClients, run: SoakRun
) -> dict[str, Any]:
    recorder, state = clients.recorder, clients.state
    return {
        "machine": machine_line(),
        "args": vars(args),
        "stores": stack,
        "seconds": run.seconds,
        "requests": request_count(recorder),
        "routes": route_figures(recorder),
        "errors": error_count(recorder),
        "throttled": state.throttled,
        "unexpected_4xx": unexpected_count(recorder),
        "unsettled": state.unsettled,
        "contexts": len(state.keys),
        "accepted_rows": sum(state.accepted.values()),
        "applied_examples_metric": run.applied,
        "drain_seconds": run.drained,
        "mismatched_contexts": len(run.wrong),
        "server_log_error_lines": len(run.problems),
        "load_average_start": run.load_start,
        "load_average_end_of_load": run.load_end,
        "other_processes": run.others,
        "passed": passed(clients, run),
    }
