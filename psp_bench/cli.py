"""`psp bench continual`: the continual-learning benchmark on the command line.

The main CLI loads this module only when `psp bench` runs; it also runs alone as
`python -m psp_bench.cli`. It imports everything a run needs (the plots' matplotlib included)
up front, so that a missing `bench` extra stops the command before a run rather than after it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from psp_bench.continual import RunnerFactory, StepProgress, run_continual
from psp_bench.continual_config import DEFAULTS, ContinualConfig
from psp_bench.continual_results import ContinualResults, MethodResult
from psp_bench.http_runner import BenchHTTPError, HttpRunner
from psp_bench.methods import DEFAULT_METHODS, TENANTS_METHODS, Method, parse_methods
from psp_bench.plots import plot_all
from psp_bench.runners import Runner
from psp_bench.streams import ROTATING_STREAMS, STREAMS, StreamError
from psp_core import ModelConfig

# No completion options: `psp bench` runs this app as a subcommand of `psp`, which has its own.
bench_app = typer.Typer(
    help="Benchmarks of the superposition service.", no_args_is_help=True, add_completion=False
)


def _console() -> Console:
    # Off a terminal (CI logs, pipes) rich would wrap the results table at 80 columns.
    probe = Console()
    return probe if probe.is_terminal else Console(width=160)


@bench_app.callback()
def bench() -> None:
    """Benchmarks of the superposition service."""


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise typer.BadParameter(f"--hidden takes comma-separated integers, not {text!r}") from exc
    if not widths or min(widths) < 1:
        raise typer.BadParameter("--hidden needs at least one positive width, e.g. 256,256")
    return widths


def _http_factory(url: str, api_key: str | None) -> tuple[list[str], RunnerFactory]:
    """A factory of HTTP runners, and the warnings it collects while building them."""
    warnings: list[str] = []

    def factory(method: Method, architecture: ModelConfig) -> Runner:
        runner = HttpRunner(url, expected_kind=method.kind, api_key=api_key)
        expected = method.architecture(architecture)
        checked = runner.check_model(expected, replay=method.replay)
        warnings.extend(f"{method.name}: {text}" for text in checked)
        return runner

    return warnings, factory


def results_table(results: ContinualResults) -> Table:
    """The summary table printed at the end of a run."""
    tenants = results.stream["family"] == "tenants"
    rotating = results.stream["family"] == "rotating"
    if tenants:
        title = (
            f"tenants: {results.stream['tenants']} tenants x {results.stream['rows_per_tenant']}"
            f" rows, blocks of {results.stream['block_rows']}"
        )
        accuracy_columns: tuple[str, ...] = ("mean acc", "min acc", "prequential")
    else:
        title = f"{results.stream['name']}: {results.stream['tasks']} tasks"
        accuracy_columns = ("avg acc", "forgetting", "BWT", "prequential")
    table = Table(title=title)
    for column in ("method", *accuracy_columns):
        table.add_column(column, justify="left" if column == "method" else "right")
    if rotating:
        table.add_column("angle 0° min / mean (last cycle)", justify="right")
    for column in ("parameters", "bytes/context", "total MB", "seconds"):
        table.add_column(column, justify="right")
    for result in results.methods:
        table.add_row(*_result_cells(result, tenants=tenants, rotating=rotating))
    return table


def _result_cells(result: MethodResult, *, tenants: bool, rotating: bool) -> list[str]:
    """One method's row of `results_table`."""
    if tenants:
        cells = [
            result.method,
            f"{result.average_accuracy:.3f}",
            f"{result.minimum_accuracy:.3f}",
            f"{result.prequential_accuracy:.3f}",
        ]
    else:
        cells = [
            result.method,
            f"{result.average_accuracy:.3f}",
            f"{result.forgetting:.3f}",
            f"{result.backward_transfer:+.3f}",
            f"{result.prequential_accuracy:.3f}",
        ]
    if rotating and result.last_cycle is not None:
        cells.append(f"{result.last_cycle['min']:.3f} / {result.last_cycle['mean']:.3f}")
    footprint = result.footprint
    return [
        *cells,
        f"{footprint.parameters:,}",
        f"{footprint.bytes_per_context:,}",
        f"{footprint.total_bytes / 2**20:.2f}",
        f"{result.seconds:.1f}",
    ]


