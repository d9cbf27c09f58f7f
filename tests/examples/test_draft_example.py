"""examples/draft.py, reward backpropagation written by hand, runs on the packaged flow model:
the reward's gradient reaches the adapters, AlignProp draws K in its range, and a seed gives
the same run twice."""

import math

import pytest

from . import load_example

pytestmark = pytest.mark.slow


def test_the_hand_written_loop_runs_and_is_reproducible() -> None:
    example = load_example("draft")
    argv = ["--epochs", "2", "--batch", "2", "--steps", "3", "--k", "2"]
    first = example.main(argv)
    assert all(0 <= v <= 1 for v in first["reward"])  # brightness's range
    assert all(math.isfinite(v) and v > 0 for v in first["grad_norm"])  # the gradient arrived
    assert first["k"] == [2.0, 2.0]
    assert example.main(argv) == first
    drawn = example.main([*argv, "--alignprop", "--epochs", "4", "--k", "3"])["k"]
    assert all(1 <= k <= 3 for k in drawn)
