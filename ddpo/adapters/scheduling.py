"""Translate a diffusers DDIM scheduler's tables into the ``alpha_bar`` tensors of ``ddpo.core``."""

import weakref
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from ddpo._typing import PerSample


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
    num_train = int(scheduler.config.num_train_timesteps)
    # The range check reads values: only on CPU, where it costs no device synchronisation (an
    # out-of-range index on an accelerator fails in the indexing kernel instead).
    if timesteps.device.type == "cpu" and timesteps.numel() > 0:
        low, high = int(timesteps.min()), int(timesteps.max())
        if low < 0 or high >= num_train:
            raise ValueError(
                f"timesteps must lie in [0, {num_train}), got values from {low} to {high}"
            )
    table, final = _tables_on(scheduler, timesteps.device)
    t = timesteps.long()
    prev = t - num_train // scheduler.num_inference_steps
    alpha_bar_t = table[t]
    alpha_bar_prev = torch.where(prev >= 0, table[prev.clamp(min=0)], final)
    return alpha_bar_t, alpha_bar_prev


_TABLES: "weakref.WeakKeyDictionary[Any, dict[torch.device, tuple[Any, Tensor, Tensor]]]"
_TABLES = weakref.WeakKeyDictionary()


def _tables_on(scheduler: Any, device: torch.device) -> tuple[Tensor, Tensor]:
    """The scheduler's ``alphas_cumprod`` and ``final_alpha_cumprod`` as float32 on ``device``.

    Cached per scheduler and device (dropped if the scheduler's table object is replaced), so
    a sampling or training step copies nothing from the host.
    """
    source = scheduler.alphas_cumprod
    try:
        per_scheduler = _TABLES.setdefault(scheduler, {})
    except TypeError:  # not weak-referenceable: no cache
        per_scheduler = {}
    cached = per_scheduler.get(device)
    if cached is None or cached[0] is not source:
        table = torch.as_tensor(source).to(device=device, dtype=torch.float32)
        final = torch.as_tensor(scheduler.final_alpha_cumprod).to(
            device=device, dtype=torch.float32
        )
        cached = per_scheduler[device] = (source, table, final)
    return cached[1], cached[2]


__all__ = ["check_ddim_scheduler", "ddim_alpha_bars"]
