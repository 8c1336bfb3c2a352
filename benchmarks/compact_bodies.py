"""A 4096-row train body as JSON and as msgpack: the server's parse, and the whole request.

Parse: the server's own body reader (`service.api.json_route.BoundedRequest.json`, which uses
orjson for JSON and msgpack for `application/msgpack`) on the same rows, best of `--repeat`.
Whole request: `POST /train/{key}` to a running `psp serve` with pre-encoded bodies, JSON and
msgpack requests alternating, median latency of each. The msgpack body holds 32-bit floats
(`use_single_float=True`), the model's own precision.

    .venv/bin/python benchmarks/compact_bodies.py --requests 20
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import httpx
import msgpack
import numpy as np
import orjson
from _harness import machine_line, ms, print_table, save_json, throwaway_dir
from _server_env import model_env
from _service_requests import register_contexts

from service.api.json_route import BoundedRequest
from service.testing.processes import psp_serve, running

ROWS = 4096
WIDTH = 64
KEY = "probe"


def server_parse_seconds(body: bytes, content_type: bytes, repeat: int) -> float:
    """Best time of the server's body reader on `body`."""

    async def parse_once() -> float:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {"type": "http", "method": "POST", "headers": [(b"content-type", content_type)]}
        request = BoundedRequest(scope, receive)
        request.is_msgpack = content_type == b"application/msgpack"
        await request.body()  # the bytes arrive before parsing starts; only the parse is timed
        began = time.perf_counter()
        await request.json()
        return time.perf_counter() - began

    return min(asyncio.run(parse_once()) for _ in range(repeat))


def encoded_bodies() -> tuple[bytes, bytes]:
    """One train body of `ROWS` random rows and labels, as JSON and as msgpack."""
    rng = np.random.default_rng(0)
    body = {
        "inputs": rng.standard_normal((ROWS, WIDTH)).astype(np.float32).tolist(),
        "labels": rng.integers(0, 10, ROWS).tolist(),
    }
    return orjson.dumps(body), msgpack.packb(body, use_single_float=True)


def request_latencies(sides: dict[str, tuple[bytes, str]], requests: int) -> dict[str, list[float]]:
    """Seconds of each `POST /train/{key}` of `requests` rounds (after one warm-up round) that
    send every side's body in turn, to a fresh `psp serve`.

    Args:
        sides: Name -> (body, content type).
    """
    latencies: dict[str, list[float]] = {name: [] for name in sides}
    with throwaway_dir() as workdir:
        env = {
            **model_env(WIDTH, [32], "complex"),
            "PSP_DATA_DIR": str(workdir / "data"),
            "PSP_QUEUE__MAX_PENDING_EXAMPLES": str(ROWS * (2 * requests + 4)),
        }
        with running(psp_serve("serve", env, workdir)) as (server,):
            register_contexts(server.base_url, [KEY])
            with httpx.Client(base_url=server.base_url, timeout=60) as client:
                for number in range(requests + 1):
                    for name, (content, content_type) in sides.items():
                        began = time.perf_counter()
                        response = client.post(
                            f"/train/{KEY}",
                            content=content,
                            headers={"content-type": content_type},
                        )
                        spent = time.perf_counter() - began
                        if response.status_code != 202:
                            raise RuntimeError(f"{name}: {response.status_code} {response.text}")
                        if number:  # the first pair warms up
                            latencies[name].append(spent)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20, help="per body format")
    parser.add_argument("--repeat", type=int, default=15, help="parses per body format")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    as_json, as_msgpack = encoded_bodies()
    json_parse = server_parse_seconds(as_json, b"application/json", args.repeat)
    msgpack_parse = server_parse_seconds(as_msgpack, b"application/msgpack", args.repeat)
    sides = {"json": (as_json, "application/json"), "msgpack": (as_msgpack, "application/msgpack")}
    latencies = request_latencies(sides, args.requests)
    json_request = statistics.median(latencies["json"])
    msgpack_request = statistics.median(latencies["msgpack"])
    print(machine_line())
    print_table(
        ["body", "bytes", "server parse, ms (best)", "whole request, ms (median)"],
        [
            ["JSON", len(as_json), ms(json_parse), ms(json_request)],
            ["msgpack", len(as_msgpack), ms(msgpack_parse), ms(msgpack_request)],
        ],
    )
    print(f"parse: msgpack {json_parse / msgpack_parse:.2f}x faster than JSON (goal >= 3)")
    print(f"whole request: msgpack {json_request / msgpack_request:.2f}x faster than JSON")
    save_json(
        args.json,
        {
            "parse_seconds": {"json": json_parse, "msgpack": msgpack_parse},
            "request_seconds": latencies,
        },
    )


if __name__ == "__main__":
    main()
