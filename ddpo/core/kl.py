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
