"""examples/mixgrpo.py, MixGRPO's sliding window written by hand, runs on the packaged flow
model: the window's first step follows the progressive schedule (worked out by hand below), the
first update of each epoch is on-policy, the gradient reaches the adapters and moves them, every
number is finite, and a seed gives the same run twice."""

import math

import pytest

import ddpo.core

from . import load_example

pytestmark = pytest.mark.slow

TINY = ["--prompts", "2", "--images_per_prompt", "2", "--steps", "4", "--window", "2"]


def test_the_window_slides_and_the_loop_trains_on_policy() -> None:
    example = load_example("mixgrpo")
    argv = [*TINY, "--epochs", "4", "--shift_interval", "1", "--stride", "1"]
    first = example.main(argv)
    # 4 steps, all stochastic ("sde"), a window of 2: it can start at 0, 1 or 2. Moving 1 step
    # every epoch from 0, it stops at the last whole window, 2 (the rollout's first recorded
    # step, so the schedule reached the sampler).
    assert first["window_start"] == [0.0, 1.0, 2.0, 2.0]
    assert all(len(v) == 4 for v in first.values())
    assert all(math.isfinite(v) for values in first.values() for v in values)
    assert all(0 <= v <= 1 for v in first["reward"])  # the alignment reward's range
    # nothing changed between sampling and the first re-scoring: the ratio is 1
    assert all(gap < 1e-5 for gap in first["first_log_ratio"])
    # the PPO gradient reached the adapters, and the updates moved them
    assert all(v > 0 for v in first["grad_norm"])
    assert all(v > 0 for v in first["update_norm"])
    assert example.main(argv) == first  # seeded: the same run
    # the schedule is the library's, not a copy of it
    assert example.sliding_window_start is ddpo.core.sliding_window_start


def test_the_default_stride_is_the_window_and_roll_back_starts_over() -> None:
    example = load_example("mixgrpo")
    argv = [*TINY, "--prompts", "1", "--epochs", "6", "--shift_interval", "2", "--roll_back"]
    # starts 0, 1, 2; the stride is the window's size, 2: positions 0 and 2, each for 2 epochs,
    # then from 0 again (without --roll_back: 0, 0, 2, 2, 2, 2)
    assert example.main(argv)["window_start"] == [0.0, 0.0, 2.0, 2.0, 0.0, 0.0]


def test_decay_and_mixgrpo_flash_run_from_the_flags() -> None:
    example = load_example("mixgrpo")
    argv = [*TINY, "--prompts", "1", "--epochs", "5", "--shift_interval", "2", "--stride", "1",
            "--strategy", "decay", "--post_window_solver", "dpmsolver++",
            "--post_window_step_ratio", "0.5"]  # fmt: skip
    # decay over the starts 0, 1, 2: 2 epochs at 0, int(2 (1 - 1/2) + 1/2) = 1 at 1, then 2
    history = example.main(argv)
    assert history["window_start"] == [0.0, 0.0, 1.0, 2.0, 2.0]
    assert all(math.isfinite(v) for values in history.values() for v in values)
