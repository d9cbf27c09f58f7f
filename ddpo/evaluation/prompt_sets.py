"""Evaluation prompt sets by name: prompts a run does not train on, with their metadata.

- ``shapes_heldout``: the held-out captions of the shapes grammar (`ddpo.data.shapes`, split
  ``"heldout"``), which the tiny shapes models never saw and ``ddpo train``'s default preset
  never draws; metadata as the ``alignment`` reward reads it.
- ``text_rendering_heldout``: things carrying a quoted word or phrase, for the ``ocr`` reward,
  written for this set: none of its phrases or things is in the training set ``text_rendering``
  (`ddpo.prompts.TEXT_PHRASES`, `ddpo.prompts.TEXT_TEMPLATES`); metadata ``{"text": phrase}``.

An evaluation takes the first ``num_prompts`` of a set in a fixed, seeded order
(`eval_prompts`), so that two evaluations with the same arguments score the same prompts.
"""

import random
from typing import Any, Literal, get_args

__all__ = [
    "EVAL_PROMPT_SETS",
    "HELDOUT_TEXT_PHRASES",
    "HELDOUT_TEXT_TEMPLATES",
    "EvalPromptSetName",
    "eval_prompts",
]

EvalPromptSetName = Literal["shapes_heldout", "text_rendering_heldout"]
EVAL_PROMPT_SETS: tuple[EvalPromptSetName, ...] = get_args(EvalPromptSetName)

HELDOUT_TEXT_TEMPLATES: tuple[str, ...] = (
    'a paper lantern with "{text}" painted on it',
    'a license plate that reads "{text}"',
    'a hot air balloon with "{text}" written on it',
    'a mailbox with "{text}" painted on its side',
    'a kite with "{text}" printed on it',
    'a bus with "{text}" on its destination sign',
    'a sandwich board on a pavement that reads "{text}"',
    'a brass plaque engraved with "{text}"',
)
HELDOUT_TEXT_PHRASES: tuple[str, ...] = (
    "RIVER", "CANDLE", "ORBIT", "SALT", "MAPLE", "HARBOR LIGHTS", "NIGHT OWL", "ZERO",
    "Paper Moon", "Slow Down", "Green Tea", "Far Away",
)  # fmt: skip


def _text_rendering_heldout() -> list[tuple[str, dict[str, Any]]]:
    return [
        (template.format(text=phrase), {"text": phrase, "template": index})
        for index, template in enumerate(HELDOUT_TEXT_TEMPLATES)
        for phrase in HELDOUT_TEXT_PHRASES
    ]


def _shapes_heldout() -> list[tuple[str, dict[str, Any]]]:
    from ddpo.data.shapes import all_prompts

    return [(prompt, dict(meta)) for prompt, meta in all_prompts("heldout")]


def eval_prompts(
    name: str, num_prompts: int | None = None, *, seed: int = 0
) -> list[tuple[str, dict[str, Any]]]:
    """The first ``num_prompts`` prompts of the set ``name`` (all of them: ``None``) in an order
    shuffled by ``seed``, as ``(prompt, metadata)`` pairs.

    Raises:
        ValueError: naming the set or the count when either is bad.
    """
    if name not in EVAL_PROMPT_SETS:
        raise ValueError(f"eval prompt set must be one of {EVAL_PROMPT_SETS}, got {name!r}")
    pool = _shapes_heldout() if name == "shapes_heldout" else _text_rendering_heldout()
    if num_prompts is not None and (
        isinstance(num_prompts, bool) or not isinstance(num_prompts, int) or num_prompts < 1
    ):
        raise ValueError(f"num_prompts must be a positive int or None, got {num_prompts!r}")
    if num_prompts is not None and num_prompts > len(pool):
        raise ValueError(
            f"num_prompts={num_prompts} is more than the {len(pool)} prompts of {name!r}"
        )
    random.Random(seed).shuffle(pool)
    return pool if num_prompts is None else pool[:num_prompts]
