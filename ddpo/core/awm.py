"""Advantage Weighted Matching (Xue et al., 2025, arXiv 2509.25050): policy optimisation on the
flow-matching likelihood surrogate.

AWM replaces the log-probability of a sampler's step, which Flow-GRPO needs, by the negative
flow-matching error of the sampled clean latent at a random noise level: for a clean sample
``x_0``, noise ``eps`` and ``sigma``, with ``x_sigma = (1 - sigma) x_0 + sigma eps``,

    log p(x_0) ~ -w(sigma) ||v_theta(x_sigma) - (eps - x_0)||^2     (:func:`awm_log_likelihood`)

averaged over the latent's elements, ``w`` = 1 (its "Uniform"), ``sigma`` or ``sigma^2``. The
ratio of this surrogate under the trained and the sampling policy enters PPO's clipped loss
(:func:`ddpo.core.ppo_clip_loss`) with the sample's advantage, so the sampler can be any (the
ODE, a fast solver). Its regulariser is the velocities' squared distance to the reference's,
divided by ``2 std_t^2`` with Flow-GRPO's SDE scale ``std_t = a sqrt(sigma / (1 - sigma))``
("ELBO") or not ("Uniform") (:func:`awm_kl_penalty`). As in the authors'
``train_sd3_awm.py`` (scxue/advantage_weighted_matching, read, not copied).

On-policy (ratio 1) the policy term's gradient is the advantage times the gradient of the
weighted matching loss: a sample of advantage 1 trains as in supervised flow matching, one of
-1 is unlearnt (``tests/core/test_awm.py``).
"""

from typing import Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor

from ddpo._typing import Latents, PerSample, no_type_check

__all__ = ["AWMKLWeighting", "AWMWeighting", "awm_kl_penalty", "awm_log_likelihood"]

AWMWeighting = Literal["uniform", "sigma", "sigma_squared", "ghuber"]
"""The surrogate's weighting: ``w(sigma)`` = 1, ``sigma`` or ``sigma^2`` (its "Uniform", "t",
"t**2"), or its generalised Huber ``-sigma ((e + 1e-10)^p - 1e-10^p) / p`` of the error ``e``
("ghuber", the power ``p`` 0.25 in its GenEval recipe)."""

AWMKLWeighting = Literal["elbo", "uniform"]
"""The regulariser's weight: ``1 / (2 std_t^2)`` ("ELBO") or 1 ("Uniform")."""


@no_type_check  # it checks ``weighting`` itself, naming the value
def awm_log_likelihood(
    velocity: Latents,
    target: Latents,
    sigma: PerSample,
    *,
    weighting: AWMWeighting = "uniform",
    ghuber_power: float = 0.25,
) -> Float[Tensor, " batch"]:
    """AWM's log-likelihood surrogate of each sample: ``-w(sigma) e`` with ``e = mean((v -
    target)^2)``, or ``-sigma ((e + 1e-10)^p - 1e-10^p) / p`` for ``"ghuber"``.

    Args:
        velocity: the policy's velocity at ``x_sigma``, ``(batch, channels, height, width)``.
        target: the flow-matching target ``eps - x_0`` (:func:`ddpo.core.flow_velocity_target`).
        sigma: each sample's noise level, ``(batch,)``.
        weighting: ``w``: ``"uniform"`` (1, the paper's default), ``"sigma"`` or
            ``"sigma_squared"``; or ``"ghuber"``.
        ghuber_power: ``p`` of ``"ghuber"``, > 0.

    Returns:
        The surrogate, ``(batch,)``, in float64 as the authors compute it.

    Raises:
        ValueError: for an unknown ``weighting`` or ``ghuber_power <= 0``.
    """
    if weighting not in get_args(AWMWeighting):
        raise ValueError(f"weighting must be one of {get_args(AWMWeighting)}, got {weighting!r}")
    if not ghuber_power > 0:
        raise ValueError(f"ghuber_power must be > 0, got {ghuber_power}")
    error = (velocity.double() - target.double()).pow(2).mean(dim=tuple(range(1, velocity.ndim)))
    if weighting == "uniform":
        return -error
    s = sigma.double()
    if weighting == "ghuber":
        floor = 1e-10**ghuber_power
        return -((error + 1e-10).pow(ghuber_power) - floor) * s / ghuber_power
    return -(s if weighting == "sigma" else s * s) * error


@no_type_check  # it checks ``weighting`` and ``noise_level`` itself
def awm_kl_penalty(
    velocity: Latents,
    reference_velocity: Latents,
    sigma: PerSample,
    *,
    noise_level: float = 0.7,
    weighting: AWMKLWeighting = "elbo",
) -> Float[Tensor, " batch"]:
    """AWM's regulariser of each sample: ``mean((v - v_ref)^2)``, divided by ``2 std_t^2`` for
    ``"elbo"``, with ``std_t = noise_level sqrt(sigma / (1 - min(sigma, 0.99)))``.

    Args:
        velocity: the trained policy's velocity, with gradients.
        reference_velocity: the reference's at the same point (detached here).
        sigma: each sample's noise level in ``(0, 1]``, ``(batch,)``.
        noise_level: Flow-GRPO's ``a`` (0.7).
        weighting: ``"elbo"`` (the paper's) or ``"uniform"``.

    Returns:
        The penalty, ``(batch,)``.

    Raises:
        ValueError: for an unknown ``weighting`` or ``noise_level <= 0``.
    """
    if weighting not in get_args(AWMKLWeighting):
        raise ValueError(f"weighting must be one of {get_args(AWMKLWeighting)}, got {weighting!r}")
    if not noise_level > 0:
        raise ValueError(f"noise_level must be > 0, got {noise_level}")
    distance = (velocity - reference_velocity.detach()).pow(2)
    distance = distance.mean(dim=tuple(range(1, velocity.ndim)))
    if weighting == "uniform":
        return distance
    std = noise_level * torch.sqrt(sigma / (1 - sigma.clamp(0, 0.99)))
    return distance / (2 * std.to(distance.dtype) ** 2)
