"""CLIP loading, image preprocessing and image-text cosine similarity, shared by the CLIP rewards.

The aesthetic, CLIPScore and PickScore rewards load a transformers ``CLIPModel`` from a local
folder or a hub id, and preprocess images exactly as transformers' CLIP image processor (its PIL
backend) does with the 8-bit images a user would save: quantise, PIL resize so that the shortest
edge is the processor's ``size`` (``resample``, bicubic for CLIP), centre crop to ``crop_size``,
normalise by the processor's mean and std (:func:`ddpo.rewards._preprocess.pil_resize_crop`), per
image on the CPU; the batch then runs on the model's device. Both the current
(``{"shortest_edge": 224}``) and the older (``224``) ``preprocessor_config.json`` formats are read.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, final

import torch
from jaxtyping import Float
from torch import nn

from ddpo.rewards._images import to_uint8_nhwc
from ddpo.rewards._preprocess import check_float_images, pil_resize_crop, resize_crop

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "ClipImageTransform",
    "ClipSimilarity",
    "check_batch_size",
    "check_prompts",
    "hub_download",
    "load_clip_model",
    "load_clip_tokenizer",
    "read_preprocessor_config",
    "resolve_device",
]

OPENAI_CLIP_MEAN: Final = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: Final = (0.26862954, 0.26130258, 0.27577711)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, or CUDA when available and CPU otherwise when it is ``None``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_batch_size(batch_size: int) -> int:
    """``batch_size`` if it is a positive int.

    Raises:
        ValueError: naming ``batch_size`` and its value otherwise.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def hub_download(repo_id: str, filename: str, revision: str | None, token: str | None) -> Path:
    """``filename`` of the hub repository ``repo_id`` (from the local cache when it is there)."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename, revision=revision, token=token))


def _unreachable(argument: str, source: str, what: str, exc: Exception) -> OSError:
    return OSError(
        f"{argument}={source!r} is not a local {what} folder, and the Hugging Face Hub could not "
        f"provide it (unreachable, offline, or no such model): {exc}"
    )


def load_clip_model(
    source: str, *, argument: str, revision: str | None = None, token: str | None = None
) -> Any:
    """``CLIPModel.from_pretrained(source)`` in eval mode without gradients.

    Raises:
        OSError: naming ``argument`` and ``source`` if it cannot be loaded.
    """
    from transformers import CLIPModel

    try:
        model = CLIPModel.from_pretrained(source, revision=revision or "main", token=token)
    except Exception as exc:
        raise _unreachable(argument, source, "CLIP", exc) from exc
    model.requires_grad_(False)
    return model.eval()


def load_clip_tokenizer(
    source: str, *, argument: str, revision: str | None = None, token: str | None = None
) -> Any:
    """``AutoTokenizer.from_pretrained(source)`` (a CLIP tokenizer).

    Raises:
        OSError: naming ``argument`` and ``source`` if it cannot be loaded.
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, revision=revision or "main", token=token)
    except Exception as exc:
        raise _unreachable(argument, source, "tokenizer", exc) from exc


def read_preprocessor_config(
    source: str, revision: str | None = None, token: str | None = None
) -> dict[str, Any] | None:
    """The ``preprocessor_config.json`` of a folder or hub repository, or None when it has none."""
    if Path(source).is_dir():
        path = Path(source) / "preprocessor_config.json"
        return json.loads(path.read_text()) if path.is_file() else None
    try:
        return json.loads(
            hub_download(source, "preprocessor_config.json", revision, token).read_text()
        )
    except Exception:  # the model itself loaded: a missing processor file falls back to defaults
        return None


def _crop_size(value: Any, default: int) -> tuple[int, int]:
    if value is None:
        return default, default
    if isinstance(value, int):
        return value, value
    return int(value["height"]), int(value["width"])


