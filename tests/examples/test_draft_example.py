"""examples/draft.py, reward backpropagation written by hand, runs on the packaged flow model:
the reward's gradient reaches the adapters, AlignProp draws K in its range, and a seed gives
the same run twice."""

import importlib.util
import math
from pathlib import Path
from typing import Any

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "draft.py"

pytestmark = pytest.mark.slow


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("draft_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_hand_written_loop_runs_and_is_reproducible() -> None:
    example = _example()
    argv = ["--epochs", "2", "--batch", "2", "--steps", "3", "--k", "2"]
    first = example.main(argv)
    assert all(0 <= v <= 1 for v in first["reward"])  # brightness's range
    assert all(math.isfinite(v) and v > 0 for v in first["grad_norm"])  # the gradient arrived
    assert first["k"] == [2.0, 2.0]
    assert example.main(argv) == first
    drawn = example.main([*argv, "--alignprop", "--epochs", "4", "--k", "3"])["k"]
    assert all(1 <= k <= 3 for k in drawn)
