"""Static checks of the deployment (docker/Dockerfile, .dockerignore, deploy/): no Docker needed.

Every value the deployment hands to the service is checked against the service itself: PSP_
variables against `Settings`, commands against the `psp` CLI, Prometheus targets against the
compose services and the ports they listen on, and the dashboard's queries against the metrics
that a real app exposes on GET /metrics.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from fastapi.testclient import TestClient

from service.app import create_app, create_worker_app
from service.cli.commands import app as cli_app
from service.settings import Settings
from tests.deploy.settings_fields import settings_env_names, shared_env_names

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"
PROMETHEUS_FILE = DEPLOY / "prometheus" / "prometheus.yml"
NGINX_FILE = DEPLOY / "nginx" / "default.conf"
GRAFANA_DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
GRAFANA_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml"
DASHBOARD_FILE = DEPLOY / "grafana" / "dashboards" / "psp.json"

SECRETS = ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "PSP_CHECKPOINT__FETCH_TOKEN")
"""Variables compose must refuse to run without (`${VAR:?message}`)."""

TEST_ENV = {name: "s3cret" for name in SECRETS}
"""What a filled-in deploy/.env provides, for interpolating compose values in these tests."""

FIXED_IN_COMPOSE = {
    "PSP_DATABASE_URL": None,  # the compose services' own
    "PSP_REDIS_URL": None,
    "PSP_DATA_DIR": None,
    "PSP_AUTH__REQUIRED": "true",  # closed by default: keys from the first start
    "PSP_CHECKPOINT__FETCH_TOKEN": None,  # a secret, required
}
"""Shared settings that compose sets itself instead of passing an empty default from .env."""

IMAGE_VARIABLES = {
    "PSP_POSTGRES_IMAGE": "postgres:15",
    "PSP_REDIS_IMAGE": "redis:7",
    "PSP_NGINX_IMAGE": "nginx:1.27-alpine",
    "PSP_PROMETHEUS_IMAGE": "prom/prometheus:v2.53.1",
    "PSP_GRAFANA_IMAGE": "grafana/grafana:11.1.0",
    "PSP_BASE_IMAGE": "python:3.11-slim-bookworm",
}
"""Compose variables naming images (no service settings), with their upstream defaults."""

PROMETHEUS_PORT = 9090
"""Prometheus listens on its default port (compose passes no --web.listen-address)."""

# The metric families the dashboard must chart.
DASHBOARD_REQUIRED_METRICS = {
    "psp_http_request_duration_seconds_bucket",
    "psp_http_requests_total",
    "psp_predict_batch_rows_bucket",
    "psp_queue_depth_examples",
    "psp_queue_lag_seconds",
    "psp_prequential_correct_total",
    "psp_prequential_examples_total",
    "psp_prequential_accuracy_ratio",
    "psp_model_version",
    "psp_train_accepted_examples_total",
    "psp_trainer_examples_total",
    "psp_trainer_refused_steps_total",
    "psp_checkpoint_duration_seconds_bucket",
    "psp_checkpoint_staleness_seconds_bucket",
}

_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?message}`, against `env`."""
    env = TEST_ENV if env is None else env

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if operator in (":-", "-"):
            return argument
        if operator in (":?", "?"):
            raise AssertionError(f"${{{name}}} is required: {argument}")
        return ""

    return _INTERPOLATION.sub(substitute, value)


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, as a mapping (compose allows a mapping or `KEY=VALUE` items)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {key: "" if value is None else str(value) for key, value in raw.items()}


