"""DiffusionNFT (Zheng et al., 2025, arXiv 2509.16117): the negative-aware objective on the
forward process, as the authors' ``train_nft_sd3.py`` trains it (NVlabs/DiffusionNFT; read, not
copied).

Per epoch: the images are sampled with the old policy's weights (a soft copy of the trained
ones); each sample's advantage becomes an optimality probability (`ddpo.core.nft_optimality`);
each sample trains at ``num_train_timesteps`` of the sampler's timesteps, a random subset per
sample, one term each, with fresh noise; at each, the trained and the old policy's predictions
give the implicit positive and negative policies, regressed onto the sample
(`ddpo.core.nft_clean_loss`, on the clean latents the predictions imply, so that any
parameterisation works), plus ``kl_coef`` times the predictions' squared distance to the
reference's. After the epoch the old policy moves towards the trained weights by
`ddpo.core.nft_old_policy_decay` of the optimizer steps taken. Training is CFG-free.
"""

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ddpo.core import nft_clean_loss, nft_old_policy_decay, nft_optimality
from ddpo.objectives._forward import (
    SamplingTimesteps,
    draw_noise,
    per_sample_mean,
    required_member,
)
from ddpo.objectives.base import ObjectiveContext, ObjectiveLoss, ObjectiveNeeds
from ddpo.objectives.weights import ShadowWeights, WeightsAtStart
from ddpo.policy import DiffusionPolicy
from ddpo.samples import Trajectories

STEP_KEY = "nft_step"
"""``Trajectories.extras``: each sample's sampler-step indices, one per term, ``(batch, T)``."""


@dataclass
class DiffusionNFT:
    """DiffusionNFT's objective for `ddpo.trainer.DDPOTrainer` (see the module docstring).

    Attributes:
        num_steps: the sampler's steps (``DDPOConfig.sample_num_steps``): its timesteps are
            where the samples train.
        num_train_timesteps: the timesteps each sample trains at per inner epoch, one term
            each (the authors' ``int(num_steps * timestep_fraction)``).
        beta: the implicit policies' step (the paper's 1; 0.1 in its OCR recipe).
        adv_clip_max: the advantage that maps to an optimality of 1 (the loss is also scaled by
            it, as the authors do).
        kl_coef: the weight of ``mean((v - v_ref)^2)`` (the authors' ``train.beta``, 1e-4).
        decay_type: the old policy's schedule (`ddpo.core.NFT_DECAY_TYPES`; 1, the paper's).
    """

    num_steps: int
    num_train_timesteps: int
    beta: float = 1.0
    adv_clip_max: float = 5.0
    kl_coef: float = 0.0
    decay_type: int = 1
    _old: WeightsAtStart = field(default_factory=WeightsAtStart, init=False, repr=False)
    _timesteps: SamplingTimesteps = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._timesteps = SamplingTimesteps(self.num_steps, "DiffusionNFT")

    @property
    def needs(self) -> ObjectiveNeeds:
        """The clean final latents; no transitions."""
        return ObjectiveNeeds(transitions=False, final=True)

    def terms(self, kept_transitions: int) -> int:
        """One backward pass per trained timestep (``num_train_timesteps``)."""
        return self.num_train_timesteps

    def check_policy(self, policy: DiffusionPolicy) -> None:
        """TypeError unless the policy has ``predicted_clean`` and ``sampling_timesteps``."""
        required_member(policy, "predicted_clean", "DiffusionNFT")
        self._timesteps(policy)

    # ---- the old policy -----------------------------------------------------------------
    def _old_weights(self, parameters: Mapping[str, nn.Parameter]) -> ShadowWeights:
        return self._old.of(parameters)  # the trained weights at the run's start

    def sampling_weights(
        self, parameters: Mapping[str, nn.Parameter]
    ) -> contextlib.AbstractContextManager[Any]:
        """The epoch samples with the old policy (the authors' ``set_adapter("old")``)."""
        return self._old_weights(parameters).swapped_in()

    def end_epoch(self, context: ObjectiveContext, global_step: int) -> None:
        """The old policy moves towards the trained weights: ``old = d old + (1 - d) theta``
        with ``d = nft_old_policy_decay(global_step)``."""
        old = self._old_weights(context.parameters)
        old.move_towards(nft_old_policy_decay(global_step, decay_type=self.decay_type))

    def tensor_state_dict(self) -> dict[str, Tensor]:
        """The old policy's weights by parameter name (none before the first epoch)."""
        return self._old.state_dict()

    def load_tensor_state_dict(self, tensors: Mapping[str, Tensor]) -> None:
        """Restore the old policy (applied when the trained parameters are first seen)."""
        self._old.load(tensors)

    # ---- the loss -------------------------------------------------------------------------
    def prepare_epoch(self, context: ObjectiveContext, samples: Trajectories) -> Trajectories:
        """Each sample's ``num_train_timesteps`` sampler steps: the first of a random
        permutation (``extras["nft_step"]``)."""
        self._old_weights(context.parameters)
        generator = context.generator
        steps = (
            torch.stack(
                [
                    torch.randperm(self.num_steps, generator=generator)[: self.num_train_timesteps]
                    for _ in range(len(samples))
                ]
            )
            if len(samples)
            else torch.zeros(0, self.num_train_timesteps, dtype=torch.int64)
        )
        samples.extras[STEP_KEY] = steps.to(samples.timesteps.device)
        return samples

    def loss(self, context: ObjectiveContext, batch: Trajectories, term: int) -> ObjectiveLoss:
        """The NFT loss at the ``term``-th of each sample's timesteps (see the module
        docstring)."""
        if batch.advantages is None or batch.final_latents is None:
            raise ValueError("DiffusionNFT.loss needs the batch's advantages and final latents")
        policy = context.policy
        old = self._old_weights(context.parameters)
        predicted_clean = required_member(policy, "predicted_clean", "DiffusionNFT")
        x0 = batch.final_latents
        steps = batch.extras[STEP_KEY][:, term].cpu()
        t = self._timesteps(policy)[steps].to(x0.device)
        noise = draw_noise(x0, context.generator)
        x_t = policy.add_noise(x0, noise, t)
        conditioning = batch.conditioning
        with torch.no_grad(), old.swapped_in(), context.autocast():
            old_prediction = policy.predict(conditioning, x_t, t)
        with context.autocast():
            prediction = policy.predict(conditioning, x_t, t, denoiser=context.denoiser)
        optimality = nft_optimality(batch.advantages.float(), adv_clip_max=self.adv_clip_max)
        per_sample = nft_clean_loss(
            x0.float(),
            predicted_clean(x_t, prediction, t).float(),
            predicted_clean(x_t, old_prediction, t).float(),
            optimality,
            beta=self.beta,
        )
        policy_loss = (per_sample * self.adv_clip_max).mean()
        loss = policy_loss
        deviation = per_sample_mean((prediction.detach() - old_prediction).float() ** 2)
        metrics = {
            "policy_loss": policy_loss.detach(),
            "optimality": optimality.mean(),
            "old_deviation": deviation.mean(),
        }
        if self.kl_coef > 0:
            with context.reference():
                reference = policy.predict(conditioning, x_t, t)
            kl = per_sample_mean((prediction.float() - reference.float()) ** 2).mean()
            loss = loss + self.kl_coef * kl
            metrics["kl"] = kl.detach()
        metrics["loss"] = loss.detach()
        return ObjectiveLoss(loss, metrics)


__all__ = ["STEP_KEY", "DiffusionNFT"]
