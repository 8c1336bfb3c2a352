"""The Open Inference Protocol, spoken by Triton's own HTTP client to a running `psp serve`."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from psp_client import Client

# The tests here talk to real `psp serve` processes; `make test-fast` leaves them out.
pytestmark = pytest.mark.real_process


@pytest.fixture(scope="module")
def context(server: str) -> str:
    key = f"v2-{uuid.uuid4().hex[:8]}"
    with Client(server) as client:
        client.create_context(key)
    return key


def triton_client(server: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.removeprefix("http://"))


def test_health_and_metadata(server: str, context: str) -> None:
    client = triton_client(server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(context)
    assert not client.is_model_ready("nobody-here")
    metadata = client.get_model_metadata(context)
    assert metadata["name"] == context
    assert metadata["inputs"] == [{"name": "INPUT", "datatype": "FP32", "shape": [-1, 8]}]
    assert [o["name"] for o in metadata["outputs"]] == ["PROBABILITIES", "PREDICTIONS"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_matches_the_predict_route(server: str, context: str, binary: bool) -> None:
    rows = np.linspace(0, 1, 24, dtype=np.float32).reshape(3, 8)
    tensor = triton.InferInput("INPUT", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput(n, binary_data=False) for n in ("PROBABILITIES", "PREDICTIONS")
    ]
    result = triton_client(server).infer(context, [tensor], outputs=outputs)
    probabilities = result.as_numpy("PROBABILITIES")
    predictions = result.as_numpy("PREDICTIONS")
    with Client(server) as client:
        expected = client.predict(context, rows)
    assert probabilities.shape == (3, 3) and predictions.tolist() == expected.predictions
    np.testing.assert_allclose(probabilities, np.asarray(expected.probabilities), atol=1e-6)


def test_errors_reach_the_triton_client(server: str, context: str) -> None:
    wrong = np.zeros((2, 5), dtype=np.float32)
    tensor = triton.InferInput("INPUT", [2, 5], "FP32")
    tensor.set_data_from_numpy(wrong, binary_data=False)
    with pytest.raises(InferenceServerException) as caught:
        triton_client(server).infer(context, [tensor])
    assert "shape" in str(caught.value)
    rows = np.zeros((1, 8), dtype=np.float32)
    tensor = triton.InferInput("INPUT", [1, 8], "FP32")
    tensor.set_data_from_numpy(rows, binary_data=False)
    with pytest.raises(InferenceServerException) as missing:
        triton_client(server).infer("nobody-here", [tensor])
    assert "nobody-here" in str(missing.value)
