"""FLUX.1's transformer inputs: the text conditioning, as diffusers' ``FluxPipeline.encode_
prompt`` computes it, and the transformer call on packed latents, as ``FluxPipeline`` makes it.

The CLIP encoder's pooled output (``pooled_prompt_embeds``) conditions the transformer's
modulation with the timestep (and the guidance embedding); the T5 encoder's last hidden states
(``prompt_embeds``, ``max_sequence_length`` tokens) are the text tokens of the joint attention,
all at rotary position ``(0, 0, 0)`` (the text ids, the same for every prompt).
"""

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ddpo._typing import Latents, PerSample, PromptEmbeds
from ddpo.adapters.common.args import unwrap
from ddpo.adapters.flux.checks import latent_image_ids, pack_latents, unpack_latents

MAX_T5_TOKENS = 512
"""The longest T5 sequence FLUX.1 takes (diffusers refuses more)."""


def check_max_sequence_length(value: Any) -> int:
    """``max_sequence_length`` checked to be an int in ``[1, 512]``.

    Raises:
        ValueError: naming the argument and its value.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_T5_TOKENS:
        raise ValueError(
            f"max_sequence_length must be an int in [1, {MAX_T5_TOKENS}], got "
            f"max_sequence_length={value!r}"
        )
    return value


def encode_flux_prompts(
    pipe: Any, texts: list[str], *, max_sequence_length: int
) -> tuple[PromptEmbeds, Float[Tensor, "batch pooled"]]:
    """``(prompt_embeds, pooled_prompt_embeds)`` of ``texts`` with ``pipe``'s encoders.

    CLIP: ``texts`` padded (or cut) to the tokenizer's length, the pooled output (the final
    layer-normed state at the end token) in CLIP's dtype. T5: padded (or cut) to
    ``max_sequence_length`` tokens, the last hidden states in T5's dtype. No gradients.

    Args:
        pipe: a diffusers ``FluxPipeline`` (its tokenizers and text encoders are used).
        texts: the prompts.
        max_sequence_length: T5 tokens.

    Returns:
        ``prompt_embeds`` ``(batch, max_sequence_length, t5_width)`` and ``pooled_prompt_embeds``
        ``(batch, clip_width)``, on the T5 encoder's device.
    """
    clip_ids = pipe.tokenizer(
        texts,
        padding="max_length",
        max_length=pipe.tokenizer_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    t5_ids = pipe.tokenizer_2(
        texts,
        padding="max_length",
        max_length=max_sequence_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    clip, t5 = pipe.text_encoder, pipe.text_encoder_2
    with torch.no_grad():
        pooled = clip(clip_ids.to(clip.device), output_hidden_states=False).pooler_output
        embeds = t5(t5_ids.to(t5.device), output_hidden_states=False)[0]
    embeds = embeds.to(dtype=t5.dtype)
    return embeds, pooled.to(dtype=clip.dtype, device=embeds.device)


def text_ids(tokens: int, *, device: torch.device, dtype: torch.dtype) -> Float[Tensor, "tokens 3"]:
    """The text tokens' rotary position ids: zeros ``(tokens, 3)``."""
    return torch.zeros(tokens, 3, device=device, dtype=dtype)


def flux_velocity(
    transformer: nn.Module,
    x: Latents,
    t: PerSample,
    *,
    prompt_embeds: PromptEmbeds,
    pooled_prompt_embeds: Float[Tensor, "batch pooled"],
    guidance_scale: float | PerSample | None,
    text_ids_dtype: torch.dtype,
) -> Latents:
    """FLUX's velocity ``v(x, t)`` on unpacked latents: ``x`` packed into 2x2-patch tokens with
    their position ids, the timesteps on FLUX's sigma scale ``t / 1000``, the guidance embedding
    of ``guidance_scale`` (``None`` for models without one, FLUX.1-schnell), unpacked back.

    Args:
        transformer: a ``FluxTransformer2DModel`` (maybe wrapped); its dtype is used.
        x: latents ``(batch, C, h, w)``, ``h`` and ``w`` even.
        t: the scheduler's timesteps (``1000 sigma``) per sample.
        prompt_embeds, pooled_prompt_embeds: from :func:`encode_flux_prompts`.
        guidance_scale: the guidance embedding's value, one or one per sample ``(batch,)``
            (re-scoring's rows: the same float32 values), or ``None``.
        text_ids_dtype: dtype of the text ids (diffusers: the CLIP encoder's).

    Returns:
        The velocity, ``x``'s shape, in the transformer's dtype.
    """
    params = next(unwrap(transformer).parameters(), None)
    dtype = params.dtype if params is not None else x.dtype
    batch, _, height, width = x.shape
    guidance = None
    if isinstance(guidance_scale, Tensor):
        guidance = guidance_scale.to(device=x.device, dtype=torch.float32)
    elif guidance_scale is not None:
        guidance = torch.full((batch,), float(guidance_scale), device=x.device)
    out = transformer(
        hidden_states=pack_latents(x.to(dtype)),
        timestep=t.to(x.dtype) / 1000,
        guidance=guidance,
        pooled_projections=pooled_prompt_embeds.to(dtype),
        encoder_hidden_states=prompt_embeds.to(dtype),
        txt_ids=text_ids(prompt_embeds.shape[1], device=x.device, dtype=text_ids_dtype),
        img_ids=latent_image_ids(
            height // 2, width // 2, device=x.device, dtype=prompt_embeds.dtype
        ),
        return_dict=False,
    )
    velocity: Latents = unpack_latents(out[0], height, width)
    return velocity


__all__ = [
    "MAX_T5_TOKENS",
    "check_max_sequence_length",
    "encode_flux_prompts",
    "flux_velocity",
    "text_ids",
]
