"""Policy-gradient losses of DDPO: the PPO clipped surrogate (DDPO_IS) and the score function
(DDPO_SF)."""

import math
from typing import NamedTuple

import torch

from ddpo._typing import AnyBatch, Scalar
from ddpo.core._broadcast import float_dtype


class PPOLossOutput(NamedTuple):
    """Result of :func:`ppo_clip_loss`.

    Attributes:
        loss: the clipped surrogate loss to minimise, a 0-d tensor with gradients.
        approx_kl: ``0.5 * mean((log_prob - old_log_prob)^2)``, detached.
        clip_fraction: fraction of entries whose ratio lies outside the clip range, detached.
    """

    loss: Scalar
    approx_kl: Scalar
    clip_fraction: Scalar


def _clip_bounds(clip_range: object) -> tuple[float, float]:
    """Validate ``clip_range`` and return ``(low, high)``."""
    bounds = tuple(clip_range) if isinstance(clip_range, tuple | list) else (clip_range,) * 2
    if len(bounds) != 2 or not all(
        isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in bounds
    ):
        raise ValueError(
            "clip_range must be a float > 0 or a (low, high) pair of floats > 0, "
            f"got clip_range={clip_range!r}"
        )
    return float(bounds[0]), float(bounds[1])


def ppo_clip_loss(
    log_prob: AnyBatch,
    old_log_prob: AnyBatch,
    advantages: AnyBatch,
    *,
    clip_range: float | tuple[float, float] = 1e-4,
) -> PPOLossOutput:
    """PPO's clipped surrogate loss on per-sample (or per-sample-and-step) log-probabilities.

    The DDPO_IS estimator (Black et al., 2023, arXiv 2305.13301, Sec. 4.3) with PPO's clipping
    (Schulman et al., 2017, Eq. 7), written as a loss to minimise::

        ratio         = exp(log_prob - old_log_prob)
        loss          = mean(max(-A * ratio, -A * clamp(ratio, 1 - low, 1 + high)))
        approx_kl     = 0.5 * mean((log_prob - old_log_prob)^2)
        clip_fraction = mean(ratio < 1 - low  or  ratio > 1 + high)

    With a float ``clip_range`` ``low = high = clip_range`` and ``clip_fraction`` is
    ``mean(|ratio - 1| > clip_range)``, the reference's ``clipfrac``. The reference clips at
    ``1e-4`` because its log-probs are means over latent elements (see
    :func:`~ddpo.core.ddim_step_with_logprob`). Advantages are used as given; clip them first with
    :func:`~ddpo.core.clip_advantages` as the reference does.

    Args:
        log_prob: log-probabilities under the current policy, any shape ``(*batch)``; gradients
            flow through it.
        old_log_prob: log-probabilities under the sampling policy, same shape.
        advantages: advantages, same shape.
        clip_range: ``epsilon`` (> 0), or a ``(low, high)`` pair for asymmetric clipping.

    Returns:
        :class:`PPOLossOutput` ``(loss, approx_kl, clip_fraction)``, 0-d tensors in float32, or
        float64 if an input is float64; the two diagnostics are detached.

    Raises:
        ValueError: if ``clip_range`` (or either of its bounds) is not a finite float > 0.
    """
    low, high = _clip_bounds(clip_range)
    dtype = float_dtype(log_prob, old_log_prob, advantages)
    log_ratio = log_prob.to(dtype) - old_log_prob.to(dtype)
    adv = advantages.to(dtype)

    # 1. Importance ratio pi_theta / pi_old of each transition.
    ratio = torch.exp(log_ratio)

    # 2. Pessimistic (max of negatives) of the unclipped and clipped surrogates.
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - low, 1.0 + high)
    loss = torch.maximum(unclipped, clipped).mean()

    # 3. Diagnostics beside the loss, detached.
    with torch.no_grad():
        approx_kl = 0.5 * (log_ratio**2).mean()
        outside = (ratio < 1.0 - low) | (ratio > 1.0 + high)
        clip_fraction = outside.to(dtype).mean()
    return PPOLossOutput(loss=loss, approx_kl=approx_kl, clip_fraction=clip_fraction)


def score_function_loss(log_prob: AnyBatch, advantages: AnyBatch) -> Scalar:
    """The score-function (REINFORCE) loss of DDPO_SF, ``-mean(A * log_prob)``.

    Its gradient is the DDPO_SF estimator (Black et al., 2023, arXiv 2305.13301, Sec. 4.3),
    ``-E[sum_t grad log p_theta(x_{t-1} | x_t) * A]``, averaged over the batch (and steps).

    Args:
        log_prob: log-probabilities under the current policy, any shape ``(*batch)``.
        advantages: advantages, same shape (normally without gradients).

    Returns:
        The loss, a 0-d tensor in float32, or float64 if an input is float64.
    """
    dtype = float_dtype(log_prob, advantages)
    return -(advantages.to(dtype) * log_prob.to(dtype)).mean()
