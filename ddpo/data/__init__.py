"""Synthetic data sets: captioned images of coloured shapes (:mod:`ddpo.data.shapes`)."""

from ddpo.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    PALETTE,
    POSITIONS,
    SHAPES,
    ShapesDataset,
    all_prompts,
    batches,
    caption,
    is_held_out,
    parse_prompt,
    prompt_fn,
    render,
    render_batch,
    sample_metadata,
    vocabulary,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "PALETTE",
    "POSITIONS",
    "SHAPES",
    "ShapesDataset",
    "all_prompts",
    "batches",
    "caption",
    "is_held_out",
    "parse_prompt",
    "prompt_fn",
    "render",
    "render_batch",
    "sample_metadata",
    "vocabulary",
]