def _shortest_edge(value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, int):
        return value
    if "shortest_edge" in value:
        return int(value["shortest_edge"])
    raise ValueError(
        f"preprocessor_config.json: size={value!r} is not supported; CLIP's image processor "
        "(and every CLIP checkpoint these rewards load) resizes by {'shortest_edge': N}"
    )


def _three(values: Any, name: str) -> tuple[float, float, float]:
    if not isinstance(values, Sequence) or len(values) != 3:
        raise ValueError(f"preprocessor_config.json: {name} must hold 3 numbers, got {values!r}")
    return float(values[0]), float(values[1]), float(values[2])


@final
@dataclass(frozen=True)
class ClipImageTransform:
    """transformers' CLIP image processing: shortest-edge PIL resize, centre crop, normalise."""

    shortest_edge: int
    crop_size: tuple[int, int]
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    resample: int = 3
    """PIL resampling filter (3: bicubic, CLIP's)."""

    @classmethod
    def from_config(
        cls, processor: dict[str, Any] | None, *, image_size: int
    ) -> "ClipImageTransform":
        """The transform a ``preprocessor_config.json`` describes (CLIP defaults at
        ``image_size`` for whatever it leaves out, or for all of it when it is None)."""
        processor = processor or {}
        return cls(
            shortest_edge=_shortest_edge(processor.get("size"), image_size),
            crop_size=_crop_size(processor.get("crop_size"), image_size),
            mean=_three(processor.get("image_mean", OPENAI_CLIP_MEAN), "image_mean"),
            std=_three(processor.get("image_std", OPENAI_CLIP_STD), "image_std"),
            resample=int(processor.get("resample", 3)),
        )

    def __call__(self, images: Any) -> Float[torch.Tensor, "batch 3 crop_h crop_w"]:
        """Pixel values as the CLIP image processor makes them from the 8-bit images (float32,
        on the CPU); images as ``to_uint8_nhwc`` takes them (floats are quantised first)."""
        return pil_resize_crop(images, **self._steps())

    def differentiable(
        self, images: Float[torch.Tensor, "batch 3 height width"]
    ) -> Float[torch.Tensor, "batch 3 crop_h crop_w"]:
        """The same steps in torch on float images with their gradients, device and dtype, not
        quantised (:func:`ddpo.rewards._preprocess.resize_crop`)."""
        return resize_crop(images, **self._steps())

    def _steps(self) -> dict[str, Any]:
        """The processor's settings, as both preprocessing functions take them."""
        return {
            "shortest_edge": self.shortest_edge,
            "crop": self.crop_size,
            "mean": self.mean,
            "std": self.std,
            "convention": "transformers",
            "resample": self.resample,
        }


def check_prompts(prompts: Any, batch: int) -> list[str]:
    """``prompts`` as a list of ``batch`` strings.

    Raises:
        ValueError: naming ``prompts`` if it is not a sequence of ``batch`` strings.
    """
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ValueError(f"prompts must be a sequence of str, got {type(prompts).__name__}")
    if len(prompts) != batch:
        raise ValueError(f"prompts has {len(prompts)} entries for a batch of {batch} images")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise ValueError(f"prompts must be str; not at indices {bad}")
    return list(prompts)


