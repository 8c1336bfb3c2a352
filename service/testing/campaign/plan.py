"""What a campaign is asked to do (`CampaignPlan`) and what it found (`CampaignResult`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from service.testing.campaign.topology import Topology


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
