"""The `psp` command line: serve, worker, db upgrade and benchmarks."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
import uvicorn

from service.bench.cli import bench_app
from service.settings import Settings, get_settings

app = typer.Typer(help="Superposition continual-learning service.", no_args_is_help=True)
db_app = typer.Typer(help="Registry database.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(bench_app, name="bench")


def _fail(message: str) -> NoReturn:
    """Ends a command with one line on stderr and exit status 2."""
    typer.echo(f"psp: {message}", err=True)
    sys.exit(2)


def _settings_or_exit(**overrides: Any) -> Settings:
    """The settings, checked against the newest checkpoint; a mistake ends the command with one
    line naming the setting."""
    from pydantic import ValidationError

    from service.startup import StartupError, check_checkpoint_fits, describe_settings_error

    try:
        settings = Settings(**overrides) if overrides else get_settings()
        check_checkpoint_fits(settings)
    except ValidationError as err:
        _fail(f"invalid settings: {describe_settings_error(err)}")
    except StartupError as err:
        _fail(str(err))
    return settings


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, help="Port to bind."),
    workers: int = typer.Option(1, min=1, help="API processes (PSP_ROLE=api only)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Start the HTTP API (and, with PSP_ROLE=all, the trainer in the same process)."""
    settings = _settings_or_exit()
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    if workers == 1:
        from service.app import create_app

        uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)
        return
    if settings.role != "api":
        raise typer.BadParameter(
            "several processes may only serve with PSP_ROLE=api: there is one writer per shard",
            param_hint="--workers",
        )
    # Each process keeps its metrics in files here; /metrics adds them up.
    metrics_dir = Path(
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(settings.data_dir / "prometheus"))
    )
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
    )


@app.command()
def worker(
    host: str = typer.Option("0.0.0.0", help="Address of the health and metrics endpoints."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Start the single training writer (PSP_ROLE=worker); /metrics and /healthz listen on
    PSP_METRICS_PORT."""
    from service.app import create_worker_app

    settings = _settings_or_exit(role="worker")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(
        create_worker_app(settings), host=host, port=settings.metrics_port, log_level=log_level
    )


@keys_app.command("create")
def keys_create(
    scope: list[str] = typer.Option(..., help="predict, train or admin; repeat for several."),
    prefix: str = typer.Option("", help="Limit the key to contexts whose keys start with this."),
    name: str = typer.Option("", help="A label for people reading the settings."),
) -> None:
    """Issue an API key: prints the key once, and the entry to add to PSP_API_KEYS."""
    from service.auth import ALL_SCOPES, issue_key

    unknown = set(scope) - ALL_SCOPES
    if unknown:
        raise typer.BadParameter(f"unknown scopes {sorted(unknown)}; use predict, train, admin")
    key, spec = issue_key(scope, prefix, name)  # type: ignore[arg-type]
    typer.echo(f"key (shown only now): {key}")
    typer.echo(f"PSP_API_KEYS entry:   {spec.model_dump_json()}")


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply the registry's migrations (the server also does this at start-up)."""
    from service.registry.migrate import upgrade

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url, revision)
    typer.echo(f"registry at {revision}")


if __name__ == "__main__":
    app()
