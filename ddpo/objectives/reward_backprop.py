"""Reward backpropagation: DRaFT-K (Clark et al., 2023, arXiv 2309.17400) and AlignProp
(Prabhudesai et al., 2023, arXiv 2310.03739) as an objective of `ddpo.trainer.DDPOTrainer`.

Each micro-batch samples its prompts again with the policy's sampler, the last ``K`` steps
keeping their graph (each denoiser call checkpointed, `ddpo.policy.DiffusionPolicy.rollout`'s
``grad_steps``), decodes with gradients, scores the images with a differentiable reward
(`ddpo.rewards.registry.DIFFERENTIABLE_REWARDS`) and descends ``-mean(reward)``. DRaFT-K keeps
``K`` fixed; AlignProp draws it per micro-batch, uniformly in ``[1, K]`` (TRL's
``truncated_rand_backprop_minmax`` of ``(T - K, T)`` for ``T`` steps). The epoch's sampled
images (without gradients) give the prompts and the logged reward.

The rollout runs the policy's own denoiser, not the accelerate-prepared one, so its gradients
are not all-reduced: it trains on one process (refused on several).
"""

from dataclasses import dataclass
from typing import Any

import torch

from ddpo.objectives.base import ObjectiveContext, ObjectiveLoss, ObjectiveNeeds
from ddpo.samples import Trajectories


@dataclass(frozen=True)
class RewardBackprop:
    """DRaFT-K or AlignProp (see the module docstring).

    Attributes:
        reward_function: a differentiable reward of the reward contract: float images with
            gradients in, rewards with gradients out.
        num_steps: the sampler's steps (``DDPOConfig.sample_num_steps``).
        guidance_scale: the sampler's guidance (``DDPOConfig.sample_guidance_scale``).
        grad_steps: ``K``, the last steps whose graph is kept (DRaFT-K), or the largest one
            drawn (AlignProp), in ``[1, num_steps]``.
        random_truncation: AlignProp's draw of ``K`` per micro-batch.
    """

    reward_function: Any
    num_steps: int
    guidance_scale: float
    grad_steps: int = 1
    random_truncation: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.grad_steps <= self.num_steps:
            raise ValueError(
                f"reward backpropagation's grad_steps must be in [1, sample_num_steps="
                f"{self.num_steps}], got {self.grad_steps}"
            )

    @property
    def needs(self) -> ObjectiveNeeds:
        """No transitions; a rollout with gradients through its last ``grad_steps`` steps."""
        return ObjectiveNeeds(transitions=False, grad_steps=self.grad_steps)

    def terms(self, kept_transitions: int) -> int:
        """One backward pass per micro-batch."""
        return 1

    def loss(self, context: ObjectiveContext, batch: Trajectories, term: int) -> ObjectiveLoss:
        """``-mean(reward)`` of the batch's prompts sampled again with gradients through the
        last ``K`` steps."""
        if context.num_processes > 1:
            raise ValueError(
                "reward backpropagation trains on one process: its rollout runs the policy's "
                f"own denoiser, whose gradients are not all-reduced (got {context.num_processes} "
                "processes)"
            )
        generator = context.generator
        k = self.grad_steps
        if self.random_truncation:
            k = int(torch.randint(1, self.grad_steps + 1, (1,), generator=generator))
        with context.autocast():
            out = context.policy.rollout(
                batch.conditioning,
                num_steps=self.num_steps,
                guidance_scale=self.guidance_scale,
                generator=generator,
                grad_steps=k,
            )
        metadata: tuple[dict[str, Any], ...] = tuple({} for _ in batch.prompts)
        rewards, _ = self.reward_function(out.images, tuple(batch.prompts), metadata)
        rewards = torch.as_tensor(rewards)
        if not rewards.requires_grad:
            raise ValueError(
                "the reward function returned rewards without gradients: reward "
                "backpropagation needs a differentiable reward (ddpo.rewards.registry."
                "DIFFERENTIABLE_REWARDS, build_reward_fn(name, differentiable=True))"
            )
        loss = -rewards.float().mean()
        metrics = {
            "backprop_reward": rewards.detach().float().mean(),
            "grad_steps": torch.tensor(float(k)),
            "loss": loss.detach(),
        }
        return ObjectiveLoss(loss, metrics)


__all__ = ["RewardBackprop"]
