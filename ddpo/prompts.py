"""Prompt functions shipped with the library: ``() -> (prompt, metadata)``, as DDPOTrainer expects.

Each function draws from the module-level :mod:`random` generator when called with no argument,
as the DDPO reference did; pass ``rng=random.Random(seed)`` (or build a bound function with
:func:`make_prompt_fn`) for a reproducible stream of prompts.

- :func:`simple_animals`: one of the reference's 51 common animals, e.g. ``"cat"``.
- :func:`imagenet_animals`: one of the 398 ImageNet-1k animal classes (indices 0-397).
- :func:`nouns_activities`: ``"a <animal> <activity>"`` from the reference's prompt-alignment
  task, e.g. ``"an octopus riding a bike"``.
- :func:`text_rendering`: a thing that carries a quoted word or phrase, e.g. ``'a wooden sign
  that says "OPEN"'``, for the ``ocr`` reward (which reads the quoted text back).

The prompt-function objects built here (:class:`SeededPromptFn`, and the wrappers
:class:`RepeatPrompts` and :class:`PoolPrompts`) are checkpointable: ``state_dict()`` returns
their position in the prompt stream as JSON-serialisable data, and ``load_state_dict(state)``
puts a freshly built function back there, so a resumed run draws the prompts an uninterrupted
run would have drawn. A wrapper's state nests its inner function's (``"inner"``).

The prompt sets by name (the ``--prompts`` choices of ``ddpo train``) are :data:`PROMPT_SETS`:
:func:`build_prompt_fn` builds one, :func:`training_prompt_fn` wraps it as a training run
draws it (a fixed pool, each prompt repeated).
"""

import random
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, get_args, runtime_checkable

from ddpo._prompt_lists import (
    ACTIVITIES,
    IMAGENET_ANIMALS,
    SIMPLE_ANIMALS,
    TEXT_PHRASES,
    TEXT_TEMPLATES,
)

PromptFn = Callable[[], tuple[str, dict[str, Any]]]
PromptSetName = Literal[
    "shapes", "simple_animals", "imagenet_animals", "nouns_activities", "text_rendering"
]
PROMPT_SETS: tuple[PromptSetName, ...] = get_args(PromptSetName)


