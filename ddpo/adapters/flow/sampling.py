"""Flow-matching sampling shared by the rectified-flow adapters (SD3 and FLUX.1).

What does not depend on the model family: the sampler settings and their checks (``noise_level``,
``sde_type`` and the stochastic window), the sigma table of a ``FlowMatchEulerDiscreteScheduler``,
the trajectory loop that takes Flow-GRPO's stochastic step inside the window and diffusers' Euler
ODE step outside it, the schedule rows of the window's transitions and their re-scoring from a
row alone, and the transformer's LoRA targets and weights in diffusers' ``transformer.``-prefixed
file format. The step math is
:func:`ddpo.core.flow_sde_step_with_logprob` (``sde_type="sde"``) or
:func:`ddpo.core.flow_cps_step_with_logprob` (``"cps"``); a family supplies ``predict(x, t) ->
velocity``.
"""

import contextlib
import copy
import numbers
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple, cast, get_args

import torch
from diffusers.utils.torch_utils import randn_tensor
from jaxtyping import Float
from peft import LoraConfig, get_peft_model_state_dict
from safetensors.torch import load_file
from torch import Tensor, nn

from ddpo._typing import Latents, PerSample, Trajectory
from ddpo.adapters.common.sampling import check_schedule, checkpointed, schedule_rows
from ddpo.adapters.common.sources import LORA_WEIGHTS_NAME, write_base_model
from ddpo.adapters.common.weights import (
    load_adapter_state,
    lora_alpha_value,
    lora_config_of_file,
    setup_trainable_unet,
)
from ddpo.adapters.flow.denoiser import flow_decode_images, flow_vae_decode
from ddpo.core import (
    flow_cps_step_with_logprob,
    flow_dpm_solver_step,
    flow_sde_step_with_logprob,
)

Generators = torch.Generator | list[torch.Generator] | None

PostWindowSolver = Literal["euler", "dpmsolver++"]
"""The deterministic steps after the stochastic window: Euler's (diffusers'
``FlowMatchEulerDiscreteScheduler``) or the second-order multistep DPM-Solver++
(:func:`ddpo.core.flow_dpm_solver_step`, MixGRPO-Flash's ``dpm_algorithm_type="dpmsolver++"``)."""
POST_WINDOW_SOLVERS: Final = get_args(PostWindowSolver)


def check_post_window(solver: Any, step_ratio: Any, window_size: int | None) -> None:
    """ValueError naming ``post_window_solver`` or ``post_window_step_ratio``: an unknown solver,
    a ratio outside ``(0, 1]``, or either set without a window (``sde_window_size``) whose
    deterministic steps they would change."""
    if solver not in POST_WINDOW_SOLVERS:
        raise ValueError(f"post_window_solver must be one of {POST_WINDOW_SOLVERS}, got {solver!r}")
    if (
        isinstance(step_ratio, bool)
        or not isinstance(step_ratio, int | float)
        or not 0 < step_ratio <= 1
    ):
        raise ValueError(f"post_window_step_ratio must be in (0, 1], got {step_ratio!r}")
    if window_size is None and (solver != "euler" or step_ratio != 1):
        raise ValueError(
            f"post_window_solver={solver!r} and post_window_step_ratio={step_ratio!r} change the "
            "deterministic steps after a stochastic window: set sde_window_size (MixGRPO-Flash's "
            "window of 4, say)"
        )


SDEType = Literal["sde", "cps"]
"""Flow-GRPO's ``sde_type``: its SDE step (``"sde"``, :func:`ddpo.core.flow_sde_step_with_logprob`)
or the coefficients-preserving step (``"cps"``, :func:`ddpo.core.flow_cps_step_with_logprob`)."""


