"""Large bodies in memory of their own: the buffer, gzip inflated into it, and requests whose
bodies take that path."""

from __future__ import annotations

import gzip
import json

import pytest
from fastapi.testclient import TestClient

from service.api.body_buffer import BodyBuffer
from service.api.json_route import INFLATED_PIECE_BYTES, LARGE_BODY_BYTES, inflate
from tests.service.api.helpers import register, rows


def test_a_buffer_holds_what_was_appended_and_refuses_what_does_not_fit() -> None:
    buffer = BodyBuffer(10)
    buffer.append(b"hello")
    buffer.append(b"12345")
    assert bytes(buffer.view()) == b"hello12345"
    assert not buffer.fits(1)
    with pytest.raises(BufferError):
        buffer.append(b"!")
    assert bytes(BodyBuffer(0).view()) == b""


def test_gzip_inflates_piece_by_piece_up_to_the_limit_and_no_further() -> None:
    text = json.dumps({"inputs": [[0.5] * 64] * 8000}).encode()
    assert len(text) > 2 * INFLATED_PIECE_BYTES  # several pieces
    packed = gzip.compress(text)
    assert bytes(inflate(packed, len(text))) == text
    with pytest.raises(json.JSONDecodeError, match="larger than the limit"):
        inflate(packed, len(text) - 1)
    with pytest.raises(json.JSONDecodeError, match="not valid gzip"):
        inflate(text, len(text))


def test_a_large_body_trains_and_predicts_as_a_small_one(client: TestClient) -> None:
    register(client, "big")
    inputs = rows(4000)
    body = json.dumps({"inputs": inputs, "labels": [1] * 4000}).encode()
    assert len(body) >= LARGE_BODY_BYTES
    headers = {"content-type": "application/json"}
    response = client.post("/train/big", content=body, headers=headers)
    assert response.status_code == 202, response.text
    packed = gzip.compress(json.dumps({"inputs": inputs}).encode())
    response = client.post(
        "/predict/big", content=packed, headers={**headers, "content-encoding": "gzip"}
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 4000
