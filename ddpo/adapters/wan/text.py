"""Wan2.1's transformer inputs: the text conditioning, as diffusers' ``WanPipeline.encode_prompt``
computes it, and the transformer call with classifier-free guidance, as ``WanPipeline`` makes it.

The UMT5 encoder's last hidden states are the text tokens of the transformer's cross-attention:
each prompt (cleaned as the stock pipeline cleans it) padded to ``max_sequence_length`` tokens,
the states past the prompt's own tokens set to zero. Guidance is true classifier-free guidance:
a second transformer pass for the negative prompt (``""`` included), combined as
``uncond + w (cond - uncond)``.
"""

from typing import Any

import torch
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from torch import nn

from ddpo._typing import Latents, PerSample, PromptEmbeds
from ddpo.adapters.common.args import unwrap
from ddpo.adapters.common.sampling import keep_unguided_rows
from ddpo.core import classifier_free_guidance

WAN_MAX_SEQUENCE_LENGTH = 512
"""UMT5 tokens of ``WanPipeline``'s default ``max_sequence_length`` (Wan2.1's text length)."""


def check_max_sequence_length(value: Any) -> int:
    """``max_sequence_length`` checked to be an int in ``[1, 512]``.

    Raises:
        ValueError: naming the argument and its value.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 1 <= value <= WAN_MAX_SEQUENCE_LENGTH
    ):
        raise ValueError(
            f"max_sequence_length must be an int in [1, {WAN_MAX_SEQUENCE_LENGTH}] (Wan2.1 was "
            f"trained with 512), got max_sequence_length={value!r}"
        )
    return value


def encode_wan_prompts(pipe: Any, texts: list[str], *, max_sequence_length: int) -> PromptEmbeds:
    """``prompt_embeds`` of ``texts`` with ``pipe``'s UMT5 encoder, as ``WanPipeline.
    _get_t5_prompt_embeds``: each text cleaned (``prompt_clean``), tokenized and padded (or cut)
    to ``max_sequence_length`` tokens, encoded under its attention mask; the states past the
    text's own tokens zeroed. No gradients.

    Args:
        pipe: a diffusers ``WanPipeline`` (its tokenizer and text encoder are used).
        texts: the prompts.
        max_sequence_length: UMT5 tokens.

    Returns:
        ``(batch, max_sequence_length, width)`` in the encoder's dtype, on its device.
    """
    inputs = pipe.tokenizer(
        [prompt_clean(text) for text in texts],
        padding="max_length",
        max_length=max_sequence_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    encoder = pipe.text_encoder
    device = encoder.device
    mask = inputs.attention_mask.to(device)
    with torch.no_grad():
        states = encoder(inputs.input_ids.to(device), mask).last_hidden_state
    keep = mask.gt(0).unsqueeze(-1)  # the stock cuts each row to its length and pads with zeros
    embeds: PromptEmbeds = torch.where(keep, states, torch.zeros_like(states)).to(encoder.dtype)
    return embeds


def wan_velocity(
    transformer: nn.Module,
    x: Latents,
    t: PerSample,
    *,
    prompt_embeds: PromptEmbeds,
    negative_prompt_embeds: PromptEmbeds | None = None,
    guidance_scale: float | PerSample = 1.0,
) -> Latents:
    """Wan2.1's velocity ``v(x, t)`` on video latents ``(batch, C, frames, h, w)``: the
    transformer on ``x`` in its dtype, one timestep per video, the text tokens
    ``prompt_embeds``. With ``negative_prompt_embeds``, a second pass for them, combined by
    classifier-free guidance ``uncond + w (cond - uncond)`` as ``WanPipeline`` (two passes, the
    conditional first); with a per-sample ``guidance_scale``, rows at or below 1 keep the
    conditional velocity.

    Returns:
        The velocity, ``x``'s shape, in the transformer's dtype.
    """
    params = next(unwrap(transformer).parameters(), None)
    dtype = params.dtype if params is not None else x.dtype
    hidden = x.to(dtype)

    def call(embeds: PromptEmbeds) -> Latents:
        out = transformer(
            hidden_states=hidden,
            timestep=t,
            encoder_hidden_states=embeds.to(dtype),
            return_dict=False,
        )
        velocity: Latents = out[0]
        return velocity

    cond = call(prompt_embeds)
    if negative_prompt_embeds is None:
        return cond
    uncond = call(negative_prompt_embeds)
    guided = classifier_free_guidance(uncond, cond, guidance_scale)
    return keep_unguided_rows(guided, cond, guidance_scale)


__all__ = [
    "WAN_MAX_SEQUENCE_LENGTH",
    "check_max_sequence_length",
    "encode_wan_prompts",
    "wan_velocity",
]
