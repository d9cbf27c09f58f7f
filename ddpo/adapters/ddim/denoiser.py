"""The DDIM families' denoiser as a model (Stable Diffusion 1.x/2.x, SDXL): what it predicts, the
forward process and its training target from the scheduler's config and ``alphas_cumprod``
(through :mod:`ddpo.core.noising`), and final latents decoded into images.

These are the boundary members ``prediction_type``, ``num_train_timesteps``, ``add_noise``,
``training_target`` and ``decode`` of `ddpo.policy.DiffusionPolicy`, which objectives other than
policy gradients use (DiffusionNFT, AWM, Diffusion-DPO, reward backpropagation). Timesteps are
the scheduler's integer training timesteps ``0 .. num_train_timesteps - 1`` (given as integers or
as integer-valued floats).
"""

from typing import Any, Literal, cast

import torch
from diffusers.image_processor import VaeImageProcessor
from jaxtyping import Float, Int, Real
from torch import Tensor, nn

from ddpo._typing import Latents
from ddpo.adapters.common.denoiser import check_images, check_noising_args
from ddpo.adapters.ddim.scheduling import _tables_on
from ddpo.core._checks import values_checkable
from ddpo.core.noising import alpha_bar_at, vp_add_noise, vp_predicted_x0, vp_training_target

DDIMPredictionType = Literal["epsilon", "v_prediction"]
"""What a DDIM family's denoiser predicts (a ``"sample"`` model has no boundary
``prediction_type``: `ddpo.policy.PredictionType` does not include it)."""


def ddim_prediction_type(scheduler: Any) -> DDIMPredictionType:
    """The scheduler config's ``prediction_type`` (``"epsilon"`` where it has none).

    Raises:
        ValueError: naming ``prediction_type`` and its value if it is neither ``"epsilon"`` nor
            ``"v_prediction"`` (e.g. ``"sample"``).
    """
    value = scheduler.config.get("prediction_type", "epsilon")
    if value not in ("epsilon", "v_prediction"):
        raise ValueError(
            "the scheduler's prediction_type must be 'epsilon' or 'v_prediction' for the "
            f"boundary's model members, got prediction_type={value!r}"
        )
    return cast(DDIMPredictionType, value)


def ddim_num_train_timesteps(scheduler: Any) -> int:
    """The scheduler config's ``num_train_timesteps`` (1000 for Stable Diffusion)."""
    return int(scheduler.config.num_train_timesteps)


def ddim_timestep_indices(
    scheduler: Any, timesteps: Real[Tensor, " batch"]
) -> Int[Tensor, " batch"]:
    """``timesteps`` as the int64 training timesteps they are, checked to be whole numbers in
    ``[0, num_train_timesteps)`` (values are read only where that is free, see
    :func:`ddpo.core._checks.values_checkable`).

    Raises:
        TypeError: if ``timesteps`` is neither an integer nor a float tensor.
        ValueError: naming ``timesteps`` and the offending values.
    """
    if not isinstance(timesteps, Tensor) or timesteps.dtype == torch.bool or timesteps.is_complex():
        raise TypeError(f"timesteps must be an integer or float tensor, got {timesteps!r}")
    num_train = ddim_num_train_timesteps(scheduler)
    # int64 before comparing: a uint8 tensor compared with 1000 compares with 1000 mod 256.
    values = timesteps if timesteps.is_floating_point() else timesteps.long()
    if values_checkable(values) and values.numel() > 0:
        bad = (values < 0) | (values >= num_train) | (values != values.round())
        if bool(bad.any()):
            raise ValueError(
                f"timesteps must be whole numbers in [0, {num_train}) (the scheduler's training "
                f"timesteps), got timesteps={values[bad].tolist()}"
            )
    return timesteps.long()


def _alpha_bars(scheduler: Any, timesteps: Real[Tensor, " batch"]) -> Float[Tensor, " batch"]:
    """``alpha_bar_t`` of the scheduler's ``alphas_cumprod`` (float32, as it is: no floor at a
    zero terminal SNR, where ``x_t`` is the noise) at each training timestep."""
    t = ddim_timestep_indices(scheduler, timesteps)
    table, _ = _tables_on(scheduler, t.device, floor_zero=False)
    return alpha_bar_at(table, t)


def ddim_add_noise(
    scheduler: Any, clean: Latents, noise: Latents, timesteps: Real[Tensor, " batch"]
) -> Latents:
    """``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` with ``a_t`` the scheduler's
    ``alphas_cumprod[t]`` (:func:`ddpo.core.noising.vp_add_noise`; diffusers'
    ``DDPMScheduler.add_noise``).

    Raises:
        ValueError: on shapes that disagree or timesteps outside the scheduler's range.
    """
    check_noising_args(clean, noise, timesteps)
    return vp_add_noise(clean, noise, _alpha_bars(scheduler, timesteps))


def ddim_training_target(
    scheduler: Any, clean: Latents, noise: Latents, timesteps: Real[Tensor, " batch"]
) -> Latents:
    """What the denoiser regresses to at ``ddim_add_noise(clean, noise, timesteps)``: the noise
    (epsilon) or ``v = sqrt(a_t) eps - sqrt(1 - a_t) x_0`` (v-prediction; diffusers'
    ``get_velocity``), by :func:`ddim_prediction_type` (:func:`ddpo.core.noising.
    vp_training_target`).

    Raises:
        ValueError: on shapes that disagree, timesteps outside the scheduler's range or a
            prediction type other than epsilon and v-prediction.
    """
    prediction_type = ddim_prediction_type(scheduler)
    check_noising_args(clean, noise, timesteps)
    alpha_bar_t = _alpha_bars(scheduler, timesteps)
    return vp_training_target(clean, noise, alpha_bar_t, prediction_type=prediction_type)