def resolve_cli(argv: list[str]) -> tuple[Any, dict[str, Any]]:
    """The `psp` CLI command `argv` runs and its parsed parameters; fails on anything unknown.

    Walks the command tree that `typer.main.get_command` builds (groups have `commands`; typer
    vendors its own click, so the classes are not checked), then lets the command's parser
    check the options and arguments.
    """
    assert argv and argv[0] == "psp", f"{argv} does not run the psp console script"
    command: Any = typer.main.get_command(cli_app)
    args = list(argv[1:])
    path = ["psp"]
    while hasattr(command, "commands"):
        assert args, f"{argv} stops at the command group {' '.join(path)}"
        name = args.pop(0)
        sub = command.commands.get(name)
        assert sub is not None, (
            f"{argv}: {' '.join(path)} has no command {name!r} (it has {sorted(command.commands)})"
        )
        command = sub
        path.append(name)
    assert command.name == path[-1], (command.name, path)
    try:
        context = command.make_context(" ".join(path), args)
    except Exception as error:
        raise AssertionError(f"{argv} does not parse: {error}") from error
    return command, dict(context.params)


def psp_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the image built from docker/Dockerfile."""
    return {
        name: service
        for name, service in compose["services"].items()
        if isinstance(service.get("build"), dict)
        and service["build"].get("dockerfile") == "docker/Dockerfile"
    }


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    return shlex.split(command) if isinstance(command, str) else list(command or [])


def worker_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in psp_services(compose).items()
        if resolve_cli(command_of(service))[0].name == "worker"
    }


def metrics_port(service: dict[str, Any]) -> int:
    """The port `psp worker` serves /metrics and /healthz on: PSP_METRICS_PORT or its default."""
    assert "metrics_port" in Settings.model_fields, (
        "Settings has no `metrics_port` field (PSP_METRICS_PORT) for the worker's metrics server"
    )
    value = environment(service).get("PSP_METRICS_PORT")
    if value is None:
        return int(Settings.model_fields["metrics_port"].default)
    return int(interpolate(value))


def listening_ports(service: dict[str, Any]) -> set[int]:
    """The container ports a psp service serves HTTP on, from its command and settings."""
    command, params = resolve_cli(command_of(service))
    if command.name == "serve":
        return {int(params["port"])}
    if command.name == "worker":
        return {metrics_port(service)}
    return set()


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """`(host_ip, host_port, container_port)` of every short-syntax `ports` entry."""
    result = []
    for entry in service.get("ports", []):
        parts = interpolate(str(entry)).split(":")
        container = int(parts[-1].split("/")[0])
        host_port = int(parts[-2]) if len(parts) >= 2 else 0
        host_ip = parts[-3] if len(parts) == 3 else "0.0.0.0"
        result.append((host_ip, host_port, container))
    return result


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """`{source: target}` of a service's bind mounts (sources relative to deploy/)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith(("./", "../")):
            mounts[source] = target
    return mounts


def named_volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """`{volume: target}` of a service's named volumes."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if not source.startswith(("./", "../", "/")):
            mounts[source] = target
    return mounts


def healthcheck_url(service: dict[str, Any]) -> tuple[int, str]:
    """`(port, path)` of the loopback URL a service's healthcheck fetches."""
    test = service.get("healthcheck", {}).get("test")
    assert test, "no healthcheck"
    text = " ".join(test) if isinstance(test, list) else str(test)
    match = re.search(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/[A-Za-z0-9_/]*)", text)
    assert match, f"the healthcheck {test} fetches no loopback URL"
    return int(match.group(1)), match.group(2)


def services_by_dns_name(compose: dict[str, Any]) -> dict[str, set[str]]:
    """Names resolvable on the compose network (service names and aliases) -> services."""
    names: dict[str, set[str]] = {}
    for name, service in compose["services"].items():
        names.setdefault(name, set()).add(name)
        networks = service.get("networks") or {}
        if isinstance(networks, dict):
            for network in networks.values():
                for alias in (network or {}).get("aliases", []):
                    names.setdefault(alias, set()).add(name)
    return names


