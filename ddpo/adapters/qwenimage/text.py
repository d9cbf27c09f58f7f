"""Qwen-Image's transformer inputs: the text conditioning, as diffusers' ``QwenImagePipeline.
encode_prompt`` computes it, the transformer call on packed latents, and the pipeline's true
classifier-free guidance with its norm-preserving rescale.

The Qwen2.5-VL encoder reads each prompt inside the pipeline's chat template; the last hidden
states of the prompt's own tokens (the template's first ``prompt_template_encode_start_idx``
tokens dropped) are the text tokens of the joint attention, with a mask over their variable
length. Here they are padded with masked zeros to a fixed ``max_sequence_length``, so that rows
encoded apart (the trainer's prompt cache, sampling batches) concatenate: a masked token is
never attended to and the text tokens' rotary positions do not depend on the padding, so the
velocity is the stock pipeline's (up to float rounding).
"""

from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor, nn

from ddpo._typing import Latents, PerSample, PromptEmbeds
from ddpo.adapters.common.args import unwrap
from ddpo.adapters.common.sampling import keep_unguided_rows
from ddpo.adapters.flow.packing import pack_latents, unpack_latents
from ddpo.core import classifier_free_guidance

MAX_TEXT_TOKENS = 1024
"""The longest text sequence ``QwenImagePipeline`` takes (its ``tokenizer_max_length``; diffusers
refuses more)."""

DEFAULT_TEXT_TOKENS = 512
"""``QwenImagePipeline.__call__``'s default ``max_sequence_length``."""

TextMask = Int[Tensor, "batch tokens"]
"""Which text tokens are the prompt's (1) and which are padding (0), ``(batch, tokens)``."""


