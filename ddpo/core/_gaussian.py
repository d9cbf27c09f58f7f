"""The Gaussian policy step shared by the DDIM and flow-SDE steps: sample or take ``x_prev``,
and its log-density."""

import math
from typing import Literal

import torch
from torch import Tensor

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def draw_step(
    mean: Tensor,
    std: Tensor,
    *,
    noise: Tensor | None,
    prev_sample: Tensor | None,
    out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """``x_prev`` sampled as ``mean + std * noise`` (or the given ``prev_sample``), in
    ``out_dtype`` and, rounded through it, in the compute dtype of ``mean`` (see `gaussian_step`,
    which adds the density).

    Returns:
        ``(x_prev in out_dtype, x_prev in mean's dtype)``.
    """
    dtype = mean.dtype
    if noise is not None:
        x_prev_out = (mean + std * noise.to(dtype)).to(out_dtype)
        return x_prev_out, x_prev_out.to(dtype)
    assert prev_sample is not None
    return prev_sample.to(out_dtype), prev_sample.to(dtype)


def gaussian_step(
    mean: Tensor,
    std: Tensor,
    *,
    noise: Tensor | None,
    prev_sample: Tensor | None,
    out_dtype: torch.dtype,
    reduction: Literal["mean", "sum"],
) -> tuple[Tensor, Tensor]:
    """``x_prev`` (sampled as ``mean + std * noise``, or the given ``prev_sample``) in
    ``out_dtype``, and its log-density under ``N(mean, std^2 I)`` reduced over non-batch dims.

    A sample is rounded to ``out_dtype`` before its density is taken, so that re-scoring the
    returned ``x_prev`` reproduces it. The density is taken at a detached ``x_prev`` (the gradient
    reaches the mean only), through ``z = (x - mean) / std`` so that it stays finite while
    ``std`` is representable (``std^2`` underflows to 0 below 4e-23 in float32). Where ``std``
    is 0 the step is deterministic and has no density: its log-prob is defined as 0, a
    probability ratio of 1 without gradient (``torch.where`` on a safe ``std`` keeps NaN out of
    the backward pass).

    Args:
        mean: the step's mean, ``(batch, ...)``, in the compute dtype.
        std: its standard deviation, broadcastable per sample ``(batch, 1, ..., 1)``.
        noise, prev_sample: exactly one of them (checked by the caller).
        out_dtype: the caller's dtype for the returned ``x_prev``.
        reduction: ``"mean"`` or ``"sum"`` over the non-batch dims.

    Returns:
        ``(x_prev in out_dtype, log_prob (batch,))``.
    """
    x_prev_out, x_prev = draw_step(
        mean, std, noise=noise, prev_sample=prev_sample, out_dtype=out_dtype
    )
    deterministic = std == 0
    safe_std = torch.where(deterministic, torch.ones_like(std), std)
    z = (x_prev.detach() - mean) / safe_std
    log_density = -0.5 * z**2 - safe_std.log() - _LOG_SQRT_2PI
    log_density = torch.where(deterministic, torch.zeros_like(log_density), log_density)
    dims = tuple(range(1, log_density.ndim))
    log_prob = log_density.mean(dim=dims) if reduction == "mean" else log_density.sum(dims)
    return x_prev_out, log_prob
