"""The objective of each ``DDPOConfig.algorithm``, built from the config (one registry line
per algorithm; the loop itself has no algorithm branch)."""

from collections.abc import Callable
from typing import Any

from ddpo.objectives import (
    AdvantageWeightedMatching,
    DiffusionDPO,
    DiffusionNFT,
    Objective,
    RewardBackprop,
)
from ddpo.trainer.config import DDPOConfig
from ddpo.trainer.optimisation import clip_range, num_train_timesteps, policy_gradient

AWM_DEFAULT_TIMESTEPS = 6
"""AWM's timesteps per sample in its GenEval recipe (``train.train_timesteps``)."""


def nft_objective(config: DDPOConfig) -> DiffusionNFT:
    """DiffusionNFT from ``nft_beta``, ``nft_decay_type``, ``kl_coef``, ``train_adv_clip_max``
    and the sampler's steps (``train_num_timesteps`` of them, or ``train_timestep_fraction``)."""
    return DiffusionNFT(
        num_steps=config.sample_num_steps,
        num_train_timesteps=config.train_num_timesteps or num_train_timesteps(config),
        beta=config.nft_beta,
        adv_clip_max=config.train_adv_clip_max,
        kl_coef=config.kl_coef,
        decay_type=config.nft_decay_type,
    )


def awm_objective(config: DDPOConfig) -> AdvantageWeightedMatching:
    """AWM from ``train_clip_range``, ``awm_weighting``, ``awm_ghuber_power``, ``kl_coef``,
    ``awm_kl_weighting`` and ``train_num_timesteps`` (0: 6, or ``sample_num_steps - 1``)."""
    count = config.train_num_timesteps or min(AWM_DEFAULT_TIMESTEPS, config.sample_num_steps - 1)
    return AdvantageWeightedMatching(
        num_steps=config.sample_num_steps,
        num_train_timesteps=count,
        clip_range=clip_range(config),
        weighting=config.awm_weighting,
        ghuber_power=config.awm_ghuber_power,
        kl_coef=config.kl_coef,
        kl_weighting=config.awm_kl_weighting,
    )


def dpo_objective(config: DDPOConfig) -> DiffusionDPO:
    """Online Diffusion-DPO from ``dpo_beta``, ``dpo_pairs`` and ``train_num_timesteps``
    (0: 1)."""
    return DiffusionDPO(
        beta=config.dpo_beta,
        pairs=config.dpo_pairs,
        num_train_timesteps=config.train_num_timesteps or 1,
    )


def reward_backprop_objective(config: DDPOConfig, reward_function: Any) -> RewardBackprop:
    """DRaFT-K (``draft``) or AlignProp (``alignprop``) through ``backprop_grad_steps`` steps of
    the config's sampler, or DRaFT-LV (``draft_lv``, ``backprop_lv_samples`` re-noised last
    steps), descending the (differentiable) ``reward_function``."""
    return RewardBackprop(
        reward_function=reward_function,
        num_steps=config.sample_num_steps,
        guidance_scale=config.sample_guidance_scale,
        grad_steps=config.backprop_grad_steps,
        random_truncation=config.algorithm == "alignprop",
        lv_samples=config.backprop_lv_samples if config.algorithm == "draft_lv" else 0,
        base_pull=config.backprop_base_pull,
    )


OBJECTIVES: dict[str, Callable[[DDPOConfig, Any], Objective]] = {
    "ddpo": lambda config, reward: policy_gradient(config),
    "nft": lambda config, reward: nft_objective(config),
    "awm": lambda config, reward: awm_objective(config),
    "dpo": lambda config, reward: dpo_objective(config),
    "draft": reward_backprop_objective,
    "draft_lv": reward_backprop_objective,
    "alignprop": reward_backprop_objective,
}
"""``DDPOConfig.algorithm`` -> the builder of its objective, from the config and the run's
reward function."""


def objective_from_config(config: DDPOConfig, reward_function: Any = None) -> Objective:
    """The objective of ``config.algorithm`` (``reward_function``: the run's, which reward
    backpropagation differentiates)."""
    return OBJECTIVES[config.algorithm](config, reward_function)


__all__ = [
    "OBJECTIVES",
    "awm_objective",
    "dpo_objective",
    "nft_objective",
    "objective_from_config",
    "reward_backprop_objective",
]
