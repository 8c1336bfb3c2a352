"""Which processes used the machine's CPU, read from /proc: per process, with its children,
and everyone else's share while a measurement ran."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path


def _total_jiffies() -> int:
    """CPU jiffies of all cores since boot, busy or idle, from /proc/stat."""
    with open("/proc/stat") as stat:
        return sum(int(v) for v in stat.readline().split()[1:])


def _process_table() -> dict[int, tuple[str, int]]:
    """pid -> (command name, utime + stime in jiffies) of every process now."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                head, tail = stat.read().rsplit(")", 1)
        except OSError:
            continue
        fields = tail.split()
        table[int(entry.name)] = (head.split("(", 1)[1], int(fields[11]) + int(fields[12]))
    return table


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far; 0 once gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_descendants(pids: Sequence[int]) -> list[int]:
    """`pids` and every process below them: a server's training child (role `all`) works
    for it, so its CPU counts as the server's."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                parents[int(entry.name)] = int(stat.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    found, frontier = set(pids), list(pids)
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in found]
        found.update(children)
        frontier += children
    return sorted(found)


def find_pids(command_name: str) -> list[int]:
    """Processes whose command name (as in `ps -o comm`) is `command_name`."""
    return [pid for pid, (name, _) in _process_table().items() if name == command_name]


def _command_line(pid: int, width: int = 60) -> str:
    """The start of a process' command line, for naming it in reports."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            words = cmdline.read().split(b"\0")
    except OSError:
        return ""
    text = " ".join(
        Path(w.decode(errors="replace")).name if i == 0 else w.decode(errors="replace")
        for i, w in enumerate(words)
        if w
    )
    return text[:width]


class CpuWatch:
    """Which other processes used the machine's CPU while a measurement ran.

    Args:
        pids: The benchmark's own server processes, whose children (a training child) count
            as theirs; this process is always counted as own.
    """

    def __init__(self, pids: Sequence[int] = ()) -> None:
        self.pids = list(pids)
        self._start_total = _total_jiffies()
        self._start = _process_table()

    def others(self) -> tuple[float, list[tuple[str, float]]]:
        """The share of all cores that other processes used since the watch started (0.5: one
        of two cores busy throughout), and the busiest of them by command name."""
        span = (_total_jiffies() - self._start_total) or 1
        own = {os.getpid(), *with_descendants(self.pids)}
        by_name: Counter[str] = Counter()
        for pid, (name, jiffies) in _process_table().items():
            used = jiffies - self._start.get(pid, (name, 0))[1]
            if pid not in own and used > 0:
                by_name[_command_line(pid) or name] += used
        share = sum(by_name.values()) / span
        return share, [(name, used / span) for name, used in by_name.most_common(3) if used > 0]

    def line(self) -> str:
        """One line for the report, e.g. `other processes used 3% of the CPU (postgres 2%)`."""
        share, busiest = self.others()
        names = ", ".join(f"{name} {used:.0%}" for name, used in busiest)
        return f"other processes used {share:.0%} of the CPU" + (f" ({names})" if names else "")
