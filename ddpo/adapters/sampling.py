"""DDIM sampling helpers shared by the Stable Diffusion adapters: argument checks, the scheduler
step with its log-probability (noise drawn as diffusers draws it), latent decoding."""

import numbers
from typing import Any, NamedTuple

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from jaxtyping import Int
from torch import Tensor, nn

from ddpo._typing import Latents
from ddpo.adapters.scheduling import ddim_alpha_bars
from ddpo.core import DDIMStepOutput, ddim_step_with_logprob

OUTPUT_TYPES = ("pil", "pt", "np", "latent")


def check_prompts(prompt: Any, *, name: str = "prompt") -> list[str]:
    """``prompt`` as a list of strings; a single string becomes a one-element list.

    Raises:
        TypeError: if ``prompt`` is neither a string nor a list/tuple of strings (naming it).
    """
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt):
        if not prompt:
            raise ValueError(f"{name} must not be empty, got {prompt!r}")
        return list(prompt)
    bad = [p for p in prompt if not isinstance(p, str)] if isinstance(prompt, (list, tuple)) else []
    detail = f" (non-string items: {bad[:3]!r})" if bad else ""
    raise TypeError(f"{name} must be a string or a list of strings, got {prompt!r}{detail}")


def check_eta(eta: Any) -> None:
    """Raise ``ValueError`` naming ``eta`` unless ``0 < eta <= 1``.

    Log-probabilities need a stochastic step (``eta > 0``); above 1 the step's standard
    deviation exceeds ``sqrt(1 - alpha_bar_prev)`` and the DDIM mean does not exist.
    """
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0 < float(eta) <= 1:
        raise ValueError(
            "eta must be in (0, 1] for DDPO (the DDIM step needs noise to have a "
            "log-probability, and above 1 its variance exceeds 1 - alpha_bar_prev), "
            f"got eta={eta!r}"
        )


def _per_sample_timesteps(timestep: int | Tensor, sample: Tensor) -> Int[Tensor, " batch"]:
    t = torch.as_tensor(timestep, device=sample.device).long()
    if t.ndim == 0:
        t = t.expand(sample.shape[0])
    return t.reshape(-1)


