"""Fixtures for the model tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread():
    """The tiny models' matrices are a few dozen wide: a second intra-op thread only adds
    synchronisation, and on a busy machine spinning OpenMP workers make these tests several
    times slower. Restored afterwards for the rest of the session."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
