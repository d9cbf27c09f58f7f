"""Flow-matching sampling shared by the rectified-flow adapters (SD3 now, FLUX next).

What does not depend on the model family: the sampler settings and their checks (``noise_level``
and the stochastic window), the sigma table of a ``FlowMatchEulerDiscreteScheduler``, the
trajectory loop that takes Flow-GRPO's SDE step inside the window and diffusers' Euler ODE step
outside it, the re-scoring of a stored window transition, and the transformer's LoRA weights in
diffusers' ``transformer.``-prefixed file format. The step math is
:func:`ddpo.core.flow_sde_step_with_logprob`; a family supplies ``predict(x, t) -> velocity``.
"""

import copy
import numbers
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from diffusers.utils.torch_utils import randn_tensor
from jaxtyping import Float, Int
from peft import LoraConfig, get_peft_model_state_dict
from safetensors.torch import load_file
from torch import Tensor, nn

from ddpo._typing import Latents, PerSample, Trajectory
from ddpo.adapters.registry import LORA_WEIGHTS_NAME, write_base_model
from ddpo.adapters.sd_weights import (
    load_adapter_state,
    lora_alpha_value,
    lora_config_of_file,
    setup_trainable_unet,
)
from ddpo.core import flow_sde_step_with_logprob
from ddpo.core._checks import values_checkable

Generators = torch.Generator | list[torch.Generator] | None


def check_noise_level(noise_level: Any, *, allow_zero: bool = False) -> float:
    """``noise_level`` as a float: > 0 (>= 0 with ``allow_zero``: 0 means the ODE everywhere).

    Raises:
        ValueError: naming ``noise_level`` and its value.
    """
    ok = isinstance(noise_level, numbers.Real) and not isinstance(noise_level, bool)
    if not ok or not (float(noise_level) >= 0 if allow_zero else float(noise_level) > 0):
        bound = ">= 0 (0: the deterministic ODE)" if allow_zero else "> 0 (Flow-GRPO uses 0.7)"
        raise ValueError(f"noise_level must be a number {bound}, got noise_level={noise_level!r}")
    if float(noise_level) == float("inf"):
        raise ValueError(f"noise_level must be finite, got noise_level={noise_level!r}")
    return float(noise_level)


def check_window_args(size: Any, start: Any) -> None:
    """Check ``sde_window_size`` (``None`` or an int >= 1) and ``sde_window_start`` (``None`` or
    an int >= 0, only with a size); the step count is checked by :func:`check_window`.

    Raises:
        ValueError: naming the argument and its value.
    """
    for name, value, low in (("sde_window_size", size, 1), ("sde_window_start", start, 0)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < low
        ):
            raise ValueError(f"{name} must be None or an int >= {low}, got {name}={value!r}")
    if start is not None and size is None:
        raise ValueError(
            f"sde_window_start={start!r} needs sde_window_size (without a size every step is "
            "stochastic)"
        )


def check_window(num_steps: int, size: int | None, start: int | None) -> None:
    """ValueError naming ``DDPOConfig.sample_num_steps`` and the window if the window of
    ``size`` steps from ``start`` does not fit in ``num_steps`` steps."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"DDPOConfig.sample_num_steps must be an int >= 1, got {num_steps!r}")
    if size is not None and size > num_steps:
        raise ValueError(
            f"sde_window_size={size} is more than DDPOConfig.sample_num_steps={num_steps} steps"
        )
    if size is not None and start is not None and start + size > num_steps:
        raise ValueError(
            f"sde_window_start={start} with sde_window_size={size} ends at step {start + size}, "
            f"past DDPOConfig.sample_num_steps={num_steps} (steps are 0..{num_steps - 1})"
        )


def choose_window(
    num_steps: int, size: int | None, start: int | None, generator: Generators
) -> range:
    """The steps that use the SDE: all (``size`` None), ``size`` steps from ``start``, or from a
    start drawn uniformly in ``[0, num_steps - size]`` with ``generator`` (Flow-GRPO-Fast)."""
    check_window(num_steps, size, start)
    if size is None:
        return range(num_steps)
    if start is None:
        gen = generator[0] if isinstance(generator, list) else generator
        device = gen.device if gen is not None else torch.device("cpu")
        start = int(torch.randint(0, num_steps - size + 1, (1,), generator=gen, device=device))
    return range(start, start + size)


class FlowSchedule(NamedTuple):
    """A flow scheduler's table for ``num_steps`` steps: ``sigmas`` (``num_steps + 1``, the last
    0), the model's ``timesteps`` (``num_steps``) and ``sigma_max`` for the SDE step (the
    largest sigma below 1, Flow-GRPO's ``scheduler.sigmas[1]``; ``None`` if there is none)."""

    num_steps: int
    sigmas: Float[Tensor, " steps_plus_one"]
    timesteps: Float[Tensor, " steps"]
    sigma_max: float | None


