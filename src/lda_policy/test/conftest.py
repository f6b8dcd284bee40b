"""Shared by every lda_policy test module."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def model_tests_single_thread():
    """Small models are bound by per-op overhead; one thread avoids OpenMP spinning on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
