"""`psp contexts`, `psp train` and `psp predict`: the service's client commands, on psp_client.

`psp train` is resumable. Each batch is sent under an Idempotency-Key derived from the file's
content, the batch size, the context and the batch number, and every acknowledged batch is
written to a progress file beside the CSV. Running the same command again after an interruption
skips the acknowledged batches and resends the one in flight under its old key, which the
service recognises (within 5 minutes), so no row is learned twice.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, NoReturn

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from psp_client import Client, PspError

contexts_app = typer.Typer(help="Contexts on a running service.", no_args_is_help=True)

UrlOption = Annotated[
    str, typer.Option("--url", envvar="PSP_URL", help="Where the service listens.")
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar="PSP_API_KEY", help="Sent as X-API-Key.", show_default=False),
]
DEFAULT_URL = "http://127.0.0.1:8000"
HASH_CHUNK_BYTES = 1 << 20


def _fail(message: str) -> NoReturn:
    typer.echo(f"psp: {message}", err=True)
    raise typer.Exit(2)


@contextmanager
def _client(url: str, api_key: str | None) -> Iterator[Client]:
    """A client whose service errors end the command with the service's sentence."""
    try:
        with Client(url, api_key) as client:
            yield client
    except PspError as error:
        _fail(f"{error.status_code}: {error.detail}")
    except httpx.TransportError as error:
        _fail(f"cannot reach the service at {url}: {error}; start it or set --url / PSP_URL")


@contexts_app.command("list")
def contexts_list(
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    prefix: Annotated[str, typer.Option(help="Only keys starting with this.")] = "",
    limit: Annotated[int, typer.Option(min=0, max=1000, help="Contexts per page.")] = 100,
    offset: Annotated[int, typer.Option(min=0, help="Contexts to skip.")] = 0,
) -> None:
    """List contexts with their examples seen and prequential accuracy."""
    with _client(url, api_key) as client:
        page = client.list_contexts(limit=limit, offset=offset, prefix=prefix)
    table = Table("key", "index", "kind", "examples seen", "accuracy")
    for context in page.items:
        accuracy = context.prequential_accuracy
        table.add_row(
            context.key,
            str(context.index),
            context.kind,
            str(context.examples_seen),
            "-" if accuracy is None else f"{accuracy:.3f}",
        )
    console = Console()
    console.print(table)
    console.print(f"{len(page.items)} of {page.total} contexts")


@contexts_app.command("create")
def contexts_create(
    key: Annotated[str, typer.Argument(help="The new context's key.")],
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the context's model.")] = None,
    power: Annotated[float | None, typer.Option(help="Exponent of a one-power context.")] = None,
) -> None:
    """Register a context (the same definition again is not an error)."""
    with _client(url, api_key) as client:
        context = client.create_context(key, seed=seed, power=power)
    typer.echo(f"context {context.key}: index {context.index}, seed {context.seed}")


