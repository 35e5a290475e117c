"""Shared test fixtures."""
import os

import psutil
import pytest


def _our_children() -> list[psutil.Process]:
    return [p for p in psutil.Process(os.getpid()).children(recursive=True)
            if p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def no_leftover_children():
    """The test may not leave a process of ours running. Processes that were already there
    (multiprocessing's resource tracker, a Ray worker started by an earlier test module) are not
    this test's."""
    before = {p.pid for p in _our_children()}
    yield
    leftovers = [p for p in _our_children() if p.pid not in before]
    assert not leftovers, leftovers


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module: the models are tiny, and on a loaded 2-core machine a
    second intra-op thread (OpenMP spinning) made training 10-20x slower. Use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits (offline), the tests' dataset."""
    from bench.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def normalizer(digits):
    from bench.models.normalize import Normalizer

    return Normalizer(digits.mean, digits.std)
