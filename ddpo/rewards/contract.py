"""The reward contract: what a reward function receives and returns, and its check.

A reward function is any callable
``reward_fn(images, prompts, prompt_metadata) -> (rewards, reward_metadata)`` (`RewardFunction`):

- ``images``: a float tensor with values in [0, 1], the decoded samples: images
  ``(batch, 3, H, W)``, or videos ``(batch, frames, 3, H, W)`` from a video family (one reward
  per video, not per frame);
- ``prompts``: one str per image (`DDPOTrainer` passes a tuple; a reward server passes None
  when its client sent none, and a reward that needs prompts then raises);
- ``prompt_metadata``: the prompt function's metadata, one entry per image (a tuple), passed on
  as it is;
- ``rewards``: one finite real number per image, as a 1-D tensor, numpy array, or list or tuple
  of numbers (not bools, not complex);
- ``reward_metadata``: anything, handed to the image hook as it is (``ddpo train``'s
  `ddpo.reporting.ImageGridHook` logs the epoch's mean of each per-image number of a dict).

`check_rewards` checks one batch's answer against it: `ddpo.trainer.DDPOTrainer` checks each
batch it scores, the reward server what its reward returns, and `ddpo.rewards.RemoteReward`
what a server answers. Every reward of :mod:`ddpo.rewards` is such a function. A reward
function may also keep state for exact resumes (``state_dict``/``load_state_dict``, see
`ddpo.trainer.contract`).

Videos: an image reward scores a video frame by frame through `ddpo.rewards.video.per_frame`
(the mean over all frames, or over a chosen set; `ddpo.rewards.registry.build_reward_fn` wraps
every image reward in it, and it passes images through unchanged); a video reward, such as
`ddpo.rewards.video.temporal_consistency`, reads the frames together and refuses images.
"""

import numbers
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ddpo._callables import callable_name
from ddpo._typing import ImagesOrVideos

__all__ = ["RewardFunction", "RewardOutput", "Rewards", "check_rewards", "rewards_to_tensor"]

Rewards = torch.Tensor | np.ndarray | Sequence[float]
"""One real number per image: a 1-D tensor, numpy array, or list or tuple of numbers."""
RewardOutput = tuple[Rewards, Any]
"""``(rewards, reward_metadata)``: what a reward function returns."""


@runtime_checkable
class RewardFunction(Protocol):
    """``(images, prompts, prompt_metadata) -> (rewards, reward_metadata)`` (see the module
    docstring); any function or callable object of this signature is one."""

    def __call__(
        self,
        images: ImagesOrVideos,
        prompts: Sequence[str],
        prompt_metadata: Any,
        /,
    ) -> RewardOutput:
        """Score a batch of images ``(batch, 3, H, W)`` or videos ``(batch, frames, 3, H, W)``."""
        ...


def check_rewards(
    result: Any, reward_function: Any, *, batch_size: int, offset: int
) -> tuple[torch.Tensor, Any]:
    """Validate one batch's ``(rewards, reward_metadata)`` against the reward contract.

    Returns:
        The rewards as a float32 CPU tensor ``(batch_size,)`` and the metadata as returned.

    Raises:
        TypeError, ValueError: naming the reward function and the sample indices of the epoch.
    """
    name = callable_name(reward_function)
    indices = f"samples {offset}..{offset + batch_size - 1} of this epoch"
    if not (isinstance(result, tuple | list) and len(result) == 2):
        raise TypeError(
            f"reward function {name} must return (rewards, reward_metadata), got "
            f"{type(result).__name__} for {indices}"
        )
    rewards, reward_metadata = result
    values = rewards_to_tensor(rewards, name=name, offset=offset)
    if values.ndim != 1 or values.shape[0] != batch_size:
        raise ValueError(
            f"reward function {name} returned rewards of shape {tuple(values.shape)} for "
            f"{indices}; expected a 1-D sequence of length {batch_size}"
        )
    bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"reward function {name} returned non-finite rewards "
            f"{[values[i].item() for i in bad]} at sample indices "
            f"{[offset + i for i in bad]} of this epoch"
        )
    return values.float(), reward_metadata


def rewards_to_tensor(rewards: Any, *, name: str, offset: int) -> torch.Tensor:
    """Rewards as a float64 tensor; TypeError naming the non-numeric sample indices."""
    if isinstance(rewards, torch.Tensor):
        if rewards.dtype == torch.bool or rewards.is_complex():
            raise TypeError(
                f"reward function {name} returned a {rewards.dtype} tensor for samples starting "
                f"at {offset}; rewards must be real numbers"
            )
        return rewards.detach().to("cpu", torch.float64)
    if isinstance(rewards, np.ndarray):
        if rewards.dtype.kind not in "iuf":
            raise TypeError(
                f"reward function {name} returned an array of dtype {rewards.dtype} for samples "
                f"starting at {offset}; rewards must be real numbers"
            )
        return torch.from_numpy(rewards.astype(np.float64))
    if isinstance(rewards, list | tuple):
        bad = [offset + i for i, r in enumerate(rewards) if not _is_real(r)]
        if bad:
            raise TypeError(
                f"reward function {name} returned non-numeric rewards at sample indices {bad} "
                f"of this epoch: {[rewards[i - offset] for i in bad][:5]!r}"
            )
        return torch.tensor([float(r) for r in rewards], dtype=torch.float64)
    raise TypeError(
        f"reward function {name} returned rewards of type {type(rewards).__name__} for samples "
        f"starting at {offset}; expected a 1-D tensor, array or list of numbers"
    )


def _is_real(value: Any) -> bool:
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.is_complex() and value.dtype != torch.bool
    return isinstance(value, numbers.Real) and not isinstance(value, complex)
