"""examples/awm.py, Advantage Weighted Matching written by hand, runs on the packaged flow
model: seeded, with finite losses, the same history twice, and on-policy at each epoch's first
update."""

import importlib.util
import math
from pathlib import Path
from typing import Any

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "awm.py"

pytestmark = pytest.mark.slow


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("awm_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_hand_written_loop_runs_and_is_reproducible() -> None:
    example = _example()
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
