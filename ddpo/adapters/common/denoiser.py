"""Argument checks of the boundary's model members (``predict``, ``add_noise``,
``training_target``, ``encode_images``), the same for every family: they run before any model
work and name the argument and its value."""

import math
import numbers
from typing import Any

import torch
from jaxtyping import Real
from torch import Tensor

from ddpo.core._checks import values_checkable
from ddpo.policy import Conditioning

_COMPLEX = (torch.complex32, torch.complex64, torch.complex128)


def check_guidance_scale(value: Any) -> float:
    """``guidance_scale`` as a float: a finite real number (at most 1: no classifier-free
    guidance, as the families sample).

    Raises:
        ValueError: naming ``guidance_scale`` and its value.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
    ):
        raise ValueError(f"guidance_scale must be a finite number, got guidance_scale={value!r}")
    return float(value)


def check_timesteps_shape(timesteps: Tensor, latents: Tensor, latents_name: str) -> None:
    """``timesteps`` is ``(batch,)`` for ``latents`` of ``(batch, ...)``, of a real dtype.

    Raises:
        TypeError: if ``timesteps`` is not a real-valued tensor.
        ValueError: naming ``timesteps``, its shape and the batch size.
    """
    if not isinstance(timesteps, Tensor) or timesteps.dtype in (torch.bool, *_COMPLEX):
        raise TypeError(
            f"timesteps must be a tensor of integers or floats, got {type(timesteps).__name__}"
            f"{' of dtype ' + str(timesteps.dtype) if isinstance(timesteps, Tensor) else ''}"
        )
    if timesteps.shape != latents.shape[:1]:
        raise ValueError(
            f"timesteps must have shape (batch,) = {tuple(latents.shape[:1])} for {latents_name} "
            f"of shape {tuple(latents.shape)}, got {tuple(timesteps.shape)}"
        )


def check_predict_args(
    conditioning: Conditioning,
    latents: Tensor,
    timesteps: Real[Tensor, " batch"],
    *,
    ndim: int = 4,
) -> None:
    """``latents`` is ``(batch, C, h, w)`` (``ndim=5``: a video family's ``(batch, C, frames, h,
    w)``), ``timesteps`` ``(batch,)`` and ``conditioning`` has ``batch`` rows.

    Raises:
        ValueError: naming the argument and the shapes.
    """
    if latents.ndim != ndim:
        axes = "channels, height, width" if ndim == 4 else "channels, frames, height, width"
        raise ValueError(f"latents must be (batch, {axes}), got shape {tuple(latents.shape)}")
    check_timesteps_shape(timesteps, latents, "latents")
    if len(conditioning) != latents.shape[0]:
        raise ValueError(
            f"conditioning has {len(conditioning)} rows for latents of batch {latents.shape[0]}"
        )


def check_noising_args(clean: Tensor, noise: Tensor, timesteps: Real[Tensor, " batch"]) -> None:
    """``noise`` has ``clean``'s shape and ``timesteps`` is ``(batch,)``.

    Raises:
        ValueError: naming the argument and the shapes.
    """
    if noise.shape != clean.shape:
        raise ValueError(
            f"noise must have clean's shape {tuple(clean.shape)}, got {tuple(noise.shape)}"
        )
    check_timesteps_shape(timesteps, clean, "clean")


def check_images(images: Any, *, multiple: int, why: str) -> None:
    """``images`` (of ``encode_images``) is a float tensor ``(batch, 3, H, W)`` with values in
    ``[0, 1]`` (read only where that is free, see :func:`ddpo.core._checks.values_checkable`)
    and sides that are multiples of ``multiple`` pixels.

    Raises:
        ValueError: naming ``images`` and its shape, dtype or offending values.
    """
    if not isinstance(images, Tensor) or not images.is_floating_point():
        kind = (
            f"a tensor of {images.dtype}" if isinstance(images, Tensor) else type(images).__name__
        )
        raise ValueError(f"images must be a float tensor (batch, 3, height, width), got {kind}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images must be (batch, 3, height, width), got shape {tuple(images.shape)}"
        )
    height, width = int(images.shape[2]), int(images.shape[3])
    if height % multiple or width % multiple:
        raise ValueError(
            f"images' sides must be multiples of {multiple} pixels ({why}), got {height}x{width}"
        )
    if values_checkable(images) and images.numel() > 0:
        low, high = float(images.min()), float(images.max())
        if not (low >= 0.0 and high <= 1.0):  # NaN fails too
            raise ValueError(f"images must have values in [0, 1], got values in [{low}, {high}]")


__all__ = [
    "check_guidance_scale",
    "check_images",
    "check_noising_args",
    "check_predict_args",
    "check_timesteps_shape",
]