def check_sde_type(sde_type: Any) -> SDEType:
    """``sde_type`` checked to be ``"sde"`` or ``"cps"``.

    Raises:
        ValueError: naming ``sde_type`` and its value.
    """
    if sde_type not in get_args(SDEType):
        raise ValueError(
            f"sde_type must be one of {get_args(SDEType)} (Flow-GRPO's sde_type), got "
            f"sde_type={sde_type!r}"
        )
    return cast(SDEType, sde_type)


def check_ode_has_no_window(
    noise_level: float, sde_window_size: int | None, sde_window_range: tuple[int, int] | None
) -> None:
    """ValueError if ``noise_level`` 0 (the ODE everywhere) comes with an SDE window, which it
    would not use."""
    if noise_level == 0 and (sde_window_size is not None or sde_window_range is not None):
        raise ValueError(
            f"noise_level=0 samples with the ODE at every step: sde_window_size="
            f"{sde_window_size!r} and sde_window_range={sde_window_range!r} would be unused; "
            "leave them out, or sample with noise_level > 0"
        )


def check_noise_level(
    noise_level: Any, *, allow_zero: bool = False, sde_type: str = "sde"
) -> float:
    """``noise_level`` as a float: > 0 (>= 0 with ``allow_zero``: 0 means the ODE everywhere),
    and at most 1 for ``sde_type="cps"`` (the fresh noise's share ``sin(noise_level pi / 2)``).

    Raises:
        ValueError: naming ``noise_level`` and its value.
    """
    ok = isinstance(noise_level, numbers.Real) and not isinstance(noise_level, bool)
    if not ok or not (float(noise_level) >= 0 if allow_zero else float(noise_level) > 0):
        bound = ">= 0 (0: the deterministic ODE)" if allow_zero else "> 0 (Flow-GRPO uses 0.7)"
        raise ValueError(f"noise_level must be a number {bound}, got noise_level={noise_level!r}")
    if float(noise_level) == float("inf"):
        raise ValueError(f"noise_level must be finite, got noise_level={noise_level!r}")
    if sde_type == "cps" and float(noise_level) > 1:
        raise ValueError(
            "noise_level must be <= 1 with sde_type='cps' (the fresh noise's share of sigma_prev "
            f"is sin(noise_level pi / 2); Flow-GRPO's cps configs use 0.8), got "
            f"noise_level={noise_level!r}"
        )
    return float(noise_level)


def stochastic_steps(num_steps: int, sde_type: str) -> int:
    """How many of ``num_steps`` steps can be stochastic: all for ``"sde"``; all but the last for
    ``"cps"``, whose last step (to ``sigma_prev = 0``) has no noise and is taken as the ODE
    step (Flow-GRPO's default window, ``(0, num_steps - 1)``, leaves it out too)."""
    return num_steps - 1 if sde_type == "cps" else num_steps


