"""KL divergence between the current and a reference policy at one denoising step."""

from typing import Literal

import torch

from ddpo._typing import Latents, PerSample
from ddpo.core._broadcast import float_dtype, per_sample


def gaussian_kl(
    mean: Latents,
    ref_mean: Latents,
    std_dev: PerSample,
    *,
    reduction: Literal["mean", "sum"] = "mean",
) -> PerSample:
    """Per-sample KL between two isotropic Gaussians with the same std and different means.

    At a denoising step both the fine-tuned and the reference policy are
    ``N(mu, sigma_t^2 I)`` with the same ``sigma_t`` (the DDIM step of Black et al., 2023,
    arXiv 2305.13301, Sec. 4.3), so per element::

        KL(N(mu, s^2) || N(mu_ref, s^2)) = (mu - mu_ref)^2 / (2 s^2)

    reduced over channels, height and width. ``"mean"`` matches
    :func:`~ddpo.core.ddim_step_with_logprob`'s default ``log_prob_reduction``, ``"sum"`` is the
    KL of the whole latent. Used by KL-regularized variants (e.g. DPOK, Fan et al., 2023,
    arXiv 2305.16381). Gradients flow to both means; pass ``ref_mean`` computed under
    ``torch.no_grad()`` for a fixed reference.

    A deterministic step (``sigma_t = 0``: DDIM's last step when ``alpha_bar_prev = 1``, as with
    ``set_alpha_to_one=True``) has no Gaussian policy; its KL is 0 with zero gradient, as its
    log-probability is 0 in :func:`~ddpo.core.ddim_step_with_logprob` (the step is not trained).

    Args:
        mean: the current policy's mean ``(batch, channels, height, width)``.
        ref_mean: the reference policy's mean, same shape.
        std_dev: the shared standard deviation ``sigma_t`` per sample, ``(batch,)``, >= 0.
        reduction: ``"mean"`` or ``"sum"`` over the non-batch dimensions.

    Returns:
        The KL per sample, ``(batch,)``, in float32 (float64 if an input is float64).

    Raises:
        ValueError: if ``reduction`` is unknown.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got reduction={reduction!r}")
    dtype = float_dtype(mean, ref_mean, std_dev)
    # 1. Elementwise KL of two Gaussians sharing sigma_t (0 where the step is deterministic; the
    #    safe denominator keeps the unused branch finite, so no NaN reaches the gradient).
    sigma = per_sample(std_dev.to(dtype), mean)
    stochastic = sigma > 0
    safe_sigma = torch.where(stochastic, sigma, torch.ones_like(sigma))
    kl = (mean.to(dtype) - ref_mean.to(dtype)).square() / (2 * safe_sigma.square())
    kl = torch.where(stochastic, kl, torch.zeros_like(kl))
    # 2. Reduce over the non-batch dimensions.
    dims = tuple(range(1, kl.ndim))
    return kl.mean(dim=dims) if reduction == "mean" else kl.sum(dim=dims)


def flow_grpo_kl(mean: Latents, ref_mean: Latents, std_dev_t: PerSample) -> PerSample:
    """Per-sample KL penalty of Flow-GRPO: the squared mean gap over ``2 std_dev_t^2``.

    Flow-GRPO (Liu et al., 2025, arXiv 2505.05470: the KL term of its GRPO objective,
    ``kl_loss`` in its ``scripts/train_sd3.py``) penalises the policy's drift from the reference
    at an SDE step by::

        kl = mean_chw((mu - mu_ref)^2) / (2 std_dev_t^2)

    with ``std_dev_t`` what its step function returns as the standard deviation. For its ``"sde"``
    step (:func:`~ddpo.core.flow_sde_step_with_logprob`, whose ``std_dev`` is this ``std_t``) that
    is the diffusion coefficient ``noise_level * sqrt(sigma / (1 - sigma))`` *before* the step
    size: the step's true standard deviation is ``std_t * sqrt(-dt)``, ``dt = sigma_prev -
    sigma``, so this penalty is the exact Gaussian KL of :func:`gaussian_kl` times ``-dt``::

        flow_grpo_kl(mu, mu_ref, std_t) = (-dt) * gaussian_kl(mu, mu_ref, std_t * sqrt(-dt))

    (smaller than the exact KL by a factor that changes from step to step: 3.7 to 112 on
    SD3.5's 10-step schedule, see ``docs/flow_models.md``). Where a step function returns the
    step's true standard deviation (Flow-GRPO's ``"cps"`` step), the two coincide. The mean is
    taken over channels, height and width before the division, in Flow-GRPO's order. A zero
    ``std_dev_t`` (a deterministic step) gives 0 with zero gradient, as in :func:`gaussian_kl`.

    Args:
        mean: the current policy's step mean ``(batch, channels, height, width)``.
        ref_mean: the reference policy's step mean, same shape.
        std_dev_t: Flow-GRPO's ``std_dev_t`` per sample, ``(batch,)``, >= 0.

    Returns:
        The penalty per sample, ``(batch,)``, in float32 (float64 if an input is float64); its
        mean over the batch is Flow-GRPO's ``kl_loss``.
    """
    dtype = float_dtype(mean, ref_mean, std_dev_t)
    # 1. Mean squared gap of the two means over the non-batch dimensions.
    gap = (mean.to(dtype) - ref_mean.to(dtype)).square()
    mean_gap = gap.mean(dim=tuple(range(1, gap.ndim)))
    # 2. Over 2 std_dev_t^2 (0 where the step is deterministic; the safe denominator keeps the
    #    unused branch finite, so no NaN reaches the gradient).
    std = std_dev_t.to(dtype)
    stochastic = std > 0
    safe_std = torch.where(stochastic, std, torch.ones_like(std))
    kl = mean_gap / (2 * safe_std.square())
    return torch.where(stochastic, kl, torch.zeros_like(kl))
