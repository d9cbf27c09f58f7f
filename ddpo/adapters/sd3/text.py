"""How ``StableDiffusion3Pipeline`` lays out its text conditioning, shared by the SD3 policy and
the script that trains ``ddpo-tiny-shapes-flow`` (which needs it with gradients)."""

from collections.abc import Sequence
from typing import Any, Final

import torch
import torch.nn.functional as F
from torch import Tensor

SD3_MAX_SEQUENCE_LENGTH: Final[int] = 256
"""T5 tokens of ``StableDiffusion3Pipeline``'s default ``max_sequence_length``."""


def sd3_max_sequence_length(tokenizer_3: Any) -> int:
    """The T5 length a model was trained with: its T5 tokenizer's ``model_max_length``, at most
    diffusers' 256 (real SD3 folders: 256; ``ddpo-tiny-shapes-flow``: 16)."""
    length = getattr(tokenizer_3, "model_max_length", SD3_MAX_SEQUENCE_LENGTH)
    return min(SD3_MAX_SEQUENCE_LENGTH, int(length))


def join_sd3_embeddings(
    clip_hidden: Sequence[Tensor], clip_pooled: Sequence[Tensor], t5_hidden: Tensor
) -> tuple[Tensor, Tensor]:
    """``(prompt_embeds, pooled_prompt_embeds)`` as ``encode_prompt`` joins them: both CLIP
    encoders' penultimate states concatenated along the width and zero-padded to the T5 width,
    followed by the T5 states along the sequence; the CLIP pooled projections concatenated."""
    clip = torch.cat(list(clip_hidden), dim=-1)
    clip = F.pad(clip, (0, t5_hidden.shape[-1] - clip.shape[-1]))
    return torch.cat([clip, t5_hidden], dim=-2), torch.cat(list(clip_pooled), dim=-1)


__all__ = ["SD3_MAX_SEQUENCE_LENGTH", "join_sd3_embeddings", "sd3_max_sequence_length"]
