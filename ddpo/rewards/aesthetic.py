"""The LAION aesthetic predictor as a reward (Black et al. 2023, §6.1, "aesthetic quality").

score = MLP(e / ||e||), e = CLIP image embedding (ViT-L/14 in the paper, 768-d); the MLP is the
"improved aesthetic predictor" head: Linear(d, 1024), Dropout(0.2), Linear(1024, 128),
Dropout(0.2), Linear(128, 64), Dropout(0.1), Linear(64, 16), Linear(16, 1), with no activations.

The CLIP model comes from a local folder or a hub id (``CLIPModel.from_pretrained``); the MLP
weights from a ``.safetensors`` file or the original ``.pth`` state dict (loaded with
``weights_only=True``), given as a local file, a local folder or a hub repository id. Images are
preprocessed as the original scorer (TRL's and ddpo-pytorch's ``AestheticScorer``: transformers'
``CLIPProcessor`` on 8-bit images) does: quantised to 8 bits, PIL bicubic resize of the shortest
edge, centre crop, CLIP normalisation (:class:`ddpo.rewards._clip.ClipImageTransform`), per image
on the CPU; the batch then runs on the model's device.
"""

from pathlib import Path
from typing import Any, Final, final

import torch
from jaxtyping import Float
from torch import nn

from ddpo.rewards._clip import (
    ClipImageTransform,
    hub_download,
    load_clip_model,
    read_preprocessor_config,
)

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
            path = hub_download(source, filename, revision, token)
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


@final
class AestheticScorer(nn.Module):
    """CLIP image embedding -> L2 normalisation -> :class:`AestheticMLP`; frozen weights, no
    gradients except through `differentiable_forward`.

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
        clip = load_clip_model(
            clip_model_name_or_path,
            argument="clip_model_name_or_path",
            revision=revision,
            token=token,
        )
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

        self.transform = ClipImageTransform.from_config(
            read_preprocessor_config(clip_model_name_or_path, revision, token),
            image_size=int(config.vision_config.image_size),
        )
        self.resize_shortest_edge = self.transform.shortest_edge
        self.crop_size = self.transform.crop_size
        self.image_mean: torch.Tensor
        self.image_std: torch.Tensor
        mean, std = torch.tensor(self.transform.mean), torch.tensor(self.transform.std)
        self.register_buffer("image_mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", std.view(1, 3, 1, 1), persistent=False)

        self.vision_model = clip.vision_model
        self.visual_projection = clip.visual_projection
        self.mlp = mlp
        self.dtype = dtype
        self.requires_grad_(False)
        self.eval()
        self.to(device or "cpu")
        self.vision_model.to(dtype)
        self.visual_projection.to(dtype)

    def preprocess(self, images: Any) -> Float[torch.Tensor, "batch 3 crop_h crop_w"]:
        """The CLIP image processor's pixel values (float32, on the CPU) of images as
        ``to_uint8_nhwc`` takes them: quantised, PIL resize, centre crop, normalisation."""
        return self.transform(images)

    def score_pixels(
        self, pixels: Float[torch.Tensor, "batch 3 crop_h crop_w"]
    ) -> Float[torch.Tensor, " batch"]:
        """Aesthetic scores of preprocessed pixels, on the model's device, with gradients;
        float32 (float64 for a float64 model)."""
        dtype = self.visual_projection.weight.dtype
        pixels = pixels.to(self.image_mean.device, dtype)
        pooled = self.vision_model(pixel_values=pixels).pooler_output
        embeds = self.visual_projection(pooled)
        embeds = embeds.to(torch.promote_types(next(self.mlp.parameters()).dtype, torch.float32))
        embeds = embeds / torch.linalg.vector_norm(embeds, dim=-1, keepdim=True)
        scores: torch.Tensor = self.mlp(embeds)
        return scores

    def differentiable_forward(
        self, images: Float[torch.Tensor, "batch 3 height width"]
    ) -> Float[torch.Tensor, " batch"]:
        """Aesthetic scores of float images in [0, 1] with gradients to them, on their device:
        the CLIP preprocessing in torch without quantisation
        (`ddpo.rewards._clip.ClipImageTransform.differentiable`)."""
        return self.score_pixels(self.transform.differentiable(images)).to(images.device)

    @torch.no_grad()
    def forward(self, images: Any) -> Float[torch.Tensor, " batch"]:
        """Aesthetic scores (float32, on CPU) of a batch of images (see ``to_uint8_nhwc``)."""
        return self.score_pixels(self.preprocess(images)).float().cpu()


@final
class AestheticReward:
    """Reward function ``(images, prompts, prompt_metadata) -> (scores, {})`` over a scorer.

    Args:
        scorer: the CLIP model and MLP.
        differentiable: score float images with gradients (torch preprocessing, no 8-bit
            round trip; see :mod:`ddpo.rewards._preprocess`) instead of exactly as the original.
    """

    def __init__(self, scorer: AestheticScorer, *, differentiable: bool = False) -> None:
        self.scorer = scorer
        self.differentiable = differentiable

    def __call__(
        self, images: Any, prompts: Any = None, prompt_metadata: Any = None
    ) -> tuple[Float[torch.Tensor, " batch"], dict[str, Any]]:
        del prompts, prompt_metadata
        if self.differentiable:
            return self.scorer.differentiable_forward(images), {}
        return self.scorer(images), {}


def aesthetic_score(
    clip_model_name_or_path: str = DEFAULT_CLIP_MODEL,
    mlp_weights_path_or_hub_id: str = DEFAULT_MLP_REPO,
    *,
    differentiable: bool = False,
    **kwargs: Any,
) -> AestheticReward:
    """The aesthetic reward function; ``differentiable`` as :class:`AestheticReward`, the
    other arguments as :class:`AestheticScorer`."""
    return AestheticReward(
        AestheticScorer(clip_model_name_or_path, mlp_weights_path_or_hub_id, **kwargs),
        differentiable=differentiable,
    )