def check_window_args(size: Any, start: Any, window_range: Any = None) -> tuple[int, int] | None:
    """Check ``sde_window_size`` (``None`` or an int >= 1), ``sde_window_start`` (``None`` or
    an int >= 0, only with a size) and ``sde_window_range`` (``None`` or two ints ``0 <= low <
    high`` with room for the window, only with a size and without a start); the step count is
    checked by :func:`check_window`.

    Returns:
        ``sde_window_range`` as a tuple (``None`` if not given).

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
    if window_range is None:
        return None
    ints = isinstance(window_range, (tuple, list)) and len(window_range) == 2
    ints = ints and all(isinstance(v, int) and not isinstance(v, bool) for v in window_range)
    if not ints or not 0 <= window_range[0] < window_range[1]:
        raise ValueError(
            "sde_window_range must be None or two ints (low, high) with 0 <= low < high (the "
            f"window's start is drawn in [low, high - sde_window_size]), got "
            f"sde_window_range={window_range!r}"
        )
    low, high = int(window_range[0]), int(window_range[1])
    if size is None:
        raise ValueError(
            f"sde_window_range={window_range!r} needs sde_window_size (it bounds where a window "
            "of that size is drawn)"
        )
    if start is not None:
        raise ValueError(
            f"give sde_window_start (a fixed window) or sde_window_range (a drawn one), not both; "
            f"got sde_window_start={start!r}, sde_window_range={window_range!r}"
        )
    if size > high - low:
        raise ValueError(
            f"sde_window_size={size} does not fit in sde_window_range={window_range!r} "
            f"({high - low} steps)"
        )
    return low, high


def check_window(
    num_steps: int,
    size: int | None,
    start: int | None,
    window_range: tuple[int, int] | None = None,
    *,
    sde_type: str = "sde",
) -> None:
    """ValueError naming ``DDPOConfig.sample_num_steps`` and the window if the window of
    ``size`` steps from ``start`` (or drawn in ``window_range``) does not fit in the
    :func:`stochastic_steps` of ``num_steps`` steps."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"DDPOConfig.sample_num_steps must be an int >= 1, got {num_steps!r}")
    last = stochastic_steps(num_steps, sde_type)
    steps = f"DDPOConfig.sample_num_steps={num_steps}"
    if last != num_steps:
        steps += (
            f" (with sde_type={sde_type!r} the last step has no noise, so steps "
            f"0..{last - 1} can be stochastic)"
        )
        if last < 1:
            raise ValueError(f"{steps}: use at least 2 steps")
    if size is not None and size > last:
        raise ValueError(f"sde_window_size={size} is more than {steps} steps")
    if size is not None and start is not None and start + size > last:
        raise ValueError(
            f"sde_window_start={start} with sde_window_size={size} ends at step {start + size}, "
            f"past {steps} (steps are 0..{num_steps - 1})"
        )
    if window_range is not None and window_range[1] > last:
        raise ValueError(
            f"sde_window_range={window_range!r} ends at step {window_range[1]}, past {steps} "
            f"(steps are 0..{num_steps - 1})"
        )


def choose_window(
    num_steps: int,
    size: int | None,
    start: int | None,
    generator: Generators,
    window_range: tuple[int, int] | None = None,
    *,
    sde_type: str = "sde",
) -> range:
    """The steps that are stochastic: all :func:`stochastic_steps` (``size`` None), ``size``
    steps from ``start``, or from a start drawn uniformly in ``[low, high - size]`` with
    ``generator`` (Flow-GRPO-Fast; ``(low, high)`` is ``window_range``, by default every start
    that fits)."""
    check_window(num_steps, size, start, window_range, sde_type=sde_type)
    last = stochastic_steps(num_steps, sde_type)
    if size is None:
        return range(last)
    if start is None:
        low, high = window_range if window_range is not None else (0, last)
        gen = generator[0] if isinstance(generator, list) else generator
        device = gen.device if gen is not None else torch.device("cpu")
        start = int(torch.randint(low, high - size + 1, (1,), generator=gen, device=device))
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


def dynamic_shift_mu(
    scheduler: Any, image_tokens: int, *, default_max_shift: float
) -> float | None:
    """The resolution-dependent shift ``mu`` for a scheduler with ``use_dynamic_shifting``
    (``None`` without): linear in the image's token count through ``(base_image_seq_len,
    base_shift)`` and ``(max_image_seq_len, max_shift)``, as diffusers' SD3/FLUX pipelines do.
    A key the scheduler's config lacks takes the family's stock pipeline's fallback: 256, 4096
    and 0.5 in both, ``default_max_shift`` for ``max_shift`` (1.16 in ``StableDiffusion3Pipeline``,
    1.15 in ``FluxPipeline``)."""
    config = scheduler.config
    if not config.get("use_dynamic_shifting", False):
        return None
    low = float(config.get("base_image_seq_len", 256))
    high = float(config.get("max_image_seq_len", 4096))
    base = float(config.get("base_shift", 0.5))
    top = float(config.get("max_shift", default_max_shift))
    slope = (top - base) / (high - low)
    return image_tokens * slope + (base - slope * low)


