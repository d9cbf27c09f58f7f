"""DiffusionNFT's negative-aware forward-process objective (Zheng et al., 2025, arXiv 2509.16117).

Each sample's reward becomes an optimality probability ``r`` in [0, 1]
(:func:`nft_optimality`). At a noisy point ``x_sigma`` of a clean sample ``x_0``, the current
velocity ``v_theta`` and the old (soft-updated) policy's ``v_old`` define two implicit policies,

    v+ = beta v_theta + (1 - beta) v_old        (positive)
    v- = (1 + beta) v_old - beta v_theta        (negative, the reflection of v+ about v_old)

and :func:`nft_loss` regresses both onto the sample: ``r`` weighs the positive one's error and
``1 - r`` the negative one's, each divided by ``beta``. As in the authors' ``train_nft_sd3.py``
(NVlabs/DiffusionNFT, read, not copied) the errors are measured on the implied clean latents
``x0_hat = x_sigma - sigma v`` and divided by their own detached mean absolute error (the
adaptive weighting; at least ``1e-5``).

Two properties pin it down (``tests/core/test_nft.py``). Where ``v_old = v_theta`` (the start
of an epoch) the loss is ``E(v_theta) / beta``, the adaptively weighted flow-matching error
``E`` over ``beta``; and its gradient in ``v_theta`` is ``(2 r - 1)`` times the gradient of
``E`` for every ``beta`` (the ``1 / beta`` cancels the ``beta`` of ``v+`` and ``v-``). A sample
of ``r = 1`` is pulled towards itself as in supervised flow matching, one of ``r = 0`` pushed
away, one of ``r = 1/2`` left alone.
"""

import torch
from jaxtyping import Float
from torch import Tensor

from ddpo._typing import Latents, PerSample
from ddpo.core._broadcast import per_sample

__all__ = [
    "NFT_DECAY_TYPES",
    "nft_clean_loss",
    "nft_loss",
    "nft_old_policy_decay",
    "nft_optimality",
]

NFT_DECAY_TYPES: dict[int, tuple[int, float, float]] = {
    0: (0, 0.0, 0.0),
    1: (0, 0.001, 0.5),
    2: (75, 0.0075, 0.999),
}
"""DiffusionNFT's old-policy schedules by ``decay_type``: ``(flat, rate, cap)`` (its
``train_nft_sd3.py``; 0: the old policy is the current one after each epoch)."""


def nft_old_policy_decay(optimizer_steps: int, *, decay_type: int = 1) -> float:
    """How much of itself DiffusionNFT's old policy keeps when it moves towards the trained
    weights after ``optimizer_steps`` optimizer steps: ``old = d old + (1 - d) theta`` with

        d = 0                                   for s < flat
        d = min((s - flat) rate, cap)           otherwise

    and ``(flat, rate, cap)`` of `NFT_DECAY_TYPES` (type 1, the paper's default: ``min(0.001 s,
    0.5)``; type 2, its OCR recipe: 0 for 75 steps, then ``0.0075`` per step up to ``0.999``).

    Args:
        optimizer_steps: ``s``, the optimizer steps taken so far, >= 0.
        decay_type: 0, 1 or 2.

    Returns:
        ``d`` in ``[0, 1)``.

    Raises:
        ValueError: for an unknown ``decay_type`` or a negative step count.
    """
    if decay_type not in NFT_DECAY_TYPES:
        raise ValueError(f"decay_type must be one of {sorted(NFT_DECAY_TYPES)}, got {decay_type!r}")
    if optimizer_steps < 0:
        raise ValueError(f"optimizer_steps must be >= 0, got {optimizer_steps}")
    flat, rate, cap = NFT_DECAY_TYPES[decay_type]
    if optimizer_steps < flat:
        return 0.0
    return min((optimizer_steps - flat) * rate, cap)


def nft_optimality(advantages: PerSample, *, adv_clip_max: float = 5.0) -> PerSample:
    """DiffusionNFT's optimality probability of each sample from its advantage.

    ``r = clip(clip(A, -c, c) / c / 2 + 1/2, 0, 1)`` with ``c = adv_clip_max``: 0 for an
    advantage of ``-c`` or less, 1/2 for 0, 1 for ``c`` or more (its ``train_nft_sd3.py``;
    ``train.adv_clip_max`` = 5).

    Args:
        advantages: each sample's advantage (its group-normalised reward), ``(batch,)``.
        adv_clip_max: ``c``, > 0.

    Returns:
        ``r`` in ``[0, 1]``, ``(batch,)``.

    Raises:
        ValueError: for ``adv_clip_max <= 0``.
    """
    if not adv_clip_max > 0:
        raise ValueError(f"adv_clip_max must be > 0, got {adv_clip_max}")
    clipped = advantages.clamp(-adv_clip_max, adv_clip_max)
    return (clipped / adv_clip_max / 2.0 + 0.5).clamp(0.0, 1.0)


def _weighted_error(x0_hat: Latents, x0: Latents, eps: float) -> Float[Tensor, " batch"]:
    dims = tuple(range(1, x0.ndim))
    with torch.no_grad():
        weight = (x0_hat.double() - x0.double()).abs().mean(dim=dims, keepdim=True).clamp(min=eps)
    return ((x0_hat - x0) ** 2 / weight.to(x0_hat.dtype)).mean(dim=dims)


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")


