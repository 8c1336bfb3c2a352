"""A runner that drives a running service through the public HTTP contract (docs/design.md).

It uses only `POST /contexts`, `POST /train/{key}?wait=true`, `POST /predict/{key}` and
`GET /model`, so it measures what a user of the service gets. The training answer carries no
per-example scores, so the prequential score is taken the way the trainer takes it: predict the
batch first, then train on it. With `wait=true` and this client as the only writer, the
prediction sees exactly the weights the batch is then applied to.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx
import torch

from psp_core import ContextSpec, ModelConfig

# Rows per predict request: well under the service's default row and body limits.
PREDICT_CHUNK = 512
# A full queue answers 429 with Retry-After; give up after this many waits in a row.
MAX_RETRIES = 60

# The parts of `ModelConfig` that must agree for the service's scores to be this run's.
ARCHITECTURE_FIELDS = (
    "kind",
    "arch",
    "input_shape",
    "hidden",
    "num_classes",
    "local_mix",
    "complex_activations",
)


class BenchHTTPError(RuntimeError):
    """The service refused a request or answered something the contract does not allow."""


class HttpRunner:
    """The `Runner` of one method, backed by a running service.

    Every key is prefixed with a run-unique prefix, so runs never share contexts. The service's
    weights are shared by all its contexts, so compare runs on a freshly started service.

    Args:
        base_url: The service, e.g. `http://127.0.0.1:8000`.
        expected_kind: The context kind the method needs; the service's kind must match.
        key_prefix: Prefix of every context key; a random one when None.
        api_key: Sent as a bearer token when the service requires API keys.
        timeout: Seconds to wait for one answer (training waits for the step to apply).
        transport: An httpx transport, to run against an in-process app in tests.
    """

    def __init__(
        self,
        base_url: str,
        *,
        expected_kind: str,
        key_prefix: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(
            base_url=base_url, headers=headers, timeout=timeout, transport=transport
        )
        self.expected_kind = expected_kind
        self.key_prefix = key_prefix if key_prefix is not None else f"bench-{secrets.token_hex(4)}-"
        self.registered: set[str] = set()
        self.refused = 0

    def _request(
        self, method: str, path: str, *, retry_statuses: tuple[int, ...] = (429,), **kwargs: Any
    ) -> httpx.Response:
        """Sends a request, and sends it again after each answer in `retry_statuses` (a full
        queue's 429 by default), up to `MAX_RETRIES` times."""
        for _ in range(MAX_RETRIES):
            try:
                response = self.client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise BenchHTTPError(
                    f"cannot reach the service at {self.client.base_url}: {exc}; start it with "
                    "`psp serve` or fix --via-http"
                ) from exc
            if response.status_code not in retry_statuses:
                break
            time.sleep(float(response.headers.get("Retry-After", "1")))
        if response.is_error:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise BenchHTTPError(f"{method} {path} answered {response.status_code}: {detail}")
        return response

    def _key(self, key: str) -> str:
        return f"{self.key_prefix}{key}"

    def check_model(self, expected: ModelConfig, replay: bool | None = None) -> list[str]:
        """Compares the service's model (`GET /model`) with the one the run assumes.

        Args:
            expected: The architecture of the run's method.
            replay: Whether the method rehearses; None does not check.

        Returns:
            Warnings: the service has trained before, or its weights start from another seed.

        Raises:
            BenchHTTPError: The architecture, or replay on or off, differs, so the results would
                not be comparable.
        """
        info = self._request("GET", "/model").json()
        warnings = []
        if info.get("model_version"):
            warnings.append(
                f"the service had already applied {info['model_version']} steps; "
                "compare runs on a freshly started service"
            )
        config = info.get("config")
        if not isinstance(config, dict):
            return warnings
        _check_architecture(config, expected)
        training = info.get("training")
        if isinstance(training, dict) and replay is not None:
            _check_replay(training, replay)
        if "seed" in config and config["seed"] != expected.seed:
            warnings.append(
                f"the service's model seed is {config['seed']} and --seed is {expected.seed}: "
                "initial weights differ"
            )
        return warnings

    def register(self, key: str, spec: ContextSpec) -> None:
        if key in self.registered:
            return
        body = {"key": self._key(key), "seed": spec.seed, "power": spec.power}
        answer = self._request("POST", "/contexts", json=body).json()
        if answer.get("kind") != self.expected_kind:
            raise BenchHTTPError(
                f"the service runs kind {answer.get('kind')!r}, and this method needs "
                f"{self.expected_kind!r}; start it with PSP_MODEL__KIND={self.expected_kind}"
            )
        self.registered.add(key)

    def train(self, key: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        before = self.predict(key, x)
        body = {"inputs": x.tolist(), "labels": y.tolist()}
        answer = self._request("POST", f"/train/{self._key(key)}?wait=true", json=body).json()
        if not answer.get("applied", False):
            self.refused += 1
        return before == y.cpu()

    def send(
        self, key: str, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, wait: bool
    ) -> None:
        """One `POST /train/{key}`; the service forms the minibatches (`batch_size` is its
        setting, not the run's). The queue is first in, first out, so waiting for a block
        waits for every block sent before it."""
        body = {"inputs": x.tolist(), "labels": y.tolist()}
        if not wait:
            self._request("POST", f"/train/{self._key(key)}", json=body)
            return
        # A long backlog can outlast one wait (504); the same Idempotency-Key queues nothing new
        # and waits again.
        answer = self._request(
            "POST",
            f"/train/{self._key(key)}?wait=true",
            json=body,
            headers={"Idempotency-Key": secrets.token_hex(8)},
            retry_statuses=(429, 504),
        ).json()
        if not answer.get("applied", False):
            self.refused += 1

    def predict(self, key: str, x: torch.Tensor) -> torch.Tensor:
        classes: list[int] = []
        for start in range(0, len(x), PREDICT_CHUNK):
            rows = x[start : start + PREDICT_CHUNK].tolist()
            answer = self._request("POST", f"/predict/{self._key(key)}", json={"inputs": rows})
            predictions = answer.json()["predictions"]
            if len(predictions) != len(rows):
                raise BenchHTTPError(
                    f"/predict answered {len(predictions)} predictions for {len(rows)} rows"
                )
            classes.extend(int(c) for c in predictions)
        return torch.tensor(classes, dtype=torch.long)

    @property
    def refused_steps(self) -> int:
        return self.refused

    def close(self) -> None:
        self.client.close()


def _check_architecture(config: dict[str, Any], expected: ModelConfig) -> None:
    """Raises BenchHTTPError where the service's model `config` differs from `expected`."""
    wanted = expected.to_dict()
    different = [
        f"{name}={config.get(name)!r} (the run needs {wanted[name]!r})"
        for name in ARCHITECTURE_FIELDS
        if name in config and config[name] != wanted[name]
    ]
    if different:
        raise BenchHTTPError(
            f"the service's model differs from this run's: {', '.join(different)}; "
            "set the service's PSP_MODEL__* variables or the run's options to match"
        )


def _check_replay(training: dict[str, Any], replay: bool) -> None:
    """Raises BenchHTTPError where the service rehearses and the method does not, or back."""
    replays = bool(training.get("replay_rows")) and bool(training.get("replay_per_step"))
    if replays != replay:
        raise BenchHTTPError(
            f"the service {'replays' if replays else 'does not replay'} past rows and "
            f"this method {'does' if replay else 'does not'}; name the method with "
            f"{'a' if replays else 'no'} -replay suffix, or set PSP_REPLAY__ROWS"
        )
