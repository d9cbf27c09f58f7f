"""Several rewards in one: a weighted sum that also reports each term."""

from collections.abc import Mapping
from typing import Any, final

import numpy as np
import torch
from jaxtyping import Float

from ddpo.rewards.contract import RewardFunction

__all__ = ["RewardFn", "WeightedSumReward", "as_reward_tensor", "weighted_sum"]

RewardFn = RewardFunction
"""A reward function of the reward contract (:mod:`ddpo.rewards.contract`)."""


def as_reward_tensor(rewards: Any, *, name: str, batch_size: int) -> Float[torch.Tensor, " batch"]:
    """``rewards`` (tensor, array or list of numbers) as a float32 CPU tensor ``(batch,)``.

    Raises:
        ValueError: naming ``name``, if the length is not ``batch_size`` or a value is not finite.
    """
    if isinstance(rewards, torch.Tensor):
        values = rewards.detach().float().cpu()
    else:
        values = torch.as_tensor(np.asarray(rewards, dtype=np.float32))
    values = values.reshape(-1)
    if values.numel() != batch_size:
        raise ValueError(
            f"reward {name!r} returned {values.numel()} values for a batch of {batch_size}"
        )
    bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"reward {name!r} returned non-finite values at sample indices {bad}")
    return values


@final
class WeightedSumReward:
    """``sum_k weight_k * reward_k(images, prompts, metadata)`` as one reward function.

    The returned metadata holds, per term ``name``, its unweighted per-sample values under
    ``name`` and each key ``k`` of its own metadata under ``f"{name}/{k}"``. The sum (float32,
    on the CPU) keeps the gradients of the terms that return tensors carrying them, so a sum of
    differentiable rewards is differentiable; the metadata's values are detached.

    Args:
        rewards: ``{name: (reward_fn, weight)}``, at least one entry, finite weights, not all 0
            (a term of weight 0 is reported but not trained on).

    Raises:
        ValueError: if ``rewards`` is empty, a weight is not a finite number, every weight is 0
            (the sum would be a constant that trains nothing) or a name has a ``/``.
    """

    def __init__(self, rewards: Mapping[str, tuple[RewardFn, float]]) -> None:
        if not rewards:
            raise ValueError("rewards must name at least one reward, got {}")
        for name, entry in rewards.items():
            if not isinstance(entry, tuple) or len(entry) != 2 or not callable(entry[0]):
                raise ValueError(f"rewards[{name!r}] must be (reward_fn, weight), got {entry!r}")
            weight = entry[1]
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise ValueError(f"rewards[{name!r}] weight must be a number, got {weight!r}")
            if not np.isfinite(weight):
                raise ValueError(f"rewards[{name!r}] weight must be finite, got {weight!r}")
            if "/" in name:
                raise ValueError(f"reward names must not contain '/', got {name!r}")
        if all(weight == 0 for _, weight in rewards.values()):
            raise ValueError(
                f"rewards: every weight is 0 ({sorted(rewards)}), so the sum is a constant 0 "
                "that trains nothing; give at least one term a non-zero weight"
            )
        self.rewards = dict(rewards)

    def __call__(
        self, images: Any, prompts: Any, prompt_metadata: Any
    ) -> tuple[Float[torch.Tensor, " batch"], dict[str, Any]]:
        batch_size = len(prompts)
        total = torch.zeros(batch_size)
        metadata: dict[str, Any] = {}
        for name, (fn, weight) in self.rewards.items():
            raw, term_metadata = fn(images, prompts, prompt_metadata)
            values = as_reward_tensor(raw, name=name, batch_size=batch_size)
            if isinstance(raw, torch.Tensor) and raw.requires_grad:
                total = total + float(weight) * raw.to("cpu", torch.float32).reshape(-1)
            else:
                total = total + float(weight) * values
            metadata[name] = values
            for key, value in dict(term_metadata or {}).items():
                metadata[f"{name}/{key}"] = value
        return total, metadata


def weighted_sum(rewards: Mapping[str, tuple[RewardFn, float]]) -> WeightedSumReward:
    """A reward function summing ``{name: (reward_fn, weight)}``; see :class:`WeightedSumReward`."""
    return WeightedSumReward(rewards)
