"""The flow-matching families' denoiser as a model (SD3/SD3.5, FLUX.1): the forward process and
the training target of rectified flow at the scheduler's timesteps (through
:mod:`ddpo.core.noising`), and final latents decoded into images.

These are the boundary members ``num_train_timesteps``, ``add_noise``, ``training_target`` and
``decode`` of `ddpo.policy.DiffusionPolicy` (``prediction_type`` is ``"flow"``). Timesteps are in
the units of diffusers' ``FlowMatchEulerDiscreteScheduler``, ``sigma * num_train_timesteps`` (the
transformer's input), so ``sigma = timesteps / num_train_timesteps``.
"""

from typing import Any, cast

import torch
from diffusers.image_processor import VaeImageProcessor
from jaxtyping import Float, Real
from torch import Tensor

from ddpo._typing import Latents, PerSample
from ddpo.adapters.common.denoiser import check_images, check_noising_args
from ddpo.core._checks import values_checkable
from ddpo.core.noising import flow_add_noise, flow_velocity_target


def flow_num_train_timesteps(scheduler: Any) -> int:
    """The scheduler config's ``num_train_timesteps`` (1000 for SD3 and FLUX.1)."""
    return int(scheduler.config.num_train_timesteps)


def flow_model_timesteps(scheduler: Any, timesteps: Real[Tensor, " batch"]) -> PerSample:
    """``timesteps`` as floats (integers become float32), checked to lie in ``[0,
    num_train_timesteps]`` (values are read only where that is free, see
    :func:`ddpo.core._checks.values_checkable`).

    Raises:
        TypeError: if ``timesteps`` is neither an integer nor a float tensor.
        ValueError: naming ``timesteps`` and the offending values.
    """
    if not isinstance(timesteps, Tensor) or timesteps.dtype == torch.bool or timesteps.is_complex():
        raise TypeError(f"timesteps must be an integer or float tensor, got {timesteps!r}")
    t = timesteps if timesteps.is_floating_point() else timesteps.to(torch.float32)
    num_train = flow_num_train_timesteps(scheduler)
    if values_checkable(t) and t.numel() > 0:
        bad = ~((t >= 0) & (t <= num_train))
        if bool(bad.any()):
            raise ValueError(
                f"timesteps must lie in [0, {num_train}] (sigma * num_train_timesteps), got "
                f"timesteps={t[bad].tolist()}"
            )
    return t


def flow_sigmas(scheduler: Any, timesteps: Real[Tensor, " batch"]) -> PerSample:
    """``sigma = timesteps / num_train_timesteps``, each in ``[0, 1]``.

    Raises:
        TypeError, ValueError: see :func:`flow_model_timesteps`.
    """
    return flow_model_timesteps(scheduler, timesteps) / flow_num_train_timesteps(scheduler)


def flow_add_noise_at(
    scheduler: Any, clean: Latents, noise: Latents, timesteps: Real[Tensor, " batch"]
) -> Latents:
    """``x = (1 - sigma) x_0 + sigma eps`` at ``sigma = timesteps / num_train_timesteps``
    (:func:`ddpo.core.noising.flow_add_noise`; diffusers' ``FlowMatchEulerDiscreteScheduler.
    scale_noise``).

    Raises:
        ValueError: on shapes that disagree or timesteps outside ``[0, num_train_timesteps]``.
    """
    check_noising_args(clean, noise, timesteps)
    return flow_add_noise(clean, noise, flow_sigmas(scheduler, timesteps))


def flow_training_target(
    scheduler: Any, clean: Latents, noise: Latents, timesteps: Real[Tensor, " batch"]
) -> Latents:
    """The velocity ``eps - x_0`` the transformer regresses to at every timestep
    (:func:`ddpo.core.noising.flow_velocity_target`).

    Raises:
        ValueError: on shapes that disagree or timesteps outside ``[0, num_train_timesteps]``
            (checked, although the target does not depend on them).
    """
    check_noising_args(clean, noise, timesteps)
    flow_model_timesteps(scheduler, timesteps)
    return flow_velocity_target(clean, noise)


