"""Translate a diffusers DDIM scheduler's tables into the ``alpha_bar`` tensors of ``ddpo.core``."""

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
    if timesteps.numel() > 0 and (int(timesteps.min()) < 0 or int(timesteps.max()) >= num_train):
        raise ValueError(
            f"timesteps must lie in [0, {num_train}), got values from {int(timesteps.min())} "
            f"to {int(timesteps.max())}"
        )
    device = timesteps.device
    table = torch.as_tensor(scheduler.alphas_cumprod).to(device=device, dtype=torch.float32)
    final = torch.as_tensor(scheduler.final_alpha_cumprod).to(device=device, dtype=torch.float32)
    t = timesteps.long()
    prev = t - num_train // scheduler.num_inference_steps
    alpha_bar_t = table[t]
    alpha_bar_prev = torch.where(prev >= 0, table[prev.clamp(min=0)], final)
    return alpha_bar_t, alpha_bar_prev


__all__ = ["check_ddim_scheduler", "ddim_alpha_bars"]
