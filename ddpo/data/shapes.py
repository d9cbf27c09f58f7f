"""A deterministic synthetic captioned dataset: one coloured shape on a plain background.

Captions come from a fixed grammar::

    a <colour> <shape> [<position phrase>] [on a <background> background]

for example ``"a red circle"``, ``"a green square on the left"`` or
``"a blue triangle at the top on a yellow background"``. An attribute the caption leaves out is
drawn at random when rendering (so ``"a red circle"`` shows a red circle anywhere, on any
background other than red).

Images are rendered with torch, vectorised over a batch, with anti-aliased edges from a signed
distance to each shape's outline. The same renderer draws the templates the alignment reward
(:mod:`ddpo.rewards.alignment`) compares images against.

Metadata of a prompt is a dict ``{"colour": str, "shape": str, "position": str | None,
"background": str | None}``; ``None`` means the caption does not name it.
"""

import math
import re
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

IMAGE_SIZE = 64

#: Palette (RGB in [0, 1]) of every colour the grammar can name.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.20),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "purple": (0.60, 0.20, 0.80),
    "orange": (1.00, 0.55, 0.00),
    "white": (0.97, 0.97, 0.97),
    "black": (0.05, 0.05, 0.05),
    "gray": (0.50, 0.50, 0.50),
}
#: Colours a shape can have (chromatic ones).
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
#: Colours a background can have (any palette colour other than the shape's).
BACKGROUNDS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
POSITION_PHRASES: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
#: Centre of each position as a fraction of the image side, (x, y) with y pointing down.
POSITION_CENTERS: dict[str, tuple[float, float]] = {
    "left": (19 / 64, 0.5),
    "right": (45 / 64, 0.5),
    "top": (0.5, 19 / 64),
    "bottom": (0.5, 45 / 64),
    "center": (0.5, 0.5),
}
#: Shape half-extent ("size") range in pixels of a 64x64 image, and position jitter.
SIZE_RANGE = (8.0, 12.0)
POSITION_JITTER = 2.0
COLOUR_JITTER = 0.04

