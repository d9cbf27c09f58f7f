"""examples/diffusion_nft.py, DiffusionNFT written by hand, runs on the packaged flow model:
seeded, with finite losses, and the same history twice."""

import math

import pytest

import ddpo.core

from . import load_example

pytestmark = pytest.mark.slow


def test_the_hand_written_loop_runs_and_is_reproducible() -> None:
    example = load_example("diffusion_nft")
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
