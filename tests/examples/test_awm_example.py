"""examples/awm.py, Advantage Weighted Matching written by hand, runs on the packaged flow
model: seeded, with finite losses, the same history twice, and on-policy at each epoch's first
update."""

import math

import pytest

from . import load_example

pytestmark = pytest.mark.slow


def test_the_hand_written_loop_runs_and_is_reproducible() -> None:
    example = load_example("awm")
    argv = ["--epochs", "2", "--prompts", "2", "--images_per_prompt", "2", "--steps", "4"]
    first = example.main(argv)
    assert len(first["reward"]) == len(first["loss"]) == len(first["first_log_ratio"]) == 2
    assert all(math.isfinite(v) for v in first["loss"])
    assert all(0 <= v <= 1 for v in first["reward"])  # the alignment reward's range
    # the old surrogate is taken with the weights that sampled, before the epoch's first update:
    # the first term's ratio is 1
    assert all(gap < 1e-6 for gap in first["first_log_ratio"])
    assert example.main(argv) == first  # seeded: the same run
    assert example.main([*argv, "--seed", "1"]) != first