@contexts_app.command("delete")
def contexts_delete(
    key: Annotated[str, typer.Argument(help="The context to retire.")],
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Retire a context; its key stops answering and its index is never reused."""
    with _client(url, api_key) as client:
        client.delete_context(key)
    typer.echo(f"deleted {key}")


@dataclass(frozen=True)
class CsvRows:
    """A CSV file read as input rows and, when it has the label column, labels."""

    path: Path
    label_column: str

    def columns(self) -> tuple[list[int], int | None]:
        """Positions of the input columns and of the label column (None when absent)."""
        with self.path.open(newline="") as file:
            header = next(csv.reader(file), None)
        if not header:
            _fail(f"{self.path} is empty; send a CSV with a header row")
        label = header.index(self.label_column) if self.label_column in header else None
        return [i for i in range(len(header)) if i != label], label

    def count(self) -> int:
        with self.path.open(newline="") as file:
            return max(0, sum(1 for _ in csv.reader(file)) - 1)

    def batches(self, size: int) -> Iterator[tuple[list[list[float]], list[int]]]:
        """Batches of `size` rows: inputs, and labels (empty when the file has none)."""
        inputs_at, label_at = self.columns()
        inputs: list[list[float]] = []
        labels: list[int] = []
        with self.path.open(newline="") as file:
            reader = csv.reader(file)
            next(reader)
            for line, row in enumerate(reader, start=2):
                try:
                    inputs.append([float(row[i]) for i in inputs_at])
                    if label_at is not None:
                        labels.append(int(row[label_at]))
                except (ValueError, IndexError):
                    _fail(f"{self.path} line {line} is not numbers in every column: {row}")
                if len(inputs) == size:
                    yield inputs, labels
                    inputs, labels = [], []
        if inputs:
            yield inputs, labels


def content_hash(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def batch_idempotency_key(file_hash: str, key: str, batch_size: int, number: int) -> str:
    """The Idempotency-Key of one batch of `psp train`: the same file, context, batch size and
    batch number always give the same key, so a rerun resends a batch under its first key."""
    run = hashlib.sha256(f"{file_hash}:{key}:{batch_size}".encode()).hexdigest()[:32]
    return f"psp-train:{run}:{number}"


@dataclass
class TrainProgress:
    """The batches of one file already acknowledged by the service, kept in a JSON file."""

    path: Path
    run: str
    done: int = 0

    @classmethod
    def load(cls, path: Path, run: str) -> TrainProgress:
        """The progress of `run` in `path`; another run's progress (another file content,
        context, batch size or service) starts from zero."""
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls(path, run)
        if not isinstance(saved, dict) or saved.get("run") != run:
            return cls(path, run)
        return cls(path, run, int(saved.get("batches_done", 0)))

    def acknowledge(self, batches_done: int) -> None:
        self.done = batches_done
        self.path.write_text(json.dumps({"run": self.run, "batches_done": batches_done}))

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)


def train_command(
    key: Annotated[str, typer.Argument(help="The context to train.")],
    csv_file: Annotated[
        Path, typer.Option("--csv", exists=True, dir_okay=False, help="Rows with a header.")
    ],
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    label_column: Annotated[str, typer.Option(help="The column holding the labels.")] = "label",
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per request.")] = 256,
    progress_file: Annotated[
        Path | None,
        typer.Option(help="Where acknowledged batches are noted; default FILE.psp-progress."),
    ] = None,
) -> None:
    """Stream a CSV file into a context's training queue in batches, resumably.

    Every column other than the label column is an input, in file order. Run the same command
    again after an interruption: acknowledged batches are skipped and the batch in flight is
    resent under its first Idempotency-Key, so nothing is learned twice.
    """
    rows = CsvRows(csv_file, label_column)
    if rows.columns()[1] is None:
        _fail(f"{csv_file} has no column {label_column!r}; name it with --label-column")
    total = rows.count()
    file_hash = content_hash(csv_file)
    run = f"{url}|{key}|{batch_size}|{file_hash}"
    progress = TrainProgress.load(
        progress_file or csv_file.with_name(csv_file.name + ".psp-progress"), run
    )
    sent = 0
    with _client(url, api_key) as client, _bar(total, f"train {key}") as (bar, task):
        for number, (inputs, labels) in enumerate(rows.batches(batch_size)):
            if number >= progress.done:
                token = batch_idempotency_key(file_hash, key, batch_size, number)
                client.train(key, inputs, labels, idempotency_key=token)
                progress.acknowledge(number + 1)
                sent += len(labels)
            bar.advance(task, len(labels))
    progress.finish()
    typer.echo(f"sent {sent} rows of {total} for {key} ({total - sent} were already sent)")


def predict_command(
    key: Annotated[str, typer.Argument(help="The context to predict with.")],
    csv_file: Annotated[
        Path, typer.Option("--csv", exists=True, dir_okay=False, help="Rows with a header.")
    ],
    out: Annotated[Path, typer.Option("--out", dir_okay=False, help="CSV file to write.")],
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    label_column: Annotated[
        str, typer.Option(help="A column to leave out of the inputs when present.")
    ] = "label",
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per request.")] = 256,
) -> None:
    """Predict every row of a CSV file; writes `prediction` and one `probability_<class>`
    column per class, one line per input row in file order."""
    rows = CsvRows(csv_file, label_column)
    total = rows.count()
    with (
        _client(url, api_key) as client,
        out.open("w", newline="") as file,
        _bar(total, f"predict {key}") as (bar, task),
    ):
        writer = csv.writer(file)
        for number, (inputs, _) in enumerate(rows.batches(batch_size)):
            answer = client.predict(key, inputs)
            if number == 0:
                classes = len(answer.probabilities[0])
                writer.writerow(["prediction", *(f"probability_{c}" for c in range(classes))])
            for predicted, probabilities in zip(
                answer.predictions, answer.probabilities, strict=True
            ):
                writer.writerow([predicted, *(f"{p:.6g}" for p in probabilities)])
            bar.advance(task, len(inputs))
    typer.echo(f"wrote {total} predictions to {out}")


@contextmanager
def _bar(total: int, title: str) -> Iterator[tuple[Progress, TaskID]]:
    """A rich progress bar over `total` rows (on stderr, so stdout stays for results)."""
    columns = (TextColumn(title), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        yield bar, bar.add_task(title, total=total)
