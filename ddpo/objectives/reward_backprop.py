"""Reward backpropagation: DRaFT-K (Clark et al., 2023, arXiv 2309.17400) and AlignProp
(Prabhudesai et al., 2023, arXiv 2310.03739) as an objective of `ddpo.trainer.DDPOTrainer`.

Each micro-batch samples its prompts again with the policy's sampler, the last ``K`` steps
keeping their graph (each denoiser call checkpointed, `ddpo.policy.DiffusionPolicy.rollout`'s
``grad_steps``), decodes with gradients, scores the images with a differentiable reward
(`ddpo.rewards.registry.DIFFERENTIABLE_REWARDS`) and descends ``-mean(reward)``. DRaFT-K keeps
``K`` fixed; AlignProp draws it per micro-batch, uniformly in ``[1, K]`` (TRL's
``truncated_rand_backprop_minmax`` of ``(T - K, T)`` for ``T`` steps). DRaFT-LV (the same
paper, its lower-variance ``K = 1``) samples without gradients, then ``lv_samples`` times noises
the final latents again to the sampler's last timestep with fresh noise and takes that last step
with gradients (the clean latents the prediction implies, `policy.predicted_clean`), averaging
the rewards. The epoch's sampled images (without gradients) give the prompts and the logged
reward.

With ``base_pull`` ``c > 0`` the loss adds ``c sum (theta - theta_0)^2`` over the trained
parameters, ``theta_0`` their values when the run started (checkpointed, so a resume pulls
toward the same weights).

DRaFT-K's and AlignProp's rollout runs the policy's own denoiser, not the accelerate-prepared
one, so its gradients are not all-reduced: they train on one process (refused on several).
DRaFT-LV's step runs the prepared denoiser and trains on any number.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ddpo.objectives._forward import SamplingTimesteps, draw_noise, required_member
from ddpo.objectives.base import ObjectiveContext, ObjectiveLoss, ObjectiveNeeds
from ddpo.objectives.weights import WeightsAtStart
from ddpo.policy import DiffusionPolicy
from ddpo.samples import Trajectories


def differentiated(rewards: Any) -> torch.Tensor:
    """``rewards`` as a tensor that carries gradients.

    Raises:
        ValueError: where it carries none (a reward function that is not differentiable).
    """
    rewards = torch.as_tensor(rewards)
    if not rewards.requires_grad:
        raise ValueError(
            "the reward function returned rewards without gradients: reward backpropagation "
            "needs a differentiable reward (ddpo.rewards.registry.DIFFERENTIABLE_REWARDS, "
            "build_reward_fn(name, differentiable=True))"
        )
    return rewards


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
        lv_samples: DRaFT-LV's re-noised last steps per image (the paper's 2); 0: DRaFT-K or
            AlignProp.
        base_pull: ``c`` of the pull ``c sum (theta - theta_0)^2`` toward the run's starting
            weights, >= 0.
    """

    reward_function: Any
    num_steps: int
    guidance_scale: float
    grad_steps: int = 1
    random_truncation: bool = False
    lv_samples: int = 0
    base_pull: float = 0.0
    _timesteps: SamplingTimesteps = field(init=False, repr=False, compare=False)
    _start: WeightsAtStart = field(
        default_factory=WeightsAtStart, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_timesteps", SamplingTimesteps(self.num_steps, "DRaFT-LV"))
        if not 1 <= self.grad_steps <= self.num_steps:
            raise ValueError(
                f"reward backpropagation's grad_steps must be in [1, sample_num_steps="
                f"{self.num_steps}], got {self.grad_steps}"
            )
        if self.lv_samples < 0:
            raise ValueError(f"lv_samples must be >= 0, got {self.lv_samples}")
        if not self.base_pull >= 0:
            raise ValueError(f"base_pull must be >= 0, got {self.base_pull}")

    @property
    def needs(self) -> ObjectiveNeeds:
        """No transitions; DRaFT-K and AlignProp: a rollout with gradients through its last
        ``grad_steps`` steps; DRaFT-LV: the final latents."""
        if self.lv_samples:
            return ObjectiveNeeds(transitions=False, final=True)
        return ObjectiveNeeds(transitions=False, grad_steps=self.grad_steps)

    def check_policy(self, policy: DiffusionPolicy) -> None:
        """DRaFT-LV: TypeError unless the policy has ``predicted_clean`` and
        ``sampling_timesteps``."""
        if self.lv_samples:
            required_member(policy, "predicted_clean", "DRaFT-LV")
            self._timesteps(policy)

    def terms(self, kept_transitions: int) -> int:
        """One backward pass per micro-batch."""
        return 1

    def prepare_epoch(self, context: ObjectiveContext, samples: Trajectories) -> Trajectories:
        """With ``base_pull``, keep the trained weights as the run starts (or as restored)."""
        if self.base_pull > 0:
            self._start.of(context.parameters)
        return samples

    def tensor_state_dict(self) -> dict[str, Tensor]:
        """The starting weights the pull is toward (none without ``base_pull``)."""
        return self._start.state_dict()

    def load_tensor_state_dict(self, tensors: Mapping[str, Tensor]) -> None:
        """Restore the starting weights."""
        if tensors:
            self._start.load(tensors)

    def _with_pull(self, context: ObjectiveContext, loss: ObjectiveLoss) -> ObjectiveLoss:
        """``loss`` plus ``base_pull sum (theta - theta_0)^2`` (its distance logged)."""
        if self.base_pull == 0:
            return loss
        start = self._start.of(context.parameters).shadow
        squared = sum(
            ((p.float() - start[name].float()) ** 2).sum() for name, p in context.parameters.items()
        )
        distance = torch.as_tensor(squared, dtype=torch.float32)
        total = loss.loss + self.base_pull * distance
        metrics = {
            **loss.metrics,
            "base_distance": distance.detach().sqrt(),
            "loss": total.detach(),
        }
        return ObjectiveLoss(total, metrics)

    def loss(self, context: ObjectiveContext, batch: Trajectories, term: int) -> ObjectiveLoss:
        """``-mean(reward)`` of the batch's prompts sampled again with gradients through the
        last ``K`` steps (DRaFT-LV: of its re-noised last steps)."""
        if self.lv_samples:
            return self._with_pull(context, self._lower_variance_loss(context, batch))
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
        rewards = differentiated(rewards)
        loss = -rewards.float().mean()
        metrics = {
            "backprop_reward": rewards.detach().float().mean(),
            "grad_steps": torch.tensor(float(k)),
            "loss": loss.detach(),
        }
        return self._with_pull(context, ObjectiveLoss(loss, metrics))

    def _lower_variance_loss(self, context: ObjectiveContext, batch: Trajectories) -> ObjectiveLoss:
        """DRaFT-LV: the final latents noised again ``lv_samples`` times to the last sampling
        timestep, the last step taken with gradients through the prepared denoiser."""
        if batch.final_latents is None:
            raise ValueError("DRaFT-LV needs the batch's final latents")
        policy, x0 = context.policy, batch.final_latents
        predicted_clean = required_member(policy, "predicted_clean", "DRaFT-LV")
        last = self._timesteps(policy)[-1]
        t = last.expand(len(batch)).to(x0.device)
        metadata: tuple[dict[str, Any], ...] = tuple({} for _ in batch.prompts)
        total = x0.new_zeros((), dtype=torch.float32)
        for _ in range(self.lv_samples):
            x_t = policy.add_noise(x0, draw_noise(x0, context.generator), t)
            with context.autocast():
                prediction = policy.predict(batch.conditioning, x_t, t,
                                            guidance_scale=self.guidance_scale,
                                            denoiser=context.denoiser)  # fmt: skip
            images = policy.decode(predicted_clean(x_t, prediction, t))
            rewards, _ = self.reward_function(images, tuple(batch.prompts), metadata)
            total = total + differentiated(rewards).float().mean()
        mean_reward = total / self.lv_samples
        loss = -mean_reward
        metrics = {"backprop_reward": mean_reward.detach(), "loss": loss.detach()}
        return ObjectiveLoss(loss, metrics)


__all__ = ["RewardBackprop", "differentiated"]
