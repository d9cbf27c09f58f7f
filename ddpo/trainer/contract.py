"""The contracts of the user's callables: reward function, prompt function, image hook.

- reward function: ``(images, prompts, prompt_metadata) -> (rewards, reward_metadata)``, with
  ``rewards`` a 1-D tensor, array or list of one finite real number per image;
- prompt function: ``() -> (prompt, prompt_metadata)``, ``prompt`` a str, the metadata anything;
- either may keep state for checkpoints: ``state_dict()`` (JSON data) and ``load_state_dict``.
"""

import json
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

RewardFunction = Callable[..., Any]
"""``(images, prompts, prompt_metadata) -> (rewards, reward_metadata)``."""
PromptFunction = Callable[[], Any]
"""``() -> (prompt, prompt_metadata)``."""
ImageSamplesHook = Callable[[list[list[Any]], int, Any], Any]
"""``(image_data, global_step, tracker_or_None) -> None``."""


def callable_name(fn: Any) -> str:
    """A readable name of a function or callable object, for error messages."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return str(name or type(fn).__qualname__)


def check_prompt(drawn: Any, prompt_function: Any) -> tuple[str, Any]:
    """One ``(prompt, metadata)`` draw, checked (TypeError naming the prompt function)."""
    if not (isinstance(drawn, tuple | list) and len(drawn) == 2):
        raise TypeError(
            f"prompt function {callable_name(prompt_function)} must return "
            f"(prompt, metadata), got {drawn!r}"
        )
    prompt, metadata = drawn
    if not isinstance(prompt, str):
        raise TypeError(
            f"prompt function {callable_name(prompt_function)} returned a prompt that is not a "
            f"str: {prompt!r}"
        )
    # Any metadata is passed on as it is, as TRL did (a dict, a string, an object...).
    return prompt, metadata


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


def is_stateful(fn: Any) -> bool:
    """Whether a prompt or reward function keeps checkpointable state."""
    return callable(getattr(fn, "state_dict", None)) and callable(
        getattr(fn, "load_state_dict", None)
    )


def state_of(fn: Any) -> Any:
    """``fn.state_dict()`` checked to be JSON data, or None for a stateless function."""
    if not is_stateful(fn):
        return None
    state = fn.state_dict()
    try:
        json.dumps(state)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{callable_name(fn)}.state_dict() must return JSON-serialisable data (dicts, lists, "
            f"str, numbers, None) to be checkpointed: {err}"
        ) from err
    return state


__all__ = [
    "ImageSamplesHook",
    "PromptFunction",
    "RewardFunction",
    "callable_name",
    "check_prompt",
    "check_rewards",
    "is_stateful",
    "rewards_to_tensor",
    "state_of",
]
