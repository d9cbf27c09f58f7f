"""Load an OpenCLIP ViT state dict (e.g. the HPS v2.1 checkpoint) into transformers' CLIPModel.

OpenCLIP stores a CLIP as ``visual.*`` (a ViT: ``conv1``, ``class_embedding``,
``positional_embedding``, ``ln_pre``, ``transformer.resblocks.N.*``, ``ln_post``, ``proj``) and
the text tower at top level (``token_embedding``, ``positional_embedding``,
``transformer.resblocks.N.*``, ``ln_final``, ``text_projection``), plus ``logit_scale``. Each
residual block is ``ln_1``, ``attn`` (``nn.MultiheadAttention``: ``in_proj_weight`` /
``in_proj_bias`` stacking q, k, v, and ``out_proj``), ``ln_2`` and ``mlp.c_fc`` / ``mlp.c_proj``.

The conversion to ``CLIPModel`` splits ``in_proj`` into ``q_proj``/``k_proj``/``v_proj``, renames
``c_fc``/``c_proj`` to ``fc1``/``fc2`` and ``ln_1``/``ln_2`` to ``layer_norm1``/``layer_norm2``,
and transposes the projections (OpenCLIP computes ``x @ proj``, a ``Linear`` computes
``x @ W.T``). Both models use exact GELU and LayerNorm eps 1e-5 (OpenCLIP without
``quick_gelu``, as ViT-H-14 is built).

The architecture is read from the tensor shapes, so any OpenCLIP ViT loads by the same path:
widths, MLP sizes, layer counts, vocabulary, context length, patch and image size, projection
dimension. Head counts are not stored; they follow OpenCLIP's configs: text ``width // 64``;
vision ``min(width // 64, 16)`` (ViT-B/16 12 heads, ViT-L 16, and the wider ViT-H/g/bigG towers
16 heads of width 80/88/104).
"""

import re
from collections.abc import Mapping
from typing import Any

import torch

from ddpo.rewards._checkpoint_files import Source, convert_state_dict, require

__all__ = ["openclip_config", "openclip_source", "openclip_to_clip_state_dict"]

_BLOCK = re.compile(r"^(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)$")
_BLOCK_PARTS = {
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}
_QKV = {"q_proj": 0, "k_proj": 1, "v_proj": 2}
_TRANSPOSED = {
    "text_projection.weight": "text_projection",
    "visual_projection.weight": "visual.proj",
}
_DIRECT = {
    "logit_scale": "logit_scale",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
}


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _transpose(x: torch.Tensor) -> torch.Tensor:
    return x.t().contiguous()


def _chunk(index: int) -> Any:
    def take(x: torch.Tensor) -> torch.Tensor:
        return x.chunk(3, dim=0)[index].contiguous()

    return take


def openclip_source(key: str) -> Source:
    """The OpenCLIP key (and transform) that a ``CLIPModel`` state-dict key is taken from.

    Raises:
        KeyError: for a ``CLIPModel`` key this conversion does not know.
    """
    if key in _DIRECT:
        return _DIRECT[key], _identity
    if key in _TRANSPOSED:
        return _TRANSPOSED[key], _transpose
    match = _BLOCK.match(key)
    if match is None:
        raise KeyError(f"no OpenCLIP source for CLIPModel key {key!r}")
    tower, layer, part = match.groups()
    prefix = f"{'visual.' if tower == 'vision_model' else ''}transformer.resblocks.{layer}."
    if part in _BLOCK_PARTS:
        return prefix + _BLOCK_PARTS[part], _identity
    proj, _, kind = part.removeprefix("self_attn.").partition(".")
    if part.startswith("self_attn.") and proj in _QKV and kind in ("weight", "bias"):
        return f"{prefix}attn.in_proj_{kind}", _chunk(_QKV[proj])
    raise KeyError(f"no OpenCLIP source for CLIPModel key {key!r}")


def _count_layers(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def openclip_config(
    state: Mapping[str, torch.Tensor],
    *,
    argument: str,
    bos_token_id: int = 49406,
    eos_token_id: int = 49407,
    pad_token_id: int = 0,
) -> Any:
    """The ``CLIPConfig`` of an OpenCLIP ViT state dict, read from its tensor shapes.

    Raises:
        ValueError: naming the argument if a key needed for the shapes is missing or the shapes
            are inconsistent (non-square patch grid, differing projection dimensions).
    """
    from transformers import CLIPConfig

    conv = require(state, "visual.conv1.weight", argument=argument)
    vision_width, patch_size = int(conv.shape[0]), int(conv.shape[-1])
    grid = require(state, "visual.positional_embedding", argument=argument).shape[0] - 1
    side = round(grid**0.5)
    if side * side != grid:
        raise ValueError(
            f"{argument}: visual.positional_embedding has {grid} patches, not a square"
        )
    vision_embed = int(require(state, "visual.proj", argument=argument).shape[1])
    text_embed = int(require(state, "text_projection", argument=argument).shape[1])
    if vision_embed != text_embed:
        raise ValueError(
            f"{argument}: visual.proj gives {vision_embed} dims but text_projection {text_embed}"
        )
    vocab_size, text_width = require(state, "token_embedding.weight", argument=argument).shape
    context = int(require(state, "positional_embedding", argument=argument).shape[0])
    vision_mlp = require(state, "visual.transformer.resblocks.0.mlp.c_fc.weight", argument=argument)
    text_mlp = require(state, "transformer.resblocks.0.mlp.c_fc.weight", argument=argument)
    text_config = {
        "hidden_size": int(text_width),
        "intermediate_size": int(text_mlp.shape[0]),
        "num_attention_heads": max(int(text_width) // 64, 1),
        "num_hidden_layers": _count_layers(state, "transformer.resblocks."),
        "vocab_size": int(vocab_size),
        "max_position_embeddings": context,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
    }
    vision_config = {
        "hidden_size": vision_width,
        "intermediate_size": int(vision_mlp.shape[0]),
        "num_attention_heads": min(max(vision_width // 64, 1), 16),
        "num_hidden_layers": _count_layers(state, "visual.transformer.resblocks."),
        "image_size": side * patch_size,
        "patch_size": patch_size,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
    }
    return CLIPConfig(
        text_config=text_config, vision_config=vision_config, projection_dim=vision_embed
    )


def openclip_to_clip_state_dict(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], *, argument: str
) -> dict[str, torch.Tensor]:
    """The OpenCLIP ``state`` converted to the keys and layouts of ``expected`` (a CLIPModel's).

    Raises:
        ValueError: naming missing, unexpected and mis-shaped OpenCLIP keys.
    """
    return convert_state_dict(
        state,
        expected,
        openclip_source,
        argument=argument,
        ignored=lambda k: k == "attn_mask" or k.endswith(".attn_mask"),
    )