def flow_schedule(
    scheduler: Any,
    num_steps: int,
    device: torch.device | None = None,
    mu: float | None = None,
    sigmas: Any = None,
) -> FlowSchedule:
    """``scheduler.set_timesteps(num_steps)`` (with ``mu`` for dynamic shifting, and the
    unshifted ``sigmas`` where a pipeline passes its own) and its table."""
    kwargs: dict[str, Any] = {"mu": mu} if mu is not None else {}
    if sigmas is not None:
        kwargs["sigmas"] = sigmas
    scheduler.set_timesteps(num_steps, device=device, **kwargs)
    sigmas = scheduler.sigmas.to(device=device, dtype=torch.float32)
    below_one = sigmas[(sigmas < 1) & (sigmas > 0)]
    sigma_max = float(below_one.max()) if below_one.numel() else None
    return FlowSchedule(num_steps, sigmas, scheduler.timesteps.to(device), sigma_max)


def dynamic_shift_mu(scheduler: Any, image_tokens: int) -> float | None:
    """The resolution-dependent shift ``mu`` for a scheduler with ``use_dynamic_shifting``
    (``None`` without): linear in the image's token count through ``(base_image_seq_len,
    base_shift)`` and ``(max_image_seq_len, max_shift)``, as diffusers' SD3/FLUX pipelines do."""
    config = scheduler.config
    if not config.get("use_dynamic_shifting", False):
        return None
    low = float(config.get("base_image_seq_len", 256))
    high = float(config.get("max_image_seq_len", 4096))
    base, top = float(config.get("base_shift", 0.5)), float(config.get("max_shift", 1.16))
    slope = (top - base) / (high - low)
    return image_tokens * slope + (base - slope * low)


def probe_schedule(scheduler: Any, num_steps: int, mu: float | None = None) -> FlowSchedule:
    """:func:`flow_schedule` on a copy (the scheduler itself is left as it was)."""
    return flow_schedule(copy.deepcopy(scheduler), num_steps, mu=mu)


def ode_step(model_output: Latents, sample: Latents, sigma: Tensor, sigma_prev: Tensor) -> Latents:
    """Euler's ODE step ``x + (sigma_prev - sigma) v`` as diffusers' ``FlowMatchEulerDiscrete
    Scheduler.step`` computes it (``x`` in float32, 0-d float32 sigmas), in ``v``'s dtype."""
    prev = sample.to(torch.float32) + (sigma_prev - sigma) * model_output
    return prev.to(model_output.dtype)


class FlowTrajectory(NamedTuple):
    """Sampled latents: the recorded ones (the window's ``K + 1``, or every latent for the ODE),
    the window steps' log-densities ``(batch, K)``, and the final latents."""

    latents: Float[Tensor, "batch recorded channels height width"]
    log_probs: Trajectory
    final: Latents


