"""Reward functions ``(images, prompts, prompt_metadata) -> (rewards, reward_metadata)``.

``images`` is the float tensor ``(batch, 3, H, W)`` in [0, 1] that DDPOTrainer passes; the
rewards come back as a ``(batch,)`` tensor. The aesthetic scorer imports transformers lazily.
"""

from ddpo.rewards.alignment import (
    alignment_accuracy,
    alignment_prompt_fn,
    alignment_reward_fn,
    alignment_scores,
)
from ddpo.rewards.brightness import brightness
from ddpo.rewards.combine import WeightedSumReward, weighted_sum
from ddpo.rewards.jpeg import jpeg_compressibility, jpeg_incompressibility, jpeg_size_kb

__all__ = [
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


def __getattr__(name: str) -> object:
    if name in ("AestheticScorer", "AestheticMLP", "aesthetic_score"):
        from ddpo.rewards import aesthetic

        return getattr(aesthetic, name)
    raise AttributeError(f"module 'ddpo.rewards' has no attribute {name!r}")
