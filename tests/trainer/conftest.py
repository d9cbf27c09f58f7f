"""Shared fixtures of the trainer tests."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_and_fresh_accelerate_state() -> Iterator[None]:
    """One intra-op thread (the tiny model gains nothing from more, and on a shared 2-core
    machine spinning OpenMP workers made an epoch 10x slower); after the test, a clean slate for
    accelerate's process-wide singletons, since each trainer builds its own Accelerator."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
