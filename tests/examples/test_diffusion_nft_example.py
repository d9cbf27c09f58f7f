"""examples/diffusion_nft.py, DiffusionNFT written by hand, runs on the packaged flow model:
seeded, with finite losses, and the same history twice."""

import importlib.util
import math
from pathlib import Path
from typing import Any

import pytest

import ddpo.core

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "diffusion_nft.py"

pytestmark = pytest.mark.slow


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("diffusion_nft_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_hand_written_loop_runs_and_is_reproducible() -> None:
    example = _example()
    argv = ["--epochs", "2", "--prompts", "2", "--images_per_prompt", "2", "--steps", "4"]
    first = example.main(argv)
    assert len(first["reward"]) == len(first["loss"]) == 2
    assert all(math.isfinite(v) and v > 0 for v in first["loss"])
    assert all(0 <= v <= 1 for v in first["reward"])  # the alignment reward's range
    assert example.main(argv) == first  # seeded: the same run
    assert example.main([*argv, "--seed", "1"]) != first
    # the old policy's schedule is the library's, not a copy of it
    assert example.nft_old_policy_decay is ddpo.core.nft_old_policy_decay
    assert not hasattr(example, "old_policy_decay")