@runtime_checkable
class CheckpointablePromptFn(Protocol):
    """A prompt function that can save and restore its place in its prompt stream.

    ``state_dict()`` returns JSON-serialisable data (dicts with str keys, lists, str, numbers,
    None); ``load_state_dict(state)`` makes a freshly built function continue from there.
    """

    def __call__(self) -> tuple[str, dict[str, Any]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


__all__ = [
    "ACTIVITIES",
    "IMAGENET_ANIMALS",
    "PROMPT_FUNCTIONS",
    "PROMPT_SETS",
    "SIMPLE_ANIMALS",
    "TEXT_PHRASES",
    "TEXT_TEMPLATES",
    "CheckpointablePromptFn",
    "PoolPrompts",
    "PromptFn",
    "PromptSetName",
    "RepeatPrompts",
    "SeededPromptFn",
    "build_prompt_fn",
    "imagenet_animals",
    "make_prompt_fn",
    "nouns_activities",
    "random_state_from_json",
    "random_state_to_json",
    "simple_animals",
    "text_rendering",
    "training_prompt_fn",
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


def text_rendering(rng: random.Random | None = None) -> tuple[str, dict[str, Any]]:
    """A thing carrying a quoted phrase, ``'a wooden sign that says "OPEN"'``: one of
    ``TEXT_TEMPLATES`` (24) filled with one of ``TEXT_PHRASES`` (48); metadata
    ``{"text": phrase, "template": index}``, the phrase being the text the ``ocr`` reward reads."""
    generator = _rng(rng)
    index = generator.randrange(len(TEXT_TEMPLATES))
    text = generator.choice(TEXT_PHRASES)
    return TEXT_TEMPLATES[index].format(text=text), {"text": text, "template": index}


PROMPT_FUNCTIONS: dict[str, Callable[..., tuple[str, dict[str, Any]]]] = {
    "simple_animals": simple_animals,
    "imagenet_animals": imagenet_animals,
    "nouns_activities": nouns_activities,
    "text_rendering": text_rendering,
}


# ---------------------------------------------------------------------------------------------
# Checkpointable prompt functions


def random_state_to_json(rng: random.Random) -> dict[str, Any]:
    """``rng.getstate()`` as JSON-serialisable data (the Mersenne Twister's 625 words as a list)."""
    version, internal, gauss_next = rng.getstate()
    return {"version": version, "internal": list(internal), "gauss_next": gauss_next}


def random_state_from_json(rng: random.Random, state: dict[str, Any]) -> None:
    """Set ``rng`` to a state written by :func:`random_state_to_json`.

    Raises:
        ValueError: if ``state`` is not such a state (the message says what is wrong).
    """
    try:
        rng.setstate((state["version"], tuple(state["internal"]), state["gauss_next"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"not a random.Random state (keys 'version', 'internal', 'gauss_next'): {err!r}"
        ) from err


def _state_of(prompt_fn: PromptFn) -> dict[str, Any] | None:
    state_dict = getattr(prompt_fn, "state_dict", None)
    return state_dict() if callable(state_dict) else None


def _load_inner(prompt_fn: PromptFn, state: dict[str, Any] | None, owner: str) -> None:
    load = getattr(prompt_fn, "load_state_dict", None)
    if (state is None) != (not callable(load)):
        raise ValueError(
            f"{owner}: the saved state is for an inner prompt function "
            f"{'without' if state is None else 'with'} state, but {prompt_fn!r} "
            f"{'keeps' if state is None else 'keeps no'} state; build the same prompt function "
            "as the run that saved it"
        )
    if state is not None and load is not None:
        # A state of another kind of function (a pool where fresh prompts are drawn now, ...)
        # is named by the setting that builds it, whatever the inner function would say.
        own = _state_of(prompt_fn)
        saved = _describe_state(state)
        if own is not None and set(own) != set(state) and saved is not None:
            raise _changed_settings(owner, saved, prompt_fn)
        load(state)


def _check_keys(state: dict[str, Any], keys: tuple[str, ...], owner: str, fn: PromptFn) -> None:
    missing = [key for key in keys if key not in state]
    if missing:
        saved = _describe_state(state)
        if saved is not None:
            raise _changed_settings(f"{owner}.load_state_dict", saved, fn)
        raise ValueError(f"{owner}.load_state_dict: state lacks {missing} (has {sorted(state)})")


_CHANGED = (
    "the prompt settings changed since it was saved; build the prompt function the run was "
    "started with"
)


def _changed_settings(owner: str, saved: str, fn: PromptFn) -> ValueError:
    return ValueError(
        f"{owner}: the saved state is of {saved}, but this function draws {_describe(fn)}: "
        f"{_CHANGED}"
    )


def _describe_state(state: Any) -> str | None:
    """The prompt function that saved ``state`` (known by its keys), in the words of the
    settings that build it (`training_prompt_fn`'s); None for an unknown state."""
    keys = set(state) if isinstance(state, dict) else set()
    if keys == {"left", "item", "inner"}:
        return "each prompt repeated (prompt_repeats)"
    if keys == {"position", "pool", "inner"}:
        size = len(state["pool"]) if isinstance(state["pool"], list) else "?"
        return f"a fixed pool of {size} prompts (prompt_pool={size})"
    if keys == {"name", "rng"}:
        name = state["name"]
        return f"fresh prompts of the set {name!r} (prompts={name!r}, prompt_pool=0)"
    if keys == {"split", "generator"}:
        return "fresh prompts of the shapes grammar (prompts='shapes', prompt_pool=0)"
    return None


def _describe(fn: PromptFn) -> str:
    """``fn`` in the words of `_describe_state`."""
    if isinstance(fn, RepeatPrompts):
        return f"each prompt repeated {fn.repeats} times (prompt_repeats={fn.repeats})"
    if isinstance(fn, PoolPrompts):
        return f"a fixed pool of {len(fn.pool)} prompts (prompt_pool={len(fn.pool)})"
    if isinstance(fn, SeededPromptFn):
        return f"fresh prompts of the set {fn.name!r} (prompts={fn.name!r}, prompt_pool=0)"
    if type(fn).__name__ == "ShapesPromptFn":  # ddpo.data.shapes, which imports torch
        return "fresh prompts of the shapes grammar (prompts='shapes', prompt_pool=0)"
    return repr(fn)


def _item_from_json(item: Any) -> tuple[str, dict[str, Any]]:
    prompt, metadata = item
    return str(prompt), dict(metadata)


class SeededPromptFn:
    """The prompt function ``name`` of :data:`PROMPT_FUNCTIONS` drawing from its own
    ``random.Random(seed)``; built by :func:`make_prompt_fn`.

    Raises:
        ValueError: if ``name`` is unknown.
    """

    def __init__(self, name: str, seed: int | None = None) -> None:
        if name not in PROMPT_FUNCTIONS:
            raise ValueError(f"name must be one of {sorted(PROMPT_FUNCTIONS)}, got {name!r}")
        self.name = name
        self.rng = random.Random(seed)

    def __call__(self) -> tuple[str, dict[str, Any]]:
        return PROMPT_FUNCTIONS[self.name](self.rng)

    def __repr__(self) -> str:
        return f"SeededPromptFn({self.name!r})"

    def state_dict(self) -> dict[str, Any]:
        """``{"name": name, "rng": <the generator's state>}``, JSON-serialisable."""
        return {"name": self.name, "rng": random_state_to_json(self.rng)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state_dict`).

        Raises:
            ValueError: if ``state`` is not one of a ``SeededPromptFn`` of the same ``name``.
        """
        _check_keys(state, ("name", "rng"), "SeededPromptFn", self)
        if state["name"] != self.name:
            raise ValueError(
                f"SeededPromptFn.load_state_dict: the state is of prompt function "
                f"{state['name']!r}, this one is {self.name!r} (prompts={state['name']!r} then, "
                f"{self.name!r} now): {_CHANGED}"
            )
        random_state_from_json(self.rng, state["rng"])


class RepeatPrompts:
    """A prompt function returning each prompt of ``prompt_fn`` ``repeats`` times in a row
    (each time with a fresh copy of its metadata dict).

    Raises:
        ValueError: if ``repeats`` is not positive.
    """

    def __init__(self, prompt_fn: PromptFn, repeats: int) -> None:
        if repeats <= 0:
            raise ValueError(f"repeats must be positive, got {repeats}")
        self.prompt_fn = prompt_fn
        self.repeats = repeats
        self.left = 0
        self.item: tuple[str, dict[str, Any]] | None = None

    def __call__(self) -> tuple[str, dict[str, Any]]:
        if self.left == 0 or self.item is None:
            self.item, self.left = self.prompt_fn(), self.repeats
        self.left -= 1
        prompt, metadata = self.item
        return prompt, dict(metadata)

    def __repr__(self) -> str:
        return f"RepeatPrompts({self.prompt_fn!r}, {self.repeats})"

    def state_dict(self) -> dict[str, Any]:
        """``{"left": n, "item": [prompt, metadata] or None, "inner": <prompt_fn's state>}``
        (``inner`` is None for a prompt function without ``state_dict``)."""
        item = None if self.item is None else [self.item[0], dict(self.item[1])]
        return {"left": self.left, "item": item, "inner": _state_of(self.prompt_fn)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state_dict`), the inner function's included.

        Raises:
            ValueError: if ``state`` does not fit this function.
        """
        _check_keys(state, ("left", "item", "inner"), "RepeatPrompts", self)
        left = state["left"]
        if not isinstance(left, bool) and isinstance(left, int) and left >= self.repeats >= 1:
            raise ValueError(
                f"RepeatPrompts.load_state_dict: the state is of a function that repeats each "
                f"prompt more than {left} times, this one repeats it {self.repeats} times "
                f"(prompt_repeats={self.repeats}): {_CHANGED}"
            )
        if isinstance(left, bool) or not isinstance(left, int) or not 0 <= left < self.repeats:
            raise ValueError(
                f"RepeatPrompts.load_state_dict: left must be an int in [0, {self.repeats}) "
                f"(repeats={self.repeats}), got {left!r}"
            )
        _load_inner(self.prompt_fn, state["inner"], "RepeatPrompts")
        self.left = left
        self.item = None if state["item"] is None else _item_from_json(state["item"])


class PoolPrompts:
    """A prompt function cycling, in order, through ``size`` prompts drawn once from
    ``prompt_fn`` (each time with a fresh copy of its metadata dict).

    Raises:
        ValueError: if ``size`` is not positive.
    """

    def __init__(self, prompt_fn: PromptFn, size: int) -> None:
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        self.prompt_fn = prompt_fn
        self.pool = [prompt_fn() for _ in range(size)]
        self.position = 0

    def __call__(self) -> tuple[str, dict[str, Any]]:
        prompt, metadata = self.pool[self.position]
        self.position = (self.position + 1) % len(self.pool)
        return prompt, dict(metadata)

    def __repr__(self) -> str:
        return f"PoolPrompts({self.prompt_fn!r}, {len(self.pool)})"

    def state_dict(self) -> dict[str, Any]:
        """``{"position": i, "pool": [[prompt, metadata], ...], "inner": <prompt_fn's state>}``."""
        pool = [[prompt, dict(metadata)] for prompt, metadata in self.pool]
        return {"position": self.position, "pool": pool, "inner": _state_of(self.prompt_fn)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state_dict`): its pool, at its position.

        Raises:
            ValueError: if ``state`` does not fit this function (e.g. another pool size).
        """
        _check_keys(state, ("position", "pool", "inner"), "PoolPrompts", self)
        pool, position = state["pool"], state["position"]
        if len(pool) != len(self.pool):
            raise ValueError(
                f"PoolPrompts.load_state_dict: the state holds a pool of {len(pool)} prompts, "
                f"this function one of {len(self.pool)} (prompt_pool={len(pool)} then, "
                f"{len(self.pool)} now): {_CHANGED}"
            )
        if isinstance(position, bool) or not isinstance(position, int):
            raise ValueError(
                f"PoolPrompts.load_state_dict: position must be an int, got {position!r}"
            )
        if not 0 <= position < len(pool):
            raise ValueError(
                f"PoolPrompts.load_state_dict: position must be in [0, {len(pool)}), got {position}"
            )
        _load_inner(self.prompt_fn, state["inner"], "PoolPrompts")
        self.pool = [_item_from_json(item) for item in pool]
        self.position = position


def make_prompt_fn(name: str, *, seed: int | None = None) -> SeededPromptFn:
    """The prompt function ``name`` bound to its own ``random.Random(seed)`` (checkpointable).

    Args:
        name: one of ``PROMPT_FUNCTIONS`` (``simple_animals``, ``imagenet_animals``,
            ``nouns_activities``, ``text_rendering``).
        seed: seed of the generator; ``None`` seeds it from the OS.

    Raises:
        ValueError: if ``name`` is unknown.
    """
    return SeededPromptFn(name, seed)


# ---------------------------------------------------------------------------------------------
# Prompt sets by name


def build_prompt_fn(name: str, *, seed: int) -> CheckpointablePromptFn:
    """The prompt set ``name`` of :data:`PROMPT_SETS` drawing from its own generator seeded by
    ``seed`` (checkpointable): ``shapes`` is the tiny model's caption grammar
    (:func:`ddpo.data.shapes.prompt_fn`), the others :func:`make_prompt_fn`.

    Raises:
        ValueError: if the name is unknown.
    """
    if name not in PROMPT_SETS:
        raise ValueError(f"prompts must be one of {PROMPT_SETS}, got {name!r}")
    if name == "shapes":
        from ddpo.data import shapes  # imports torch, which the other sets do not need

        return shapes.prompt_fn(seed=seed)
    return make_prompt_fn(name, seed=seed)


def training_prompt_fn(
    name: str, *, seed: int, prompt_repeats: int, prompt_pool: int = 0, process_index: int = 0
) -> RepeatPrompts:
    """The prompts of a training run: the set ``name``, each prompt ``prompt_repeats`` times in a
    row (so that group advantages compare images of one prompt).

    With ``prompt_pool > 0`` every process cycles through the same pool of that many prompts,
    drawn once with ``seed`` (the paper trains on a fixed prompt list); with 0 each process draws
    fresh prompts with ``seed + 1000 * process_index``. Checkpointable, so that a resumed run
    continues its prompt stream.

    Raises:
        ValueError: if the set is unknown, ``prompt_pool`` is negative or ``prompt_repeats`` is
            not positive.
    """
    if prompt_pool < 0:
        raise ValueError(f"prompt_pool must be >= 0, got {prompt_pool}")
    if prompt_repeats <= 0:
        raise ValueError(f"prompt_repeats must be positive, got {prompt_repeats}")
    prompt_fn: PromptFn
    if prompt_pool:
        prompt_fn = PoolPrompts(build_prompt_fn(name, seed=seed), prompt_pool)
    else:
        prompt_fn = build_prompt_fn(name, seed=seed + 1000 * process_index)
    return RepeatPrompts(prompt_fn, prompt_repeats)