def _implicit_policies_loss(
    positive: Latents,
    negative: Latents,
    x0: Latents,
    optimality: PerSample,
    *,
    beta: float,
    eps: float,
) -> Float[Tensor, " batch"]:
    """``r E(positive) / beta + (1 - r) E(negative) / beta`` of the clean latents that the
    implicit positive and negative policies imply (see :func:`nft_clean_loss`)."""
    positive_error = _weighted_error(positive, x0, eps)
    negative_error = _weighted_error(negative, x0, eps)
    r = optimality.to(positive_error.dtype)
    return r * positive_error / beta + (1.0 - r) * negative_error / beta


def nft_loss(
    x0: Latents,
    x_t: Latents,
    sigma: PerSample,
    velocity: Latents,
    old_velocity: Latents,
    optimality: PerSample,
    *,
    beta: float,
    eps: float = 1e-5,
) -> Float[Tensor, " batch"]:
    """DiffusionNFT's per-sample loss at one noisy point.

    ``L = r E(v+) / beta + (1 - r) E(v-) / beta`` with ``v+ = beta v + (1 - beta) v_old``,
    ``v- = (1 + beta) v_old - beta v``, and ``E(u) = ||x0_hat(u) - x_0||^2 / w`` averaged over
    the latent's elements, ``x0_hat(u) = x_sigma - sigma u``, ``w`` the detached mean of
    ``|x0_hat(u) - x_0|`` (at least ``eps``) (Zheng et al., 2025, arXiv 2509.16117, Eq. 8 with
    the adaptive weighting of its code). The authors' training loss is the batch mean times
    ``adv_clip_max``; its KL term is separate.

    Args:
        x0: the clean latents the policy sampled, ``(batch, channels, height, width)``.
        x_t: ``x_sigma = (1 - sigma) x_0 + sigma eps`` (:func:`ddpo.core.flow_add_noise`).
        sigma: each sample's noise level in ``[0, 1]``, ``(batch,)``.
        velocity: the trained policy's velocity at ``x_sigma`` (with gradients).
        old_velocity: the old policy's velocity (detached here).
        optimality: ``r`` in ``[0, 1]`` (:func:`nft_optimality`), ``(batch,)``.
        beta: the implicit policies' step, > 0 (the paper's 1 or 0.1).
        eps: the smallest adaptive weight.

    Returns:
        The loss of each sample, ``(batch,)``.

    Raises:
        ValueError: for ``beta <= 0``.
    """
    _check_beta(beta)
    old = old_velocity.detach()
    positive = beta * velocity + (1.0 - beta) * old
    negative = (1.0 + beta) * old - beta * velocity
    s = per_sample(sigma, x_t)
    return _implicit_policies_loss(x_t - s * positive, x_t - s * negative, x0, optimality,
                                   beta=beta, eps=eps)  # fmt: skip


def nft_clean_loss(
    x0: Latents,
    clean_prediction: Latents,
    old_clean_prediction: Latents,
    optimality: PerSample,
    *,
    beta: float,
    eps: float = 1e-5,
) -> Float[Tensor, " batch"]:
    """DiffusionNFT's per-sample loss from the clean latents that the two predictions imply.

    The loss of :func:`nft_loss` for any denoiser whose clean estimate is affine in its output
    (epsilon, v or flow velocity at a fixed noisy point): mixing two outputs mixes their clean
    estimates with the same weights, so with ``c = x0_hat(current)`` and ``c_old =
    x0_hat(old)``::

        c+ = beta c + (1 - beta) c_old,     c- = (1 + beta) c_old - beta c
        L  = r E(c+) / beta + (1 - r) E(c-) / beta,   E(c) = ||c - x_0||^2 / w

    with ``w`` the detached mean of ``|c - x_0|`` (at least ``eps``). For a flow model
    ``x0_hat(v) = x_sigma - sigma v`` and this is :func:`nft_loss` (up to rounding); for
    epsilon or v-prediction ``x0_hat`` is `ddpo.core.vp_predicted_x0` (``docs/algorithms.md``
    derives it).

    Args:
        x0: the clean latents the policy sampled, ``(batch, channels, height, width)``.
        clean_prediction: ``x0_hat`` of the trained policy's output (with gradients).
        old_clean_prediction: ``x0_hat`` of the old policy's output (detached here).
        optimality: ``r`` in ``[0, 1]`` (:func:`nft_optimality`), ``(batch,)``.
        beta: the implicit policies' step, > 0.
        eps: the smallest adaptive weight.

    Returns:
        The loss of each sample, ``(batch,)``.

    Raises:
        ValueError: for ``beta <= 0``.
    """
    _check_beta(beta)
    old = old_clean_prediction.detach()
    positive = beta * clean_prediction + (1.0 - beta) * old
    negative = (1.0 + beta) * old - beta * clean_prediction
    return _implicit_policies_loss(positive, negative, x0, optimality, beta=beta, eps=eps)