def scheduler_step_with_logprob(
    scheduler: Any,
    model_output: Latents,
    timestep: int | Tensor,
    sample: Latents,
    *,
    eta: float | int = 1.0,
    prev_sample: Latents | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> DDIMStepOutput:
    """One DDIM step of a diffusers DDIM ``scheduler`` with its log-probability (sample or score).

    Draws the step's noise with ``generator`` exactly as diffusers' ``DDIMScheduler.step`` does
    (so a stock pipeline with the same generator draws the same images), then delegates the math
    to :func:`ddpo.core.ddim_step_with_logprob`. With ``prev_sample`` given, scores it instead.

    Args:
        scheduler: a DDIM-like scheduler after ``set_timesteps``.
        model_output: the (guided) model prediction, ``(batch, C, h, w)``.
        timestep: the current timestep: an int, a 0-d tensor, or one per sample.
        sample: ``x_t``, ``(batch, C, h, w)``.
        eta: DDIM stochasticity, ``> 0``.
        prev_sample: a stored ``x_{t-1}`` to score, or ``None`` to sample one.
        generator: torch generator(s) for the noise (one, or one per sample).

    Returns:
        :class:`ddpo.core.DDIMStepOutput`.
    """
    check_eta(eta)
    alpha_bar_t, alpha_bar_prev = ddim_alpha_bars(
        scheduler, _per_sample_timesteps(timestep, sample)
    )
    noise = None
    if prev_sample is None:
        noise = randn_tensor(
            model_output.shape,
            generator=generator,
            device=model_output.device,
            dtype=model_output.dtype,
        )
    clip = scheduler.config.get("clip_sample", False)
    return ddim_step_with_logprob(
        model_output,
        sample,
        alpha_bar_t,
        alpha_bar_prev,
        eta=float(eta),
        prediction_type=scheduler.config.get("prediction_type", "epsilon"),
        noise=noise,
        prev_sample=prev_sample,
        clip_sample_range=float(scheduler.config.get("clip_sample_range", 1.0)) if clip else None,
    )


def _unwrap(module: nn.Module) -> nn.Module:
    """The model inside DDP/FSDP/``torch.compile`` wrappers."""
    while True:
        if hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        elif hasattr(module, "module") and isinstance(module.module, nn.Module):
            module = module.module
        else:
            return module


class SamplingPlan(NamedTuple):
    """A checked sampling call: the prompts, the batch and the initial latents' shape."""

    prompts: list[str] | None
    negatives: list[str] | None
    n_prompts: int
    batch: int
    shape: tuple[int, int, int, int]


def check_sampling_args(
    sd: Any,
    *,
    prompt: Any,
    prompt_embeds: Tensor | None,
    negative_prompt: Any,
    negative_prompt_embeds: Tensor | None,
    num_inference_steps: Any,
    eta: Any,
    generator: Any,
    latents: Tensor | None,
    height: int | None,
    width: int | None,
    output_type: str,
    num_images_per_prompt: Any,
) -> SamplingPlan:
    """Check a sampling call's arguments against the pipeline ``sd`` before any model work.

    Raises:
        ValueError, TypeError: naming the argument and the value.
    """
    check_eta(eta)
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int):
        raise ValueError(f"num_inference_steps must be an int, got {num_inference_steps!r}")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt!r}")
    if (prompt is None) == (prompt_embeds is None):
        raise ValueError("give exactly one of prompt and prompt_embeds")
    prompts = check_prompts(prompt) if prompt is not None else None
    negatives = (
        check_prompts(negative_prompt, name="negative_prompt")
        if negative_prompt is not None
        else None
    )
    n_prompts = len(prompts) if prompts is not None else int(prompt_embeds.shape[0])  # type: ignore[union-attr]
    if negatives is not None and len(negatives) not in (1, n_prompts):
        raise ValueError(f"negative_prompt has {len(negatives)} entries for {n_prompts} prompts")
    scale = sd.vae_scale_factor
    sample_size = int(sd.unet.config.sample_size)
    height = height if height is not None else sample_size * scale
    width = width if width is not None else sample_size * scale
    if height % scale or width % scale or height <= 0 or width <= 0:
        raise ValueError(
            f"height and width must be positive multiples of {scale}, got {height}x{width}"
        )
    batch = n_prompts * num_images_per_prompt
    if isinstance(generator, list) and len(generator) != batch:
        raise ValueError(f"generator list has {len(generator)} entries for {batch} images")
    channels = int(sd.unet.config.in_channels)
    shape = (batch, channels, height // scale, width // scale)
    if latents is not None and tuple(latents.shape) != shape:
        raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
    if negative_prompt_embeds is not None and negative_prompt_embeds.shape[0] != n_prompts:
        raise ValueError(
            f"negative_prompt_embeds has {negative_prompt_embeds.shape[0]} rows for "
            f"{n_prompts} prompts"
        )
    return SamplingPlan(prompts, negatives, n_prompts, batch, shape)


def decode_latents(sd: Any, latents: Latents, output_type: str) -> Any:
    """Decode final latents with the pipeline's VAE into ``output_type`` images."""
    if output_type == "latent":
        return latents
    vae = sd.vae
    scaled = latents.to(vae.dtype) / vae.config.scaling_factor
    decoded = vae.decode(scaled, return_dict=False)[0]
    processor = sd.image_processor
    if output_type == "pt":
        images: Tensor = processor.postprocess(decoded, output_type="pt")
        return images.to(torch.float32)
    if output_type == "np":
        array: np.ndarray[Any, Any] = processor.postprocess(decoded.float(), output_type="np")
        return array
    return processor.postprocess(decoded.float(), output_type="pil")


__all__ = [
    "OUTPUT_TYPES",
    "SamplingPlan",
    "check_eta",
    "check_prompts",
    "check_sampling_args",
    "decode_latents",
    "scheduler_step_with_logprob",
]
