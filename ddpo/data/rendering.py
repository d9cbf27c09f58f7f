"""The shapes scenes and their renderer: what a scene of :mod:`ddpo.data.shapes` can hold and how
it is drawn.

A scene is one coloured shape on a plain background; its metadata is a dict ``{"colour": str,
"shape": str, "position": str | None, "background": str | None}``, ``None`` where the caption
does not name it (an attribute left out is drawn at random when rendering).

Images are rendered with torch, vectorised over a batch, with anti-aliased edges from a signed
distance to each shape's outline. The same renderer draws the templates the alignment reward
(:mod:`ddpo.rewards.alignment`) compares images against. The caption grammar, the prompt
sampling and the data sets are in :mod:`ddpo.data.shapes` (which re-exports these names).
"""

import math
from collections.abc import Sequence
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
