"""`psp bench`: psp_bench and its extra load only when the command runs, and their absence is
explained in one line."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli.commands import app as psp_app

ROOT = Path(__file__).resolve().parents[3]
BENCH_MODULES = ("matplotlib", "psp_bench", "sklearn")


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_importing_the_cli_loads_no_benchmark_module() -> None:
    loaded = f"sorted({{name.split('.')[0] for name in sys.modules}} & {set(BENCH_MODULES)!r})"
    probe = _python(
        f"import sys\nimport service.cli.commands\nprint({loaded})\n"
        f"import psp_bench.cli\nprint({loaded})"
    )
    assert probe.returncode == 0, probe.stderr
    # The second line shows that the probe sees the modules once something does load them.
    assert probe.stdout.splitlines() == ["[]", str(list(BENCH_MODULES))]


@pytest.mark.parametrize("missing", BENCH_MODULES)
def test_psp_bench_without_the_extra_says_how_to_install_it(missing: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "bench" in project["optional-dependencies"]
    # None in sys.modules makes every import of that module fail, as if it were not installed.
    result = _python(
        f"import sys\nsys.modules[{missing!r}] = None\nfrom service.cli.commands import app\n"
        "app(['bench', 'continual', '--tasks', '1'], prog_name='psp')"
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"psp: psp bench needs the bench extra, and {missing} is missing: "
        f"pip install '{project['name']}[bench]'"
    ]


def test_psp_bench_hands_its_arguments_to_the_benchmark_cli() -> None:
    result = CliRunner().invoke(psp_app, ["bench", "continual", "--help"], prog_name="psp")
    assert result.exit_code == 0, result.output
    assert "Usage: psp bench continual [OPTIONS]" in result.output
    assert "--steps-per-task" in result.output
    wrong = CliRunner().invoke(psp_app, ["bench", "continual", "--hidden", "2x"])
    assert wrong.exit_code == 2
    assert "comma-separated integers" in wrong.output