def dockerfile_instructions() -> list[tuple[str, str]]:
    """`(INSTRUCTION, arguments)` with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        pending += stripped
        keyword, _, arguments = pending.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation line"
    return instructions


def requirement_name(requirement: str) -> str:
    """The distribution a requirement names, e.g. `scikit-learn` for `scikit-learn>=1.3`."""
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def env_example_entries() -> dict[str, str]:
    """`VAR=value` lines of .env.example, `# VAR=value` ones included (inline comments cut)."""
    entries = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^#? ?([A-Z][A-Z0-9_]*)=(\S*)", line)
        if match:
            entries[match.group(1)] = match.group(2)
    return entries


def expressions(dashboard: dict[str, Any]) -> Iterator[str]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[str]:
        for panel in panels:
            for target in panel.get("targets", []):
                yield target["expr"]
            yield from walk(panel.get("panels", []))

    yield from walk(dashboard["panels"])


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


# ------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict) and isinstance(loaded.get("services"), dict)
    return loaded


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(PROMETHEUS_FILE.read_text())
    return loaded


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return loaded


@pytest.fixture(scope="module")
def datasource() -> dict[str, Any]:
    loaded = yaml.safe_load(GRAFANA_DATASOURCES.read_text())
    (only,) = loaded["datasources"]
    return dict(only)


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> tuple[set[str], dict[str, str], set[str]]:
    """`(sample names, {family: type}, route paths)` of a real app's GET /metrics."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("psp-data"),
        device="cpu",
        model={"hidden": [8]},
        database_url=None,
        redis_url=None,
        role="all",
    )
    app = create_app(settings)
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        response = client.get("/metrics")
    assert response.status_code == 200
    samples: set[str] = set()
    families: dict[str, str] = {}
    for line in response.text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            families[name] = kind.strip()
        elif line and not line.startswith("#"):
            samples.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    routes = set(app.openapi()["paths"]) | {getattr(route, "path", "") for route in app.routes}
    return samples, families, routes


@pytest.fixture(scope="module")
def worker_client() -> Iterator[TestClient]:
    """The app `psp worker` serves on its metrics port (routes only: the lifespan, which would
    connect to Redis, is not entered)."""
    settings = Settings(
        role="worker", redis_url="redis://redis.invalid:6379/0", device="cpu", model={"hidden": [8]}
    )
    client = TestClient(create_worker_app(settings))
    yield client
    client.close()


# ------------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore
# ------------------------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_with_a_base_image_argument() -> None:
    instructions = dockerfile_instructions()
    froms = [arguments for keyword, arguments in instructions if keyword == "FROM"]
    assert len(froms) >= 2, "builder and runtime stages"
    first_from = next(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    global_args = {
        arguments.split("=", 1)[0]
        for keyword, arguments in instructions[:first_from]
        if keyword == "ARG"
    }
    assert "BASE_IMAGE" in global_args, "ARG BASE_IMAGE before the first FROM"
    assert all(stage.split()[0] == "${BASE_IMAGE}" for stage in froms), froms
    stage_names = [stage.split()[-1] for stage in froms if " AS " in stage.upper()]
    copies_from = [
        arguments
        for keyword, arguments in instructions
        if keyword == "COPY" and arguments.startswith("--from=")
    ]
    assert copies_from, "the runtime stage copies the builder's environment"
    assert all(c.split()[0].removeprefix("--from=") in stage_names for c in copies_from)
    stage_args = dict(
        a.split("=", 1) for keyword, a in instructions[first_from:] if keyword == "ARG"
    )
    assert stage_args["TORCH_VARIANT"] == "cpu"
    assert re.fullmatch(r"\d+\.\d+\.\d+", stage_args["TORCH_VERSION"]), "torch is pinned"
    assert stage_args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/${TORCH_VARIANT}"


def test_dockerfile_runtime_stage_is_non_root_healthy_and_serves() -> None:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    runtime = instructions[last_from:]

    users = [arguments for keyword, arguments in runtime if keyword == "USER"]
    assert users, "the runtime stage sets a USER"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]

    env: dict[str, str] = {}
    for keyword, arguments in runtime:
        if keyword == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(arguments))
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("PSP_DATA_DIR") == "/data"
    assert {name for name in env if name.startswith("PSP_")} <= settings_env_names()
    runs = " ".join(arguments for keyword, arguments in runtime if keyword == "RUN")
    assert re.search(r"chown\s+\S+\s+/data", runs), "/data is owned by the service user"

    (cmd,) = [arguments for keyword, arguments in runtime if keyword == "CMD"]
    command, params = resolve_cli(json.loads(cmd))
    assert command.name == "serve"
    assert params["host"] == "0.0.0.0"
    exposed_ports = {
        int(port)
        for keyword, arguments in runtime
        if keyword == "EXPOSE"
        for port in arguments.split()
    }
    assert exposed_ports == {params["port"]} == {8000}

    (healthcheck,) = [arguments for keyword, arguments in runtime if keyword == "HEALTHCHECK"]
    probe = json.loads(healthcheck[healthcheck.index("CMD") + len("CMD") :].strip())
    assert probe[0] == "python", "the probe needs no curl"
    assert "HEALTHCHECK_URL" in probe[-1]
    url = re.fullmatch(r"http://127\.0\.0\.1:(\d+)(/\w+)", env["HEALTHCHECK_URL"])
    assert url and int(url.group(1)) == params["port"] and url.group(2) == "/healthz"


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allow-list: everything is ignored, then re-included"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources = []
    for keyword, arguments in dockerfile_instructions():
        if keyword == "COPY" and not arguments.startswith("--from="):
            sources += [s.rstrip("/") for s in arguments.split()[:-1] if not s.startswith("--")]
    assert sources
    for source in sources:
        assert source in included, f"COPY {source} is excluded by .dockerignore"
        assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"


