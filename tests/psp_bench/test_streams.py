"""Streams: schedules, transforms, and loading data without any download."""

import gzip
import random
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from psp_bench.datasets import (
    IDX_FILES,
    StreamError,
    load_idx_dataset,
    load_mnist1d_dataset,
    read_idx,
)
from psp_bench.streams import PermutedStream, RotatingStream, make_stream, rotate_images


def _write_idx(path: Path, array: np.ndarray, type_code: int = 0x08) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if path.suffix == ".gz":
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def _write_mnist_like(folder: Path, *, gz: bool = False) -> None:
    """Four tiny IDX files: 20 train and 10 test 4x4 images, pixel value = 10 * label."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, rows in (("train", 20), ("t10k", 10)):
        labels = (np.arange(rows) % 10).astype(np.uint8)
        images = np.repeat(labels[:, None, None] * 10, 16, axis=1).reshape(rows, 4, 4)
        _write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images.astype(np.uint8))
        _write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels)


def test_permuted_digits_keeps_task_zero_and_permutes_the_others() -> None:
    stream = make_stream("permuted-digits", tasks=3, steps_per_task=5, seed=0)
    assert isinstance(stream, PermutedStream)
    assert len(stream.dataset.y_test) == 450 and len(stream.dataset.y_train) == 1347
    # The split is stratified: each class keeps a quarter of its digits in the test set.
    test_counts = torch.bincount(stream.dataset.y_test, minlength=10).double()
    all_counts = test_counts + torch.bincount(stream.dataset.y_train, minlength=10)
    assert torch.all((test_counts - all_counts / 4).abs() < 1)
    x0, y0 = stream.test_set(0)
    x1, y1 = stream.test_set(1)
    assert torch.equal(x0, stream.dataset.x_test) and torch.equal(y0, y1)
    assert not torch.equal(x0, x1)
    assert torch.equal(x0[:, stream.permutations[1]], x1)
    assert torch.equal(x1.sort(dim=1).values, x0.sort(dim=1).values)
    assert not torch.equal(stream.permutations[1], stream.permutations[2])


def test_the_schedule_walks_tasks_in_segments() -> None:
    stream = make_stream("permuted-digits", tasks=3, steps_per_task=5, cycles=2, seed=0)
    assert stream.total_steps == 30 and stream.period == 15
    assert [stream.task_at(s) for s in (0, 4, 5, 14, 15, 29)] == [0, 0, 1, 2, 0, 2]
    assert stream.position_at(7) == 1.0


def test_batches_are_fixed_by_the_seed() -> None:
    a = make_stream("permuted-digits", tasks=2, steps_per_task=3, seed=4)
    b = make_stream("permuted-digits", tasks=2, steps_per_task=3, seed=4)
    c = make_stream("permuted-digits", tasks=2, steps_per_task=3, seed=5)
    xa, ya = a.train_batch(4)
    xb, yb = b.train_batch(4)
    assert xa.shape == (32, 64) and ya.dtype == torch.int64
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, c.train_batch(4)[0])
    # Step 4 trains task 1: its inputs are the permuted rows of the same examples.
    assert isinstance(a, PermutedStream)
    rows = a.rows_at(4)
    assert torch.equal(xa, a.dataset.x_train[rows][:, a.permutations[1]])


def test_rotation_turns_counter_clockwise() -> None:
    image = torch.arange(16.0).reshape(1, 16)
    turned = rotate_images(image, (4, 4), 90.0).reshape(4, 4)
    assert torch.allclose(turned, torch.rot90(image.reshape(4, 4), 1, (0, 1)), atol=1e-5)
    assert torch.equal(rotate_images(image, (4, 4), 0.0), image)
    full_turn = image
    for _ in range(4):
        full_turn = rotate_images(full_turn, (4, 4), 90.0)
    assert torch.allclose(full_turn, image, atol=1e-4)


def test_rotating_digits_turns_once_per_cycle() -> None:
    stream = make_stream("rotating-digits", tasks=4, steps_per_task=10, cycles=2, seed=0)
    assert isinstance(stream, RotatingStream)
    assert [stream.angle_at(s) for s in (0, 10, 35, 40)] == [0.0, 90.0, 315.0, 0.0]
    assert [stream.position_at(s) for s in (0, 5, 10, 45)] == [0.0, 0.5, 1.0, 0.5]
    assert stream.task_angle(2) == 180.0
    x_test, _ = stream.test_set(1)
    expected = rotate_images(stream.dataset.x_test, (8, 8), 90.0)
    assert torch.equal(x_test, expected)
    x, _ = stream.train_batch(10)  # 90°: the digits turned a quarter
    assert torch.allclose(
        x, rotate_images(stream.dataset.x_train[stream.rows_at(10)], (8, 8), 90.0)
    )


def test_read_idx_reads_plain_and_gzipped_files(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a-idx3-ubyte", array)
    _write_idx(tmp_path / "a-idx3-ubyte.gz", array)
    floats = np.linspace(-1, 1, 6).reshape(2, 3)
    _write_idx(tmp_path / "f.idx", floats.astype(np.float32), type_code=0x0D)
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte"), array)
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte.gz"), array)
    assert np.allclose(read_idx(tmp_path / "f.idx"), floats)


def test_read_idx_refuses_broken_files(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(StreamError, match="bad magic"):
        read_idx(tmp_path / "bad")
    short = bytes([0, 0, 0x08, 1]) + struct.pack(">I", 10) + b"\x00" * 4
    (tmp_path / "short").write_bytes(short)
    with pytest.raises(StreamError, match="needs 10"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_streams_read_local_idx_files(tmp_path: Path, gz: bool) -> None:
    _write_mnist_like(tmp_path / "MNIST" / "raw", gz=gz)  # torchvision's layout
    dataset = load_idx_dataset("mnist", tmp_path)
    assert dataset.x_train.shape == (20, 16) and dataset.x_test.shape == (10, 16)
    assert dataset.image_shape == (4, 4)
    assert float(dataset.x_train[3, 0]) == pytest.approx(30 / 255)
    assert dataset.y_test.tolist() == list(range(10))
    stream = make_stream("rotating-mnist", tasks=2, steps_per_task=2, data_dir=tmp_path)
    assert stream.train_batch(0)[0].shape == (32, 16)


def test_missing_idx_files_give_a_clear_error_and_no_download(tmp_path: Path) -> None:
    with pytest.raises(StreamError) as error:
        make_stream("permuted-fashion-mnist", tasks=2, steps_per_task=2, data_dir=tmp_path)
    message = str(error.value)
    assert "Fashion-MNIST" in message and "never downloads" in message and "--data-dir" in message
    assert all(name in message for name in IDX_FILES)
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    _write_mnist_like(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(StreamError) as error:
        load_idx_dataset("mnist", tmp_path)
    assert "t10k-labels-idx1-ubyte" in str(error.value)
    assert "train-images-idx3-ubyte" not in str(error.value)
    with pytest.raises(StreamError, match="--data-dir"):
        make_stream("permuted-mnist", tasks=2, steps_per_task=2, data_dir=None)


def test_mnist1d_is_generated_locally_and_leaves_global_generators_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def make_dataset(args: object) -> dict[str, np.ndarray]:
        np.random.seed(42)  # the package reseeds the global generators
        random.seed(42)
        return {
            "x": np.ones((8, 40)),
            "y": np.arange(8) % 10,
            "x_test": np.zeros((4, 40)),
            "y_test": np.arange(4),
        }

    package = types.ModuleType("mnist1d")
    data = types.ModuleType("mnist1d.data")
    data.make_dataset = make_dataset  # type: ignore[attr-defined]
    data.get_dataset_args = lambda: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mnist1d", package)
    monkeypatch.setitem(sys.modules, "mnist1d.data", data)
    np.random.seed(7)
    random.seed(7)
    expected_numpy, expected_python = np.random.random(), random.random()
    np.random.seed(7)
    random.seed(7)
    dataset = load_mnist1d_dataset()
    assert (np.random.random(), random.random()) == (expected_numpy, expected_python)
    assert dataset.x_train.shape == (8, 40) and dataset.x_train.dtype == torch.float32
    assert dataset.y_test.tolist() == [0, 1, 2, 3] and dataset.image_shape is None
    stream = make_stream("mnist1d", tasks=2, steps_per_task=3)
    assert stream.test_set(1)[0].shape == (4, 40)


def test_mnist1d_without_the_package_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(StreamError, match=r"pip install 'psp-service\[mnist1d\]'"):
        make_stream("mnist1d", tasks=2, steps_per_task=2)


def test_unknown_streams_and_bad_schedules_are_refused() -> None:
    with pytest.raises(StreamError, match="unknown stream"):
        make_stream("rotating-mnist1d", tasks=2, steps_per_task=2)
    with pytest.raises(ValueError, match=">= 1"):
        make_stream("permuted-digits", tasks=0, steps_per_task=2)


def test_test_limit_draws_a_fixed_subset() -> None:
    a = make_stream("permuted-digits", tasks=1, steps_per_task=1, test_limit=100, seed=3)
    b = make_stream("permuted-digits", tasks=1, steps_per_task=1, test_limit=100, seed=3)
    assert len(a.dataset.y_test) == 100
    assert torch.equal(a.dataset.x_test, b.dataset.x_test)