def flow_predicted_clean(
    scheduler: Any, latents: Latents, velocity: Latents, timesteps: Real[Tensor, " batch"]
) -> Latents:
    """The clean latents a velocity at noisy ``latents`` implies: ``x_sigma - sigma v``.

    Raises:
        ValueError: on shapes that disagree or timesteps outside ``[0, num_train_timesteps]``.
    """
    check_noising_args(latents, velocity, timesteps)
    sigma = flow_sigmas(scheduler, timesteps).to(latents.dtype)
    return latents - sigma.reshape(-1, *([1] * (latents.ndim - 1))) * velocity


def flow_vae_decode(
    vae: Any, latents: Latents
) -> Float[Tensor, "batch 3 image_height image_width"]:
    """The VAE's decoding of final (unpacked) latents as diffusers' SD3/FLUX pipelines decode:
    ``latents / scaling_factor + shift_factor``, in the VAE's dtype, differentiable."""
    config = vae.config
    shift = getattr(config, "shift_factor", None) or 0.0
    scaled = latents / config.scaling_factor + shift
    decoded: Tensor = vae.decode(scaled.to(vae.dtype), return_dict=False)[0]
    return decoded


def flow_vae_encode(vae: Any, images: Float[Tensor, "batch 3 image_height image_width"]) -> Latents:
    """The (unpacked) latents of images in ``[0, 1]`` that :func:`flow_vae_decode` takes back,
    as diffusers' SD3/FLUX training scripts encode: the VAE's posterior mean ``z`` of ``2 x -
    1`` (deterministic), ``(z - shift_factor) * scaling_factor``; float32, on the VAE's device.

    Raises:
        ValueError: naming ``images`` if it is not ``(batch, 3, H, W)`` in ``[0, 1]`` with sides
            that are multiples of the VAE's factor.
    """
    config = vae.config
    factor = int(2 ** (len(config.block_out_channels) - 1))
    check_images(images, multiple=factor, why=f"the VAE's factor {factor}")
    pixels = (images * 2 - 1).to(device=vae.device, dtype=vae.dtype)
    z = vae.encode(pixels, return_dict=False)[0].mean.to(torch.float32)
    shift = getattr(config, "shift_factor", None) or 0.0
    latents: Tensor = (z - shift) * config.scaling_factor
    return latents


def flow_decode_images(
    vae: Any, latents: Latents, image_processor: VaeImageProcessor
) -> Float[Tensor, "batch 3 image_height image_width"]:
    """Final latents as images in ``[0, 1]``, float32, differentiable: :func:`flow_vae_decode`,
    then the pipeline's ``image_processor.postprocess(..., output_type="pt")``."""
    decoded = flow_vae_decode(vae, latents)
    images = cast(Tensor, image_processor.postprocess(decoded, output_type="pt"))
    return images.to(torch.float32)


def vae_channel_stats(vae: Any, like: Tensor) -> tuple[Tensor, Tensor]:
    """The VAE config's per-channel ``latents_mean`` and ``latents_std`` (the video VAEs of
    Qwen-Image and Wan2.1), shaped ``(1, z_dim, 1, ...)`` to ``like``'s rank, on its device and
    in its dtype, made as their stock pipelines make them."""
    config = vae.config
    shape = (1, int(config.z_dim), *([1] * (like.ndim - 2)))
    mean = torch.tensor(config.latents_mean).view(shape).to(like.device, like.dtype)
    std = torch.tensor(config.latents_std).view(shape).to(like.device, like.dtype)
    return mean, std


__all__ = [
    "flow_add_noise_at",
    "flow_decode_images",
    "flow_model_timesteps",
    "flow_num_train_timesteps",
    "flow_sigmas",
    "flow_training_target",
    "flow_vae_decode",
    "flow_vae_encode",
    "vae_channel_stats",
]
