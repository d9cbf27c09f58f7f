"""Prompt functions shipped with the library: ``() -> (prompt, metadata)``, as DDPOTrainer expects.

Each function draws from the module-level :mod:`random` generator when called with no argument,
as the DDPO reference did; pass ``rng=random.Random(seed)`` (or build a bound function with
:func:`make_prompt_fn`) for a reproducible stream of prompts.

- :func:`simple_animals`: one of the reference's 51 common animals, e.g. ``"cat"``.
- :func:`imagenet_animals`: one of the 398 ImageNet-1k animal classes (indices 0-397).
- :func:`nouns_activities`: ``"a <animal> <activity>"`` from the reference's prompt-alignment
  task, e.g. ``"an octopus riding a bike"``.
"""

import random
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from ddpo._prompt_lists import ACTIVITIES, IMAGENET_ANIMALS, SIMPLE_ANIMALS

PromptFn = Callable[[], tuple[str, dict[str, Any]]]

__all__ = [
    "ACTIVITIES",
    "IMAGENET_ANIMALS",
    "PROMPT_FUNCTIONS",
    "SIMPLE_ANIMALS",
    "PromptFn",
    "imagenet_animals",
    "make_prompt_fn",
    "nouns_activities",
    "simple_animals",
    "with_article",
]


def _rng(rng: random.Random | None) -> random.Random:
    # The module-level functions of `random` share one hidden Random instance.
    return rng if rng is not None else random._inst


def with_article(noun: str) -> str:
    """``noun`` with the indefinite article by its first letter: ``"an owl"``, ``"a cat"``."""
    if not noun:
        raise ValueError("noun must be a non-empty string, got ''")
    return f"{'an' if noun[0].lower() in 'aeiou' else 'a'} {noun}"


def simple_animals(rng: random.Random | None = None) -> tuple[str, dict[str, Any]]:
    """A common animal name; metadata ``{"animal": name}``."""
    animal = _rng(rng).choice(SIMPLE_ANIMALS)
    return animal, {"animal": animal}


def imagenet_animals(rng: random.Random | None = None) -> tuple[str, dict[str, Any]]:
    """An ImageNet-1k animal class name; metadata ``{"class_index": i, "class_name": name}``."""
    index = _rng(rng).randrange(len(IMAGENET_ANIMALS))
    name = IMAGENET_ANIMALS[index]
    return name, {"class_index": index, "class_name": name}


def nouns_activities(
    rng: random.Random | None = None,
    *,
    nouns: Sequence[str] = SIMPLE_ANIMALS,
    activities: Sequence[str] = ACTIVITIES,
) -> tuple[str, dict[str, Any]]:
    """``"a <noun> <activity>"``; metadata ``{"animal": noun, "activity": activity}``.

    Raises:
        ValueError: if ``nouns`` or ``activities`` is empty.
    """
    if len(nouns) == 0:
        raise ValueError(f"nouns must be non-empty, got {nouns!r}")
    if len(activities) == 0:
        raise ValueError(f"activities must be non-empty, got {activities!r}")
    generator = _rng(rng)
    noun = generator.choice(list(nouns))
    activity = generator.choice(list(activities))
    return f"{with_article(noun)} {activity}", {"animal": noun, "activity": activity}


PROMPT_FUNCTIONS: dict[str, Callable[..., tuple[str, dict[str, Any]]]] = {
    "simple_animals": simple_animals,
    "imagenet_animals": imagenet_animals,
    "nouns_activities": nouns_activities,
}


def make_prompt_fn(name: str, *, seed: int | None = None) -> PromptFn:
    """The prompt function ``name`` bound to its own ``random.Random(seed)``.

    Args:
        name: one of ``PROMPT_FUNCTIONS`` (``simple_animals``, ``imagenet_animals``,
            ``nouns_activities``).
        seed: seed of the generator; ``None`` seeds it from the OS.

    Raises:
        ValueError: if ``name`` is unknown.
    """
    if name not in PROMPT_FUNCTIONS:
        raise ValueError(f"name must be one of {sorted(PROMPT_FUNCTIONS)}, got {name!r}")
    return partial(PROMPT_FUNCTIONS[name], random.Random(seed))
