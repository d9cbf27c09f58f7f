"""A tiny, random Qwen-Image-architecture model, built from config (the Qwen-Image test model).

The components of diffusers' ``QwenImagePipeline``: a ``QwenImageTransformer2DModel`` (two
double-stream blocks, 3D rotary positions over ``(frame, row, column)``), a
``Qwen2_5_VLForConditionalGeneration`` text encoder (its vision tower one block deep, never
used), a byte-level BPE ``Qwen2Tokenizer``, the one-frame video VAE ``AutoencoderKLQwenImage``
(8x, with per-channel ``latents_mean`` and ``latents_std``), and a
``FlowMatchEulerDiscreteScheduler`` with Qwen-Image's settings (dynamic shift, exponential time
shift, ``shift_terminal``); only very small. Nothing is downloaded: the tokenizer's vocabulary
is written here, every byte plus merges that make each word of the pipeline's prompt template
and of :data:`ddpo.adapters.common.tiny.TINY_WORDS` one token, so that the template's first 34
tokens, which the pipeline drops, are its system turn as in Qwen2.5-VL's own tokenizer.
"""

import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

from ddpo.adapters.common.tiny import TINY_WORDS, build_pipeline_folder, default_cache_dir
from ddpo.adapters.common.tokenizer import apply_merges, byte_to_unicode
from ddpo.adapters.qwenimage.checks import NATIVE_SIDE_KEY

TINY_QWENIMAGE_NAME = "ddpo-tiny-qwenimage-random"
"""Built-in name of the random tiny Qwen-Image model (registered in ``families.py``)."""

_FORMAT_VERSION = 2  # bump when the architecture or vocabulary changes, to rebuild caches

QWENIMAGE_SCHEDULER_CONFIG: Mapping[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
    "use_dynamic_shifting": True,
}
"""Qwen-Image's flow-match scheduler settings: ``mu`` linear in the image's token count, the
sigmas stretched so that the last one before 0 is ``shift_terminal``."""

QWENIMAGE_LATENTS_MEAN: tuple[float, ...] = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
QWENIMAGE_LATENTS_STD: tuple[float, ...] = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip
"""Qwen-Image's VAE latent statistics per channel (``AutoencoderKLQwenImage``'s defaults); the
tiny VAE takes the first ``latent_channels``."""

QWENIMAGE_TEMPLATE_WORDS: tuple[str, ...] = (
    "system", "Describe", "the", "image", "by", "detailing", "color", "shape", "size",
    "texture", "quantity", "text", "spatial", "relationships", "of", "objects", "and",
    "background", "user", "assistant",
)  # fmt: skip
"""The words of ``QwenImagePipeline``'s prompt template, each one token as in Qwen2.5-VL's
vocabulary (its punctuation and line breaks are single bytes)."""

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

_QWENIMAGE_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass(frozen=True)
class TinyQwenImageConfig:
    """Sizes of a tiny Qwen-Image model.

    Attributes:
        image_size: image side in pixels (a multiple of 16: the 8x VAE times the 2x2 packing),
            recorded in the VAE config (the policy's default resolution).
        latent_channels: the VAE's ``z_dim`` (the transformer takes four times as many).
        heads, head_dim: the transformer's attention heads and their width (a multiple of 16,
            split over the rotary axes ``(frame, row, column)`` as ``1/4, 3/8, 3/8``).
        layers: double-stream blocks.
        text_dim: the text encoder's width (2 heads; a multiple of 16), the transformer's
            ``joint_attention_dim``.
        text_layers: the text encoder's decoder layers.
        vae_dim: the VAE's ``base_dim``.
    """

    image_size: int = 64
    latent_channels: int = 4
    heads: int = 2
    head_dim: int = 16
    layers: int = 2
    text_dim: int = 32
    text_layers: int = 2
    vae_dim: int = 8

    def __post_init__(self) -> None:
        if self.image_size <= 0 or self.image_size % 16:
            raise ValueError(f"image_size must be a positive multiple of 16, got {self.image_size}")
        if not 1 <= self.latent_channels <= len(QWENIMAGE_LATENTS_MEAN):
            raise ValueError(f"latent_channels must be in [1, 16], got {self.latent_channels}")
        if self.text_dim <= 0 or self.text_dim % 16:
            raise ValueError(f"text_dim must be a positive multiple of 16, got {self.text_dim}")
        if self.head_dim <= 0 or self.head_dim % 16:
            raise ValueError(f"head_dim must be a positive multiple of 16, got {self.head_dim}")


