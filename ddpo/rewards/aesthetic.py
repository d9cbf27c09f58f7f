"""The LAION aesthetic predictor as a reward (Black et al. 2023, §6.1, "aesthetic quality").

score = MLP(e / ||e||), e = CLIP image embedding (ViT-L/14 in the paper, 768-d); the MLP is the
"improved aesthetic predictor" head: Linear(d, 1024), Dropout(0.2), Linear(1024, 128),
Dropout(0.2), Linear(128, 64), Dropout(0.1), Linear(64, 16), Linear(16, 1), with no activations.

The CLIP model comes from a local folder or a hub id (``CLIPModel.from_pretrained``); the MLP
weights from a ``.safetensors`` file or the original ``.pth`` state dict (loaded with
``weights_only=True``), given as a local file, a local folder or a hub repository id. Images are
preprocessed as tensors (resize of the shortest edge, centre crop, CLIP normalisation), with no
PIL round trip.
"""

import json
from pathlib import Path
from typing import Any, Final, final

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import nn

from ddpo.rewards._images import to_float_nchw

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_MLP_FILENAME",
    "DEFAULT_MLP_REPO",
    "AestheticMLP",
    "AestheticReward",
    "AestheticScorer",
    "aesthetic_score",
]

DEFAULT_CLIP_MODEL: Final = "openai/clip-vit-large-patch14"
DEFAULT_MLP_REPO: Final = "trl-lib/ddpo-aesthetic-predictor"
DEFAULT_MLP_FILENAME: Final = "aesthetic-model.pth"
_OPENAI_CLIP_MEAN: Final = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_CLIP_STD: Final = (0.26862954, 0.26130258, 0.27577711)


@final
class AestheticMLP(nn.Module):
    """The aesthetic head: a linear stack (with dropouts) from a CLIP embedding to one score.

    Its state-dict keys (``layers.0.weight`` ... ``layers.7.bias``) match the original weights.
    """

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        if input_size <= 0:
            raise ValueError(f"input_size must be positive, got {input_size}")
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeds: Float[torch.Tensor, "batch dim"]) -> Float[torch.Tensor, " batch"]:
        return self.layers(embeds).squeeze(-1)


def _hub_download(repo_id: str, filename: str, revision: str | None, token: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename, revision=revision, token=token))


def _load_mlp_state(
    source: str, filename: str, revision: str | None, token: str | None
) -> dict[str, torch.Tensor]:
    path = Path(source)
    if path.is_dir():
        path = path / filename
        if not path.is_file():
            raise FileNotFoundError(f"mlp_weights_path_or_hub_id: no {filename!r} in {source!r}")
    elif not path.is_file():
        try:
            path = _hub_download(source, filename, revision, token)
        except Exception as exc:
            raise OSError(
                f"mlp_weights_path_or_hub_id={source!r} is not a local file or folder, and "
                f"{filename!r} could not be fetched from the Hugging Face Hub "
                f"(unreachable, offline, or no such repository): {exc}"
            ) from exc
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict, got {type(state).__name__}")
    return state


def _preprocessor_config(
    source: str, revision: str | None, token: str | None
) -> dict[str, Any] | None:
    """The CLIP folder's ``preprocessor_config.json``, or None when there is none."""
    path = Path(source) / "preprocessor_config.json"
    if Path(source).is_dir():
        return json.loads(path.read_text()) if path.is_file() else None
    try:
        return json.loads(_hub_download(source, path.name, revision, token).read_text())
    except Exception:  # CLIP itself loaded: a missing processor file falls back to defaults
        return None


