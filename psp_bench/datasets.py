"""The data sets the benchmark streams are drawn from; none of them downloads anything.

scikit-learn's 8x8 digits ship inside scikit-learn; MNIST-1D comes from its package (the
`mnist1d` extra); MNIST and Fashion-MNIST are read from IDX files already on disk.
"""

from __future__ import annotations

import gzip
import math
import random
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

# The standard file names of the MNIST and Fashion-MNIST distributions (optionally gzipped).
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# Where torchvision keeps the same files below its root, so an existing cache can be reused.
_TORCHVISION_FOLDERS = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw"}
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class StreamError(Exception):
    """A stream cannot be built; the message says what to install or pass instead."""


@dataclass(frozen=True)
class Dataset:
    """A labelled train/test split with flattened inputs.

    Attributes:
        name: Where the data came from.
        x_train: `(N, D)` float32 inputs.
        y_train: `(N,)` int64 labels.
        x_test: `(N_test, D)` float32 inputs.
        y_test: `(N_test,)` int64 labels.
        image_shape: `(H, W)` with `H * W == D` when the rows are images (rotating streams need
            it), else None.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    image_shape: tuple[int, int] | None

    @property
    def input_size(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    def scaled(self, factor: float) -> Dataset:
        """The same data with every input multiplied by `factor` (e.g. 255: raw pixel values)."""
        if factor == 1.0:
            return self
        return replace(self, x_train=self.x_train * factor, x_test=self.x_test * factor)

    def limit_test(self, rows: int | None, seed: int) -> Dataset:
        """The same data with at most `rows` test rows, drawn without replacement from `seed`."""
        if rows is None or rows >= len(self.y_test):
            return self
        keep = torch.randperm(len(self.y_test), generator=torch.Generator().manual_seed(seed))
        keep = keep[:rows].sort().values
        return Dataset(
            self.name,
            self.x_train,
            self.y_train,
            self.x_test[keep],
            self.y_test[keep],
            self.image_shape,
        )


def load_digits_dataset(seed: int, test_size: float = 0.25) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, no download), scaled to [0, 1].

    The test split is stratified by class and fixed by `seed`.
    """
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y
    )
    return Dataset(
        "sklearn load_digits",
        torch.from_numpy(x_train),
        torch.from_numpy(y_train).long(),
        torch.from_numpy(x_test),
        torch.from_numpy(y_test).long(),
        (8, 8),
    )


def load_mnist1d_dataset() -> Dataset:
    """MNIST-1D (Greydanus, 2020), generated locally by the package's `make_dataset`.

    The package's default arguments define the dataset (4000 train and 1000 test signals of
    length 40). `make_dataset` reseeds Python's and NumPy's global generators, so their states
    are restored afterwards.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise StreamError(
            "the mnist1d stream needs the mnist1d package; install it with "
            "`pip install 'psp-service[mnist1d]'` (or `pip install mnist1d`)"
        ) from exc
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return Dataset(
        "mnist1d make_dataset",
        torch.as_tensor(np.asarray(data["x"], dtype=np.float32)),
        torch.as_tensor(np.asarray(data["y"], dtype=np.int64)),
        torch.as_tensor(np.asarray(data["x_test"], dtype=np.float32)),
        torch.as_tensor(np.asarray(data["y_test"], dtype=np.int64)),
        None,
    )


def read_idx(path: Path) -> np.ndarray:
    """Reads one IDX file (the MNIST format), gzipped when the name ends in `.gz`.

    The header is two zero bytes, a type code, the number of dimensions, then each dimension
    as a big-endian uint32; the data follows in C order, big-endian.

    Raises:
        StreamError: The file is not a well-formed IDX file.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise StreamError(f"{path} is not an IDX file (bad magic number)")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise StreamError(
            f"{path} holds {len(raw) - header} data bytes but its header {shape} needs {expected}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find_idx(folders: list[Path], stem: str) -> Path | None:
    for folder in folders:
        for name in (stem, f"{stem}.gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def load_idx_dataset(name: str, data_dir: Path | None) -> Dataset:
    """MNIST or Fashion-MNIST from the four IDX files in `data_dir`, scaled to [0, 1].

    The files may sit in `data_dir` itself or in torchvision's layout below it
    (`MNIST/raw`, `FashionMNIST/raw`).

    Args:
        name: `mnist` or `fashion-mnist`.
        data_dir: The folder given by `--data-dir`.

    Raises:
        StreamError: A file is missing; nothing is ever downloaded.
    """
    label = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}[name]
    if data_dir is None:
        raise StreamError(
            f"the {label} streams read local IDX files and never download them; pass "
            f"--data-dir with a folder holding {', '.join(IDX_FILES)} (each may end in .gz)"
        )
    folders = [data_dir, data_dir / _TORCHVISION_FOLDERS[name]]
    paths = {stem: _find_idx(folders, stem) for stem in IDX_FILES}
    missing = [stem for stem, path in paths.items() if path is None]
    if missing:
        searched = " and ".join(str(folder) for folder in folders)
        raise StreamError(
            f"the {label} IDX files {', '.join(missing)} (or .gz) are not in {searched}; "
            f"this benchmark never downloads: copy the four {label} IDX files there and "
            "pass that folder as --data-dir"
        )
    arrays = {stem: read_idx(path) for stem, path in paths.items() if path is not None}
    train_images, train_labels, test_images, test_labels = (arrays[s] for s in IDX_FILES)
    height, width = (int(d) for d in train_images.shape[1:])

    def images(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array.reshape(len(array), -1).astype(np.float32) / 255.0)

    return Dataset(
        f"{label} IDX files in {data_dir}",
        images(train_images),
        torch.from_numpy(train_labels.astype(np.int64)),
        images(test_images),
        torch.from_numpy(test_labels.astype(np.int64)),
        (height, width),
    )
