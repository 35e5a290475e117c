"""Fashion-MNIST, SVHN and CIFAR-10 through ``torchvision.datasets``.

No Python package ships these sets, so they live on disk under ``data_dir`` (default
``~/.cache/prune-bench/data``) in torchvision's own layout, and are fetched only when the user
asks for it (``download=True``): a run must never reach for the network by surprise. torchvision
keeps checking the files' md5 sums (CIFAR-10, SVHN) when loading, so a truncated copy is reported
instead of silently training on it. Missing files and failed downloads become one-line
``BenchError`` messages that name the directory and the fix.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from bench.data import DATASETS
from bench.data.base import Dataset
from bench.errors import BenchError

if TYPE_CHECKING:
    from torchvision.datasets import VisionDataset

DEFAULT_DATA_DIR = "~/.cache/prune-bench/data"


def _datasets():
    """``torchvision.datasets``, imported when one of these sets is loaded: importing torchvision
    takes ~3 s, which every command that lists the registered datasets would otherwise pay."""
    from torchvision import datasets

    return datasets


def data_root(data_dir: str | None) -> Path:
    """The directory the files are looked for (and downloaded) in, ``~`` expanded."""
    return Path(data_dir or DEFAULT_DATA_DIR).expanduser()


def _one_line(error: BaseException) -> str:
    # torchvision's download errors can span several lines (one per mirror).
    return " ".join(str(error).split()) or type(error).__name__


def _open(
    factory: Callable[[bool], VisionDataset], title: str, root: Path, download: bool, expected: str
) -> VisionDataset:
    """Build one split, turning torchvision's not-found and download errors into BenchErrors."""
    if download:
        try:
            return factory(True)
        except (OSError, RuntimeError) as e:  # URLError is an OSError
            raise BenchError(f"downloading {title} into {root} failed: {_one_line(e)}") from e
    try:
        return factory(False)
    except RuntimeError as e:  # torchvision's "Dataset not found or corrupted"
        raise BenchError(
            f"{title} not found (or corrupted) in {root}: run again with --download on a machine "
            f"with internet, or put {expected} there"
        ) from e


def _pixels(images_nchw: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float32 in [0, 1], exactly as ``ToTensor`` scales them (k / 255)."""
    return images_nchw.contiguous().to(torch.float32).div_(255.0)


@DATASETS.register("fashionmnist")
def load_fashionmnist(data_dir: str | None, download: bool) -> Dataset:
    root = data_root(data_dir)

    def split(train: bool) -> VisionDataset:
        return _open(
            lambda dl: _datasets().FashionMNIST(root, train=train, download=dl),
            "Fashion-MNIST", root, download,
            "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
        )

    train, test = split(True), split(False)
    return Dataset(
        name="fashionmnist",
        train_x=_pixels(train.data.unsqueeze(1)),  # uint8 (N, 28, 28)
        train_y=train.targets.to(torch.int64),
        test_x=_pixels(test.data.unsqueeze(1)),
        test_y=test.targets.to(torch.int64),
        mean=(0.2860,),
        std=(0.3530,),
        num_classes=10,
        test_order=(
            "Fashion-MNIST test split (10,000 images) in the order of the official "
            "t10k-images-idx3-ubyte file, as read by torchvision."
        ),
    )


@DATASETS.register("svhn")
def load_svhn(data_dir: str | None, download: bool) -> Dataset:
    root = data_root(data_dir)

    def split(name: str) -> VisionDataset:
        return _open(
            lambda dl: _datasets().SVHN(root, split=name, download=dl),
            "SVHN", root, download, "train_32x32.mat and test_32x32.mat",
        )

    train, test = split("train"), split("test")
    # .data is uint8 (N, 3, 32, 32); torchvision already maps the file's label 10 to digit 0.
    return Dataset(
        name="svhn",
        train_x=_pixels(torch.from_numpy(train.data)),
        train_y=torch.from_numpy(train.labels).to(torch.int64),
        test_x=_pixels(torch.from_numpy(test.data)),
        test_y=torch.from_numpy(test.labels).to(torch.int64),
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
        num_classes=10,
        test_order=(
            "SVHN cropped-digits test split (26,032 images) in the order of test_32x32.mat, as read "
            "by torchvision (label 10 mapped to 0; the 'extra' split is not used)."
        ),
    )


@DATASETS.register("cifar10")
def load_cifar10(data_dir: str | None, download: bool) -> Dataset:
    root = data_root(data_dir)

    def split(train: bool) -> VisionDataset:
        return _open(
            lambda dl: _datasets().CIFAR10(root, train=train, download=dl),
            "CIFAR-10", root, download, "cifar-10-batches-py/",
        )

    train, test = split(True), split(False)
    # .data is uint8 NHWC; .targets a list of ints.
    return Dataset(
        name="cifar10",
        train_x=_pixels(torch.from_numpy(train.data).permute(0, 3, 1, 2)),
        train_y=torch.tensor(train.targets, dtype=torch.int64),
        test_x=_pixels(torch.from_numpy(test.data).permute(0, 3, 1, 2)),
        test_y=torch.tensor(test.targets, dtype=torch.int64),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        num_classes=10,
        test_order=(
            "CIFAR-10 test split (10,000 images) in the order of cifar-10-batches-py/test_batch, as "
            "read by torchvision; the paper verified ERAN's 1,000-image CIFAR-10 subset, whereas "
            "the first N samples here are the first N images of test_batch."
        ),
    )
