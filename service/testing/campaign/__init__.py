"""A randomized fault campaign: real `psp` processes on a PostgreSQL and a Redis of their own,
several tenants' traffic, faults drawn from a seeded generator, and the invariants checked after.

The test (tests/service/faults/test_campaign.py) runs a short campaign; the benchmark
(benchmarks/fault_campaign.py) a long one. Both run `run_campaign`.

- `plan`: what to run (`CampaignPlan`) and what was found (`CampaignResult`);
- `stores`: the private PostgreSQL and Redis servers;
- `topology`: the `psp` processes (`split`: an API process and a worker; `all`: one server
  whose training steps run in a child process);
- `clients` and `traffic`: the tenants' requests and what they were answered;
- `faults`: the faults, in rounds, and how each heals;
- `watches`: the checkpoints and served versions, watched while the faults land;
- `checks`: the invariants, checked after the last fault has healed and the trainer drained;
- `runner`: one campaign from start to end.

The seed fixes the sequence of faults (their kinds, how long each lasts, which ones nest) and
the traffic's content; when each lands against the traffic depends on the machine, so a failure
a seed shows once may take a few runs of that seed to show again.
"""

from service.testing.campaign.plan import CampaignPlan, CampaignResult, Check
from service.testing.campaign.runner import run_campaign
from service.testing.campaign.stores import DurableRedis, PrivatePostgres

__all__ = [
    "CampaignPlan",
    "CampaignResult",
    "Check",
    "DurableRedis",
    "PrivatePostgres",
    "run_campaign",
]
