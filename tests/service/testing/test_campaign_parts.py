"""The fault campaign's pieces that run without its processes: the plan, the result, how a
request is sent until settled, and how processes are found below a server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx

from service.testing.campaign import CampaignPlan, CampaignResult, Check
from service.testing.campaign.clients import send_until_settled
from service.testing.campaign.topology import descendants


def test_each_topology_has_its_own_kills_and_the_shared_faults() -> None:
    split = CampaignPlan(seed=1, faults=7).kinds()
    alone = CampaignPlan(seed=1, faults=7, topology="all", second_writer=False).kinds()
    shared = ["restart_redis", "restart_postgres", "disk_full", "rollback"]
    assert split == ["kill_api", "kill_worker", *shared, "second_writer"]
    assert alone == ["kill_server", "kill_step_child", *shared]


def test_the_plans_command_replays_its_seed_and_flags() -> None:
    plan = CampaignPlan(seed=5, faults=9, minutes=2, second_writer=False, pause_seconds=1.5)
    assert plan.command() == (
        "python benchmarks/fault_campaign.py --seed 5 --faults 9 --minutes 2 --topology split"
        " --no-second-writer --pause-seconds 1.5"
    )


def test_a_result_fails_on_a_failed_check_but_not_on_a_skipped_one() -> None:
    checks = [Check("a", True, "fine"), Check("b", None, "off")]
    result = CampaignResult(
        seed=3,
        topology="split",
        seconds=12.0,
        faults=Counter({"kill_api": 2, "rollback": 1}),
        skipped=Counter(),
        requests=Counter({"train accepted": 4}),
        checks=checks,
        logs=Path("/logs"),
        command="replay",
    )
    assert result.fault_count == 3 and result.passed
    assert "  SKIP b: off" in result.summary().splitlines()
    checks.append(Check("c", False, "lost 2"))
    summary = result.summary()
    assert not result.passed
    assert "  FAIL c: lost 2" in summary and "FAILED; process logs in /logs" in summary


def test_a_request_is_sent_again_until_an_answer_settles_it() -> None:
    statuses = iter([503, 429, 202])
    client = httpx.Client(
        base_url="http://campaign",
        transport=httpx.MockTransport(lambda request: httpx.Response(next(statuses))),
    )
    answer = send_until_settled(client, "POST", "/train/a", json={})
    assert answer.status == 202
    assert answer.ambiguous  # the 503 may have been carried out


def test_a_refused_connection_leaves_a_request_unambiguous() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = httpx.Client(base_url="http://campaign", transport=httpx.MockTransport(refuse))
    answer = send_until_settled(client, "POST", "/train/a", seconds=0)
    assert answer.response is None and answer.status is None and not answer.ambiguous


def test_descendants_finds_a_child_with_its_parent() -> None:
    reading = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    child = subprocess.Popen(reading, stdin=subprocess.PIPE)
    try:
        assert descendants(os.getpid()).get(child.pid) == os.getpid()
    finally:
        child.kill()
        child.wait(10)