def sample_flow_trajectory(
    predict: Callable[[Latents, PerSample], Latents],
    x: Latents,
    schedule: FlowSchedule,
    *,
    window: range | None,
    noise_level: float,
    generator: Generators,
    progress: Callable[[Iterable[int]], Iterable[int]] = iter,
) -> FlowTrajectory:
    """Integrate from pure noise ``x`` over ``schedule``: Flow-GRPO's SDE step (with noise from
    ``generator``, drawn as diffusers draws it) at the steps of ``window``, Euler's ODE step at
    the others (no noise drawn, no log-density). ``window=None``: the ODE everywhere, and every
    latent is recorded. ``predict(x, t)`` is the family's (guided) velocity at timesteps ``t``.

    Returns:
        :class:`FlowTrajectory`; ``latents`` float32 ``(batch, K + 1, ...)``, the latent before
        the window's first step first.
    """
    batch = x.shape[0]
    recorded = window if window is not None else range(schedule.num_steps)
    latents: list[Tensor] = []
    log_probs: list[Tensor] = []
    for i in progress(range(schedule.num_steps)):
        if i == recorded.start:
            latents.append(x.to(torch.float32))
        sigma, sigma_prev = schedule.sigmas[i], schedule.sigmas[i + 1]
        v = predict(x, schedule.timesteps[i].expand(batch))
        if window is not None and i in window:
            if schedule.sigma_max is None:
                raise ValueError(f"the {schedule.num_steps}-step schedule has no sigma in (0, 1)")
            noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            step = flow_sde_step_with_logprob(
                v,
                x,
                sigma.expand(batch),
                sigma_prev.expand(batch),
                noise_level=noise_level,
                sigma_max=schedule.sigma_max,
                noise=noise,
            )
            x = step.prev_sample
            log_probs.append(step.log_prob.to(torch.float32))
        else:
            x = ode_step(v, x, sigma, sigma_prev)
        if i in recorded:
            latents.append(x.to(torch.float32))
    stacked = torch.stack(log_probs, dim=1) if log_probs else x.new_zeros((batch, 0))
    return FlowTrajectory(torch.stack(latents, dim=1), stacked.to(torch.float32), x)


class FlowStepScore(NamedTuple):
    """A re-scored SDE transition: ``log_prob`` ``(batch,)``, the Gaussian's ``mean`` and its
    standard deviation ``std_dev = std_t sqrt(sigma - sigma_prev)`` ``(batch,)``."""

    log_prob: PerSample
    mean: Latents
    std_dev: PerSample


def score_flow_step(
    model_output: Latents,
    latents: Latents,
    next_latents: Latents,
    step_indices: Int[Tensor, " batch"],
    schedule: FlowSchedule,
    *,
    noise_level: float,
) -> FlowStepScore:
    """The log-density of stored SDE transitions ``latents -> next_latents`` at schedule
    positions ``step_indices`` under the velocity ``model_output``
    (:func:`ddpo.core.flow_sde_step_with_logprob` in scoring mode)."""
    if schedule.sigma_max is None:
        raise ValueError(f"the {schedule.num_steps}-step schedule has no sigma in (0, 1)")
    idx = step_indices.to(schedule.sigmas.device).long()
    if values_checkable(idx) and bool(((idx < 0) | (idx >= schedule.num_steps)).any()):
        raise ValueError(
            f"timesteps must be step indices in [0, {schedule.num_steps}), got {idx.tolist()}"
        )
    sigma, sigma_prev = schedule.sigmas[idx], schedule.sigmas[idx + 1]
    device = latents.device
    out = flow_sde_step_with_logprob(
        model_output,
        latents,
        sigma.to(device),
        sigma_prev.to(device),
        noise_level=noise_level,
        sigma_max=schedule.sigma_max,
        prev_sample=next_latents,
    )
    step_std = out.std_dev * torch.sqrt(sigma - sigma_prev).to(
        device=device, dtype=out.std_dev.dtype
    )
    return FlowStepScore(out.log_prob, out.mean, step_std)


def decode_flow_latents(pipe: Any, latents: Latents, output_type: str) -> Any:
    """Decode with ``pipe.vae`` as diffusers' SD3/FLUX pipelines do: ``latents / scaling_factor
    + shift_factor``, then ``pipe.image_processor.postprocess`` (float32 ``"pt"``)."""
    if output_type == "latent":
        return latents
    config = pipe.vae.config
    shift = getattr(config, "shift_factor", None) or 0.0
    scaled = latents / config.scaling_factor + shift
    decoded = pipe.vae.decode(scaled.to(pipe.vae.dtype), return_dict=False)[0]
    if output_type == "pt":
        images: Tensor = pipe.image_processor.postprocess(decoded, output_type="pt")
        return images.to(torch.float32)
    return pipe.image_processor.postprocess(decoded.float(), output_type=output_type)


