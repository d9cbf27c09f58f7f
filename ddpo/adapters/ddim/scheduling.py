"""Translate a diffusers DDIM scheduler's tables into the ``alpha_bar`` tensors of ``ddpo.core``."""

import weakref
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from ddpo._typing import PerSample
from ddpo.core._checks import values_checkable


def check_ddim_scheduler(scheduler: Any) -> None:
    """Raise unless ``scheduler`` is DDIM-like and its inference timesteps are set.

    DDIM-like means it has ``alphas_cumprod``, ``final_alpha_cumprod`` and a ``config`` with
    ``num_train_timesteps``, and ``set_timesteps`` has been called (``num_inference_steps`` set).

    Raises:
        TypeError: if a table or the config is missing (not a DDIM-like scheduler).
        ValueError: if ``num_inference_steps`` is not set to a positive integer.
    """
    name = type(scheduler).__name__
    for attr in ("alphas_cumprod", "final_alpha_cumprod", "config"):
        if not hasattr(scheduler, attr):
            raise TypeError(
                f"scheduler must be DDIM-like (diffusers' DDIMScheduler); {name} has no {attr!r}"
            )
    if getattr(scheduler.config, "num_train_timesteps", None) is None:
        raise TypeError(f"scheduler {name} has no config.num_train_timesteps")
    steps = getattr(scheduler, "num_inference_steps", None)
    if not isinstance(steps, int) or steps <= 0:
        raise ValueError(
            f"scheduler.num_inference_steps must be set (call set_timesteps first), got {steps!r}"
        )


def ddim_alpha_bars(
    scheduler: Any, timesteps: Int[Tensor, " batch"]
) -> tuple[PerSample, PerSample]:
    """``alpha_bar`` at each sample's timestep and at its DDIM predecessor.

    The previous timestep is ``t - num_train_timesteps // num_inference_steps``; where it is
    negative (the last step) ``alpha_bar_prev`` is ``scheduler.final_alpha_cumprod``, exactly as
    diffusers' ``DDIMScheduler.step`` does.

    One deliberate difference: with ``prediction_type="epsilon"``, an ``alpha_bar`` of exactly 0
    (the last entry of a zero-terminal-SNR table, ``rescale_betas_zero_snr=True``) is read as
    ``2**-24``, the floor diffusers' Euler, DPM-Solver and UniPC schedulers put on that entry. There
    ``x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)`` divides by 0 and diffusers' DDIM step
    returns inf or NaN; with the floor it is ``4096 (x_t - eps)`` to float rounding, finite (an
    epsilon model cannot predict ``x_0`` from pure noise, so no value is right there; the floor
    only keeps the rollout finite). ``"v_prediction"`` and ``"sample"`` are finite at 0 and keep
    the table as it is, so their steps match diffusers'.

    Args:
        scheduler: a DDIM-like diffusers scheduler after ``set_timesteps``.
        timesteps: one integer timestep per sample, ``(batch,)``.

    Returns:
        ``(alpha_bar_t, alpha_bar_prev)``, each ``(batch,)`` float32 on ``timesteps``' device.

    Raises:
        TypeError, ValueError: see :func:`check_ddim_scheduler`; ValueError also for timesteps
            outside ``[0, num_train_timesteps)``.
    """
    check_ddim_scheduler(scheduler)
    t = timesteps.long()
    prev = t - int(scheduler.config.num_train_timesteps) // scheduler.num_inference_steps
    return ddim_alpha_bars_between(scheduler, t, prev)