@final
class ClipSimilarity(nn.Module):
    """Cosine similarity of CLIP image and text embeddings, per (image, prompt) pair.

    ``cos_i = <f(x_i), g(p_i)> / (||f(x_i)|| ||g(p_i)||)``, with ``f`` the vision tower and
    visual projection, ``g`` the text tower (prompt truncated to the model's context, 77 tokens
    for the released models, padded to it) and text projection. Inputs go to the model's device
    ``batch_size`` pairs at a time, under ``torch.no_grad``; `differentiable_forward` keeps the
    images' gradients (the text side stays without).

    Args:
        model: a transformers ``CLIPModel``.
        tokenizer: its tokenizer.
        transform: the image preprocessing.
        device: where to run.
        batch_size: pairs per forward pass.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        transform: ClipImageTransform,
        *,
        device: torch.device,
        batch_size: int,
    ) -> None:
        super().__init__()
        self.model = model.to(device)
        self.tokenizer = tokenizer
        self.transform = transform
        self.device = device
        self.batch_size = check_batch_size(batch_size)
        text_config: Any = model.config.text_config
        self.max_length = min(
            int(getattr(tokenizer, "model_max_length", 77)),
            int(text_config.max_position_embeddings),
        )

    @torch.no_grad()
    def image_embeds(self, images: Any) -> Float[torch.Tensor, "batch dim"]:
        """L2-normalised projected image embeddings (float32); images as ``to_uint8_nhwc``
        takes them."""
        return self.pixel_embeds(self.transform(images))

    def pixel_embeds(
        self, pixels: Float[torch.Tensor, "batch 3 crop_h crop_w"]
    ) -> Float[torch.Tensor, "batch dim"]:
        """L2-normalised projected image embeddings of preprocessed pixels, with gradients;
        float32 (float64 for a float64 model)."""
        dtype = self.model.visual_projection.weight.dtype
        pooled = self.model.vision_model(pixel_values=pixels.to(self.device, dtype)).pooler_output
        embeds = self.model.visual_projection(pooled)
        embeds = embeds.to(torch.promote_types(dtype, torch.float32))
        return embeds / torch.linalg.vector_norm(embeds, dim=-1, keepdim=True)

    @torch.no_grad()
    def text_embeds(self, prompts: list[str]) -> Float[torch.Tensor, "batch dim"]:
        """L2-normalised projected text embeddings (float32; float64 for a float64 model)."""
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        pooled = self.model.text_model(
            input_ids=tokens["input_ids"].to(self.device),
            attention_mask=tokens["attention_mask"].to(self.device),
        ).pooler_output
        embeds = self.model.text_projection(pooled)
        embeds = embeds.to(torch.promote_types(embeds.dtype, torch.float32))
        return embeds / torch.linalg.vector_norm(embeds, dim=-1, keepdim=True)

    def forward(
        self, images: Any, prompts: Any, *, prefix: str = ""
    ) -> Float[torch.Tensor, " batch"]:
        """Per-pair cosine similarities (float32, on CPU) of images (as ``to_uint8_nhwc`` takes
        them) and ``prefix + prompt``.

        Raises:
            ValueError: if the images are not a batch, or prompts are not one str per image.
        """
        pixels = to_uint8_nhwc(images)
        texts = [prefix + text for text in check_prompts(prompts, pixels.shape[0])]
        cosines = []
        for start in range(0, len(texts), self.batch_size):
            stop = start + self.batch_size
            image = self.image_embeds(pixels[start:stop])
            text = self.text_embeds(texts[start:stop])
            cosines.append((image * text).sum(dim=-1).cpu())
        return torch.cat(cosines) if cosines else torch.zeros(0)

    def differentiable_forward(
        self, images: Float[torch.Tensor, "batch 3 height width"], prompts: Any, *, prefix: str = ""
    ) -> Float[torch.Tensor, " batch"]:
        """Per-pair cosine similarities with gradients to ``images`` (a float tensor in [0, 1],
        preprocessed by `ClipImageTransform.differentiable`), on the images' device, float32
        (float64 for a float64 model).

        Raises:
            ValueError: if the images are not a float batch, or prompts not one str per image.
        """
        images = check_float_images(images)
        texts = [prefix + text for text in check_prompts(prompts, images.shape[0])]
        cosines = []
        for start in range(0, len(texts), self.batch_size):
            stop = start + self.batch_size
            image = self.pixel_embeds(self.transform.differentiable(images[start:stop]))
            text = self.text_embeds(texts[start:stop])
            cosines.append((image * text).sum(dim=-1).to(images.device))
        return torch.cat(cosines) if cosines else images.new_zeros(0)