#: Area of each shape in units of size**2 (analytic; see ``_shape_inside``).
_SQUARE_HALF = 0.85
_TRIANGLE_CIRCUMRADIUS = 1.25
_CROSS_HALF_WIDTH = 0.35
SHAPE_AREA: dict[str, float] = {
    "circle": math.pi,
    "square": (2 * _SQUARE_HALF) ** 2,
    "triangle": 3 * math.sqrt(3) / 4 * _TRIANGLE_CIRCUMRADIUS**2,
    "cross": 8 * _CROSS_HALF_WIDTH - 4 * _CROSS_HALF_WIDTH**2,
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

Metadata = dict[str, str | None]


def _check_metadata(metadata: dict[str, Any]) -> None:
    colour, shape = metadata.get("colour"), metadata.get("shape")
    position, background = metadata.get("position"), metadata.get("background")
    if colour not in COLOURS:
        raise ValueError(f"metadata['colour'] must be one of {COLOURS}, got {colour!r}")
    if shape not in SHAPES:
        raise ValueError(f"metadata['shape'] must be one of {SHAPES}, got {shape!r}")
    if position is not None and position not in POSITIONS:
        raise ValueError(f"metadata['position'] must be None or in {POSITIONS}, got {position!r}")
    if background is not None and (background not in BACKGROUNDS or background == colour):
        raise ValueError(
            f"metadata['background'] must be None or a palette colour other than the shape's "
            f"colour {colour!r}, got {background!r}"
        )


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


# ---------------------------------------------------------------------------------------------
# Rendering


def _shape_inside(
    shape_index: Int[Tensor, " batch"],
    center_x: Float[Tensor, " batch"],
    center_y: Float[Tensor, " batch"],
    size: Float[Tensor, " batch"],
    height: int,
    width: int,
) -> Float[Tensor, "batch height width"]:
    """Signed distance (pixels, positive inside) to each shape's outline on a pixel grid."""
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    dx = (xs.view(1, 1, width) - center_x.view(-1, 1, 1)).expand(-1, height, width)
    dy = (ys.view(1, height, 1) - center_y.view(-1, 1, 1)).expand(-1, height, width)
    s = size.view(-1, 1, 1)
    adx, ady = dx.abs(), dy.abs()
    # 1. circle of radius s
    circle = s - torch.sqrt(dx**2 + dy**2)
    # 2. axis-aligned square of half-side 0.85 s
    square = _SQUARE_HALF * s - torch.maximum(adx, ady)
    # 3. upward equilateral triangle, centroid at the centre, circumradius 1.25 s
    inradius = _TRIANGLE_CIRCUMRADIUS * s / 2
    sin60, cos60 = math.sqrt(3) / 2, 0.5
    edges = torch.stack([dy, -sin60 * dx - cos60 * dy, sin60 * dx - cos60 * dy])
    triangle = inradius - edges.amax(dim=0)
    # 4. plus sign: two bars of half-length s and half-width 0.35 s
    w = _CROSS_HALF_WIDTH * s
    cross = torch.maximum(torch.minimum(s - adx, w - ady), torch.minimum(w - adx, s - ady))
    stacked = torch.stack([circle, square, triangle, cross], dim=1)
    index = shape_index.view(-1, 1, 1, 1).expand(-1, 1, height, width)
    return stacked.gather(1, index).squeeze(1)


def shape_masks(
    shape_index: Int[Tensor, " batch"],
    center_x: Float[Tensor, " batch"],
    center_y: Float[Tensor, " batch"],
    size: Float[Tensor, " batch"],
    *,
    height: int = IMAGE_SIZE,
    width: int = IMAGE_SIZE,
) -> Float[Tensor, "batch height width"]:
    """Anti-aliased coverage in [0, 1] of shape ``SHAPES[shape_index]`` at the given place.

    Centres and sizes are in pixels (x right, y down); ``size`` is the shape's half-extent.
    """
    inside = _shape_inside(shape_index, center_x, center_y, size, height, width)
    return (inside + 0.5).clamp(0.0, 1.0)


def render_params(
    shape_index: Int[Tensor, " batch"],
    center_x: Float[Tensor, " batch"],
    center_y: Float[Tensor, " batch"],
    size: Float[Tensor, " batch"],
    colour: Float[Tensor, "batch 3"],
    background: Float[Tensor, "batch 3"],
    *,
    height: int = IMAGE_SIZE,
    width: int = IMAGE_SIZE,
) -> Float[Tensor, "batch 3 height width"]:
    """Render a batch of scenes from explicit parameters (pixels; RGB in [0, 1])."""
    alpha = shape_masks(shape_index, center_x, center_y, size, height=height, width=width)
    alpha = alpha.unsqueeze(1)
    fg = colour.view(-1, 3, 1, 1)
    bg = background.view(-1, 3, 1, 1)
    return (alpha * fg + (1 - alpha) * bg).clamp(0.0, 1.0)


def render_batch(
    metadata: Sequence[dict[str, Any]], generator: torch.Generator
) -> Float[Tensor, "batch 3 64 64"]:
    """Render one 64x64 image per metadata dict; unnamed attributes and jitter from ``generator``.

    Returns:
        Float images ``(batch, 3, 64, 64)`` in [0, 1].
    """
    n = len(metadata)
    if n == 0:
        raise ValueError("metadata must hold at least one dict, got an empty sequence")
    for meta in metadata:
        _check_metadata(meta)
    u = torch.rand(n, 8, generator=generator)
    shape_index = torch.tensor([SHAPES.index(m["shape"]) for m in metadata])
    centers = []
    backgrounds = []
    for i, meta in enumerate(metadata):
        position = meta.get("position")
        if position is None:
            position = POSITIONS[int(u[i, 0] * len(POSITIONS))]
        centers.append(POSITION_CENTERS[position])
        background = meta.get("background")
        if background is None:
            choices = [b for b in BACKGROUNDS if b != meta["colour"]]
            background = choices[int(u[i, 1] * len(choices))]
        backgrounds.append(PALETTE[background])
    center = torch.tensor(centers) * IMAGE_SIZE + (u[:, 2:4] * 2 - 1) * POSITION_JITTER
    lo, hi = SIZE_RANGE
    size = lo + (hi - lo) * u[:, 4]
    jitter = (torch.rand(n, 2, 3, generator=generator) * 2 - 1) * COLOUR_JITTER
    colour = torch.tensor([PALETTE[m["colour"]] for m in metadata]) + jitter[:, 0]
    background_rgb = torch.tensor(backgrounds) + jitter[:, 1]
    return render_params(
        shape_index,
        center[:, 0],
        center[:, 1],
        size,
        colour.clamp(0, 1),
        background_rgb.clamp(0, 1),
    )


def render(metadata: dict[str, Any], seed: int = 0) -> Float[Tensor, "3 64 64"]:
    """Render one 64x64 image of ``metadata``, deterministic from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return render_batch([metadata], generator)[0]


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
