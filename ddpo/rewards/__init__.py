"""Reward functions: each follows the reward contract of :mod:`ddpo.rewards.contract`
(`RewardFunction`, checked by `check_rewards`) and returns its rewards as a ``(batch,)`` tensor.

:mod:`ddpo.rewards.registry` names them for ``ddpo train --reward``; :mod:`ddpo.rewards.remote`
serves one over HTTP and scores through a server; :mod:`ddpo.rewards.video` scores videos (any
image reward per frame, and temporal consistency). The names below are imported on first use, so
that importing the registry does not import torch (and the aesthetic scorer, transformers).
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
    from ddpo.rewards.clip_score import ClipScoreReward, clip_score_reward
    from ddpo.rewards.combine import WeightedSumReward, weighted_sum
    from ddpo.rewards.contract import RewardFunction, check_rewards
    from ddpo.rewards.hps import HPSReward, hps_reward
    from ddpo.rewards.image_reward import ImageRewardFn, image_reward
    from ddpo.rewards.jpeg import jpeg_compressibility, jpeg_incompressibility, jpeg_size_kb
    from ddpo.rewards.ocr import OcrReward, ocr_reward
    from ddpo.rewards.pickscore import PickScoreReward, pickscore_reward
    from ddpo.rewards.remote import RemoteReward, RemoteRewardError, RemoteRewardUnavailable
    from ddpo.rewards.video import (
        PerFrameReward,
        TemporalConsistency,
        per_frame,
        temporal_consistency,
    )

_LAZY: dict[str, str] = {
    "AestheticMLP": "ddpo.rewards.aesthetic",
    "AestheticScorer": "ddpo.rewards.aesthetic",
    "aesthetic_score": "ddpo.rewards.aesthetic",
    "alignment_accuracy": "ddpo.rewards.alignment",
    "alignment_prompt_fn": "ddpo.rewards.alignment",
    "alignment_reward_fn": "ddpo.rewards.alignment",
    "alignment_scores": "ddpo.rewards.alignment",
    "brightness": "ddpo.rewards.brightness",
    "ClipScoreReward": "ddpo.rewards.clip_score",
    "clip_score_reward": "ddpo.rewards.clip_score",
    "WeightedSumReward": "ddpo.rewards.combine",
    "weighted_sum": "ddpo.rewards.combine",
    "RewardFunction": "ddpo.rewards.contract",
    "check_rewards": "ddpo.rewards.contract",
    "jpeg_compressibility": "ddpo.rewards.jpeg",
    "jpeg_incompressibility": "ddpo.rewards.jpeg",
    "jpeg_size_kb": "ddpo.rewards.jpeg",
    "OcrReward": "ddpo.rewards.ocr",
    "ocr_reward": "ddpo.rewards.ocr",
    "PickScoreReward": "ddpo.rewards.pickscore",
    "pickscore_reward": "ddpo.rewards.pickscore",
    "HPSReward": "ddpo.rewards.hps",
    "hps_reward": "ddpo.rewards.hps",
    "ImageRewardFn": "ddpo.rewards.image_reward",
    "image_reward": "ddpo.rewards.image_reward",
    "RemoteReward": "ddpo.rewards.remote",
    "RemoteRewardError": "ddpo.rewards.remote",
    "RemoteRewardUnavailable": "ddpo.rewards.remote",
    "PerFrameReward": "ddpo.rewards.video",
    "TemporalConsistency": "ddpo.rewards.video",
    "per_frame": "ddpo.rewards.video",
    "temporal_consistency": "ddpo.rewards.video",
}

__all__ = [
    "AestheticMLP",
    "AestheticScorer",
    "ClipScoreReward",
    "HPSReward",
    "ImageRewardFn",
    "OcrReward",
    "PerFrameReward",
    "PickScoreReward",
    "RemoteReward",
    "RemoteRewardError",
    "RemoteRewardUnavailable",
    "RewardFunction",
    "TemporalConsistency",
    "WeightedSumReward",
    "aesthetic_score",
    "alignment_accuracy",
    "alignment_prompt_fn",
    "alignment_reward_fn",
    "alignment_scores",
    "brightness",
    "check_rewards",
    "clip_score_reward",
    "hps_reward",
    "image_reward",
    "jpeg_compressibility",
    "jpeg_incompressibility",
    "jpeg_size_kb",
    "ocr_reward",
    "per_frame",
    "pickscore_reward",
    "temporal_consistency",
    "weighted_sum",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ddpo.rewards' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