def probe_schedule(scheduler: Any, num_steps: int, mu: float | None = None) -> FlowSchedule:
    """:func:`flow_schedule` on a copy (the scheduler itself is left as it was)."""
    return flow_schedule(copy.deepcopy(scheduler), num_steps, mu=mu)


def post_window_schedule(
    schedule: FlowSchedule, window_stop: int, step_ratio: float
) -> FlowSchedule:
    """``schedule`` with the steps after a window ending at step ``window_stop`` compressed to
    ``max(1, int((remaining + 1) step_ratio) - 1)`` steps (MixGRPO-Flash's
    ``dpm_post_compress_ratio`` count, ``remaining`` the steps after the window); ``step_ratio``
    1 (or nothing after the window) leaves it as it is.

    The new steps are evenly spaced in step index over what the window leaves, their sigmas and
    timesteps linear between the schedule's own (MixGRPO-Flash instead spaces the remaining time
    evenly and applies its shift again: the two agree on a schedule without shift, and here any
    scheduler's shift is kept as the table has it)."""
    remaining = schedule.num_steps - window_stop
    if step_ratio == 1 or remaining < 1:
        return schedule
    count = max(1, int((remaining + 1) * step_ratio) - 1)
    if count >= remaining:
        return schedule
    sigmas = schedule.sigmas.detach().to("cpu", torch.float64)
    timesteps = torch.cat(
        [schedule.timesteps.detach().to("cpu", torch.float64), sigmas.new_zeros(1)]
    )
    where = torch.linspace(window_stop, schedule.num_steps, count + 1, dtype=torch.float64)
    low = where.floor().long().clamp(max=schedule.num_steps - 1)
    weight = where - low

    def at(table: Tensor) -> Tensor:
        return table[low] * (1 - weight) + table[low + 1] * weight

    new_sigmas = torch.cat([sigmas[:window_stop], at(sigmas)])
    new_timesteps = torch.cat([timesteps[:window_stop], at(timesteps)[:-1]])
    device = schedule.sigmas.device
    return FlowSchedule(
        window_stop + count,
        new_sigmas.to(device, schedule.sigmas.dtype),
        new_timesteps.to(device, schedule.timesteps.dtype),
        schedule.sigma_max,
    )


def ode_step(model_output: Latents, sample: Latents, sigma: Tensor, sigma_prev: Tensor) -> Latents:
    """Euler's ODE step ``x + (sigma_prev - sigma) v`` as diffusers' ``FlowMatchEulerDiscrete
    Scheduler.step`` computes it (``x`` in float32, 0-d float32 sigmas), in ``v``'s dtype."""
    prev = sample.to(torch.float32) + (sigma_prev - sigma) * model_output
    return prev.to(model_output.dtype)


class FlowTrajectory(NamedTuple):
    """Sampled latents: the recorded ones (the window's ``K + 1``, or every latent for the ODE),
    the window steps' log-densities ``(batch, K)``, and the final latents."""

    latents: Float[Tensor, "batch recorded channels *spatial"]
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
    sde_type: str = "sde",
    grad_steps: int = 0,
    post_window_solver: str = "euler",
) -> FlowTrajectory:
    """Integrate from pure noise ``x`` over ``schedule``: Flow-GRPO's stochastic step of
    ``sde_type`` (with noise from ``generator``, drawn as diffusers draws it) at the steps of
    ``window``, Euler's ODE step at the others (no noise drawn, no log-density).
    ``window=None``: the ODE everywhere, and every latent is recorded. ``predict(x, t)`` is the
    family's (guided) velocity at timesteps ``t``. The last ``grad_steps`` steps run with
    gradients enabled, each ``predict`` call checkpointed, so that the final latents are
    differentiable through them (the caller runs the others without gradients).
    ``post_window_solver="dpmsolver++"``: the steps after the window take the second-order
    DPM-Solver++ step, with the previous step's clean estimate (the window's last, at first).

    Returns:
        :class:`FlowTrajectory`; ``latents`` float32 ``(batch, K + 1, ...)``, the latent before
        the window's first step first.
    """
    batch = x.shape[0]
    recorded = window if window is not None else range(schedule.num_steps)
    latents: list[Tensor] = []
    log_probs: list[Tensor] = []
    first_grad_step = schedule.num_steps - grad_steps
    solver = _PostWindowSolver(window, schedule) if post_window_solver != "euler" else None
    for i in progress(range(schedule.num_steps)):
        if i == recorded.start:
            latents.append(x.to(torch.float32))
        keep = grad_steps > 0 and i >= first_grad_step
        with torch.enable_grad() if keep else contextlib.nullcontext():
            x = _flow_step(
                predict, x, schedule, i, window, noise_level, generator, sde_type, log_probs,
                grad=keep, solver=solver,
            )  # fmt: skip
            if i in recorded:
                latents.append(x.to(torch.float32))
    with torch.enable_grad() if grad_steps else contextlib.nullcontext():
        stacked = torch.stack(log_probs, dim=1) if log_probs else x.new_zeros((batch, 0))
        return FlowTrajectory(torch.stack(latents, dim=1), stacked.to(torch.float32), x)


