"""Choosing which denoising steps of each trajectory to train on."""

import torch
from jaxtyping import Int
from torch import Tensor

from ddpo._typing import StepIndices


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


def sliding_window_start(
    iteration: int, *, shift_interval: int, stride: int, max_start: int, roll_back: bool = False
) -> int:
    """MixGRPO's sliding window (Li et al., 2025, arXiv 2507.21802, its ``progressive``
    strategy): the first sampler step of the stochastic window at training iteration
    ``iteration`` (0-based).

    The window starts at step 0 and moves ``stride`` steps every ``shift_interval`` iterations,
    ``k = iteration // shift_interval`` moves so far:

        start = min(k stride, max_start)                     (the window stops at the end)
        start = (k mod (max_start // stride + 1)) stride     (``roll_back``: it starts over)

    Args:
        iteration: the training iteration (an epoch here), >= 0.
        shift_interval: iterations per window position (MixGRPO's ``iters_per_group``), >= 1.
        stride: steps per move (its ``group_size``, or ``prog_overlap_step``), >= 1.
        max_start: the last start the window may take, >= 0.
        roll_back: start over from step 0 past the end (its ``roll_back``).

    Returns:
        The window's first step.

    Raises:
        ValueError: naming an argument outside its range.
    """
    for name, value, low in (
        ("iteration", iteration, 0),
        ("shift_interval", shift_interval, 1),
        ("stride", stride, 1),
        ("max_start", max_start, 0),
    ):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    moves = iteration // shift_interval
    if roll_back:
        return (moves % (max_start // stride + 1)) * stride
    return min(moves * stride, max_start)
