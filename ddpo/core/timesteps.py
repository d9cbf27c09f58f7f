"""Choosing which denoising steps of each trajectory to train on."""

import math
from typing import Literal

import torch
from jaxtyping import Int
from torch import Tensor

from ddpo._typing import StepIndices, no_type_check


def subsample_timesteps(
    permutation: StepIndices, *, timestep_fraction: float = 1.0
) -> Int[Tensor, "batch train_steps"]:
    """The first ``int(steps * timestep_fraction)`` entries of each sample's step permutation.

    The reference trains each sample on a random subset of its denoising steps: it shuffles the
    steps of every trajectory independently and keeps a fraction of them (Black et al., 2023,
    arXiv 2305.13301; ``train.timestep_fraction`` of its code). Randomness comes in as data: pass
    e.g. ``torch.stack([torch.randperm(steps, generator=g) for _ in range(batch)])``. Flow-GRPO
    (Liu et al., 2025, arXiv 2505.05470) instead trains the first ``int(steps *
    timestep_fraction)`` steps of every trajectory in sampling order (``0.99`` in its configs:
    all but the last step): pass the identity, ``torch.arange(steps).expand(batch, steps)``.

    Args:
        permutation: a permutation of ``0..steps-1`` per sample, ``(batch, steps)``, integers.
        timestep_fraction: the fraction of steps to keep, in ``(0, 1]`` (reference: 1.0).

    Returns:
        Step indices ``(batch, int(steps * timestep_fraction))``, a view of ``permutation``.

    Raises:
        ValueError: if ``timestep_fraction`` is not in ``(0, 1]``, keeps no step, or a row of
            ``permutation`` is not a permutation of ``0..steps-1``.
    """
    if not 0 < timestep_fraction <= 1:
        raise ValueError(
            f"timestep_fraction must be in (0, 1], got timestep_fraction={timestep_fraction!r}"
        )
    steps = permutation.shape[1]
    num_train = int(steps * timestep_fraction)
    if num_train < 1:
        raise ValueError(
            f"timestep_fraction={timestep_fraction!r} keeps int({steps} * {timestep_fraction!r})"
            " = 0 of the steps; it must keep at least one"
        )
    # 1. Every row must be a permutation of 0..steps-1 (sorted, it is arange(steps)).
    expected = torch.arange(steps, device=permutation.device, dtype=permutation.dtype)
    if not bool((permutation.sort(dim=1).values == expected).all()):
        raise ValueError(
            f"permutation must hold a permutation of 0..{steps - 1} in every row, got "
            f"{permutation.tolist() if permutation.numel() <= 64 else 'other values'}"
        )
    # 2. Keep the first num_train of each.
    return permutation[:, :num_train]


SLIDING_WINDOW_STRATEGIES = ("progressive", "decay", "exp_decay")
"""MixGRPO's schedules of a sliding window that moves (its ``sample_strategy``, less ``random``:
a window drawn per rollout is the flow policies' own ``sde_window_start=None``)."""


@no_type_check  # it checks ``strategy`` itself, naming the value
def sliding_window_start(
    iteration: int,
    *,
    shift_interval: int,
    stride: int,
    max_start: int,
    roll_back: bool = False,
    strategy: Literal["progressive", "decay", "exp_decay"] = "progressive",
    min_shift_interval: int = 1,
    decay_threshold: int = 13,
    decay_rate: float = 0.1,
) -> int:
    """MixGRPO's sliding window (Li et al., 2025, arXiv 2507.21802): the first sampler step of
    the stochastic window at training iteration ``iteration`` (0-based).

    The window starts at step 0 and moves ``stride`` steps at a time. It holds each position
    ``p`` for ``n(p)`` iterations, which the ``strategy`` sets (MixGRPO's ``sample_strategy``):

        progressive:  n(p) = shift_interval
        decay:        n(p) = max(m, int(shift_interval (1 - p / max_start) + m p / max_start))
        exp_decay:    n(p) = ceil(shift_interval exp(-decay_rate max(0, p - decay_threshold)))

    with ``m = min_shift_interval``: ``decay`` spends fewer iterations on the later steps,
    linearly from ``shift_interval`` at step 0 to ``m`` at the end; ``exp_decay`` holds
    ``shift_interval`` until step ``decay_threshold``, then fewer, exponentially. Past
    ``max_start`` the window stays at ``max_start`` or, with ``roll_back``, starts over at 0.
    For ``progressive`` this is ``min(k stride, max_start)`` with ``k = iteration //
    shift_interval`` moves (``(k mod (max_start // stride + 1)) stride`` with ``roll_back``).

    Args:
        iteration: the training iteration (an epoch here), >= 0.
        shift_interval: iterations per window position (MixGRPO's ``iters_per_group``; its
            ``max_iters_per_group`` for ``decay``), >= 1.
        stride: steps per move (its ``group_size``, or ``prog_overlap_step``), >= 1.
        max_start: the last start the window may take, >= 0.
        roll_back: start over from step 0 past the end (its ``roll_back``).
        strategy: ``"progressive"``, ``"decay"`` or ``"exp_decay"``.
        min_shift_interval: ``decay``'s fewest iterations per position (its
            ``min_iters_per_group``), >= 1.
        decay_threshold: ``exp_decay``'s last step held for ``shift_interval`` iterations (its
            ``exp_decay_thre_timestep``, 13), >= 0.
        decay_rate: ``exp_decay``'s rate per step past the threshold (its ``exp_decay_k``,
            0.1), >= 0.

    Returns:
        The window's first step.

    Raises:
        ValueError: naming an argument outside its range.
    """
    if strategy not in SLIDING_WINDOW_STRATEGIES:
        raise ValueError(f"strategy must be one of {SLIDING_WINDOW_STRATEGIES}, got {strategy!r}")
    for name, value, low in (
        ("iteration", iteration, 0),
        ("shift_interval", shift_interval, 1),
        ("stride", stride, 1),
        ("max_start", max_start, 0),
        ("min_shift_interval", min_shift_interval, 1),
        ("decay_threshold", decay_threshold, 0),
        ("decay_rate", decay_rate, 0),
    ):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    positions = range(0, max_start + 1, stride)
    if strategy == "progressive":
        held = [shift_interval] * len(positions)
    elif strategy == "decay":
        progress = [p / max_start if max_start else 0.0 for p in positions]
        held = [
            max(min_shift_interval, int(shift_interval * (1 - f) + min_shift_interval * f))
            for f in progress
        ]
    else:
        held = [  # at least 1, where the exponential underflows
            max(1, math.ceil(shift_interval * math.exp(-decay_rate * max(0, p - decay_threshold))))
            for p in positions
        ]
    remaining = iteration % sum(held) if roll_back else iteration
    for position, count in zip(positions, held, strict=True):
        if remaining < count:
            return position
        remaining -= count
    return max_start