@bench_app.command()
def continual(
    stream: Annotated[
        str, typer.Option(help=f"Data stream: {', '.join(STREAMS)}, or tenants.")
    ] = "permuted-digits",
    tasks: Annotated[int, typer.Option(min=1, help="Tasks (per cycle).")] = 10,
    steps_per_task: Annotated[int, typer.Option(min=1, help="Steps per task (context).")] = 500,
    kinds: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated methods: none, binary, complex, rotation, onepower, separate, "
            "ewc, embed, gains, river; -local (complex, onepower), -continuous (onepower), "
            "-replay (rehearsal) and -forest (river) variants. Default: the superposed kinds "
            "with and without replay, separate and ewc (tenants: embed-replay, "
            "gains-replay and river, not ewc).",
        ),
    ] = None,
    hidden: Annotated[str, typer.Option(help="Hidden widths of the MLP.")] = "256,256",
    out: Annotated[Path, typer.Option(help="Folder for results.json and the plots.")] = Path(
        "bench-out/continual"
    ),
    via_http: Annotated[
        str | None, typer.Option(help="Drive a running service at this URL instead.")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="PSP_API_KEY", help="API key (admin, train, predict) for --via-http."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Weights, split, permutations, batch order.")] = 0,
    cycles: Annotated[
        int | None,
        typer.Option(min=1, help="Passes over the tasks; default 1, or 5 for rotating streams."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = DEFAULTS.batch_size,
    optimizer: Annotated[str, typer.Option(help="sgd, adam or rmsprop.")] = DEFAULTS.optimizer,
    lr: Annotated[float, typer.Option(min=0.0)] = DEFAULTS.lr,
    momentum: Annotated[float, typer.Option(min=0.0, max=0.999)] = DEFAULTS.momentum,
    clip_norm: Annotated[
        float, typer.Option(min=0.0, help="Global gradient-norm clip; 0 turns it off.")
    ] = DEFAULTS.clip_norm or 0.0,
    replay_rows: Annotated[
        int, typer.Option(min=1, help="Replay buffer rows of the -replay methods.")
    ] = DEFAULTS.replay_rows,
    replay_per_step: Annotated[
        int, typer.Option(min=0, help="Rows a -replay method rehearses per step.")
    ] = DEFAULTS.replay_per_step,
    tenants: Annotated[int, typer.Option(min=1, help="Tenants stream: tenants.")] = 256,
    rows_per_tenant: Annotated[
        int, typer.Option(min=1, help="Tenants stream: training rows per tenant.")
    ] = 1000,
    block_rows: Annotated[int, typer.Option(min=1, help="Tenants stream: rows per request.")] = 50,
    tenant_skew: Annotated[
        float,
        typer.Option(
            min=0.0, help="Tenants stream: tenant t sends rows in proportion to (t+1)^-skew."
        ),
    ] = 0.0,
    input_scale: Annotated[
        float, typer.Option(min=0.0, help="Multiplies every input; 255 gives raw pixels.")
    ] = 1.0,
    ewc_lambda: Annotated[float, typer.Option(min=0.0, help="Online EWC strength λ.")] = 10.0,
    ewc_gamma: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Online EWC Fisher decay γ.")
    ] = 1.0,
    ewc_samples: Annotated[int, typer.Option(min=1, help="Inputs per EWC Fisher.")] = 256,
    eval_every: Annotated[
        int, typer.Option(min=0, help="Steps between task-0 evaluations; 0: steps-per-task/10.")
    ] = 0,
    data_dir: Annotated[
        Path | None, typer.Option(help="Folder of the MNIST / Fashion-MNIST IDX files.")
    ] = None,
    test_limit: Annotated[int, typer.Option(min=1, help="Test rows per task, at most.")] = 1000,
    threads: Annotated[int, typer.Option(min=1, help="torch CPU threads.")] = 1,
) -> None:
    """Continual learning over a task stream: PSP kinds against no contexts, one network per
    task and online EWC (paper §7)."""
    methods = _chosen_methods(kinds, stream, via_http)
    config = ContinualConfig(
        stream=stream,
        tasks=tasks,
        steps_per_task=steps_per_task,
        cycles=cycles if cycles is not None else (5 if stream in ROTATING_STREAMS else 1),
        methods=tuple(method.name for method in methods),
        hidden=_widths(hidden),
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        momentum=momentum,
        clip_norm=clip_norm or None,
        replay_rows=replay_rows,
        replay_per_step=replay_per_step,
        tenants=tenants,
        rows_per_tenant=rows_per_tenant,
        block_rows=block_rows,
        tenant_skew=tenant_skew,
        input_scale=input_scale,
        ewc_lambda=ewc_lambda,
        ewc_gamma=ewc_gamma,
        ewc_samples=ewc_samples,
        eval_every=eval_every,
        seed=seed,
        data_dir=str(data_dir) if data_dir else None,
        test_limit=test_limit,
        via_http=via_http,
        threads=threads,
    )
    try:
        config.training_config()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--optimizer") from exc
    console = _console()
    results, warnings = _run(console, config, methods, api_key)
    for warning in warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    _save_and_report(console, results, out)


def _chosen_methods(kinds: str | None, stream: str, via_http: str | None) -> tuple[Method, ...]:
    """The methods `--kinds` names (by default every method that suits the stream), checked
    against the stream and the transport."""
    if kinds is None:
        kinds = ",".join(TENANTS_METHODS if stream == "tenants" else DEFAULT_METHODS)
    try:
        methods = parse_methods(kinds)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--kinds") from exc
    if stream not in (*STREAMS, "tenants"):
        raise typer.BadParameter(
            f"unknown stream {stream!r}; choose one of {', '.join(STREAMS)}, tenants",
            param_hint="--stream",
        )
    if via_http and any(method.family != "psp" for method in methods):
        raise typer.BadParameter(
            "--via-http measures the service's own kind; the baselines run in-process only",
            param_hint="--kinds",
        )
    return methods


def _run(
    console: Console, config: ContinualConfig, methods: tuple[Method, ...], api_key: str | None
) -> tuple[ContinualResults, list[str]]:
    """Runs the methods in-process or against `config.via_http`, a progress bar each.

    Returns:
        The results, and the warnings of the service's model check (over HTTP).

    Raises:
        typer.Exit: The data cannot be loaded (status 2), or the service failed (status 1).
    """
    warnings: list[str] = []
    factory: RunnerFactory | None = None
    if config.via_http:
        warnings, factory = _http_factory(config.via_http, api_key)
    try:
        return _run_with_progress(console, config, methods, factory), warnings
    except StreamError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    except BenchHTTPError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


def _run_with_progress(
    console: Console,
    config: ContinualConfig,
    methods: tuple[Method, ...],
    factory: RunnerFactory | None,
) -> ContinualResults:
    total = config.cycles * config.tasks * config.steps_per_task  # until a run reports its own
    columns = (
        TextColumn("{task.description:<26}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bars = {m.name: progress.add_task(m.name, total=total, start=False) for m in methods}

        def bar(method: Method) -> StepProgress:
            task = bars[method.name]
            progress.start_task(task)
            return lambda done, total: progress.update(task, completed=done, total=total)

        return run_continual(config, runner_factory=factory, progress=bar, methods=methods)


def _save_and_report(console: Console, results: ContinualResults, out: Path) -> None:
    """Writes results.json (and the plots, but for the tenants stream) to `out` and prints
    the summary table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results.to_dict(), indent=1) + "\n")
    console.print(results_table(results))
    if results.config.stream == "tenants":
        console.print(f"wrote {out / 'results.json'}")
        return
    figures = plot_all(results, out)
    console.print(f"wrote {out / 'results.json'} and {', '.join(p.name for p in figures)}")


if __name__ == "__main__":
    bench_app()
