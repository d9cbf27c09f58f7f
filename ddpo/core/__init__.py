"""DDPO's math as pure, shape-annotated tensor functions.

Imports only torch, jaxtyping and the standard library (``tests/test_layering.py`` enforces it).
"""

from ddpo.core.advantages import clip_advantages, group_normalize_advantages, normalize_advantages
from ddpo.core.ddim import DDIMStepOutput, PredictionType, ddim_step_with_logprob
from ddpo.core.guidance import classifier_free_guidance
from ddpo.core.kl import gaussian_kl
from ddpo.core.per_prompt import (
    PerPromptStatState,
    PerPromptStatTracker,
    init_per_prompt_stats,
    update_per_prompt_stats,
)
from ddpo.core.ppo import PPOLossOutput, ppo_clip_loss, score_function_loss
from ddpo.core.timesteps import subsample_timesteps

__all__ = [
    "DDIMStepOutput",
    "PPOLossOutput",
    "PerPromptStatState",
    "PerPromptStatTracker",
    "PredictionType",
    "classifier_free_guidance",
    "clip_advantages",
    "ddim_step_with_logprob",
    "gaussian_kl",
    "group_normalize_advantages",
    "init_per_prompt_stats",
    "normalize_advantages",
    "ppo_clip_loss",
    "score_function_loss",
    "subsample_timesteps",
    "update_per_prompt_stats",
]