def test_the_image_installs_the_service_without_the_benchmark_extra() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    bench = {requirement_name(r) for r in project["optional-dependencies"]["bench"]}
    assert {"scikit-learn", "matplotlib"} <= bench
    assert not bench & {requirement_name(r) for r in project["dependencies"]}
    instructions = dockerfile_instructions()
    # The words after each `pip install` of every RUN.
    installs = [
        shlex.split(command.split("pip install", 1)[1])
        for keyword, arguments in instructions
        if keyword == "RUN"
        for command in arguments.split("&&")
        if "pip install" in command
    ]
    assert any(words[-1:] in (["."], ["/src"]) for words in installs), "installs the project"
    for words in installs:
        named = {requirement_name(word) for word in words}
        assert not any("[" in word for word in words) and not named & (bench | {"sklearn"}), words
    copied = " ".join(arguments for keyword, arguments in instructions if keyword == "COPY")
    assert "psp_bench" not in copied


# ------------------------------------------------------------------------------------------------
# Compose: services, commands and settings
# ------------------------------------------------------------------------------------------------


def test_every_service_has_an_image_and_psp_services_a_real_command(
    compose: dict[str, Any],
) -> None:
    for name, service in compose["services"].items():
        assert service.get("image") or service.get("build"), f"{name}: no image or build"
    services = psp_services(compose)
    assert {"migrate", "api", "worker", "worker-gpu"} <= set(services)
    for name, service in services.items():
        build = service["build"]
        assert (DEPLOY / build["context"]).resolve() == ROOT, f"{name}: build context"
        assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE
        assert service.get("command"), f"{name}: no command"
        resolve_cli(command_of(service))
    assert resolve_cli(command_of(services["api"]))[0].name == "serve"
    assert resolve_cli(command_of(services["migrate"]))[0].name == "upgrade"


def test_every_psp_variable_is_a_settings_field(compose: dict[str, Any]) -> None:
    valid = settings_env_names()
    used: set[str] = set()
    for service in compose["services"].values():
        used |= {key for key in environment(service) if key.startswith("PSP_")}
    used |= set(re.findall(r"\$\{(PSP_[A-Z0-9_]+)", COMPOSE_FILE.read_text()))
    used |= {name for name in env_example_entries() if name.startswith("PSP_")}
    assert used, "compose sets PSP_ variables"
    assert not set(IMAGE_VARIABLES) & valid, "an image variable collides with a setting"
    used -= set(IMAGE_VARIABLES)
    unknown = sorted(used - valid)
    assert not unknown, f"not fields of service.settings.Settings: {unknown}"


