"""A programmatic prompt-alignment reward for the shapes grammar (no learned model).

The analogue, cheap enough for a CPU, of the DDPO paper's prompt-image alignment task (there
scored by LLaVA + BERTScore): given a caption's parsed attributes (:mod:`ddpo.data.shapes`) and
an image, score each attribute from the pixels, vectorised over the batch:

- **background**: the median colour of a 2-pixel border ring, as a soft nearest-palette match;
- **colour**: among foreground pixels (those far from the background colour), the share of the
  named colour (soft nearest-palette per pixel), times its presence (named-colour area over a
  minimum shape area);
- **shape**: the foreground mask against a template of each shape rendered at the mask's centroid
  with the mask's area; softmax over the templates' IoUs, times the named template's IoU and a
  plausible-area factor;
- **position**: the foreground centroid against the five position centres (softmax over squared
  distances).

The reward is the weighted mean of the scores of the attributes the caption names (colour 0.35,
shape 0.35, position 0.15, background 0.15, renormalised), in [0, 1]. An image is *correct* when
each named attribute's best match is the named one (and the shape is present with a plausible
size); ``alignment_accuracy`` is the fraction of correct images.

`differentiable_alignment_reward_fn` is its differentiable form, for reward backpropagation
(``build_reward_fn("alignment", differentiable=True)``): the same arithmetic with gradients to
the images, the ring's mean in place of its median and a ramp in place of the position score's
presence step (`differentiable_alignment_scores` says exactly how it differs); its metadata
also reports the exact score of the same images.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from ddpo.data.shapes import (
    IMAGE_SIZE,
    PALETTE,
    POSITION_CENTERS,
    POSITIONS,
    SHAPE_AREA,
    SHAPES,
    SIZE_RANGE,
    Metadata,
    parse_prompt,
    prompt_fn,
    shape_masks,
)
from ddpo.rewards._preprocess import check_float_images

__all__ = [
    "WEIGHTS",
    "AlignmentScores",
    "alignment_accuracy",
    "alignment_prompt_fn",
    "alignment_reward_fn",
    "alignment_scores",
    "differentiable_alignment_reward_fn",
    "differentiable_alignment_scores",
    "resolve_metadata",
]

#: Weight of each attribute's score in the reward (renormalised over the named attributes).
WEIGHTS: dict[str, float] = {"colour": 0.35, "shape": 0.35, "position": 0.15, "background": 0.15}

_PALETTE_NAMES = tuple(PALETTE)
_PALETTE_RGB = torch.tensor([PALETTE[name] for name in _PALETTE_NAMES])
_POSITION_XY = torch.tensor([POSITION_CENTERS[p] for p in POSITIONS])
_SHAPE_AREA = torch.tensor([SHAPE_AREA[s] for s in SHAPES])
_BORDER = 2
# Soft-match temperatures: colour distance (RGB), IoU, position distance (fraction of side).
_COLOUR_SIGMA = 0.12
_FOREGROUND_DISTANCE = 0.18
_IOU_TEMPERATURE = 0.03
_POSITION_SIGMA = 0.08
# Plausible foreground areas (pixels of a 64x64 image): a generous band around the data's.
_MIN_AREA = 0.5 * SIZE_RANGE[0] ** 2 * min(SHAPE_AREA.values())
_MAX_AREA = 2.0 * SIZE_RANGE[1] ** 2 * max(SHAPE_AREA.values())


class AlignmentScores(NamedTuple):
    """Per-image scores in [0, 1] (NaN where the caption does not name the attribute)."""

    reward: Float[Tensor, " batch"]
    colour: Float[Tensor, " batch"]
    shape: Float[Tensor, " batch"]
    position: Float[Tensor, " batch"]
    background: Float[Tensor, " batch"]
    correct: Bool[Tensor, " batch"]
    colour_correct: Bool[Tensor, " batch"]
    shape_correct: Bool[Tensor, " batch"]
    position_correct: Bool[Tensor, " batch"]
    background_correct: Bool[Tensor, " batch"]


def resolve_metadata(
    prompts: Sequence[str] | None, prompt_metadata: Sequence[dict[str, Any]] | None, batch: int
) -> list[Metadata]:
    """Attributes of each prompt: its metadata dict when it names colour and shape, else parsed.

    Raises:
        ValueError: if the lengths differ from ``batch`` or a prompt is not of the grammar.
    """
    if prompt_metadata is not None and len(prompt_metadata) != batch:
        raise ValueError(f"prompt_metadata has length {len(prompt_metadata)}, expected {batch}")
    if prompts is not None and len(prompts) != batch:
        raise ValueError(f"prompts has length {len(prompts)}, expected {batch}")
    out: list[Metadata] = []
    for i in range(batch):
        meta = prompt_metadata[i] if prompt_metadata is not None else None
        if meta and "colour" in meta and "shape" in meta:
            out.append(
                {
                    "colour": meta["colour"],
                    "shape": meta["shape"],
                    "position": meta.get("position"),
                    "background": meta.get("background"),
                }
            )
        elif prompts is not None:
            out.append(parse_prompt(prompts[i]))
        else:
            raise ValueError(f"sample {i} has neither usable metadata nor a prompt")
    for i, meta in enumerate(out):
        if meta["colour"] not in _PALETTE_NAMES or meta["shape"] not in SHAPES:
            raise ValueError(f"metadata of sample {i} is not of the shapes grammar: {meta!r}")
        if meta["position"] is not None and meta["position"] not in POSITIONS:
            raise ValueError(f"metadata of sample {i} has an unknown position: {meta!r}")
        if meta["background"] is not None and meta["background"] not in _PALETTE_NAMES:
            raise ValueError(f"metadata of sample {i} has an unknown background: {meta!r}")
    return out


def _palette_probabilities(
    rgb: Float[Tensor, "*rest 3"],
) -> Float[Tensor, "*rest palette"]:
    """Soft nearest-palette assignment: softmax of -|rgb - palette_k|^2 / (2 sigma^2)."""
    distance2 = ((rgb.unsqueeze(-2) - _PALETTE_RGB.to(rgb)) ** 2).sum(-1)
    return torch.softmax(-distance2 / (2 * _COLOUR_SIGMA**2), dim=-1)


def _index(names: Sequence[str | None], table: Sequence[str], device: torch.device) -> Tensor:
    return torch.tensor([table.index(n) if n is not None else 0 for n in names], device=device)


class _Foreground(NamedTuple):
    """The soft foreground mask of each image, its area and its centroid (pixels)."""

    mask: Float[Tensor, "batch height width"]
    area: Float[Tensor, " batch"]
    center_x: Float[Tensor, " batch"]
    center_y: Float[Tensor, " batch"]


_EPS = 1e-6


def _background_rgb(
    pixels: Float[Tensor, "batch height width 3"], *, differentiable: bool
) -> Float[Tensor, "batch 3"]:
    """The colour of the 2-pixel border ring: its median (exact) or its mean (differentiable)."""
    n = pixels.shape[1]
    ring = torch.ones(n, n, dtype=torch.bool, device=pixels.device)
    ring[_BORDER:-_BORDER, _BORDER:-_BORDER] = False
    if differentiable:
        return pixels[:, ring].mean(dim=1)
    return pixels[:, ring].median(dim=1).values


def _foreground(
    pixels: Float[Tensor, "batch height width 3"], background_rgb: Float[Tensor, "batch 3"]
) -> _Foreground:
    """Pixels far from the background colour (a sigmoid of the distance), with area and
    centroid."""
    distance = (pixels - background_rgb[:, None, None, :]).norm(dim=-1)
    mask = torch.sigmoid((distance - _FOREGROUND_DISTANCE) / 0.03)  # (B, H, W)
    area = mask.sum(dim=(1, 2))
    ys = torch.arange(pixels.shape[1], dtype=pixels.dtype, device=pixels.device) + 0.5
    center_x = (mask.sum(dim=1) * ys).sum(dim=1) / (area + _EPS)
    center_y = (mask.sum(dim=2) * ys).sum(dim=1) / (area + _EPS)
    return _Foreground(mask, area, center_x, center_y)


def _templates(foreground: _Foreground) -> Float[Tensor, "batch shapes height width"]:
    """Each shape's anti-aliased template at the foreground's centroid with its area (drawn
    on the CPU by the renderer, with the gradients of the centre and size)."""
    batch, n = foreground.mask.shape[:2]
    k = len(SHAPES)
    device = foreground.mask.device
    sizes = torch.sqrt(foreground.area[:, None] / _SHAPE_AREA.to(foreground.area)[None, :])
    templates = shape_masks(
        torch.arange(k).repeat(batch),
        foreground.center_x.cpu().repeat_interleave(k),
        foreground.center_y.cpu().repeat_interleave(k),
        sizes.cpu().reshape(-1),
    )
    return templates.to(device).view(batch, k, n, n)


def _scores(
    x: Float[Tensor, "batch 3 height width"], metas: Sequence[Metadata], *, differentiable: bool
) -> AlignmentScores:
    """The steps of :func:`alignment_scores` (``differentiable``: those of
    :func:`differentiable_alignment_scores`) on images already in [0, 1]."""
    batch, device = x.shape[0], x.device
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True)
    pixels = x.permute(0, 2, 3, 1)  # (B, H, W, 3)
    n = IMAGE_SIZE
    arange = torch.arange(batch, device=device)

    # 1. background colour: median (or mean) of the border ring
    background_rgb = _background_rgb(pixels, differentiable=differentiable)  # (B, 3)
    background_probs = _palette_probabilities(background_rgb)  # (B, P)

    # 2. foreground: pixels far from the background colour (soft)
    foreground = _foreground(pixels, background_rgb)
    area = foreground.area

    # 3. colour: share and presence of the named colour among foreground pixels
    pixel_probs = _palette_probabilities(pixels)  # (B, H, W, P)
    histogram = (pixel_probs * foreground.mask[..., None]).sum(dim=(1, 2))  # (B, P)
    colour_index = _index([m["colour"] for m in metas], _PALETTE_NAMES, device)
    named_area = histogram[arange, colour_index]
    dominance = named_area / (area + _EPS)
    presence = (named_area / _MIN_AREA).clamp(max=1.0)
    colour_score = dominance * presence
    colour_correct = (histogram.argmax(dim=1) == colour_index) & (presence >= 0.5)

    # 4. shape: IoU of the foreground with each shape's template of equal area and centroid
    templates = _templates(foreground)
    mask = foreground.mask[:, None]
    iou = torch.minimum(mask, templates).sum(dim=(2, 3)) / (
        torch.maximum(mask, templates).sum(dim=(2, 3)) + _EPS
    )
    shape_index = _index([m["shape"] for m in metas], SHAPES, device)
    named_iou = iou[arange, shape_index]
    plausible = (area / _MIN_AREA).clamp(max=1.0) * (_MAX_AREA / (area + _EPS)).clamp(max=1.0)
    plausible = plausible**2
    shape_probs = torch.softmax(iou / _IOU_TEMPERATURE, dim=1)
    shape_score = shape_probs[arange, shape_index] * named_iou * plausible
    shape_correct = (iou.argmax(dim=1) == shape_index) & (named_iou >= 0.5) & (plausible >= 0.5)

    # 5. position: centroid against the five position centres, times the shape's presence
    centroid = torch.stack([foreground.center_x, foreground.center_y], dim=1) / n  # (B, 2)
    distance2 = ((centroid[:, None, :] - _POSITION_XY.to(centroid)[None]) ** 2).sum(-1)
    position_probs = torch.softmax(-distance2 / (2 * _POSITION_SIGMA**2), dim=1)  # (B, 5)
    position_index = _index([m["position"] for m in metas], POSITIONS, device)
    if differentiable:
        present = (area / _MIN_AREA).clamp(max=1.0)
    else:
        present = (area >= _MIN_AREA).to(area.dtype)
    position_score = position_probs[arange, position_index] * present
    position_correct = (distance2.argmin(dim=1) == position_index) & (present > 0)

    # 6. background score
    background_index = _index([m["background"] for m in metas], _PALETTE_NAMES, device)
    background_score = background_probs[arange, background_index]
    background_correct = background_probs.argmax(dim=1) == background_index

    # 7. weighted mean over named attributes; NaN / True for attributes not named
    has_position = torch.tensor([m["position"] is not None for m in metas], device=device)
    has_background = torch.tensor([m["background"] is not None for m in metas], device=device)
    w_position = WEIGHTS["position"] * has_position.to(x.dtype)
    w_background = WEIGHTS["background"] * has_background.to(x.dtype)
    total = WEIGHTS["colour"] * colour_score + WEIGHTS["shape"] * shape_score
    total = total + w_position * position_score + w_background * background_score
    reward = total / (WEIGHTS["colour"] + WEIGHTS["shape"] + w_position + w_background)
    nan = torch.full((batch,), float("nan"), dtype=x.dtype, device=device)
    position_correct = position_correct | ~has_position
    background_correct = background_correct | ~has_background
    return AlignmentScores(
        reward=reward.clamp(0.0, 1.0),
        colour=colour_score,
        shape=shape_score,
        position=torch.where(has_position, position_score, nan),
        background=torch.where(has_background, background_score, nan),
        correct=colour_correct & shape_correct & position_correct & background_correct,
        colour_correct=colour_correct,
        shape_correct=shape_correct,
        position_correct=position_correct,
        background_correct=background_correct,
    )


def alignment_scores(
    images: Float[Tensor, "batch 3 height width"], metadata: Sequence[dict[str, Any]]
) -> AlignmentScores:
    """Score how well each image shows its prompt's attributes (see the module docstring).

    Args:
        images: RGB images in [0, 1], any size (resized to 64x64); scored as float32 values,
            without their gradients.
        metadata: one dict per image with ``colour`` and ``shape`` (and optionally ``position``
            and ``background``, ``None`` when not named), as :func:`ddpo.data.shapes.parse_prompt`
            returns.

    Returns:
        :class:`AlignmentScores` of ``(batch,)`` tensors.
    """
    metas = resolve_metadata(None, metadata, images.shape[0])
    return _scores(images.detach().float().clamp(0.0, 1.0), metas, differentiable=False)


def differentiable_alignment_scores(
    images: Float[Tensor, "batch 3 height width"], metadata: Sequence[dict[str, Any]]
) -> AlignmentScores:
    """:func:`alignment_scores` with gradients from the scores to the images (for reward
    backpropagation).

    How it differs from the exact score:

    1. it scores the images as given, with their gradients, on their device and in their
       dtype (float32, or float64 for float64 images; the exact score detaches them and
       computes in float32);
    2. the background colour is the **mean** of the 2-pixel border ring, not its median (whose
       gradient reaches one ring pixel per channel);
    3. the position score's presence factor is the ramp ``min(area / min_area, 1)`` of the
       foreground area, not the step ``area >= min_area`` (which has no gradient).

    The rest is the exact score's arithmetic: the soft palette matches, the sigmoid foreground
    mask, the IoUs against templates drawn with a one-pixel anti-aliased edge at the
    foreground's centroid and area (their centre and size carry gradients), the softmaxes and
    the clamps; it is differentiable almost everywhere (not at the kinks of the clamps, minima
    and maxima). Where the border ring holds one colour and the foreground covers at least
    ``min_area`` pixels, as in every rendered image of :mod:`ddpo.data.shapes`, the two agree
    up to float rounding (``tests/rewards/test_alignment_differentiable.py``). The ``correct``
    flags are those of these scores (without gradients).

    Args:
        images: float RGB images, values clamped to [0, 1] (any size, resized to 64x64 with
            an antialiased bilinear resize, differentiable).
        metadata: as :func:`alignment_scores`.

    Returns:
        :class:`AlignmentScores` of ``(batch,)`` tensors; the scores carry gradients.
    """
    metas = resolve_metadata(None, metadata, images.shape[0])
    x = images.to(torch.promote_types(images.dtype, torch.float32)).clamp(0.0, 1.0)
    return _scores(x, metas, differentiable=True)


def _as_images(images: Any) -> Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor or numpy array, got {type(images)}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (batch, 3, H, W), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1] or uint8, got dtype {images.dtype}")
    return images.detach().float().cpu()


def alignment_reward_fn(
    images: Any, prompts: Sequence[str], prompt_metadata: Sequence[dict[str, Any]] | None = None
) -> tuple[Tensor, dict[str, Any]]:
    """The alignment reward, a reward function of the contract in :mod:`ddpo.rewards.contract`.

    Args:
        images: ``(batch, 3, H, W)`` float tensor in [0, 1] (uint8 and numpy also accepted).
        prompts: the captions; parsed with the grammar where metadata lacks colour and shape.
        prompt_metadata: per-prompt dicts as :func:`ddpo.data.shapes.prompt_fn` returns.

    Returns:
        ``(rewards (batch,), reward_metadata)``; ``reward_metadata`` holds one value per image:
        the per-attribute scores (``colour``, ``shape``, ``position``, ``background``; NaN
        where not named) and ``accuracy``, a bool, True when every named attribute is right
        (`AlignmentScores.correct`), so that its mean over images is the accuracy.
    """
    x = _as_images(images)
    metas = resolve_metadata(prompts, prompt_metadata, x.shape[0])
    scores = alignment_scores(x, metas)
    info: dict[str, Any] = {
        name: getattr(scores, name) for name in ("colour", "shape", "position", "background")
    }
    info["accuracy"] = scores.correct
    return scores.reward, info


def differentiable_alignment_reward_fn(
    images: Any, prompts: Sequence[str], prompt_metadata: Sequence[dict[str, Any]] | None = None
) -> tuple[Tensor, dict[str, Any]]:
    """The alignment reward's differentiable form (`differentiable_alignment_scores`, whose
    docstring says how it differs from the exact score), a reward function of the contract.

    Args:
        images: ``(batch, 3, H, W)`` float tensor in [0, 1], with gradients (nothing else).
        prompts: as :func:`alignment_reward_fn`.
        prompt_metadata: as :func:`alignment_reward_fn`.

    Returns:
        ``(rewards (batch,), reward_metadata)``: rewards with gradients, in the images' dtype
        (float32 or float64) and on their device; ``reward_metadata`` holds, one value per
        image and without gradients, the differentiable form's per-attribute scores
        (``colour``, ``shape``, ``position``, ``background``), and the **exact** score of the
        same images: ``exact`` (the `alignment_reward_fn` reward) and ``accuracy`` (its
        correctness), so that a run or a held-out evaluation that trains on this form still
        reports the exact reward (``eval/reward/exact``).

    Raises:
        ValueError: for images that are not a float ``(batch, 3, H, W)`` tensor.
    """
    x = check_float_images(images)
    metas = resolve_metadata(prompts, prompt_metadata, x.shape[0])
    scores = differentiable_alignment_scores(x, metas)
    exact = alignment_scores(_as_images(x), metas)
    info: dict[str, Any] = {
        name: getattr(scores, name).detach()
        for name in ("colour", "shape", "position", "background")
    }
    info["exact"] = exact.reward
    info["accuracy"] = exact.correct
    return scores.reward, info


def alignment_accuracy(images: Any, metadata: Sequence[dict[str, Any]]) -> float:
    """Fraction of images whose every named attribute (colour and shape at least) is right."""
    x = _as_images(images)
    return float(alignment_scores(x, metadata).correct.float().mean())


def alignment_prompt_fn(
    seed: int | None = None, split: str = "train"
) -> Callable[[], tuple[str, Metadata]]:
    """Prompt function ``() -> (prompt, metadata)`` over the grammar (see :func:`prompt_fn`)."""
    return prompt_fn(seed=seed, split=split)
