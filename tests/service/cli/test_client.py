"""`psp contexts`, `psp train` and `psp predict` against a running `psp serve`."""

from __future__ import annotations

import csv
import json
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from psp_client import Client, NotFound
from service.cli.client import batch_idempotency_key, content_hash
from service.cli.commands import app
from service.testing.processes import wait_until
from tests.psp_client.conftest import serving

# The tests here talk to real `psp serve` processes; `make test-fast` leaves them out.
pytestmark = pytest.mark.real_process

WIDTH = 8
CLASSES = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a running `psp serve` with 8 inputs and 3 classes."""
    with serving(tmp_path_factory.mktemp("serve")) as url:
        yield url


def psp(*args: str, url: str) -> tuple[int, str]:
    """Runs `psp ARGS` with PSP_URL set; its exit status and its stdout and stderr."""
    result = CliRunner().invoke(app, list(args), env={"PSP_URL": url})
    return result.exit_code, result.output


def fresh_key() -> str:
    return f"cli-{uuid.uuid4().hex[:12]}"


def write_csv(path: Path, rows: int, seed: int = 7) -> list[list[float]]:
    generator = random.Random(seed)
    data = [[round(generator.uniform(-1, 1), 4) for _ in range(WIDTH)] for _ in range(rows)]
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([*(f"x{i}" for i in range(WIDTH)), "label"])
        for number, row in enumerate(data):
            writer.writerow([*row, number % CLASSES])
    return data


def examples_seen_settles_at(url: str, key: str, expected: int) -> None:
    """Waits for checkpoints to count the learned rows, then checks the count stays there."""
    with Client(url) as client:
        wait_until(lambda: client.get_context(key).examples_seen >= expected, 15, what="progress")
        time.sleep(0.6)
        assert client.get_context(key).examples_seen == expected


def test_contexts_create_list_delete(server: str) -> None:
    key = fresh_key()
    status, output = psp("contexts", "create", key, "--seed", "917000001", url=server)
    assert status == 0 and f"context {key}" in output and "seed 917000001" in output
    status, output = psp("contexts", "list", "--prefix", key, url=server)
    assert status == 0 and key in output and "1 of 1 contexts" in output
    status, output = psp("contexts", "delete", key, url=server)
    assert status == 0 and output.strip() == f"deleted {key}"
    with Client(server) as client, pytest.raises(NotFound):
        client.get_context(key)
    status, output = psp("contexts", "delete", key, url=server)
    assert status == 2 and "psp: 404" in output and key in output


def test_train_twice_learns_each_row_once(server: str, tmp_path: Path) -> None:
    key = fresh_key()
    data = tmp_path / "rows.csv"
    write_csv(data, 10)
    psp("contexts", "create", key, url=server)
    status, output = psp("train", key, "--csv", str(data), "--batch-size", "4", url=server)
    assert status == 0 and "sent 10 rows of 10" in output
    assert not (tmp_path / "rows.csv.psp-progress").exists()
    # The whole file again: every batch comes back under its first Idempotency-Key.
    status, output = psp("train", key, "--csv", str(data), "--batch-size", "4", url=server)
    assert status == 0 and "sent 10 rows of 10" in output
    examples_seen_settles_at(server, key, 10)


def test_train_resumes_after_an_interruption(server: str, tmp_path: Path) -> None:
    key = fresh_key()
    data = tmp_path / "rows.csv"
    rows = write_csv(data, 10)
    labels = [n % CLASSES for n in range(10)]
    psp("contexts", "create", key, url=server)
    file_hash = content_hash(data)
    # An interrupted run: batches 0 and 1 reached the service, only batch 0 was noted as done.
    with Client(server) as client:
        for number in (0, 1):
            part = slice(4 * number, 4 * number + 4)
            token = batch_idempotency_key(file_hash, key, 4, number)
            client.train(key, rows[part], labels[part], idempotency_key=token)
    progress = tmp_path / "rows.csv.psp-progress"
    progress.write_text(json.dumps({"run": f"{server}|{key}|4|{file_hash}", "batches_done": 1}))
    status, output = psp("train", key, "--csv", str(data), "--batch-size", "4", url=server)
    assert status == 0 and f"sent 6 rows of 10 for {key} (4 were already sent)" in output
    assert not progress.exists()
    examples_seen_settles_at(server, key, 10)


def test_train_names_a_missing_label_column(server: str, tmp_path: Path) -> None:
    data = tmp_path / "rows.csv"
    write_csv(data, 3)
    status, output = psp("train", "any", "--csv", str(data), "--label-column", "y", url=server)
    assert status == 2 and "has no column 'y'" in output and "--label-column" in output


def test_predict_writes_one_line_per_row(server: str, tmp_path: Path) -> None:
    key = fresh_key()
    data = tmp_path / "rows.csv"
    rows = write_csv(data, 7)
    out = tmp_path / "predictions.csv"
    psp("contexts", "create", key, url=server)
    status, output = psp(
        "predict", key, "--csv", str(data), "--out", str(out), "--batch-size", "3", url=server
    )
    assert status == 0 and f"wrote 7 predictions to {out}" in output
    with out.open(newline="") as file:
        lines = list(csv.reader(file))
    assert lines[0] == ["prediction", "probability_0", "probability_1", "probability_2"]
    with Client(server) as client:
        expected = client.predict(key, rows)
    assert [int(line[0]) for line in lines[1:]] == expected.predictions
    for line, probabilities in zip(lines[1:], expected.probabilities, strict=True):
        assert [float(p) for p in line[1:]] == pytest.approx(probabilities, abs=1e-5)


def test_an_unreachable_service_is_one_line(tmp_path: Path) -> None:
    status, output = psp("contexts", "list", url="http://127.0.0.1:9")
    assert status == 2 and "cannot reach the service at http://127.0.0.1:9" in output
