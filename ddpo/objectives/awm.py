"""Advantage Weighted Matching (Xue et al., 2025, arXiv 2509.25050): PPO's clipped ratio of
the flow-matching (or denoising) likelihood surrogate, as the authors' ``train_sd3_awm.py``
trains it (scxue/advantage_weighted_matching; read, not copied).

Per epoch, before any update and with the weights that sampled, each sample gets
``num_train_timesteps`` of the sampler's timesteps (one per stratum of its steps after the
first, the authors' ``discrete_wo_init``), noise for each, and its surrogate there
(`ddpo.core.awm_log_likelihood` of the denoiser's error against the training target); these are
the "old" log-likelihoods. Each term then re-computes the surrogate with the trained weights at
the same point and takes PPO's clipped loss of the ratio with the sample's advantage
(`ddpo.core.ppo_clip_loss`), plus ``kl_coef`` times `ddpo.core.awm_kl_penalty` against the
reference. Until the first update the ratio is 1: the trainer's on-policy check reads it.
"""

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ddpo.core import (
    AWMKLWeighting,
    AWMWeighting,
    awm_kl_penalty,
    awm_log_likelihood,
    ppo_clip_loss,
)
from ddpo.objectives._forward import SamplingTimesteps, draw_noise
from ddpo.objectives.base import ON_POLICY_KEY, ObjectiveContext, ObjectiveLoss, ObjectiveNeeds
from ddpo.policy import Conditioning, DiffusionPolicy
from ddpo.samples import Trajectories

STEP_KEY, NOISE_KEY, OLD_KEY = "awm_step", "awm_noise", "awm_old_log_likelihood"
"""``Trajectories.extras``: each sample's sampler-step indices ``(batch, T)``, noise
``(batch, T, ...)`` and old surrogate ``(batch, T)`` (float64)."""


def stratified_steps(
    num_steps: int, count: int, num_samples: int, generator: torch.Generator, *, first: int = 1
) -> Tensor:
    """``count`` step indices per sample, one drawn uniformly from each of ``count`` equal
    strata of ``[first, num_steps)`` (boundaries rounded down, as the authors'), then shuffled
    per sample; ``(num_samples, count)`` int64."""
    bounds = torch.linspace(first, num_steps, count + 1).long()
    low, high = bounds[:-1], bounds[1:]
    u = torch.rand(num_samples, count, generator=generator)
    steps = low + (u * (high - low)).long()
    order = torch.stack([torch.randperm(count, generator=generator) for _ in range(num_samples)])
    return torch.gather(steps, 1, order) if num_samples else steps


