"""The trainer's advantage phase (`ddpo.trainer.advantages.compute_advantages`)."""

import pytest
import torch

from ddpo.core import group_normalize_advantages
from ddpo.trainer.advantages import compute_advantages


@pytest.mark.parametrize("mode", ["group", "group_global"])
def test_group_modes_refuse_an_epoch_without_repeated_prompts(mode: str) -> None:
    rewards = torch.tensor([0.1, 0.5, 0.9])
    with pytest.raises(ValueError, match="each of the epoch's 3 prompts appears once"):
        compute_advantages(rewards, ["a", "b", "c"], mode=mode, stat_tracker=None, clip=5.0)


@pytest.mark.parametrize("mode", ["group", "group_global"])
def test_group_modes_with_repeats_normalise_within_prompts(mode: str) -> None:
    rewards = torch.tensor([0.1, 0.5, 0.9, 0.2])
    prompts = ["a", "a", "b", "c"]  # "c" alone gets 0; the others are normalised
    out = compute_advantages(rewards, prompts, mode=mode, stat_tracker=None, clip=5.0)
    std = "global" if mode == "group_global" else "group"
    expected = group_normalize_advantages(rewards, prompts, std=std)
    torch.testing.assert_close(out, expected.float().clamp(-5, 5))
    assert out[3] == 0 and out[0] < 0 < out[1]