def ddim_alpha_bars_between(
    scheduler: Any, timesteps: Int[Tensor, " batch"], prev_timesteps: Int[Tensor, " batch"]
) -> tuple[PerSample, PerSample]:
    """``alpha_bar`` at each sample's timestep and at its given predecessor, from the scheduler's
    fixed tables only (``alphas_cumprod``, ``final_alpha_cumprod``, the config), not from its
    inference timesteps: what a recorded transition's schedule row needs (`ddim_alpha_bars`
    with the predecessor ``t - num_train_timesteps // num_inference_steps``).

    A negative predecessor (the last step) reads ``final_alpha_cumprod``; a zero ``alpha_bar``
    is floored for epsilon prediction as in :func:`ddim_alpha_bars`.

    Args:
        scheduler: a DDIM-like diffusers scheduler (its inference timesteps need not be set).
        timesteps: one integer timestep per sample, ``(batch,)``.
        prev_timesteps: each sample's previous timestep, ``(batch,)`` (negative: none).

    Returns:
        ``(alpha_bar_t, alpha_bar_prev)``, each ``(batch,)`` float32 on ``timesteps``' device.

    Raises:
        TypeError: if the scheduler has no DDIM tables.
        ValueError: for timesteps outside ``[0, num_train_timesteps)`` or predecessors at or
            above them (values read only where that is free).
    """
    name = type(scheduler).__name__
    for attr in ("alphas_cumprod", "final_alpha_cumprod", "config"):
        if not hasattr(scheduler, attr):
            raise TypeError(
                f"scheduler must be DDIM-like (diffusers' DDIMScheduler); {name} has no {attr!r}"
            )
    num_train = int(scheduler.config.num_train_timesteps)
    t, prev = timesteps.long(), prev_timesteps.long().to(timesteps.device)
    # The range check reads values: only on CPU, where it costs no device synchronisation (an
    # out-of-range index on an accelerator fails in the indexing kernel instead), and not while
    # torch.compile traces (a host read is a graph break).
    if values_checkable(t, prev) and t.numel() > 0:
        low, high = int(t.min()), int(t.max())
        if low < 0 or high >= num_train:
            raise ValueError(
                f"timesteps must lie in [0, {num_train}), got values from {low} to {high}"
            )
        if bool((prev >= t).any()):
            raise ValueError(
                f"previous timesteps must lie below the timesteps, got {prev.tolist()} for "
                f"{t.tolist()}"
            )
    floor_zero = scheduler.config.get("prediction_type", "epsilon") == "epsilon"
    table, final = _tables_on(scheduler, t.device, floor_zero=floor_zero)
    alpha_bar_t = table[t]
    alpha_bar_prev = torch.where(prev >= 0, table[prev.clamp(min=0)], final)
    return alpha_bar_t, alpha_bar_prev


# The zero-terminal-SNR floor of diffusers' Euler, DPM-Solver and UniPC schedulers: "close to 0
# without being 0 so first sigma is not inf" (the smallest positive float16 subnormal).
_ZERO_SNR_ALPHA_BAR_FLOOR = 2.0**-24

_TABLES: (
    "weakref.WeakKeyDictionary[Any, dict[tuple[torch.device, bool], tuple[Any, Tensor, Tensor]]]"
)
_TABLES = weakref.WeakKeyDictionary()


def _tables_on(scheduler: Any, device: torch.device, *, floor_zero: bool) -> tuple[Tensor, Tensor]:
    """The scheduler's ``alphas_cumprod`` and ``final_alpha_cumprod`` as float32 on ``device``.

    With ``floor_zero``, entries of exactly 0 become ``2**-24`` (see
    :func:`ddim_alpha_bars`); others are untouched. Cached per scheduler, device and
    ``floor_zero`` (dropped if the scheduler's table object is replaced), so a sampling or
    training step copies nothing from the host.
    """
    source = scheduler.alphas_cumprod
    try:
        per_scheduler = _TABLES.setdefault(scheduler, {})
    except TypeError:  # not weak-referenceable: no cache
        per_scheduler = {}
    key = (device, floor_zero)
    cached = per_scheduler.get(key)
    if cached is None or cached[0] is not source:
        table = torch.as_tensor(source).to(device=device, dtype=torch.float32)
        final = torch.as_tensor(scheduler.final_alpha_cumprod).to(
            device=device, dtype=torch.float32
        )
        if floor_zero:
            table = table.masked_fill(table == 0, _ZERO_SNR_ALPHA_BAR_FLOOR)
            final = final.masked_fill(final == 0, _ZERO_SNR_ALPHA_BAR_FLOOR)
        cached = per_scheduler[key] = (source, table, final)
    return cached[1], cached[2]


__all__ = ["check_ddim_scheduler", "ddim_alpha_bars", "ddim_alpha_bars_between"]
