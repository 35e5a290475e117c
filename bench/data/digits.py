"""scikit-learn's 8x8 digits: tiny, offline and fast, so tests can train and verify in seconds."""
from __future__ import annotations

import torch

from bench.data import DATASETS
from bench.data.base import Dataset

TEST_SIZE = 297  # the last 297 of the 1797 images; leaves a round 1500 for training


@DATASETS.register("digits")
def load(data_dir: str | None, download: bool) -> Dataset:
    """Digits from scikit-learn's bundled copy; ``data_dir`` and ``download`` are ignored."""
    # Imported here: scikit-learn takes seconds to import, and every command that looks the
    # datasets up imports this module.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are integers 0..16.
    x = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    split = len(x) - TEST_SIZE
    train_x, test_x = x[:split].clone(), x[split:].clone()
    # No published statistics exist for this set, so they come from the training split.
    mean = float(train_x.mean())
    std = float(train_x.std())
    return Dataset(
        name="digits",
        train_x=train_x,
        train_y=y[:split].clone(),
        test_x=test_x,
        test_y=y[split:].clone(),
        mean=(mean,),
        std=(std,),
        num_classes=10,
        test_order=(
            f"the last {TEST_SIZE} of scikit-learn's 1,797 digits images, in file order "
            f"(the first {split} are the training split)."
        ),
    )
