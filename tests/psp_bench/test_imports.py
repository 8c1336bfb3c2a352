"""psp_bench reaches the service over HTTP only: none of its modules imports `service`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import importlib, json, pkgutil, sys
import psp_bench
names = [f"psp_bench.{m.name}" for m in pkgutil.iter_modules(psp_bench.__path__)]
for name in names:
    importlib.import_module(name)
service = sorted(n for n in sys.modules if n.partition(".")[0] == "service")
print(json.dumps({"imported": names, "service": service}))
"""


def test_no_psp_bench_module_imports_the_service() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert {"psp_bench.cli", "psp_bench.http_runner", "psp_bench.plots"} <= set(found["imported"])
    assert found["service"] == []