@dataclass
class AdvantageWeightedMatching:
    """AWM's objective for `ddpo.trainer.DDPOTrainer` (see the module docstring).

    Attributes:
        num_steps: the sampler's steps (``DDPOConfig.sample_num_steps``).
        num_train_timesteps: timesteps per sample, one term each (the authors'
            ``train.train_timesteps``, 6 in their GenEval recipe); at most ``num_steps - 1``.
        clip_range: PPO's clip range (the recipe's 1.0), or ``(low, high)``.
        weighting: the surrogate's weighting (`ddpo.core.AWMWeighting`; the paper's
            ``"uniform"``, the recipe's ``"ghuber"``).
        ghuber_power: the ``"ghuber"`` power (0.25).
        kl_coef: the regulariser's weight (the recipe's ``train.beta`` 0.001).
        kl_weighting: ``"uniform"`` (the recipe's) or ``"elbo"``.
        noise_level: the ``"elbo"`` weighting's SDE noise level (0.7).
    """

    num_steps: int
    num_train_timesteps: int
    clip_range: float | tuple[float, float] = 1.0
    weighting: AWMWeighting = "uniform"
    ghuber_power: float = 0.25
    kl_coef: float = 0.0
    kl_weighting: AWMKLWeighting = "uniform"
    noise_level: float = 0.7
    _timesteps: SamplingTimesteps = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._timesteps = SamplingTimesteps(self.num_steps, "AWM")
        if not 0 < self.num_train_timesteps < self.num_steps:
            raise ValueError(
                f"AWM trains at 1 to sample_num_steps - 1 = {self.num_steps - 1} timesteps per "
                f"sample (the steps after the first), got {self.num_train_timesteps}"
            )

    @property
    def needs(self) -> ObjectiveNeeds:
        """The clean final latents; no transitions."""
        return ObjectiveNeeds(transitions=False, final=True)

    def terms(self, kept_transitions: int) -> int:
        """One backward pass per trained timestep."""
        return self.num_train_timesteps

    def check_policy(self, policy: DiffusionPolicy) -> None:
        """TypeError unless the policy has ``sampling_timesteps``; ValueError for the
        sigma-weighted surrogates or the ELBO regulariser on a policy that is not a flow."""
        self._timesteps(policy)
        flow_only = self.weighting != "uniform" or self.kl_weighting == "elbo"
        if flow_only and policy.prediction_type != "flow":
            raise ValueError(
                f"AWM's awm_weighting={self.weighting!r} and awm_kl_weighting="
                f"{self.kl_weighting!r} weigh by the flow's noise level sigma; the policy "
                f"predicts {policy.prediction_type!r}: use 'uniform' for both"
            )

    def _point(
        self, policy: DiffusionPolicy, x0: Tensor, noise: Tensor, steps: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``t``, ``sigma``, the noisy latents and the training target of each sample."""
        t = self._timesteps(policy)[steps.cpu()].to(x0.device)
        x_t = policy.add_noise(x0, noise, t)
        target = policy.training_target(x0, noise, t)
        return t, t / policy.num_train_timesteps, x_t, target

    def _log_likelihood(
        self,
        policy: DiffusionPolicy,
        conditioning: Conditioning,
        x0: Tensor,
        noise: Tensor,
        steps: Tensor,
        **predict_kwargs: object,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        t, sigma, x_t, target = self._point(policy, x0, noise, steps)
        velocity = policy.predict(conditioning, x_t, t, **predict_kwargs)  # type: ignore[arg-type]
        log_likelihood = awm_log_likelihood(
            velocity.float(),
            target.float(),
            sigma,
            weighting=self.weighting,
            ghuber_power=self.ghuber_power,
        )
        return log_likelihood, velocity, x_t, t

    @torch.no_grad()
    def prepare_epoch(self, context: ObjectiveContext, samples: Trajectories) -> Trajectories:
        """Draw each sample's timesteps and noise; compute the old surrogate with the weights
        that sampled, in micro-batches of the training size."""
        if samples.final_latents is None:
            raise ValueError("AWM needs the samples' final latents")
        x0_all = samples.final_latents
        n, count = len(samples), self.num_train_timesteps
        generator = context.generator
        steps = stratified_steps(self.num_steps, count, n, generator)
        noise = torch.stack([draw_noise(x0_all, generator) for _ in range(count)], dim=1)
        old = torch.empty(n, count, dtype=torch.float64, device=x0_all.device)
        size = max(1, context.micro_batch_size)
        for start in range(0, n, size):
            rows = slice(start, start + size)
            conditioning = samples.conditioning.select(rows)
            for j in range(count):
                with context.autocast():
                    ll, _, _, _ = self._log_likelihood(
                        context.policy, conditioning, x0_all[rows], noise[rows, j], steps[rows, j]
                    )
                old[rows, j] = ll
        device = x0_all.device
        samples.extras.update({STEP_KEY: steps.to(device), NOISE_KEY: noise, OLD_KEY: old})
        return samples

    def loss(self, context: ObjectiveContext, batch: Trajectories, term: int) -> ObjectiveLoss:
        """PPO's clipped loss of the surrogate's ratio at the ``term``-th timestep of each
        sample, plus the regulariser; the on-policy diagnostic."""
        if batch.advantages is None or batch.final_latents is None:
            raise ValueError("AWM.loss needs the batch's advantages and final latents")
        policy, x0 = context.policy, batch.final_latents
        noise, steps = batch.extras[NOISE_KEY][:, term], batch.extras[STEP_KEY][:, term]
        with context.autocast():
            log_likelihood, velocity, x_t, t = self._log_likelihood(
                policy, batch.conditioning, x0, noise, steps, denoiser=context.denoiser
            )
        old = batch.extras[OLD_KEY][:, term]
        ppo = ppo_clip_loss(
            log_likelihood, old, batch.advantages.double(), clip_range=self.clip_range
        )
        loss = ppo.loss.float()
        metrics = {
            "policy_loss": loss.detach(),
            "approx_kl": ppo.approx_kl.float(),
            "clip_fraction": ppo.clip_fraction.float(),
            ON_POLICY_KEY: (log_likelihood.detach() - old).abs().max().float(),
        }
        if self.kl_coef > 0:
            with context.reference():
                reference = policy.predict(batch.conditioning, x_t, t)
            kl = awm_kl_penalty(
                velocity.float(),
                reference.float(),
                t / policy.num_train_timesteps,
                noise_level=self.noise_level,
                weighting=self.kl_weighting,
            ).mean()
            loss = loss + self.kl_coef * kl
            metrics["kl"] = kl.detach()
        metrics["loss"] = loss.detach()
        return ObjectiveLoss(loss, metrics)


__all__ = ["NOISE_KEY", "OLD_KEY", "STEP_KEY", "AdvantageWeightedMatching", "stratified_steps"]
