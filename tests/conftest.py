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