def _flow_step(
    predict: Callable[[Latents, PerSample], Latents],
    x: Latents,
    schedule: FlowSchedule,
    i: int,
    window: range | None,
    noise_level: float,
    generator: Generators,
    sde_type: str,
    log_probs: list[Tensor],
    *,
    grad: bool = False,
    solver: "_PostWindowSolver | None" = None,
) -> Latents:
    """Step ``i`` of :func:`sample_flow_trajectory` (its log-density appended to
    ``log_probs`` in the window); ``grad``: the velocity call checkpointed; ``solver``: the
    DPM-Solver++ steps after the window."""
    batch = x.shape[0]
    sigma, sigma_prev = schedule.sigmas[i], schedule.sigmas[i + 1]
    t = schedule.timesteps[i].expand(batch)
    v = checkpointed(predict, x, t) if grad else predict(x, t)
    if solver is not None:
        stepped = solver.step(i, v, x)
        if stepped is not None:
            return stepped
    if window is not None and i in window:
        noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        sigmas = (sigma.expand(batch), sigma_prev.expand(batch))
        if sde_type == "cps":
            step: Any = flow_cps_step_with_logprob(
                v, x, *sigmas, noise_level=noise_level, noise=noise
            )
        else:
            if schedule.sigma_max is None:
                raise ValueError(f"the {schedule.num_steps}-step schedule has no sigma in (0, 1)")
            step = flow_sde_step_with_logprob(
                v,
                x,
                *sigmas,
                noise_level=noise_level,
                sigma_max=schedule.sigma_max,
                noise=noise,
            )
        x = step.prev_sample
        log_probs.append(step.log_prob.to(torch.float32))
    else:
        x = ode_step(v, x, sigma, sigma_prev)
    return x


class _PostWindowSolver:
    """The DPM-Solver++ steps after the window: from the window's last step on, it keeps each
    step's clean estimate for the next one, and takes the steps after the window."""

    def __init__(self, window: range | None, schedule: FlowSchedule) -> None:
        self.after = window.stop if window is not None else schedule.num_steps
        self.schedule = schedule
        self.previous: tuple[Tensor, Tensor] | None = None

    def step(self, i: int, v: Latents, x: Latents) -> Latents | None:
        """Step ``i`` after the window (``None`` before it: the caller's step), remembering
        the clean estimate from the window's last step on."""
        if i < self.after - 1:
            return None
        batch = x.shape[0]
        sigma = self.schedule.sigmas[i].expand(batch)
        if i == self.after - 1:  # the window's last step: its estimate only
            self.previous = (x.to(torch.float32) - sigma.view(-1, *[1] * (x.ndim - 1)) * v, sigma)
            return None
        previous = self.previous
        stepped = flow_dpm_solver_step(
            v, x, sigma, self.schedule.sigmas[i + 1].expand(batch),
            previous_clean=None if previous is None else previous[0],
            sigma_previous=None if previous is None else previous[1],
        )  # fmt: skip
        self.previous = (stepped.clean, sigma)
        return stepped.prev_sample