def test_each_psp_service_environment_builds_valid_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a container would read: its environment, interpolated, through `Settings()`."""
    for name, service in psp_services(compose).items():
        with monkeypatch.context() as patch:
            for key in [key for key in os.environ if key.startswith("PSP_")]:
                patch.delenv(key)
            env = {key: interpolate(value) for key, value in environment(service).items()}
            for key, value in env.items():
                patch.setenv(key, value)
            try:
                settings = Settings()
            except ValueError as error:
                raise AssertionError(f"{name}: {error}") from error
        assert str(settings.data_dir) == "/data", name
        assert settings.database_url and settings.database_url.startswith("postgresql+psycopg://")
        assert settings.redis_url, name
        expected_role = {"serve": "api", "worker": "worker"}.get(
            resolve_cli(command_of(service))[0].name, settings.role
        )
        assert settings.role == expected_role, name


def test_defaults_in_compose_are_those_of_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`PSP_X: ${PSP_X:-}` passes an empty value while .env leaves PSP_X unset, and the service
    then keeps its own default; .env.example shows those defaults."""
    for key in [key for key in os.environ if key.startswith("PSP_")]:
        monkeypatch.delenv(key)
    baseline = Settings().model_dump()
    from_env_file: set[str] = set()
    for service in compose["services"].values():
        for key, value in environment(service).items():
            match = re.fullmatch(r"\$\{(PSP_[A-Z0-9_]+):-([^}]*)\}", value)
            if not match:
                continue
            assert match.group(1) == key, f"{key} is overridden from ${{{match.group(1)}}}"
            assert match.group(2) == "", f"{key}: the default lives in Settings, not in compose"
            monkeypatch.setenv(key, "")
            assert Settings().model_dump() == baseline, f"an empty {key} changes the settings"
            monkeypatch.delenv(key)
            from_env_file.add(key)
    fixed = set(FIXED_IN_COMPOSE)
    assert from_env_file == shared_env_names() - fixed, "every shared setting comes from .env"
    for key, shown in env_example_entries().items():
        if not key.startswith("PSP_") or key in fixed or key in IMAGE_VARIABLES:
            continue
        monkeypatch.setenv(key, shown)
        assert Settings().model_dump() == baseline, f".env.example shows {key}={shown}"
        monkeypatch.delenv(key)