def check_max_sequence_length(value: Any) -> int:
    """``max_sequence_length`` checked to be an int in ``[1, 1024]``.

    Raises:
        ValueError: naming the argument and its value.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TEXT_TOKENS:
        raise ValueError(
            f"max_sequence_length must be an int in [1, {MAX_TEXT_TOKENS}], got "
            f"max_sequence_length={value!r}"
        )
    return value


def encode_qwenimage_prompts(
    pipe: Any, texts: list[str], *, max_sequence_length: int
) -> tuple[PromptEmbeds, TextMask]:
    """``(prompt_embeds, prompt_embeds_mask)`` of ``texts``: the stock pipeline's
    ``encode_prompt`` (at most ``max_sequence_length`` tokens per prompt), padded with masked
    zeros to exactly ``max_sequence_length`` tokens. No gradients.

    Args:
        pipe: a diffusers ``QwenImagePipeline`` (its tokenizer and text encoder are used).
        texts: the prompts.
        max_sequence_length: the text tokens of every row.

    Returns:
        ``prompt_embeds`` ``(batch, max_sequence_length, width)`` in the text encoder's dtype and
        ``prompt_embeds_mask`` ``(batch, max_sequence_length)`` (int64), on its device.
    """
    encoder = pipe.text_encoder
    with torch.no_grad():
        embeds, mask = pipe.encode_prompt(
            texts, device=encoder.device, max_sequence_length=max_sequence_length
        )
    if mask is None:  # the stock pipeline drops a mask without padding
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    missing = max_sequence_length - embeds.shape[1]
    embeds = F.pad(embeds, (0, 0, 0, missing))
    return embeds, F.pad(mask.to(torch.long), (0, missing))


def true_guidance(uncond: Latents, cond: Latents, guidance_scale: float | PerSample) -> Latents:
    """Qwen-Image's true classifier-free guidance with its norm-preserving rescale.

    ``g = u + w (c - u)`` (:func:`ddpo.core.classifier_free_guidance`), then each 2x2 latent
    patch (a packed token ``p``, its ``4 C`` values) rescaled to the conditional prediction's
    norm: ``out_p = g_p ||c_p|| / ||g_p||``, as ``QwenImagePipeline`` combines ``noise_pred``
    and ``neg_noise_pred``. Rows whose per-sample ``w`` is at most 1 keep ``c`` (they were
    sampled without guidance).

    Args:
        uncond: the velocity for the negative prompt, ``(batch, C, h, w)``, ``h`` and ``w`` even.
        cond: the velocity for the prompt, same shape.
        guidance_scale: ``w`` (the stock pipeline's ``true_cfg_scale``), one or one per sample.

    Returns:
        The guided velocity, ``cond``'s shape and dtype.
    """
    height, width = cond.shape[-2:]
    # 1. Classifier-free guidance.
    guided = pack_latents(classifier_free_guidance(uncond, cond, guidance_scale))
    # 2. Each token's guided vector rescaled to the conditional one's length.
    cond_norm = torch.linalg.vector_norm(pack_latents(cond), dim=-1, keepdim=True)
    guided_norm = torch.linalg.vector_norm(guided, dim=-1, keepdim=True)
    rescaled = unpack_latents(guided * (cond_norm / guided_norm), height, width)
    return keep_unguided_rows(rescaled, cond, guidance_scale)


def qwenimage_velocity(
    transformer: nn.Module,
    x: Latents,
    t: PerSample,
    *,
    prompt_embeds: PromptEmbeds,
    prompt_embeds_mask: TextMask,
    negative: tuple[PromptEmbeds, TextMask] | None = None,
    guidance_scale: float | PerSample = 1.0,
) -> Latents:
    """Qwen-Image's velocity ``v(x, t)`` on unpacked latents: ``x`` packed into 2x2-patch tokens
    (one frame of ``h/2 x w/2`` for the rotary positions), the timesteps on the sigma scale
    ``t / 1000``, the text tokens under their mask; unpacked back. With ``negative`` (true
    classifier-free guidance) the negative prompt's pass runs in the same, doubled batch and the
    two combine by :func:`true_guidance`.

    Args:
        transformer: a ``QwenImageTransformer2DModel`` (maybe wrapped); its dtype is used.
        x: latents ``(batch, C, h, w)``, ``h`` and ``w`` even.
        t: the scheduler's timesteps (``1000 sigma``) per sample.
        prompt_embeds, prompt_embeds_mask: from :func:`encode_qwenimage_prompts`.
        negative: the negative prompt's embeddings and mask, the same length; ``None``: one
            conditional pass.
        guidance_scale: ``true_cfg_scale``, one or one per sample (used with ``negative``).

    Returns:
        The velocity, ``x``'s shape, in the transformer's dtype.
    """
    params = next(unwrap(transformer).parameters(), None)
    dtype = params.dtype if params is not None else x.dtype
    height, width = x.shape[-2:]
    hidden = pack_latents(x.to(dtype))
    timestep = t.to(x.dtype) / 1000
    embeds, mask = prompt_embeds, prompt_embeds_mask
    if negative is not None:
        hidden, timestep = torch.cat([hidden, hidden]), torch.cat([timestep, timestep])
        embeds, mask = torch.cat([negative[0], embeds]), torch.cat([negative[1], mask])
    out = transformer(
        hidden_states=hidden,
        timestep=timestep,
        encoder_hidden_states=embeds.to(dtype),
        encoder_hidden_states_mask=mask.to(x.device),
        img_shapes=[[(1, height // 2, width // 2)]] * hidden.shape[0],
        return_dict=False,
    )
    velocity: Latents = unpack_latents(out[0], height, width)
    if negative is None:
        return velocity
    uncond, cond = velocity.chunk(2)
    return true_guidance(uncond, cond, guidance_scale)


__all__ = [
    "DEFAULT_TEXT_TOKENS",
    "MAX_TEXT_TOKENS",
    "TextMask",
    "check_max_sequence_length",
    "encode_qwenimage_prompts",
    "qwenimage_velocity",
    "true_guidance",
]