class FlowStepScore(NamedTuple):
    """A re-scored stochastic transition: ``log_prob`` ``(batch,)``, the Gaussian's ``mean`` and
    its standard deviation ``std_dev`` ``(batch,)`` (``std_t sqrt(sigma - sigma_prev)`` for the
    SDE step, ``sigma_prev sin(noise_level pi / 2)`` for the CPS step), and
    ``flow_grpo_std_dev``, what Flow-GRPO's KL penalty divides by (its step function's
    ``std_dev_t``: for the SDE step ``std_t`` itself, before the step size; for the CPS step the
    step's standard deviation, ``std_dev``; `ddpo.core.flow_grpo_kl`)."""

    log_prob: PerSample
    mean: Latents
    std_dev: PerSample
    flow_grpo_std_dev: PerSample


FLOW_SCHEDULE_COLUMNS: Final[tuple[str, ...]] = (
    "timestep",
    "sigma",
    "sigma_next",
    "sigma_max",
    "guidance_scale",
)
"""The values of a flow transition's schedule row, in order: the transformer's timestep input,
the step's sigma and the next one, the schedule's largest sigma below 1 (Flow-GRPO's
``sigma_max``; NaN where it has none) and the guidance scale it was sampled with."""


class FlowRows(NamedTuple):
    """A batch of flow schedule rows as the tensors scoring uses (float32, as the scheduler's
    table; the guidance scale float64)."""

    timesteps: PerSample
    sigma: PerSample
    sigma_next: PerSample
    sigma_max: PerSample
    guidance_scale: PerSample


def flow_schedule_rows(
    schedule: FlowSchedule, window: range, *, guidance_scale: float, device: torch.device
) -> Float[Tensor, "steps 5"]:
    """The ``(K, 5)`` rows of the window's steps of a rollout sampled with ``schedule``:
    :data:`FLOW_SCHEDULE_COLUMNS` per step, in sampling order."""
    steps = torch.arange(window.start, window.stop, device=schedule.sigmas.device)
    sigma_max = float("nan") if schedule.sigma_max is None else schedule.sigma_max
    settings = torch.tensor([sigma_max, float(guidance_scale)], dtype=torch.float64)
    sigma_max_column, guidance_column = settings.to(device).expand(len(steps), 2).unbind(dim=1)
    return schedule_rows(
        [
            schedule.timesteps.to(schedule.sigmas.device)[steps],
            schedule.sigmas[steps],
            schedule.sigmas[steps + 1],
            sigma_max_column,
            guidance_column,
        ],
        device,
    )


def flow_rows(schedule: Any, latents: Latents) -> FlowRows:
    """``schedule`` (one flow row per sample of ``latents``) checked and split into the tensors
    of :class:`FlowRows`, on ``latents``' device.

    Raises:
        TypeError, ValueError: naming ``schedule`` (see
            :func:`ddpo.adapters.common.sampling.check_schedule`).
    """
    rows = check_schedule(schedule, latents, FLOW_SCHEDULE_COLUMNS, "a flow policy")
    return FlowRows(
        rows[:, 0].to(torch.float32),
        rows[:, 1].to(torch.float32),
        rows[:, 2].to(torch.float32),
        rows[:, 3].to(torch.float32),
        rows[:, 4].to(torch.float64),
    )


