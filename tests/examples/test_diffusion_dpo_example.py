"""examples/diffusion_dpo.py, online Diffusion-DPO written by hand, runs on the packaged flow
model: seeded, with finite losses, the same history twice, and the reference's loss at the
first step."""

import math

import pytest
import torch

from . import load_example

pytestmark = pytest.mark.slow


def test_the_hand_written_loop_runs_and_is_reproducible() -> None:
    example = load_example("diffusion_dpo")
    argv = ["--epochs", "2", "--prompts", "2", "--images_per_prompt", "2", "--steps", "4"]
    first = example.main(argv)
    assert len(first["reward"]) == len(first["loss"]) == len(first["implicit_accuracy"]) == 2
    assert all(math.isfinite(v) and v > 0 for v in first["loss"])
    assert all(0 <= v <= 1 for v in first["implicit_accuracy"])
    assert all(0 <= v <= 1 for v in first["reward"])  # the alignment reward's range
    # zero-initialised LoRA: before the first step the model is the reference, every logit is 0
    assert first["loss"][0] == pytest.approx(math.log(2), abs=1e-5)
    assert example.main(argv) == first  # seeded: the same run
    assert example.main([*argv, "--seed", "1"]) != first


def test_pairs_are_each_prompts_best_and_worst_and_skip_ties() -> None:
    example = load_example("diffusion_dpo")
    rewards = torch.tensor([0.2, 0.9, 0.5, 0.4, 0.4, 0.4, 0.7, 0.1, 0.3])
    preferred, other = example.best_and_worst(rewards, 3)
    assert preferred.tolist() == [1, 6] and other.tolist() == [0, 7]
