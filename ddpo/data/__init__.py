"""Data sets: captioned images of coloured shapes (:mod:`ddpo.data.shapes`, synthetic) and
Diffusion-DPO's offline preference pairs (:mod:`ddpo.data.preferences`)."""

from ddpo.data.preferences import (
    PreferenceLatents,
    PreferencePair,
    encode_preference_pairs,
    read_preference_pairs,
)
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
    "PreferenceLatents",
    "PreferencePair",
    "ShapesDataset",
    "all_prompts",
    "batches",
    "caption",
    "encode_preference_pairs",
    "is_held_out",
    "parse_prompt",
    "prompt_fn",
    "read_preference_pairs",
    "render",
    "render_batch",
    "sample_metadata",
    "vocabulary",
]