def ddim_predicted_clean(
    scheduler: Any, latents: Latents, prediction: Latents, timesteps: Real[Tensor, " batch"]
) -> Latents:
    """The clean latents a prediction at noisy ``latents`` implies (the inverse of
    :func:`ddim_training_target`; :func:`ddpo.core.noising.vp_predicted_x0`).

    Raises:
        ValueError: on shapes that disagree or timesteps outside the scheduler's range.
    """
    prediction_type = ddim_prediction_type(scheduler)
    check_noising_args(latents, prediction, timesteps)
    alpha_bar_t = _alpha_bars(scheduler, timesteps)
    return vp_predicted_x0(latents, prediction, alpha_bar_t, prediction_type=prediction_type)


def _module_dtype(module: nn.Module) -> torch.dtype:
    dtype = getattr(module, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    params = next(module.parameters(), None)
    return params.dtype if params is not None else torch.float32


def _latent_stats(config: Any, like: Tensor) -> tuple[Tensor, Tensor] | None:
    """The VAE config's per-channel ``latents_mean`` and ``latents_std`` as ``(1, C, 1, 1)``
    tensors on ``like``'s device and dtype, or None where the config has none."""
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is None or std is None:
        return None
    shape = (1, -1, 1, 1)
    return (
        torch.tensor(mean, device=like.device, dtype=like.dtype).view(shape),
        torch.tensor(std, device=like.device, dtype=like.dtype).view(shape),
    )


def vae_decode(vae: Any, latents: Latents) -> Float[Tensor, "batch 3 image_height image_width"]:
    """The VAE's decoding of final latents, in ``[-1, 1]`` up to the model's error and in the
    VAE's dtype, differentiable.

    Undoes the latent normalisation as diffusers does: ``latents / scaling_factor``, or
    ``latents * latents_std / scaling_factor + latents_mean`` for a VAE whose config has them
    (SDXL's and some replacement VAEs).
    """
    config = vae.config
    stats = _latent_stats(config, latents)
    if stats is not None:
        mean_t, std_t = stats
        scaled = latents * std_t / config.scaling_factor + mean_t
    else:
        scaled = latents / config.scaling_factor
    decoded: Tensor = vae.decode(scaled.to(_module_dtype(vae)), return_dict=False)[0]
    return decoded


def decode_images(
    vae: Any, latents: Latents, image_processor: VaeImageProcessor | None = None
) -> Float[Tensor, "batch 3 image_height image_width"]:
    """Final latents as images in ``[0, 1]``, float32, differentiable: :func:`vae_decode`, then
    the pipeline's ``image_processor.postprocess(..., output_type="pt")`` (a default
    ``VaeImageProcessor``, ``(x + 1) / 2`` clamped, where none is given)."""
    processor = image_processor if image_processor is not None else VaeImageProcessor()
    images = cast(Tensor, processor.postprocess(vae_decode(vae, latents), output_type="pt"))
    return images.to(torch.float32)


def _module_device(module: nn.Module) -> torch.device:
    device = getattr(module, "device", None)
    if isinstance(device, torch.device):
        return device
    params = next(module.parameters(), None)
    return params.device if params is not None else torch.device("cpu")


def vae_scale_factor(vae: Any) -> int:
    """Pixels per latent along a side, as diffusers computes it from the VAE's config:
    ``2 ** (len(block_out_channels) - 1)``."""
    return int(2 ** (len(vae.config.block_out_channels) - 1))


def vae_encode(vae: Any, images: Float[Tensor, "batch 3 image_height image_width"]) -> Latents:
    """The latents of images in ``[0, 1]`` that :func:`vae_decode` takes back (the inverse of
    its normalisation): the VAE's posterior mean of ``2 x - 1`` (deterministic), times
    ``scaling_factor``, or ``(z - latents_mean) * scaling_factor / latents_std`` for a VAE whose
    config has them; float32, on the VAE's device.

    Raises:
        ValueError: naming ``images`` if it is not ``(batch, 3, H, W)`` in ``[0, 1]`` with sides
            that are multiples of the VAE's factor.
    """
    factor = vae_scale_factor(vae)
    check_images(images, multiple=factor, why=f"the VAE's factor {factor}")
    pixels = (images * 2 - 1).to(device=_module_device(vae), dtype=_module_dtype(vae))
    posterior = vae.encode(pixels, return_dict=False)[0]
    z = posterior.mean.to(torch.float32)
    config = vae.config
    stats = _latent_stats(config, z)
    if stats is not None:
        mean_t, std_t = stats
        return (z - mean_t) * config.scaling_factor / std_t
    latents: Tensor = z * config.scaling_factor
    return latents


__all__ = [
    "DDIMPredictionType",
    "ddim_add_noise",
    "ddim_num_train_timesteps",
    "ddim_prediction_type",
    "ddim_timestep_indices",
    "ddim_training_target",
    "decode_images",
    "vae_decode",
    "vae_encode",
    "vae_scale_factor",
]
