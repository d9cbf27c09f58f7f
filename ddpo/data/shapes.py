"""A deterministic synthetic captioned dataset: one coloured shape on a plain background.

Captions come from a fixed grammar::

    a <colour> <shape> [<position phrase>] [on a <background> background]

for example ``"a red circle"``, ``"a green square on the left"`` or
``"a blue triangle at the top on a yellow background"``. An attribute the caption leaves out is
drawn at random when rendering (so ``"a red circle"`` shows a red circle anywhere, on any
background other than red).

This module holds the grammar (captions, parsing, the train/held-out split), the sampling of
prompts and the data sets; the scenes' attributes and the renderer are in
:mod:`ddpo.data.rendering`, whose names are re-exported here.

Metadata of a prompt is a dict ``{"colour": str, "shape": str, "position": str | None,
"background": str | None}``; ``None`` means the caption does not name it.
"""

import re
import zlib
from collections.abc import Iterator
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ddpo.data.rendering import (
    BACKGROUNDS,
    COLOUR_JITTER,
    COLOURS,
    IMAGE_SIZE,
    PALETTE,
    POSITION_CENTERS,
    POSITION_JITTER,
    POSITIONS,
    SHAPE_AREA,
    SHAPES,
    SIZE_RANGE,
    Metadata,
    _check_metadata,
    render,
    render_batch,
    render_params,
    shape_masks,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "COLOUR_JITTER",
    "IMAGE_SIZE",
    "PALETTE",
    "POSITIONS",
    "POSITION_CENTERS",
    "POSITION_JITTER",
    "POSITION_PHRASES",
    "P_BACKGROUND",
    "P_POSITION",
    "SHAPES",
    "SHAPE_AREA",
    "SIZE_RANGE",
    "Metadata",
    "ShapesDataset",
    "ShapesPromptFn",
    "all_prompts",
    "batches",
    "caption",
    "is_held_out",
    "parse_prompt",
    "prompt_fn",
    "render",
    "render_batch",
    "render_params",
    "sample_metadata",
    "shape_masks",
    "vocabulary",
]

#: How a caption names each position.
POSITION_PHRASES: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}

# Probability that a sampled caption names the position / the background.
P_POSITION = 0.5
P_BACKGROUND = 0.5

_PROMPT_RE = re.compile(
    r"^\s*an?\s+(?P<colour>[a-z]+)\s+(?P<shape>[a-z]+)"
    r"(?:\s+(?P<position>on the left|on the right|at the top|at the bottom|in the center))?"
    r"(?:\s+on an?\s+(?P<background>[a-z]+)\s+background)?\s*\.?\s*$"
)
_PHRASE_TO_POSITION = {phrase: pos for pos, phrase in POSITION_PHRASES.items()}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(metadata: dict[str, Any]) -> str:
    """The grammar's caption for ``metadata`` (colour, shape, optional position and background)."""
    _check_metadata(metadata)
    text = f"{_article(metadata['colour'])} {metadata['colour']} {metadata['shape']}"
    if metadata.get("position") is not None:
        text += " " + POSITION_PHRASES[metadata["position"]]
    if metadata.get("background") is not None:
        background = metadata["background"]
        text += f" on {_article(background)} {background} background"
    return text


def parse_prompt(prompt: str) -> Metadata:
    """Parse a caption of the grammar back into its metadata dict.

    Raises:
        ValueError: if ``prompt`` is not a caption of the grammar.
    """
    match = _PROMPT_RE.match(prompt.lower())
    if match is None:
        raise ValueError(f"prompt is not a caption of the shapes grammar: {prompt!r}")
    phrase = match.group("position")
    metadata: Metadata = {
        "colour": match.group("colour"),
        "shape": match.group("shape"),
        "position": None if phrase is None else _PHRASE_TO_POSITION[phrase],
        "background": match.group("background"),
    }
    try:
        _check_metadata(metadata)
    except ValueError as err:
        raise ValueError(f"prompt is not a caption of the shapes grammar: {prompt!r}") from err
    return metadata


def vocabulary() -> list[str]:
    """Every word the grammar uses (for a tokenizer whose vocabulary makes each one token)."""
    words = ["a", "an", "on", "the", "at", "in", "background"]
    words += [*PALETTE, *SHAPES, *POSITIONS]
    return list(dict.fromkeys(words))


def is_held_out(metadata: dict[str, Any]) -> bool:
    """Whether a prompt belongs to the held-out evaluation split.

    Held out: about a fifth of the captions that name both a position and a background, chosen
    by a hash of the caption. Every colour-shape pair (and every single attribute) still occurs
    in training; held-out prompts are new combinations of them.
    """
    if metadata.get("position") is None or metadata.get("background") is None:
        return False
    return zlib.crc32(caption(metadata).encode()) % 5 == 0


