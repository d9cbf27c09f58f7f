"""Load the ImageReward checkpoint (BLIP ViT + BERT with cross-attention + MLP) on transformers.

``ImageReward.pt`` is the bare state dict of ImageReward's ``ImageReward`` module:

- ``blip.visual_encoder.*``: BLIP's timm-style ViT (``cls_token``, ``pos_embed``,
  ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``,
  ``norm``; LayerNorm eps 1e-6, exact GELU, 64-wide heads: ViT-L/16 has 16);
- ``blip.text_encoder.*``: BLIP's "med" BERT (no token-type embeddings, no pooler) whose layers
  carry a ``crossattention`` block over the image tokens; sizes in ``med_config.json``;
- ``mlp.layers.{0,2,4,6,7}.*``: the score head, the same stack as the LAION aesthetic head;
- ``blip.vision_proj.*``, ``blip.text_proj.*`` (unused for the score) and ``position_ids``
  buffers, which are ignored.

transformers' ``BlipVisionModel`` is the same ViT under other names (``embeddings.*``,
``encoder.layers.N.{layer_norm1, self_attn.qkv, self_attn.projection, layer_norm2, mlp.*}``,
``post_layernorm``), and ``BlipTextModel`` was ported from "med" with identical key names (its
layers get a ``crossattention`` block when the config has ``is_decoder=True``; the forward pass
is still bidirectional with ``is_decoder=False``).
"""

import re
from collections.abc import Mapping
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import nn

from ddpo.rewards._checkpoint_files import Source, convert_state_dict, require
from ddpo.rewards.aesthetic import AestheticMLP

__all__ = ["ImageRewardModel", "blip_text_config", "blip_vision_config", "imagereward_source"]

_VISION = "blip.visual_encoder."
_TEXT = "blip.text_encoder."
_VISION_TOP = {
    "embeddings.class_embedding": "cls_token",
    "embeddings.position_embedding": "pos_embed",
    "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
    "embeddings.patch_embedding.bias": "patch_embed.proj.bias",
    "post_layernorm.weight": "norm.weight",
    "post_layernorm.bias": "norm.bias",
}
_VISION_BLOCK = {
    "layer_norm1": "norm1",
    "self_attn.qkv": "attn.qkv",
    "self_attn.projection": "attn.proj",
    "layer_norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_MED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def imagereward_source(key: str) -> Source:
    """The ImageReward key that an :class:`ImageRewardModel` state-dict key is taken from.

    Raises:
        KeyError: for a key this conversion does not know.
    """
    tower, _, rest = key.partition(".")
    if tower == "text_encoder":
        return _TEXT + rest, _identity
    if tower == "mlp":
        return key, _identity
    if tower == "vision":
        if rest in _VISION_TOP:
            return _VISION + _VISION_TOP[rest], _identity
        match = _LAYER.match(rest)
        if match and match.group(2) in _VISION_BLOCK:
            layer, part, kind = match.groups()
            return f"{_VISION}blocks.{layer}.{_VISION_BLOCK[part]}.{kind}", _identity
    raise KeyError(f"no ImageReward source for key {key!r}")


def _ignored(key: str) -> bool:
    return key.startswith(("blip.vision_proj.", "blip.text_proj.")) or key.endswith("position_ids")


def blip_vision_config(state: Mapping[str, torch.Tensor], *, argument: str) -> Any:
    """The ``BlipVisionConfig`` of ``blip.visual_encoder.*``, read from its tensor shapes.

    Raises:
        ValueError: naming the argument when a needed key is missing or the grid is not square.
    """
    from transformers import BlipVisionConfig

    patch = require(state, _VISION + "patch_embed.proj.weight", argument=argument)
    width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    grid = int(require(state, _VISION + "pos_embed", argument=argument).shape[1]) - 1
    side = round(grid**0.5)
    if side * side != grid:
        raise ValueError(f"{argument}: {_VISION}pos_embed has {grid} patches, not a square")
    fc1 = require(state, _VISION + "blocks.0.mlp.fc1.weight", argument=argument)
    pattern = re.compile(re.escape(_VISION) + r"blocks\.(\d+)\.")
    layers = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return BlipVisionConfig(
        hidden_size=width,
        intermediate_size=int(fc1.shape[0]),
        num_attention_heads=max(width // 64, 1),
        num_hidden_layers=max(layers) + 1,
        image_size=side * patch_size,
        patch_size=patch_size,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
    )


def blip_text_config(med_config: Mapping[str, Any], *, encoder_width: int, argument: str) -> Any:
    """The ``BlipTextConfig`` of a ``med_config.json``, cross-attending to ``encoder_width``.

    As in BLIP, the config's own ``encoder_width`` is replaced by the vision width.

    Raises:
        ValueError: naming the argument when a size is missing or cross-attention is off.
    """
    from transformers import BlipTextConfig

    absent = [name for name in _MED_FIELDS if not isinstance(med_config.get(name), int)]
    if absent:
        raise ValueError(f"{argument}: med_config.json lacks the integer fields {absent}")
    if not med_config.get("add_cross_attention", False):
        raise ValueError(f"{argument}: med_config.json must set add_cross_attention: true")
    return BlipTextConfig(
        vocab_size=int(med_config["vocab_size"]),
        hidden_size=int(med_config["hidden_size"]),
        num_hidden_layers=int(med_config["num_hidden_layers"]),
        num_attention_heads=int(med_config["num_attention_heads"]),
        intermediate_size=int(med_config["intermediate_size"]),
        max_position_embeddings=int(med_config["max_position_embeddings"]),
        encoder_hidden_size=encoder_width,
        hidden_act=str(med_config.get("hidden_act", "gelu")),
        layer_norm_eps=float(med_config.get("layer_norm_eps", 1e-12)),
        pad_token_id=int(med_config.get("pad_token_id", 0)),
        is_decoder=True,  # builds the cross-attention blocks; forward passes is_decoder=False
    )


class ImageRewardModel(nn.Module):
    """BLIP image encoder, BERT text encoder cross-attending to it, and the score head.

    ``forward`` returns the raw head output ``MLP(h_[CLS])`` (before ImageReward's
    standardisation), with ``h_[CLS]`` the text encoder's first-token state.
    """

    def __init__(self, vision_config: Any, text_config: Any) -> None:
        super().__init__()
        from transformers import BlipTextModel, BlipVisionModel

        self.vision = BlipVisionModel(vision_config)
        self.text_encoder = BlipTextModel(text_config, add_pooling_layer=False)
        self.mlp = AestheticMLP(int(text_config.hidden_size))

    def load_imagereward(self, state: Mapping[str, torch.Tensor], *, argument: str) -> None:
        """Fill the model from ImageReward's state dict (raises ValueError naming bad keys)."""
        converted = convert_state_dict(
            state, self.state_dict(), imagereward_source, argument=argument, ignored=_ignored
        )
        self.load_state_dict(converted)

    def forward(
        self,
        pixel_values: Float[torch.Tensor, "batch 3 size size"],
        input_ids: Int[torch.Tensor, "batch tokens"],
        attention_mask: Int[torch.Tensor, "batch tokens"],
    ) -> Float[torch.Tensor, " batch"]:
        image_embeds = self.vision(pixel_values=pixel_values).last_hidden_state
        hidden = self.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            is_decoder=False,
        ).last_hidden_state
        head_dtype = next(self.mlp.parameters()).dtype  # float32, or float64 for a float64 model
        scores: torch.Tensor = self.mlp(hidden[:, 0].to(head_dtype))
        return scores