def score_flow_rows(
    model_output: Latents,
    latents: Latents,
    next_latents: Latents,
    rows: FlowRows,
    *,
    noise_level: float,
    sde_type: str = "sde",
) -> FlowStepScore:
    """The log-probability of stored stochastic transitions ``latents -> next_latents`` under
    the velocity ``model_output``, from each transition's schedule row alone
    (:func:`ddpo.core.flow_sde_step_with_logprob` or, for ``sde_type="cps"``,
    :func:`ddpo.core.flow_cps_step_with_logprob`, in scoring mode)."""
    sigma, sigma_next = rows.sigma, rows.sigma_next
    if sde_type == "cps":
        cps = flow_cps_step_with_logprob(
            model_output,
            latents,
            sigma,
            sigma_next,
            noise_level=noise_level,
            prev_sample=next_latents,
        )
        return FlowStepScore(cps.log_prob, cps.mean, cps.std_dev, cps.std_dev)
    out = flow_sde_step_with_logprob(
        model_output,
        latents,
        sigma,
        sigma_next,
        noise_level=noise_level,
        sigma_max=rows.sigma_max,
        prev_sample=next_latents,
    )
    step_std = out.std_dev * torch.sqrt(sigma - sigma_next).to(dtype=out.std_dev.dtype)
    return FlowStepScore(out.log_prob, out.mean, step_std, out.std_dev)


def decode_flow_latents(pipe: Any, latents: Latents, output_type: str) -> Any:
    """Decode with ``pipe.vae`` as diffusers' SD3/FLUX pipelines do: ``latents / scaling_factor
    + shift_factor``, then ``pipe.image_processor.postprocess`` (float32 ``"pt"``: the policies'
    ``decode``, :func:`ddpo.adapters.flow.denoiser.flow_decode_images`)."""
    if output_type == "latent":
        return latents
    if output_type == "pt":
        return flow_decode_images(pipe.vae, latents, pipe.image_processor)
    decoded = flow_vae_decode(pipe.vae, latents)
    return pipe.image_processor.postprocess(decoded.float(), output_type=output_type)


# ---- the transformer's LoRA weights (diffusers' ``transformer.`` file format) -------------------

TRANSFORMER_PREFIX = "transformer."

FEED_FORWARD_TARGET_MODULES: Final[tuple[str, ...]] = (
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
)
"""The feed-forward layers of the SD3 and FLUX.1 joint blocks (image and text streams) that
Flow-GRPO's FLUX LoRA adapts besides the attention projections (``scripts/train_flux.py``)."""

LoraTargets = Literal["attention", "attention_ff"]
"""Which transformer layers new LoRA adapters wrap: the attention projections, or those and the
joint blocks' feed-forward layers (:data:`FEED_FORWARD_TARGET_MODULES`)."""


def lora_target_modules(attention: tuple[str, ...], lora_targets: Any) -> tuple[str, ...]:
    """The peft ``target_modules`` of ``lora_targets``: a family's ``attention`` projections,
    with the feed-forward layers for ``"attention_ff"``.

    Raises:
        ValueError: naming ``lora_targets`` and its value.
    """
    if lora_targets not in get_args(LoraTargets):
        raise ValueError(
            f"lora_targets must be one of {get_args(LoraTargets)}, got "
            f"lora_targets={lora_targets!r}"
        )
    return attention + (FEED_FORWARD_TARGET_MODULES if lora_targets == "attention_ff" else ())


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
    "FEED_FORWARD_TARGET_MODULES",
    "FLOW_SCHEDULE_COLUMNS",
    "FlowRows",
    "FlowSchedule",
    "FlowStepScore",
    "FlowTrajectory",
    "LoraTargets",
    "SDEType",
    "check_noise_level",
    "check_ode_has_no_window",
    "check_sde_type",
    "check_window",
    "check_window_args",
    "choose_window",
    "decode_flow_latents",
    "dynamic_shift_mu",
    "flow_rows",
    "flow_schedule",
    "flow_schedule_rows",
    "load_transformer_lora",
    "lora_target_modules",
    "ode_step",
    "probe_schedule",
    "sample_flow_trajectory",
    "score_flow_rows",
    "setup_trainable_transformer",
    "stochastic_steps",
    "transformer_lora_config",
    "write_transformer_lora",
]
