"""Rewards by name: every name has a spec, specs build rewards, summary keys are reported."""

import subprocess
import sys

import pytest
import torch

from ddpo.data.shapes import batches
from ddpo.rewards.registry import (
    REWARD_SPECS,
    REWARDS,
    RewardOptions,
    build_reward_fn,
    reward_spec,
)


def test_every_name_has_one_spec() -> None:
    assert list(REWARD_SPECS) == list(REWARDS)
    assert len(set(REWARDS)) == len(REWARDS)
    with pytest.raises(ValueError, match=r"reward must be one of .* got 'nope'"):
        reward_spec("nope")
    with pytest.raises(ValueError, match="got 'nope'"):
        build_reward_fn("nope")


@pytest.mark.parametrize("name", ["jpeg_compressibility", "jpeg_incompressibility", "brightness"])
def test_cheap_rewards_build_and_score(name: str) -> None:
    fn = build_reward_fn(name, RewardOptions())
    rewards, _ = fn(torch.rand(2, 3, 16, 16), ("a", "b"), ({}, {}))
    assert len(rewards) == 2


def test_summary_keys_are_per_sample_metadata_in_unit_interval() -> None:
    images, captions, metas = next(batches(8, seed=0, split="all"))
    _, info = build_reward_fn("alignment")(images, captions, metas)
    assert reward_spec("alignment").summary_keys == ("accuracy",)
    for key in reward_spec("alignment").summary_keys:
        values = info[key].float()
        assert values.shape == (8,)
        assert bool(((values >= 0) & (values <= 1)).all())


def test_importing_the_registry_imports_no_reward_module() -> None:
    code = (
        "import sys, ddpo.rewards.registry; "
        "print(sorted(m for m in sys.modules if m.startswith(('torch', 'ddpo.rewards.'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['ddpo.rewards.registry']"