def test_secrets_are_required_and_documented(compose: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text()
    examples = env_example_entries()
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?", text))
    assert set(SECRETS) <= required
    for name in required:
        assert examples.get(name) == "", f"{name} must be listed, empty, in .env.example"
        assert re.search(rf"^{name}=$", ENV_EXAMPLE.read_text(), re.MULTILINE)
    for name in {match[0] for match in _INTERPOLATION.findall(text)}:
        assert name in examples, f"${{{name}}} is not documented in .env.example"
    assert interpolate(environment(compose["services"]["grafana"])["GF_SECURITY_ADMIN_PASSWORD"])
    with pytest.raises(AssertionError, match="required"):
        interpolate(environment(compose["services"]["postgres"])["POSTGRES_PASSWORD"], {})


def test_postgres_and_redis_are_durable_and_healthchecked(compose: dict[str, Any]) -> None:
    postgres, redis = compose["services"]["postgres"], compose["services"]["redis"]
    assert interpolate(postgres["image"]) == "postgres:15"
    assert "pg_isready" in json.dumps(postgres["healthcheck"]["test"])
    assert named_volume_mounts(postgres).get("postgres-data") == "/var/lib/postgresql/data"

    assert interpolate(redis["image"]).startswith("redis:7")
    test = json.dumps(redis["healthcheck"]["test"])
    assert "redis-cli" in test and "ping" in test
    command = command_of(redis)
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert named_volume_mounts(redis).get("redis-data") == "/data"
    for volume in ("postgres-data", "redis-data", "psp-data"):
        assert volume in compose["volumes"]


def test_psp_services_wait_for_healthy_dependencies(compose: dict[str, Any]) -> None:
    services = psp_services(compose)
    for name in ("api", *worker_services(compose)):
        depends = services[name]["depends_on"]
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for dependency in ("postgres", "redis"):
            assert depends[dependency]["condition"] == "service_healthy", (name, dependency)
        for dependency, spec in depends.items():
            assert dependency in compose["services"]
            if dependency == "migrate":
                assert spec["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_connection_urls_point_at_the_compose_services(compose: dict[str, Any]) -> None:
    postgres_env = environment(compose["services"]["postgres"])
    for name, service in psp_services(compose).items():
        env = {key: interpolate(value) for key, value in environment(service).items()}
        database = re.fullmatch(
            r"postgresql\+psycopg://([^:]+):([^@]+)@([^:/]+):(\d+)/(\w+)", env["PSP_DATABASE_URL"]
        )
        assert database, f"{name}: PSP_DATABASE_URL"
        user, password, host, port, db = database.groups()
        assert (user, host, port, db) == (
            postgres_env["POSTGRES_USER"],
            "postgres",
            "5432",
            postgres_env["POSTGRES_DB"],
        )
        assert password == TEST_ENV["POSTGRES_PASSWORD"], "the password comes from .env"
        assert re.fullmatch(r"redis://redis:6379/\d+", env["PSP_REDIS_URL"]), name
        assert env["PSP_DATA_DIR"] == "/data"


def test_api_and_workers_share_the_model_and_the_checkpoint_volume(
    compose: dict[str, Any],
) -> None:
    services = psp_services(compose)
    api = services["api"]
    api_env = environment(api)
    assert api_env["PSP_ROLE"] == "api"
    data_dir = api_env["PSP_DATA_DIR"]
    api_volumes = named_volume_mounts(api)
    shared = [volume for volume, target in api_volumes.items() if target == data_dir]
    assert shared == ["psp-data"], "the API mounts the checkpoint volume at PSP_DATA_DIR"
    missing = sorted(shared_env_names() - set(api_env))
    assert not missing, f"the API replicas do not receive {missing}"
    model_keys = shared_env_names()
    for name, worker in worker_services(compose).items():
        env = environment(worker)
        assert env["PSP_ROLE"] == "worker", name
        assert env["PSP_DATA_DIR"] == data_dir, name
        assert named_volume_mounts(worker).get("psp-data") == data_dir, name
        for key in model_keys | {"PSP_DATABASE_URL", "PSP_REDIS_URL"}:
            assert env.get(key) == api_env[key], f"{name}: {key} differs from the API's"


def test_exactly_one_worker_can_run(compose: dict[str, Any]) -> None:
    workers = worker_services(compose)
    assert set(workers) == {"worker", "worker-gpu"}
    profiles = {}
    for name, service in workers.items():
        assert len(service.get("profiles", [])) == 1, f"{name}: exactly one profile"
        profiles[name] = service["profiles"][0]
    assert len(set(profiles.values())) == len(profiles), "one profile per worker variant"
    enabled = env_example_entries()["COMPOSE_PROFILES"].split(",")
    assert len(set(enabled) & set(profiles.values())) == 1, "exactly one worker profile"
    # The single-writer guard: one fixed host port that every worker container publishes.
    guards = {tuple(published_ports(service)) for service in workers.values()}
    assert len(guards) == 1, guards
    (guard,) = guards
    assert guard and all(host_port for _, host_port, _ in guard)
    for name, service in workers.items():
        assert "container_name" not in service, f"{name}: container_name breaks profiles"
        assert "replicas" not in service.get("deploy", {}), name


def test_gpu_worker_reserves_an_nvidia_gpu(compose: dict[str, Any]) -> None:
    workers = worker_services(compose)
    gpu = workers["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert environment(gpu)["PSP_DEVICE"].startswith("cuda")
    assert "download.pytorch.org/whl/cu" in interpolate(gpu["build"]["args"]["TORCH_INDEX_URL"])
    assert gpu["image"] != workers["worker"]["image"], "the CUDA build gets its own tag"
    cpu = workers["worker"]
    assert cpu["profiles"] == ["cpu"]
    assert environment(cpu)["PSP_DEVICE"] == "cpu"
    assert "devices" not in json.dumps(cpu.get("deploy", {}))


def test_healthchecks_hit_the_ports_the_services_listen_on(
    compose: dict[str, Any], exposed: tuple[set[str], dict[str, str], set[str]]
) -> None:
    _, _, routes = exposed
    services = psp_services(compose)
    api_port, api_path = healthcheck_url(services["api"])
    assert api_port in listening_ports(services["api"])
    assert api_path in routes and api_path in ("/healthz", "/readyz")
    for name, worker in worker_services(compose).items():
        port, path = healthcheck_url(worker)
        assert port == metrics_port(worker), name
        assert path == "/healthz", name
        assert any(container == port for _, _, container in published_ports(worker)), name


def test_api_replicas_scale_behind_nginx(compose: dict[str, Any]) -> None:
    services = compose["services"]
    api = services["api"]
    assert "ports" not in api, "a published port per replica would break --scale api=N"
    assert "container_name" not in api
    nginx = services["nginx"]
    conf = NGINX_FILE.read_text()
    assert bind_mounts(nginx).get("./nginx/default.conf") == "/etc/nginx/conf.d/default.conf"
    assert re.search(r"^\s*resolver\s+127\.0\.0\.11\b", conf, re.MULTILINE), "Docker's DNS"
    upstream = re.search(r"set\s+\$(\w+)\s+http://([\w-]+):(\d+);", conf)
    assert upstream, "the upstream is a variable, re-resolved at request time"
    variable, host, port = upstream.groups()
    assert re.search(rf"proxy_pass\s+\${variable};", conf)
    assert host == "api" and int(port) in listening_ports(api)
    (listen,) = re.findall(r"^\s*listen\s+(\d+);", conf, re.MULTILINE)
    assert [container for _, _, container in published_ports(nginx)] == [int(listen)]
    assert nginx["depends_on"]["api"]["condition"] == "service_healthy"


def test_bind_mount_sources_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for source in bind_mounts(service):
            assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"


# ------------------------------------------------------------------------------------------------
# Prometheus and Grafana
# ------------------------------------------------------------------------------------------------


def test_prometheus_scrapes_every_api_replica_and_the_worker(
    compose: dict[str, Any], prometheus: dict[str, Any]
) -> None:
    dns_names = services_by_dns_name(compose)
    services = compose["services"]
    scraped: dict[str, str] = {}  # service -> job
    for job in prometheus["scrape_configs"]:
        targets: list[tuple[str, int]] = []
        for sd in job.get("dns_sd_configs", []):
            assert sd.get("type", "SRV") == "A", f"{job['job_name']}: A records carry no port"
            targets += [(name, int(sd["port"])) for name in sd["names"]]
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets.append((host, int(port)))
        assert targets, job["job_name"]
        for host, port in targets:
            assert host in dns_names, f"{job['job_name']}: {host} is no compose service or alias"
            for service_name in dns_names[host]:
                assert port in listening_ports(services[service_name]), (
                    f"{job['job_name']}: {service_name} does not listen on {port}"
                )
                scraped[service_name] = job["job_name"]
    assert {"api", *worker_services(compose)} <= set(scraped)
    api_job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == scraped["api"])
    assert "static_configs" not in api_job, "DNS discovery finds every replica"
    assert [sd["names"] for sd in api_job["dns_sd_configs"]] == [["api"]]
    prometheus_service = services["prometheus"]
    assert bind_mounts(prometheus_service)["./prometheus/prometheus.yml"] in " ".join(
        command_of(prometheus_service)
    )


def test_scraped_paths_answer_on_the_api_and_the_worker(
    compose: dict[str, Any],
    prometheus: dict[str, Any],
    exposed: tuple[set[str], dict[str, str], set[str]],
    worker_client: TestClient,
) -> None:
    _, _, routes = exposed
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["psp-api"].get("metrics_path", "/metrics") in routes
    worker_path = jobs["psp-worker"].get("metrics_path", "/metrics")
    response = worker_client.get(worker_path, follow_redirects=False)
    assert response.status_code == 200
    assert "# TYPE psp_trainer_steps_total counter" in response.text
    for name, worker in worker_services(compose).items():
        _, path = healthcheck_url(worker)
        assert worker_client.get(path).status_code == 200, name


def test_grafana_provisioning_points_at_the_mounted_dashboards(
    compose: dict[str, Any], prometheus: dict[str, Any], datasource: dict[str, Any]
) -> None:
    grafana = compose["services"]["grafana"]
    mounts = bind_mounts(grafana)
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboards_dir = mounts["./grafana/dashboards"]

    assert datasource["type"] == "prometheus"
    url = re.fullmatch(r"http://([\w-]+):(\d+)", datasource["url"])
    assert url and url.group(1) == "prometheus" and int(url.group(2)) == PROMETHEUS_PORT
    assert "--web.listen-address" not in " ".join(command_of(compose["services"]["prometheus"]))
    assert datasource["jsonData"]["timeInterval"] == prometheus["global"]["scrape_interval"]

    (provider,) = yaml.safe_load(GRAFANA_PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == dashboards_dir
    assert DASHBOARD_FILE.parent == DEPLOY / "grafana" / "dashboards"

    env = environment(grafana)
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/{DASHBOARD_FILE.name}"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false", "sign-in required"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in env
    assert "GRAFANA_ADMIN_PASSWORD:?" in env["GF_SECURITY_ADMIN_PASSWORD"]


def test_dashboard_uses_the_provisioned_datasource(
    dashboard: dict[str, Any], datasource: dict[str, Any]
) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    charts = [panel for panel in all_panels(dashboard) if panel["type"] != "row"]
    assert len(charts) >= 10
    for panel in charts:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
            assert target["expr"].strip(), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_queries_only_metrics_the_app_exposes(
    dashboard: dict[str, Any],
    prometheus: dict[str, Any],
    exposed: tuple[set[str], dict[str, str], set[str]],
) -> None:
    samples, families, routes = exposed
    suffix_types = {
        "_bucket": {"histogram"},
        "_sum": {"histogram", "summary"},
        "_count": {"histogram", "summary"},
        "_total": {"counter"},
    }

    def is_exposed(name: str) -> bool:
        if name in samples or name in families:
            return True
        for suffix, kinds in suffix_types.items():
            family = name.removesuffix(suffix)
            if name.endswith(suffix) and families.get(family) in kinds:
                return True
        return False

    queried: set[str] = set()
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    for expr in expressions(dashboard):
        names = set(re.findall(r"\bpsp_[a-z0-9_]+", expr))
        assert names, f"queries no psp_ metric: {expr}"
        missing = sorted(name for name in names if not is_exposed(name))
        assert not missing, f"not on GET /metrics: {missing} (in {expr})"
        queried |= names
        for handler in re.findall(r'handler="([^"]+)"', expr):
            assert handler in routes, f"no route {handler}"
        for job in re.findall(r'job="([^"]+)"', expr):
            assert job in jobs, f"no Prometheus job {job}"
    unqueried = sorted(DASHBOARD_REQUIRED_METRICS - queried)
    assert not unqueried, f"the dashboard does not chart {unqueried}"


def test_the_image_copies_every_package_the_service_imports() -> None:
    """`psp serve`, `psp worker` and the client commands import these first-party packages;
    the image must hold each of them, or its own build check fails."""
    find = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["packages"]["find"]
    ours = sorted(pattern.rstrip("*") for pattern in find["include"])
    probe = (
        "import sys, service.app, service.cli.commands; "
        f"print(' '.join(sorted({{n.split('.')[0] for n in sys.modules}} & set({ours!r}))))"
    )
    imported = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    assert {"service", "psp_core", "psp_client"} <= set(imported)
    copied = {
        source.rstrip("/")
        for keyword, arguments in dockerfile_instructions()
        if keyword == "COPY" and not arguments.startswith("--from=")
        for source in arguments.split()[:-1]
    }
    assert set(imported) <= copied, f"the image lacks {sorted(set(imported) - copied)}"