# ---- the transformer's LoRA weights (diffusers' ``transformer.`` file format) -------------------

TRANSFORMER_PREFIX = "transformer."


def transformer_lora_config(
    lora_rank: int, lora_alpha: float | int, targets: tuple[str, ...], lora_file: Path | None
) -> LoraConfig:
    """A new adapter's config (rank ``lora_rank`` on ``targets``, Gaussian init), or the saved
    adapter's own (rank from the tensors; alpha and targets from the file's metadata)."""
    if lora_file is None:
        return LoraConfig(
            r=lora_rank,
            lora_alpha=lora_alpha_value(lora_alpha),
            init_lora_weights="gaussian",
            target_modules=list(targets),
        )
    state = _transformer_lora_state(lora_file)
    return lora_config_of_file(lora_file, state, component="transformer", targets=targets)


def _transformer_lora_state(path: Path) -> dict[str, Tensor]:
    raw = load_file(path)
    state = {k.removeprefix(TRANSFORMER_PREFIX): v for k, v in raw.items()}
    if not any(k.startswith(TRANSFORMER_PREFIX) for k in raw):
        raise ValueError(f"{path} holds no transformer LoRA weights (no 'transformer.' keys)")
    return {k: v for k, v in state.items() if "lora_" in k}


def load_transformer_lora(transformer: nn.Module, path: Path) -> None:
    """Load a diffusers LoRA file's transformer weights into ``transformer``'s adapter."""
    load_adapter_state(transformer, _transformer_lora_state(path), path, "the transformer")


def setup_trainable_transformer(
    transformer: nn.Module,
    *,
    use_lora: bool,
    lora_config: LoraConfig,
    lora_file: Path | None,
    lora_init_seed: int,
) -> nn.Module | None:
    """Make the trainable parameters: LoRA adapters (float32, drawn after
    ``manual_seed(lora_init_seed)`` in ``fork_rng``) or the whole transformer (float32; saved
    LoRA weights fused in). Returns the frozen reference copy for full fine-tuning, else None."""
    return setup_trainable_unet(
        transformer,
        use_lora=use_lora,
        lora_config=lora_config,
        lora_file=lora_file,
        lora_init_seed=lora_init_seed,
        load_lora=load_transformer_lora,
    )


def write_transformer_lora(
    transformer: nn.Module, out: Path, base: tuple[str, str], *, saver: Any
) -> None:
    """Write the adapter as ``pytorch_lora_weights.safetensors`` with ``saver`` (a diffusers
    pipeline class with ``save_lora_weights(transformer_lora_layers=...)``, e.g.
    ``StableDiffusion3Pipeline``), its LoRA config as metadata, and the base model's
    ``(name, revision)`` beside it."""
    config: Any = transformer.peft_config
    state = get_peft_model_state_dict(transformer)
    saver.save_lora_weights(
        save_directory=out,
        transformer_lora_layers={k: v.detach().float().contiguous() for k, v in state.items()},
        weight_name=LORA_WEIGHTS_NAME,
        safe_serialization=True,
        transformer_lora_adapter_metadata=config["default"].to_dict(),
    )
    write_base_model(out, *base)


__all__ = [
    "FlowSchedule",
    "FlowStepScore",
    "FlowTrajectory",
    "check_noise_level",
    "check_window",
    "check_window_args",
    "choose_window",
    "decode_flow_latents",
    "dynamic_shift_mu",
    "flow_schedule",
    "load_transformer_lora",
    "ode_step",
    "probe_schedule",
    "sample_flow_trajectory",
    "score_flow_step",
    "setup_trainable_transformer",
    "transformer_lora_config",
    "write_transformer_lora",
]