def all_prompts(split: str = "all") -> list[tuple[str, Metadata]]:
    """Every caption of the grammar in a fixed order, restricted to ``split``.

    Args:
        split: ``"train"``, ``"heldout"`` or ``"all"``.
    """
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    out: list[tuple[str, Metadata]] = []
    for colour in COLOURS:
        for shape in SHAPES:
            for position in (None, *POSITIONS):
                for background in (None, *BACKGROUNDS):
                    if background == colour:
                        continue
                    meta: Metadata = {
                        "colour": colour,
                        "shape": shape,
                        "position": position,
                        "background": background,
                    }
                    held = is_held_out(meta)
                    if split == "all" or (split == "heldout") == held:
                        out.append((caption(meta), meta))
    return out


def sample_metadata(generator: torch.Generator, split: str = "train") -> Metadata:
    """Draw one prompt's metadata from ``split`` (``"train"``, ``"heldout"`` or ``"all"``)."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    if split == "heldout":
        pool = all_prompts("heldout")
        index = int(torch.randint(len(pool), (1,), generator=generator))
        return dict(pool[index][1])
    while True:
        u = torch.rand(4, generator=generator).tolist()
        colour = COLOURS[int(u[0] * len(COLOURS))]
        shape = SHAPES[int(u[1] * len(SHAPES))]
        position = None
        if u[2] < P_POSITION:
            position = POSITIONS[int(u[2] / P_POSITION * len(POSITIONS))]
        background = None
        if u[3] < P_BACKGROUND:
            choices = [b for b in BACKGROUNDS if b != colour]
            background = choices[int(u[3] / P_BACKGROUND * len(choices))]
        meta: Metadata = {
            "colour": colour,
            "shape": shape,
            "position": position,
            "background": background,
        }
        if split == "all" or not is_held_out(meta):
            return meta


class ShapesPromptFn:
    """A prompt function ``() -> (prompt, metadata)`` drawing captions of ``split`` with its own
    ``torch.Generator``; checkpointable (``state_dict`` / ``load_state_dict``). Built by
    :func:`prompt_fn`.
    """

    def __init__(self, seed: int | None = None, split: str = "train") -> None:
        if split not in ("train", "heldout", "all"):
            raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
        self.split = split
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def __call__(self) -> tuple[str, Metadata]:
        meta = sample_metadata(self.generator, self.split)
        return caption(meta), meta

    def __repr__(self) -> str:
        return f"ShapesPromptFn(split={self.split!r})"

    def state_dict(self) -> dict[str, Any]:
        """``{"split": split, "generator": <the generator's state bytes as a list of ints>}``."""
        return {"split": self.split, "generator": self.generator.get_state().tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state_dict`).

        Raises:
            ValueError: if ``state`` is not one of a ``ShapesPromptFn`` of the same split.
        """
        missing = [key for key in ("split", "generator") if key not in state]
        if missing:
            raise ValueError(f"ShapesPromptFn.load_state_dict: state lacks {missing}")
        if state["split"] != self.split:
            raise ValueError(
                f"ShapesPromptFn.load_state_dict: the state is of split {state['split']!r}, "
                f"this function draws split {self.split!r}"
            )
        try:
            self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"ShapesPromptFn.load_state_dict: 'generator' is not a torch.Generator state: {err}"
            ) from err


def prompt_fn(seed: int | None = None, split: str = "train") -> ShapesPromptFn:
    """A prompt function ``() -> (prompt, metadata)`` drawing captions of the grammar.

    Args:
        seed: seed of its own generator (``None``: a random seed).
        split: ``"train"``, ``"heldout"`` or ``"all"``.

    Returns:
        A checkpointable :class:`ShapesPromptFn`.
    """
    return ShapesPromptFn(seed, split)


class ShapesDataset(torch.utils.data.Dataset[tuple[Tensor, str, Metadata]]):
    """A fixed-length captioned dataset; item ``i`` is deterministic from ``(seed, i)``.

    Each item is ``(image (3, 64, 64) float in [0, 1], caption, metadata)``.
    """

    def __init__(self, length: int, *, seed: int = 0, split: str = "train") -> None:
        if length <= 0:
            raise ValueError(f"length must be positive, got {length}")
        if split not in ("train", "heldout", "all"):
            raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
        self.length = length
        self.seed = seed
        self.split = split

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, str, Metadata]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for length {self.length}")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        meta = sample_metadata(generator, self.split)
        return render_batch([meta], generator)[0], caption(meta), meta


def batches(
    batch_size: int, *, seed: int = 0, split: str = "train"
) -> Iterator[tuple[Float[Tensor, "batch 3 64 64"], list[str], list[Metadata]]]:
    """An endless stream of rendered batches ``(images, captions, metadata)`` from ``seed``."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    while True:
        metas = [sample_metadata(generator, split) for _ in range(batch_size)]
        images = render_batch(metas, generator)
        yield images, [caption(m) for m in metas], metas
