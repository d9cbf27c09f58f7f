"""Latents packed as tokens of 2x2 patches, the transformer input of FLUX.1 and Qwen-Image (a
flow family's shared layout, so that no family imports another's)."""

from jaxtyping import Float
from torch import Tensor

from ddpo._typing import Latents

PackedLatents = Float[Tensor, "batch tokens packed"]
"""FLUX's transformer input: 2x2 latent patches as tokens, ``(batch, h/2 * w/2, 4 channels)``."""


def pack_latents(latents: Latents) -> PackedLatents:
    """FLUX's tokens: each 2x2 patch of ``(batch, C, h, w)`` latents as one ``4C`` vector, the
    patches in row-major order, a patch's vector channel-major then row then column."""
    batch, channels, height, width = latents.shape
    if height % 2 or width % 2:
        raise ValueError(f"latents must have even height and width, got {tuple(latents.shape)}")
    patches = latents.reshape(batch, channels, height // 2, 2, width // 2, 2)
    tokens = patches.permute(0, 2, 4, 1, 3, 5)
    return tokens.reshape(batch, (height // 2) * (width // 2), 4 * channels)


def unpack_latents(packed: PackedLatents, height: int, width: int) -> Latents:
    """The inverse of :func:`pack_latents` for latents of ``height x width``."""
    batch, tokens, features = packed.shape
    if tokens != (height // 2) * (width // 2) or features % 4 or height % 2 or width % 2:
        raise ValueError(
            f"packed latents {tuple(packed.shape)} are not 2x2 patches of {height}x{width} latents"
        )
    patches = packed.reshape(batch, height // 2, width // 2, features // 4, 2, 2)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(batch, features // 4, height, width)


def check_packed_resolution(
    resolution: tuple[int, int], *, latent_factor: int, family: str
) -> tuple[int, int]:
    """``resolution`` checked to be positive multiples of ``2 * latent_factor`` per side (the
    latents are packed in 2x2 patches; diffusers would silently round the size down).

    Raises:
        ValueError: naming ``resolution``, its value, the multiple needed and ``family``.
    """
    step = 2 * latent_factor
    if min(resolution) <= 0 or resolution[0] % step or resolution[1] % step:
        raise ValueError(
            f"resolution must be positive multiples of {step} per side for this {family} model "
            f"(the VAE's {latent_factor}x times the 2x2 latent packing), got "
            f"resolution={resolution!r}"
        )
    return resolution


__all__ = ["PackedLatents", "check_packed_resolution", "pack_latents", "unpack_latents"]
