"""A short randomized fault campaign on a PostgreSQL and a Redis of its own: several tenants'
traffic meets faults drawn from a seed (kills, store restarts, a full disk, rollbacks, a second
writer for the shard); every accepted example must be applied exactly once, deleted tenants must
stay out of the checkpoints, predictions must come back after each fault, the served version
must never go down and the second writer must be turned away. One test module per topology
(`test_campaign.py`, `test_campaign_all.py`), so that pytest-xdist runs the two side by side.

`PSP_FAULT_CAMPAIGN_SEED` picks another seed; a failing run prints the command that replays its
seed at length (benchmarks/fault_campaign.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from service.testing.campaign import CampaignPlan, run_campaign
from service.testing.campaign.topology import Topology
from tests.service.faults.summaries import CAMPAIGN_SUMMARIES

SEED = int(os.environ.get("PSP_FAULT_CAMPAIGN_SEED", "1"))
FAULTS = 7
"""One round: each kind of fault once (a nested one may add one more)."""


def check_a_short_campaign(topology: Topology, tmp_path: Path) -> None:
    """Runs one round of faults in `topology` and fails on any check that did not pass."""
    plan = CampaignPlan(seed=SEED, faults=FAULTS, topology=topology)
    result = run_campaign(plan, tmp_path)
    CAMPAIGN_SUMMARIES.append(result.summary())  # the fault count and verdicts, in every CI log
    assert result.fault_count >= FAULTS, result.summary()
    assert set(result.faults) == set(plan.kinds()), "every kind of fault is met"
    failed = [check for check in result.checks if check.passed is False]
    assert not failed, result.summary()