@final
class AestheticScorer(nn.Module):
    """CLIP image embedding -> L2 normalisation -> :class:`AestheticMLP`; no gradients.

    Args:
        clip_model_name_or_path: a hub id (default ``openai/clip-vit-large-patch14``) or a local
            folder written by ``CLIPModel.save_pretrained`` (a ``preprocessor_config.json`` there
            sets the resize, crop and normalisation; else the CLIP defaults at the vision
            config's ``image_size``).
        mlp_weights_path_or_hub_id: a ``.safetensors`` or ``.pth`` file, a folder holding
            ``mlp_weights_filename``, or a hub repository id holding it.
        mlp_weights_filename: file to take from a folder or a hub repository.
        dtype: dtype of the CLIP model (the MLP runs in float32).
        device: where to run; default CPU.
        revision, token: passed to the hub.

    Raises:
        OSError: if a model cannot be found locally nor fetched from the hub (the message says
            which one and why).
        ValueError: if the MLP weights do not fit the CLIP projection dimension.
    """

    def __init__(
        self,
        clip_model_name_or_path: str = DEFAULT_CLIP_MODEL,
        mlp_weights_path_or_hub_id: str = DEFAULT_MLP_REPO,
        *,
        mlp_weights_filename: str = DEFAULT_MLP_FILENAME,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        revision: str | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import CLIPModel

        try:
            clip = CLIPModel.from_pretrained(
                clip_model_name_or_path, revision=revision or "main", token=token
            )
        except Exception as exc:
            raise OSError(
                f"clip_model_name_or_path={clip_model_name_or_path!r} is not a local CLIP folder, "
                "and the Hugging Face Hub could not provide it (unreachable, offline, or no such "
                f"model): {exc}"
            ) from exc
        state = _load_mlp_state(mlp_weights_path_or_hub_id, mlp_weights_filename, revision, token)
        config: Any = clip.config
        projection_dim = int(config.projection_dim)
        mlp = AestheticMLP(projection_dim)
        first = state.get("layers.0.weight")
        if first is None or tuple(first.shape) != (1024, projection_dim):
            shape = None if first is None else tuple(first.shape)
            raise ValueError(
                f"mlp_weights_path_or_hub_id={mlp_weights_path_or_hub_id!r}: expected "
                f"'layers.0.weight' of shape (1024, {projection_dim}) to match the CLIP "
                f"projection_dim, got {shape}"
            )
        mlp.load_state_dict(state)

        vision = config.vision_config
        processor = _preprocessor_config(clip_model_name_or_path, revision, token) or {}
        size = processor.get("size", {}).get("shortest_edge", vision.image_size)
        crop = processor.get("crop_size", {"height": vision.image_size, "width": vision.image_size})
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        self.resize_shortest_edge = int(size)
        self.crop_size = (int(crop["height"]), int(crop["width"]))
        mean = processor.get("image_mean", _OPENAI_CLIP_MEAN)
        std = processor.get("image_std", _OPENAI_CLIP_STD)
        self.image_mean: torch.Tensor
        self.image_std: torch.Tensor
        self.register_buffer("image_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

        self.vision_model = clip.vision_model
        self.visual_projection = clip.visual_projection
        self.mlp = mlp
        self.dtype = dtype
        self.requires_grad_(False)
        self.eval()
        self.to(device or "cpu")
        self.vision_model.to(dtype)
        self.visual_projection.to(dtype)

    def preprocess(
        self, images: Float[torch.Tensor, "batch 3 height width"]
    ) -> Float[torch.Tensor, "batch 3 crop_h crop_w"]:
        """Resize (shortest edge, bicubic, antialiased), centre-crop and normalise for CLIP."""
        height, width = images.shape[-2:]
        scale = self.resize_shortest_edge / min(height, width)
        new_size = (max(round(height * scale), 1), max(round(width * scale), 1))
        images = F.interpolate(images, size=new_size, mode="bicubic", antialias=True)
        crop_h, crop_w = self.crop_size
        top = max((new_size[0] - crop_h) // 2, 0)
        left = max((new_size[1] - crop_w) // 2, 0)
        images = images[..., top : top + crop_h, left : left + crop_w]
        if images.shape[-2:] != (crop_h, crop_w):  # image smaller than the crop: pad like CLIP
            pad_h, pad_w = crop_h - images.shape[-2], crop_w - images.shape[-1]
            images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return (images.clamp(0, 1) - self.image_mean) / self.image_std

    @torch.no_grad()
    def forward(self, images: Any) -> Float[torch.Tensor, " batch"]:
        """Aesthetic scores (float32, on CPU) of a batch of images (see ``to_float_nchw``)."""
        device = self.image_mean.device
        pixels = self.preprocess(to_float_nchw(images).to(device))
        pooled = self.vision_model(pixel_values=pixels.to(self.dtype)).pooler_output
        embeds = self.visual_projection(pooled).float()
        embeds = embeds / torch.linalg.vector_norm(embeds, dim=-1, keepdim=True)
        return self.mlp(embeds).float().cpu()


@final
class AestheticReward:
    """Reward function ``(images, prompts, prompt_metadata) -> (scores, {})`` over a scorer."""

    def __init__(self, scorer: AestheticScorer) -> None:
        self.scorer = scorer

    def __call__(
        self, images: Any, prompts: Any = None, prompt_metadata: Any = None
    ) -> tuple[Float[torch.Tensor, " batch"], dict[str, Any]]:
        del prompts, prompt_metadata
        return self.scorer(images), {}


def aesthetic_score(
    clip_model_name_or_path: str = DEFAULT_CLIP_MODEL,
    mlp_weights_path_or_hub_id: str = DEFAULT_MLP_REPO,
    **kwargs: Any,
) -> AestheticReward:
    """The aesthetic reward function; arguments as :class:`AestheticScorer`."""
    return AestheticReward(
        AestheticScorer(clip_model_name_or_path, mlp_weights_path_or_hub_id, **kwargs)
    )
