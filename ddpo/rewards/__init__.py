"""Reward functions ``(images, prompts, prompt_metadata) -> (rewards, reward_metadata)``."""

from ddpo.rewards.alignment import (
    alignment_accuracy,
    alignment_prompt_fn,
    alignment_reward_fn,
    alignment_scores,
)

__all__ = [
    "alignment_accuracy",
    "alignment_prompt_fn",
    "alignment_reward_fn",
    "alignment_scores",
]
