"""Reward functions ``(images, prompts, prompt_metadata) -> (rewards, reward_metadata)``.

``images`` is the float tensor ``(batch, 3, H, W)`` in [0, 1] that DDPOTrainer passes; the
rewards come back as a ``(batch,)`` tensor. :mod:`ddpo.rewards.registry` names them for
``ddpo train --reward``. The names below are imported on first use, so that importing the
registry does not import torch (and the aesthetic scorer, transformers).
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ddpo.rewards.aesthetic import AestheticMLP, AestheticScorer, aesthetic_score
    from ddpo.rewards.alignment import (
        alignment_accuracy,
        alignment_prompt_fn,
        alignment_reward_fn,
        alignment_scores,
    )
    from ddpo.rewards.brightness import brightness
    from ddpo.rewards.combine import WeightedSumReward, weighted_sum
    from ddpo.rewards.jpeg import jpeg_compressibility, jpeg_incompressibility, jpeg_size_kb

_LAZY: dict[str, str] = {
    "AestheticMLP": "ddpo.rewards.aesthetic",
    "AestheticScorer": "ddpo.rewards.aesthetic",
    "aesthetic_score": "ddpo.rewards.aesthetic",
    "alignment_accuracy": "ddpo.rewards.alignment",
    "alignment_prompt_fn": "ddpo.rewards.alignment",
    "alignment_reward_fn": "ddpo.rewards.alignment",
    "alignment_scores": "ddpo.rewards.alignment",
    "brightness": "ddpo.rewards.brightness",
    "WeightedSumReward": "ddpo.rewards.combine",
    "weighted_sum": "ddpo.rewards.combine",
    "jpeg_compressibility": "ddpo.rewards.jpeg",
    "jpeg_incompressibility": "ddpo.rewards.jpeg",
    "jpeg_size_kb": "ddpo.rewards.jpeg",
}

__all__ = [
    "AestheticMLP",
    "AestheticScorer",
    "WeightedSumReward",
    "aesthetic_score",
    "alignment_accuracy",
    "alignment_prompt_fn",
    "alignment_reward_fn",
    "alignment_scores",
    "brightness",
    "jpeg_compressibility",
    "jpeg_incompressibility",
    "jpeg_size_kb",
    "weighted_sum",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ddpo.rewards' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
