"""Advantages from rewards within one batch: global and group (GRPO-style) normalization, and
clipping.

Statistics are computed in float64 around a shift (the first value of each group), so a group of
tied rewards has a mean equal to that value exactly and gets an advantage of exactly zero.
"""

from collections.abc import Sequence
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ddpo._typing import AnyBatch, PerSample, PerSampleInt
from ddpo.core._broadcast import float_dtype

GroupStd = Literal["group", "global"]


def _check_eps(eps: float) -> None:
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got eps={eps!r}")


def _check_nonempty(rewards: Tensor) -> None:
    if rewards.numel() == 0:
        raise ValueError(f"rewards must hold at least one value, got shape {tuple(rewards.shape)}")


def normalize_advantages(rewards: PerSample, *, eps: float = 1e-8) -> PerSample:
    """Normalize rewards over the whole batch into advantages.

    ``A_i = (r_i - mean(r)) / (std(r) + eps)`` with the population standard deviation, as the
    reference DDPO code does without per-prompt tracking (Black et al., 2023, arXiv 2305.13301,
    Sec. 4.3).

    Args:
        rewards: one reward per sample, ``(batch,)``, any float dtype.
        eps: added to the standard deviation (reference: ``1e-8``).

    Returns:
        Advantages ``(batch,)`` in float32, or float64 for float64 rewards; tied rewards give
        exactly zero.

    Raises:
        ValueError: if ``eps <= 0`` or ``rewards`` is empty.
    """
    _check_eps(eps)
    _check_nonempty(rewards)
    # 1. Centre around the first reward, in float64, then take the mean offset and the std.
    values = rewards.detach().to(torch.float64)
    centered = values - values[0]
    deviation = centered - centered.mean()
    std = deviation.square().mean().sqrt()
    # 2. Normalize.
    return (deviation / (std + eps)).to(float_dtype(rewards))


def _group_index(group_ids: PerSampleInt | Sequence[str], rewards: Tensor) -> Int[Tensor, " batch"]:
    """Dense group indices ``0..G-1`` (by first appearance for strings) on ``rewards``' device."""
    if isinstance(group_ids, Tensor):
        ids = group_ids
    else:
        if isinstance(group_ids, str):
            raise ValueError(
                "group_ids must be a tensor of ints or a sequence of str, "
                f"got the str {group_ids!r}"
            )
        index: dict[str, int] = {}
        ids = torch.tensor(
            [index.setdefault(g, len(index)) for g in group_ids],
            dtype=torch.long,
            device=rewards.device,
        )
    if ids.shape != rewards.shape:
        raise ValueError(
            f"group_ids must give one group per reward: got {tuple(ids.shape)} group ids for "
            f"rewards of shape {tuple(rewards.shape)}"
        )
    return torch.unique(ids, return_inverse=True)[1]


def group_normalize_advantages(
    rewards: PerSample,
    group_ids: PerSampleInt | Sequence[str],
    *,
    std: GroupStd = "group",
    eps: float = 1e-4,
) -> PerSample:
    """Normalize rewards within groups of the current batch (GRPO-style), without history.

    ``A_i = (r_i - mean_{g(i)}(r)) / (s + eps)`` where ``g(i)`` is sample ``i``'s group (usually
    its prompt), and ``s`` is the population std of the group (``std="group"``, GRPO: Shao et al.,
    2024, arXiv 2402.03300, Sec. 4.1.2) or of the whole batch (``std="global"``). A group whose
    rewards are all equal, including a group of one, gets exactly zero advantage.

    Args:
        rewards: one reward per sample, ``(batch,)``, any float dtype.
        group_ids: the group of each sample: an int tensor ``(batch,)`` or a sequence of ``batch``
            strings (e.g. the prompts).
        std: ``"group"`` or ``"global"``, which standard deviation divides.
        eps: added to the standard deviation (GRPO reference implementations use ``1e-4``).

    Returns:
        Advantages ``(batch,)`` in float32, or float64 for float64 rewards.

    Raises:
        ValueError: if ``std`` is unknown, ``eps <= 0``, ``rewards`` is empty, or ``group_ids``
            does not hold one group per reward.
    """
    if std not in ("group", "global"):
        raise ValueError(f"std must be 'group' or 'global', got std={std!r}")
    _check_eps(eps)
    _check_nonempty(rewards)
    group = _group_index(group_ids, rewards)
    num_groups = int(group.max()) + 1
    values = rewards.detach().to(torch.float64)
    positions = torch.arange(values.shape[0], device=values.device)

    # 1. Shift each group by its first value so that tied groups are exactly zero.
    first = torch.full((num_groups,), values.shape[0], dtype=torch.long, device=values.device)
    first = first.scatter_reduce(0, group, positions, reduce="amin")
    centered = values - values[first][group]

    # 2. Group means of the shifted values, and deviations from them.
    counts = torch.zeros(num_groups, dtype=torch.float64, device=values.device)
    counts = counts.index_add(0, group, torch.ones_like(values))
    sums = torch.zeros_like(counts).index_add(0, group, centered)
    deviation = centered - (sums / counts)[group]

    # 3. Per-group or global population std.
    if std == "group":
        sq = torch.zeros_like(counts).index_add(0, group, deviation.square())
        scale = (sq / counts).sqrt()[group]
    else:
        all_centered = values - values[0]
        scale = (all_centered - all_centered.mean()).square().mean().sqrt().expand_as(values)
    return (deviation / (scale + eps)).to(float_dtype(rewards))


def clip_advantages(advantages: AnyBatch, *, adv_clip_max: float = 5.0) -> AnyBatch:
    """Clip advantages to ``[-adv_clip_max, adv_clip_max]``.

    The reference DDPO code clips advantages before the PPO loss (``adv_clip_max = 5``).

    Args:
        advantages: any shape ``(*batch)``.
        adv_clip_max: the bound, > 0.

    Returns:
        The clipped advantages, same shape and dtype.

    Raises:
        ValueError: if ``adv_clip_max <= 0``.
    """
    if not adv_clip_max > 0:
        raise ValueError(f"adv_clip_max must be > 0, got adv_clip_max={adv_clip_max!r}")
    clipped: Float[Tensor, "*batch"] = advantages.clamp(-adv_clip_max, adv_clip_max)
    return clipped
