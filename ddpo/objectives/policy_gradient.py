"""DDPO's objective: PPO's clipped surrogate (or the score function) on re-scored transitions,
with a KL penalty to the reference policy (Black et al. 2023, Algorithm 1; Flow-GRPO's
``policy_loss + beta * kl_loss``)."""

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from ddpo.core import flow_grpo_kl, gaussian_kl, ppo_clip_loss, score_function_loss
from ddpo.objectives.base import ON_POLICY_KEY, ObjectiveContext, ObjectiveLoss, ObjectiveNeeds
from ddpo.policy import StepScore
from ddpo.samples import Trajectories


@dataclass(frozen=True)
class PolicyGradient:
    """PPO (or the score function) on the stored transitions, plus ``kl_coef`` times a KL
    penalty; one term per kept transition of each sample.

    Attributes:
        loss_type: ``"ppo"``, the clipped surrogate at ``clip_range``; ``"score_function"``,
            REINFORCE (``-advantage * log_prob``).
        clip_range: PPO's clip range, or ``(low, high)`` for an asymmetric one.
        kl_coef: the KL penalty's weight (0: none, and no reference pass).
        kl_convention: ``"exact"``, `ddpo.core.gaussian_kl` with the step's standard deviation;
            ``"flow_grpo"``, `ddpo.core.flow_grpo_kl` with the score's ``flow_grpo_std_dev``.
        cfg: re-score with classifier-free guidance's unconditional pass (TRL's ``train_cfg``).
    """

    loss_type: Literal["ppo", "score_function"] = "ppo"
    clip_range: float | tuple[float, float] = 1e-4
    kl_coef: float = 0.0
    kl_convention: Literal["exact", "flow_grpo"] = "exact"
    cfg: bool = True

    @property
    def needs(self) -> ObjectiveNeeds:
        """The recorded transitions (with their log-probs when sampled)."""
        return ObjectiveNeeds(transitions=True)

    def terms(self, kept_transitions: int) -> int:
        """One backward pass per kept transition."""
        return kept_transitions

    def loss(self, context: ObjectiveContext, batch: Trajectories, term: int) -> ObjectiveLoss:
        """Re-score the ``term``-th kept transition of each sample through the trained
        denoiser (and, with ``kl_coef > 0``, through the reference policy) and return
        `transition_loss`, with the on-policy diagnostic."""
        if batch.advantages is None:
            raise ValueError("PolicyGradient.loss needs the batch's advantages")
        policy, j = context.policy, term

        def score(**kwargs: object) -> StepScore:
            return policy.score(
                batch.conditioning,
                batch.latents[:, j],
                batch.next_latents[:, j],
                batch.schedule[:, j],
                cfg=self.cfg,
                **kwargs,  # type: ignore[arg-type]
            )

        with context.autocast():
            out = score(denoiser=context.denoiser)
        old_log_prob = batch.log_probs[:, j]
        reference = None
        if self.kl_coef > 0:
            with context.reference():
                reference = score()
        loss, metrics = self.transition_loss(out, old_log_prob, batch.advantages, reference)
        metrics[ON_POLICY_KEY] = (out.log_prob.float().detach() - old_log_prob).abs().max()
        return ObjectiveLoss(loss, metrics)

    def transition_loss(
        self,
        score: StepScore,
        old_log_prob: Tensor,
        advantages: Tensor,
        reference: StepScore | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of one trained transition per sample and its diagnostics (no model call).

        Args:
            score: the policy's re-scored transitions (gradients flow through it).
            old_log_prob: the log-probs when sampled, ``(batch,)``.
            advantages: the (clipped) advantages, ``(batch,)``.
            reference: the reference policy's score of the same transitions (``kl_coef > 0``).

        Returns:
            The loss (0-d, with gradients) and detached diagnostics: ``approx_kl``,
            ``clip_fraction``, ``kl`` (with ``kl_coef > 0``) and ``loss``.

        Raises:
            ValueError: ``kl_coef > 0`` without ``reference``, or ``kl_convention="flow_grpo"``
                with a score that has no ``flow_grpo_std_dev``.
        """
        log_prob = score.log_prob.float()
        ppo = ppo_clip_loss(log_prob, old_log_prob, advantages, clip_range=self.clip_range)
        loss = ppo.loss if self.loss_type == "ppo" else score_function_loss(log_prob, advantages)
        # Diagnostics stay on the device as detached tensors; read once per optimizer step.
        metrics = {"approx_kl": ppo.approx_kl, "clip_fraction": ppo.clip_fraction}
        if self.kl_coef > 0:
            if reference is None:
                raise ValueError(f"DDPOConfig.kl_coef={self.kl_coef!r} needs the reference's score")
            mean, ref_mean = score.mean.float(), reference.mean.float()
            if self.kl_convention == "flow_grpo":
                std_dev_t = getattr(score, "flow_grpo_std_dev", None)
                if std_dev_t is None:
                    raise ValueError(
                        "DDPOConfig.kl_convention='flow_grpo' needs the policy's score() result "
                        f"to carry flow_grpo_std_dev; {type(score).__name__} has none"
                    )
                kl = flow_grpo_kl(mean, ref_mean, std_dev_t.float()).mean()
            else:
                kl = gaussian_kl(mean, ref_mean, score.std_dev.float()).mean()
            loss = loss + self.kl_coef * kl
            metrics["kl"] = kl.detach()
        metrics["loss"] = loss.detach()
        return loss, metrics


__all__ = ["PolicyGradient"]
