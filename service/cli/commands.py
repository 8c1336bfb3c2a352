"""The `psp` command line: serve, worker, db upgrade, API keys, benchmarks and the client
commands (contexts, train, predict)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import typer
import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from service.cli.client import contexts_app, predict_command, train_command
from service.settings import Settings, get_settings

app = typer.Typer(help="Superposition continual-learning service.", no_args_is_help=True)
db_app = typer.Typer(help="Registry database.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(contexts_app, name="contexts")
app.command("train")(train_command)
app.command("predict")(predict_command)


def _fail(message: str) -> NoReturn:
    """Ends a command with one line on stderr and exit status 2."""
    typer.echo(f"psp: {message}", err=True)
    sys.exit(2)


def _settings_or_exit(**overrides: Any) -> Settings:
    """The settings, checked against the newest checkpoint; a mistake ends the command with one
    line naming the setting."""
    from pydantic import ValidationError

    from service.runtime.startup import (
        StartupError,
        check_checkpoint_fits,
        describe_settings_error,
    )

    try:
        settings = Settings(**overrides) if overrides else get_settings()
        # A worker's own shard (shard 0 otherwise); the runtime checks every shard it holds.
        check_checkpoint_fits(settings.for_shard(settings.queue.shard))
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
        from service.model.step_child import start_fork_server
        from service.model.step_client import steps_run_in_child

        if steps_run_in_child(settings):
            start_fork_server()  # its imports overlap with the app's start-up
        from service.app import create_app

        if settings.role == "all":
            _wait_for_writer_leases(settings, range(settings.shards.count))
        _run_writer(create_app(settings), host=host, port=port, log_level=log_level)
        return
    if settings.role != "api":
        raise typer.BadParameter(
            "several processes may only serve with PSP_ROLE=api: there is one writer per shard",
            param_hint="--workers",
        )
    with private_metrics_dir():
        uvicorn.run(
            "service.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
        )


@contextlib.contextmanager
def private_metrics_dir() -> Iterator[Path]:
    """The directory where each of this command's processes keeps its metrics, summed by /metrics.

    prometheus-client names the files by process id, so the directory must belong to this command
    alone: replicas in other containers, which share the data volume, reuse the same ids. A
    `PROMETHEUS_MULTIPROC_DIR` set by the operator is used as it is and never emptied; otherwise
    a fresh directory under the system's temporary directory is made and removed at the end.
    """
    preset = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if preset:
        Path(preset).mkdir(parents=True, exist_ok=True)
        yield Path(preset)
        return
    directory = Path(tempfile.mkdtemp(prefix="psp-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    try:
        yield directory
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(directory, ignore_errors=True)


@app.command()
def worker(
    host: str = typer.Option("0.0.0.0", help="Address of the health and metrics endpoints."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    shard: int | None = typer.Option(
        None, min=0, help="The shard this worker writes (default: PSP_QUEUE__SHARD, else 0)."
    ),
) -> None:
    """Start the single training writer of one shard (PSP_ROLE=worker); /metrics, /healthz and
    the checkpoint downloads listen on PSP_METRICS_PORT. Beyond loopback the downloads need
    PSP_CHECKPOINT__FETCH_TOKEN: without one the worker refuses to start."""
    from service.app import create_worker_app

    overrides: dict[str, Any] = {"role": "worker"}
    if shard is not None:
        overrides["queue"] = {"shard": shard}
    settings = _settings_or_exit(**overrides)
    if settings.checkpoint.fetch_token is None and not is_loopback(host):
        _fail(
            f"the worker would serve its checkpoints (the whole model's weights) on {host}:"
            f"{settings.metrics_port} to anyone who reaches it; set PSP_CHECKPOINT__FETCH_TOKEN "
            "(API processes send it), or listen on loopback only with --host 127.0.0.1"
        )
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    _wait_for_writer_leases(settings, [settings.queue.shard])
    _run_writer(
        create_worker_app(settings), host=host, port=settings.metrics_port, log_level=log_level
    )


def _wait_for_writer_leases(settings: Settings, shards: Iterable[int]) -> None:
    """Waits, up to PSP_WRITER__WAIT_SECONDS, until no other live process writes these shards;
    ends the command with one line when one still does. The runtime then claims them (and
    refuses to start if another process claimed one meanwhile)."""
    from service.registry.writers import WriterTaken, holder

    sessions = _registry_sessions(settings)
    deadline = time.monotonic() + settings.writer.wait_seconds
    for shard in shards:
        while True:
            with sessions.begin() as session:
                held = holder(session=session, shard=shard)
            if held is None:
                break
            if time.monotonic() >= deadline:
                _fail(str(WriterTaken(shard, held)))
            time.sleep(0.5)


def _run_writer(app: Any, *, host: str, port: int, log_level: str) -> None:
    """Serves `app` until it stops; a writer that a newer one replaced stops its server and
    ends the command with exit status 2 and the reason."""
    from service.training.writer_lease import lost_lease_message, stop_process_when_fenced

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
    stop_process_when_fenced(lambda: setattr(server, "should_exit", True))
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    message = lost_lease_message()
    if message is not None:
        _fail(message)
    if not server.started:
        sys.exit(3)  # start-up failed; uvicorn said why


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only: a loopback address or `localhost`.
    A name other than `localhost` may resolve anywhere, so it counts as reachable by others."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _registry_sessions(settings: Settings | None = None) -> sessionmaker[Session]:
    """Sessions on the migrated registry database of `settings` (the current ones by default)."""
    from service.registry.database import make_engine, make_session_factory
    from service.registry.migrate import upgrade

    settings = settings or get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    return make_session_factory(make_engine(settings.resolved_database_url))


@keys_app.command("create")
def keys_create(
    scope: list[str] = typer.Option(..., help="predict, train or admin; repeat for several."),
    prefix: str = typer.Option("", help="Limit the key to contexts whose keys start with this."),
    name: str = typer.Option("", help="A label for people reading the key list."),
    env: bool = typer.Option(
        False, "--env", help="Store nothing; print an entry for PSP_API_KEYS instead."
    ),
) -> None:
    """Issue an API key and store its salted hash in the registry; prints the key once.

    Serving processes accept it within PSP_REGISTRY_POLL_SECONDS.
    """
    from service.api.auth import ALL_SCOPES, issue_key
    from service.registry.api_keys import store_api_key

    unknown = set(scope) - ALL_SCOPES
    if unknown:
        raise typer.BadParameter(f"unknown scopes {sorted(unknown)}; use predict, train, admin")
    key, spec = issue_key(scope, prefix, name)  # type: ignore[arg-type]
    if env:
        typer.echo(f"key (shown only now): {key}")
        typer.echo(f"PSP_API_KEYS entry:   {spec.model_dump_json()}")
        return
    with _registry_sessions().begin() as session:
        store_api_key(session=session, spec=spec)
    typer.echo(f"key (shown only now): {key}")
    typer.echo(f"stored as id {spec.id}; revoke with: psp keys revoke {spec.id}")


@keys_app.command("list")
def keys_list() -> None:
    """List the API keys (ids, never secrets): those in PSP_API_KEYS and the stored ones."""
    from service.registry.api_keys import list_api_keys

    for spec in get_settings().api_keys:
        scopes = ",".join(spec.scopes)
        typer.echo(
            f"{spec.id}  {scopes:<20} prefix={spec.key_prefix!r:<14} PSP_API_KEYS  {spec.name}"
        )
    with _registry_sessions()() as session:
        for row in list_api_keys(session=session):
            state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "valid"
            typer.echo(
                f"{row.id}  {row.scopes:<20} prefix={row.key_prefix!r:<14} {state}  {row.name}"
            )


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The id shown by `psp keys list`.")) -> None:
    """Revoke a stored key; every serving process refuses it within PSP_REGISTRY_POLL_SECONDS."""
    from service.registry.api_keys import revoke_api_key

    if any(spec.id == key_id for spec in get_settings().api_keys):
        raise typer.BadParameter(
            f"key {key_id} comes from PSP_API_KEYS; remove it there and restart the service",
            param_hint="KEY_ID",
        )
    with _registry_sessions().begin() as session:
        revoked = revoke_api_key(session=session, key_id=key_id)
    if not revoked:
        raise typer.BadParameter(
            f"no valid stored key has the id {key_id}; see `psp keys list`", param_hint="KEY_ID"
        )
    typer.echo(f"revoked {key_id}")


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply the registry's migrations (the server also does this at start-up)."""
    from service.registry.migrate import upgrade

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url, revision)
    typer.echo(f"registry at {revision}")


BENCH_INSTALL = "pip install 'psp-service[bench]'"
"""Installs the `bench` extra: psp_bench's dependencies, left out of the service's own."""


# Every argument, --help included, goes on to the benchmark's own command line.
@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def bench(ctx: typer.Context) -> None:
    """Benchmarks of the superposition service (needs the bench extra)."""
    # Loaded here, not at the top: the benchmark's dependencies are an extra the image leaves out.
    try:
        from psp_bench.cli import bench_app
    except ModuleNotFoundError as err:
        package = (err.name or "a package").partition(".")[0]
        _fail(f"psp bench needs the bench extra, and {package} is missing: {BENCH_INSTALL}")
    typer.main.get_command(bench_app).main(args=ctx.args, prog_name=ctx.command_path)


if __name__ == "__main__":
    app()