def build_byte_level_vocab(
    pieces: Iterable[str],
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A GPT-2-style byte-level BPE vocabulary (Qwen2's) under which each of ``pieces`` (text as
    the pre-tokenizer cuts it, e.g. ``" red"`` with its leading space) is a single token: every
    byte, then the merges that join each piece left to right, after those of earlier pieces.

    Returns:
        ``(vocab, merges)``: token -> id, and the ordered BPE merges.
    """
    table = byte_to_unicode()
    tokens = list(table.values())
    seen = set(tokens)
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for piece in pieces:
        symbols = apply_merges([table[b] for b in piece.encode("utf-8")], ranks)
        while len(symbols) > 1:  # new merges rank after every earlier piece's: theirs stay
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            if pair[0] + pair[1] not in seen:
                seen.add(pair[0] + pair[1])
                tokens.append(pair[0] + pair[1])
            symbols = apply_merges(symbols, ranks)
    return {token: i for i, token in enumerate(tokens)}, merges


def tiny_qwen_tokenizer(words: Iterable[str] = TINY_WORDS) -> Any:
    """A ``Qwen2Tokenizer`` whose vocabulary holds each of :data:`QWENIMAGE_TEMPLATE_WORDS` and
    ``words`` as one token, alone and after a space (any other text still tokenizes, byte by
    byte), and Qwen's ``<|endoftext|>`` (padding), ``<|im_start|>`` and ``<|im_end|>`` (end of
    a turn, the end token) as special tokens."""
    pieces: dict[str, None] = {}
    for word in (*QWENIMAGE_TEMPLATE_WORDS, *words):
        pieces |= {word.strip(): None, " " + word.strip(): None}
    vocab, merges = build_byte_level_vocab(pieces)
    for special in (END_OF_TEXT, IM_START, IM_END):
        vocab[special] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=cast(Any, merges),  # pairs, as tokenizers' BPE takes them (not its hint's str)
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        additional_special_tokens=[IM_START, IM_END],
    )
    with tempfile.TemporaryDirectory() as tmp:  # through the on-disk format, as loaded later
        tokenizer.save_pretrained(tmp)
        return Qwen2Tokenizer.from_pretrained(tmp)


def tiny_qwen_text_encoder(config: TinyQwenImageConfig, tokenizer: Any) -> Any:
    """A random ``Qwen2_5_VLForConditionalGeneration`` over ``tokenizer``'s vocabulary, from
    the global torch RNG: 2 heads, multimodal rotary sections over ``(time, row, column)``."""
    half = config.text_dim // 4  # rotary pairs per head (2 heads)
    time = half // 4
    text = {
        "hidden_size": config.text_dim,
        "intermediate_size": 2 * config.text_dim,
        "num_hidden_layers": config.text_layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.convert_tokens_to_ids(END_OF_TEXT),
        "eos_token_id": tokenizer.convert_tokens_to_ids(IM_END),
        "pad_token_id": tokenizer.pad_token_id,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [time, (half - time) // 2, half - time - (half - time) // 2],
        },
    }
    vision = {
        "depth": 1,
        "hidden_size": 16,
        "intermediate_size": 16,
        "num_heads": 2,
        "out_hidden_size": config.text_dim,
        "fullatt_block_indexes": [0],
    }
    return Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(text_config=text, vision_config=vision)
    )


def tiny_qwenimage_transformer(config: TinyQwenImageConfig) -> Any:
    """A random ``QwenImageTransformer2DModel`` of ``config``, from the global torch RNG."""
    quarter, eighth = config.head_dim // 4, config.head_dim // 8
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * config.latent_channels,
        out_channels=config.latent_channels,
        num_layers=config.layers,
        attention_head_dim=config.head_dim,
        num_attention_heads=config.heads,
        joint_attention_dim=config.text_dim,
        axes_dims_rope=(quarter, 3 * eighth, 3 * eighth),
    )


def tiny_qwenimage_vae(config: TinyQwenImageConfig) -> Any:
    """A random ``AutoencoderKLQwenImage`` (8x: three downsamplings) with per-channel latent
    statistics (Qwen-Image's first ``latent_channels`` values), its native image side recorded
    (:data:`ddpo.adapters.qwenimage.checks.NATIVE_SIDE_KEY`)."""
    vae: Any = AutoencoderKLQwenImage(
        base_dim=config.vae_dim,
        z_dim=config.latent_channels,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=list(QWENIMAGE_LATENTS_MEAN[: config.latent_channels]),
        latents_std=list(QWENIMAGE_LATENTS_STD[: config.latent_channels]),
    )
    vae.register_to_config(**{NATIVE_SIDE_KEY: config.image_size})
    return vae


def tiny_qwenimage_components(
    seed: int = 0,
    *,
    config: TinyQwenImageConfig | None = None,
    words: tuple[str, ...] = TINY_WORDS,
) -> dict[str, Any]:
    """The components of a tiny Qwen-Image pipeline, seeded (``fork_rng``: the caller's RNG
    kept).

    Returns:
        Keyword arguments for ``QwenImagePipeline``: ``transformer``, ``vae``,
        ``text_encoder`` (Qwen2.5-VL), ``tokenizer`` and ``scheduler``.
    """
    cfg = config or TinyQwenImageConfig()
    tokenizer = tiny_qwen_tokenizer(words)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = tiny_qwenimage_transformer(cfg)
        torch.manual_seed(seed + 1)
        vae = tiny_qwenimage_vae(cfg)
        torch.manual_seed(seed + 2)
        text_encoder = tiny_qwen_text_encoder(cfg, tokenizer)
    return {
        "transformer": transformer.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "scheduler": FlowMatchEulerDiscreteScheduler(**QWENIMAGE_SCHEDULER_CONFIG),
    }


def save_qwenimage_pipeline(components: Mapping[str, Any], folder: str | Path) -> None:
    """Save a ``QwenImagePipeline`` of ``components`` into ``folder`` (safetensors)."""
    pipeline: Any = QwenImagePipeline(**{name: components[name] for name in _QWENIMAGE_PARTS})
    pipeline.save_pretrained(folder, safe_serialization=True)


def tiny_qwenimage_path(cache_dir: str | Path | None = None, *, seed: int = 0) -> Path:
    """The folder of the tiny Qwen-Image model (``save_pretrained`` layout), built on first use
    (written to a temporary sibling and renamed into place)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / f"{TINY_QWENIMAGE_NAME}-v{_FORMAT_VERSION}-seed{seed}"
    return build_pipeline_folder(
        target, lambda: tiny_qwenimage_components(seed), save_qwenimage_pipeline
    )


__all__ = [
    "QWENIMAGE_LATENTS_MEAN",
    "QWENIMAGE_LATENTS_STD",
    "QWENIMAGE_SCHEDULER_CONFIG",
    "QWENIMAGE_TEMPLATE_WORDS",
    "TINY_QWENIMAGE_NAME",
    "TinyQwenImageConfig",
    "build_byte_level_vocab",
    "save_qwenimage_pipeline",
    "tiny_qwen_text_encoder",
    "tiny_qwen_tokenizer",
    "tiny_qwenimage_components",
    "tiny_qwenimage_path",
    "tiny_qwenimage_transformer",
    "tiny_qwenimage_vae",
]
