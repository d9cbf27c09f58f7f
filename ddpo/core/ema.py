"""Exponential moving average of weights, as Flow-GRPO, DanceGRPO and DiffusionNFT keep one.

:func:`ema_decay_at` is the decay used after optimizer step ``step``: the configured ``decay``
with the warm-up of diffusers' ``EMAModel`` and Flow-GRPO's ``EMAModuleWrapper``,
``min((1 + step) / (10 + step), decay)``, so that the first updates follow the weights closely.
:func:`ema_step` is one update of one tensor.
"""

import math

from jaxtyping import Float
from torch import Tensor

__all__ = ["ema_decay_at", "ema_step"]


def ema_decay_at(step: int, *, decay: float) -> float:
    """The EMA decay after optimizer step ``step``, with the usual warm-up.

    ``min((1 + step) / (10 + step), decay)``: diffusers' ``EMAModel`` (without
    ``use_ema_warmup``) and Flow-GRPO's ``EMAModuleWrapper.get_current_decay`` (yifan123/
    flow_grpo, ``flow_grpo/ema.py``). It reaches ``decay`` at ``step = (10 decay - 1) / (1 -
    decay)`` (80 for Flow-GRPO's 0.9).

    Args:
        step: optimizer steps, >= 0.
        decay: the decay after the warm-up, in ``[0, 1]``.

    Returns:
        The decay to use, in ``[0, decay]``.

    Raises:
        ValueError: for a negative ``step`` or a ``decay`` outside ``[0, 1]``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not (math.isfinite(decay) and 0.0 <= decay <= 1.0):
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    return min((1.0 + step) / (10.0 + step), decay)


def ema_step(
    average: Float[Tensor, "*shape"], value: Float[Tensor, "*shape"], *, decay: float
) -> Float[Tensor, "*shape"]:
    """One EMA update, ``decay * average + (1 - decay) * value``.

    Computed as ``average + (1 - decay) * (value - average)``, Flow-GRPO's form; a decay of 1
    keeps ``average``, 0 gives ``value``.

    Args:
        average: the moving average so far.
        value: the new value (the trained weights), the same shape.
        decay: the weight of ``average``, in ``[0, 1]`` (:func:`ema_decay_at`).

    Returns:
        The new average, a new tensor (the inputs are left as they are).
    """
    return average + (1.0 - decay) * (value - average)
