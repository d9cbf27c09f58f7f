"""DDIM sampling helpers shared by the Stable Diffusion adapters: argument checks, the scheduler
step with its log-probability (noise drawn as diffusers draws it), latent decoding."""

import contextlib
import copy
import numbers
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from jaxtyping import Float, Int
from torch import Tensor

from ddpo._typing import Latents, Trajectory
from ddpo.adapters.common.args import OUTPUT_TYPES, check_call_size, check_prompts
from ddpo.adapters.common.sampling import checkpointed
from ddpo.adapters.ddim.denoiser import decode_images, vae_decode
from ddpo.adapters.ddim.scheduling import ddim_alpha_bars
from ddpo.core import DDIMStepOutput, ddim_step_with_logprob


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


class DDIMTrajectory(NamedTuple):
    """A sampled DDIM trajectory: every latent (``x_T`` first) and every step's log-density."""

    latents: Float[Tensor, "batch steps_plus_one channels height width"]
    log_probs: Trajectory


def sample_ddim_trajectory(
    scheduler: Any,
    predict: Callable[[Latents, Int[Tensor, " batch"]], Latents],
    x_T: Latents,
    *,
    eta: float | int,
    generator: torch.Generator | list[torch.Generator] | None,
    progress: Callable[[Iterable[Tensor]], Iterable[Tensor]] = iter,
    grad_steps: int = 0,
) -> DDIMTrajectory:
    """Denoise ``x_T`` over ``scheduler.timesteps`` with DDIM, keeping each latent and log-prob.

    ``predict(x_t, t)`` is a family's (guided) model prediction; each step is
    :func:`scheduler_step_with_logprob` with its noise drawn from ``generator`` as diffusers
    draws it, so a stock pipeline with the same generator draws the same trajectory.

    Args:
        scheduler: a DDIM scheduler after ``set_timesteps``.
        predict: ``(x_t, timesteps) -> model_output``, both ``(batch, ...)``.
        x_T: the initial latents (already scaled by ``init_noise_sigma``), float32.
        eta: DDIM stochasticity in ``(0, 1]``.
        generator: torch generator(s) for the step noise.
        progress: wraps the timesteps (e.g. a progress bar).
        grad_steps: the last ``grad_steps`` steps run with gradients enabled, each ``predict``
            call checkpointed (its activations recomputed in the backward pass), so that the
            final latents are differentiable through them; the caller runs the others without
            gradients. 0: no step keeps a graph.

    Returns:
        :class:`DDIMTrajectory` with ``latents`` ``(batch, T + 1, ...)`` and ``log_probs``
        ``(batch, T)``, float32.
    """
    x_t = x_T
    batch = x_t.shape[0]
    all_latents = [x_t]
    all_log_probs = []
    first_grad_step = len(scheduler.timesteps) - grad_steps
    for i, t in enumerate(progress(scheduler.timesteps)):
        timesteps = t.to(x_t.device).expand(batch)
        keep = grad_steps > 0 and i >= first_grad_step
        with torch.enable_grad() if keep else contextlib.nullcontext():
            if keep:
                model_output = checkpointed(predict, x_t, timesteps)
            else:
                model_output = predict(x_t, timesteps)
            step = scheduler_step_with_logprob(
                scheduler, model_output, timesteps, x_t, eta=eta, generator=generator
            )
            x_t = step.prev_sample.to(torch.float32)
            all_latents.append(x_t)
            all_log_probs.append(step.log_prob.to(torch.float32))
    with torch.enable_grad() if grad_steps else contextlib.nullcontext():
        return DDIMTrajectory(torch.stack(all_latents, dim=1), torch.stack(all_log_probs, dim=1))


def check_ddim_num_steps(scheduler: Any, num_steps: int) -> None:
    """ValueError naming ``DDPOConfig.sample_num_steps`` unless the DDIM ``scheduler`` makes
    ``num_steps`` valid timesteps (checked on a copy: e.g. "leading" spacing with
    ``steps_offset=1`` at 1000 steps starts at t = 1000; diffusers' "trailing" spacing gives one
    timestep too many for 61, 103, 121, ... steps)."""
    num_train = getattr(getattr(scheduler, "config", None), "num_train_timesteps", None)
    if not isinstance(num_train, int):
        return
    if num_steps > num_train:
        raise ValueError(
            f"DDPOConfig.sample_num_steps={num_steps} is more than the pipeline's scheduler "
            f"allows ({type(scheduler).__name__} has num_train_timesteps={num_train}); use "
            f"at most {num_train} steps"
        )
    probe = copy.deepcopy(scheduler)
    probe.set_timesteps(num_steps)
    timesteps = torch.as_tensor(probe.timesteps)
    low, high = int(timesteps.min()), int(timesteps.max())
    if len(timesteps) != num_steps or low < 0 or high >= num_train:
        spacing = getattr(scheduler.config, "timestep_spacing", "?")
        raise ValueError(
            f"DDPOConfig.sample_num_steps={num_steps}: the pipeline's "
            f"{type(scheduler).__name__} (timestep_spacing={spacing!r}) gives "
            f"{len(timesteps)} timesteps from {high} to {low} for it, outside [0, "
            f"{num_train}) or not one per step; choose another step count"
        )


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
    scale = int(sd.vae_scale_factor)
    side = int(sd.unet.config.sample_size) * scale
    height, width = check_call_size(
        height, width, default=(side, side), multiple=scale, why=f"the VAE's factor {scale}"
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
    """Decode final latents with the pipeline's VAE into ``output_type`` images.

    Undoes the latent normalisation as diffusers does (:func:`ddpo.adapters.ddim.denoiser.
    vae_decode`); ``"pt"`` is :func:`ddpo.adapters.ddim.denoiser.decode_images`, the policies'
    ``decode``. Decodes in the VAE's dtype (a family that must decode in float32 keeps its VAE
    there).
    """
    if output_type == "latent":
        return latents
    processor = sd.image_processor
    if output_type == "pt":
        return decode_images(sd.vae, latents, processor)
    decoded = vae_decode(sd.vae, latents)
    if output_type == "np":
        array: np.ndarray[Any, Any] = processor.postprocess(decoded.float(), output_type="np")
        return array
    return processor.postprocess(decoded.float(), output_type="pil")


__all__ = [
    "DDIMTrajectory",
    "SamplingPlan",
    "check_ddim_num_steps",
    "check_eta",
    "check_sampling_args",
    "decode_latents",
    "sample_ddim_trajectory",
    "scheduler_step_with_logprob",
]
