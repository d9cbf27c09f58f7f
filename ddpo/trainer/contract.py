"""The trainer's contracts of the user's callables: prompt function, image hook, state.

- prompt function: ``() -> (prompt, prompt_metadata)``, ``prompt`` a str, the metadata anything;
- image hook: ``(image_data, global_step, tracker_or_None) -> None``;
- the prompt and reward functions may keep state for checkpoints: ``state_dict()`` (JSON data)
  and ``load_state_dict(state)``.

The reward function's contract is :mod:`ddpo.rewards.contract`.
"""

import json
from collections.abc import Callable
from typing import Any

from ddpo._callables import callable_name

PromptFunction = Callable[[], Any]
"""``() -> (prompt, prompt_metadata)``."""
ImageSamplesHook = Callable[[list[list[Any]], int, Any], Any]
"""``(image_data, global_step, tracker_or_None) -> None``."""


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


__all__ = ["ImageSamplesHook", "PromptFunction", "check_prompt", "is_stateful", "state_of"]
