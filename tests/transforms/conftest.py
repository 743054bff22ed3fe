"""Fixtures of the transform tests: tiny RAS/LPS volumes."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny tensors run fastest on one thread (and do not spin-wait on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
