"""SDXL's text conditioning as diffusers' ``StableDiffusionXLPipeline`` builds it.

Both text encoders' penultimate hidden states, concatenated token by token, are the UNet's
cross-attention context; the second encoder's pooled projection and six micro-conditioning
values (original size, crop corner, target size) are added to its timestep embedding.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ddpo._typing import PromptEmbeds


def encode_sdxl_texts(sd: Any, texts: list[str]) -> tuple[PromptEmbeds, Tensor]:
    """``(prompt_embeds, pooled)`` of ``texts`` through the SDXL pipeline ``sd``'s encoders.

    Returns:
        Both encoders' penultimate hidden states concatenated, ``(batch, tokens, d1 + d2)``,
        and the second encoder's pooled projection ``(batch, d_pool)``, in the second encoder's
        dtype (as diffusers' ``encode_prompt``); no gradient.
    """
    hidden, pooled = [], None
    for tokenizer, encoder in (
        (sd.tokenizer, sd.text_encoder),
        (sd.tokenizer_2, sd.text_encoder_2),
    ):
        ids = tokenizer(
            texts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(encoder.device)
        with torch.no_grad():
            out = encoder(ids, output_hidden_states=True)
        if out[0].ndim == 2:  # the projection model's pooled embedding
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    assert pooled is not None
    dtype = sd.text_encoder_2.dtype
    return torch.cat(hidden, dim=-1).to(dtype), pooled.to(dtype)


def sdxl_time_ids(
    sd: Any, values: Sequence[int], batch: int, *, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """The six micro-conditioning ``values`` repeated per sample, ``(batch, 6)``.

    Raises:
        ValueError: if the UNet's added-conditioning width is not 6 time ids and the pooled
            projection (a folder whose parts do not belong together).
    """
    expected = sd.unet.config.projection_class_embeddings_input_dim
    pooled_dim = sd.text_encoder_2.config.projection_dim
    if sd.unet.config.addition_time_embed_dim * len(values) + pooled_dim != expected:
        raise ValueError(
            f"the UNet's added conditioning takes {expected} values, not {len(values)} time ids "
            f"x {sd.unet.config.addition_time_embed_dim} + {pooled_dim} pooled"
        )
    return torch.tensor([list(values)], dtype=dtype, device=device).expand(batch, -1)


__all__ = ["encode_sdxl_texts", "sdxl_time_ids"]
