"""ImageReward v1.0 as a reward (Xu et al. 2023, "ImageReward: Learning and Evaluating Human
Preferences for Text-to-Image Generation").

ImageReward encodes the image with BLIP's ViT-L/16, runs a BERT text encoder over the prompt that
cross-attends to the image tokens, and maps the [CLS] state h to a score with an MLP head
(Linear(768, 1024), Linear(1024, 128), Linear(128, 64), Linear(64, 16), Linear(16, 1), with
dropouts and no activations), standardised with the statistics fixed in the original code::

    ImageReward(x, p) = (MLP(h_[CLS](x, p)) - 0.16717362830052426) / 1.0333394966054072

Preprocessing follows the original's (``ImageReward.score`` on a PIL image, torchvision's
``Resize(224, BICUBIC)``, ``CenterCrop(224)``, ``ToTensor``, ``Normalize``): the float images are
quantised to 8 bits as saving them would, each is resized on the CPU with PIL (bicubic, the
shortest side to 224 and the other ``int(224 * long / short)``), centre-cropped at torchvision's
offsets, and normalised with the OpenAI CLIP mean and std
(:func:`ddpo.rewards._preprocess.pil_resize_crop`); the batch then runs on the model's device.
Prompts are tokenised with ``bert-base-uncased`` plus BLIP's special tokens (``[DEC]`` as bos,
``[ENC]``), padded and truncated to 35 tokens, [CLS] first. The tests compare the scores with
image-reward 1.5's on the same weights and images.

Implementation: the original files ``ImageReward.pt`` and ``med_config.json`` (hub repository
``THUDM/ImageReward``) are converted at load time onto transformers' ``BlipVisionModel`` and
``BlipTextModel`` (:mod:`ddpo.rewards._blip_convert`); the ``image-reward`` package is not used
because it requires torchvision, which cannot be installed beside this project's torch. The
vision sizes are read from the checkpoint's shapes and the text sizes from ``med_config.json``,
so a smaller checkpoint in the same format loads by the same code path.

Real model: 446M parameters (ViT-L/16 303M, BERT with cross-attention 142M, head 0.9M; the
unused ``vision_proj``/``text_proj`` are dropped), 1.8 GB in float32 plus activations.
"""

import json
from pathlib import Path
from typing import Any, Final, final

import numpy as np
import torch
from jaxtyping import Float, Int, UInt8
from torch import nn

from ddpo.rewards._blip_convert import ImageRewardModel, blip_text_config, blip_vision_config
from ddpo.rewards._checkpoint_files import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    check_batch_size,
    check_prompts,
    load_torch_state_dict,
    resolve_device,
    resolve_file,
    resolve_folder,
)
from ddpo.rewards._images import to_uint8_nhwc
from ddpo.rewards._preprocess import check_float_images, pil_resize_crop, resize_crop

__all__ = [
    "DEFAULT_IMAGE_REWARD_REPO",
    "IMAGE_REWARD_MEAN",
    "IMAGE_REWARD_STD",
    "MAX_PROMPT_TOKENS",
    "ImageRewardFn",
    "ImageRewardScorer",
    "image_reward",
]

DEFAULT_IMAGE_REWARD_REPO: Final = "THUDM/ImageReward"
CHECKPOINT_FILENAME: Final = "ImageReward.pt"
MED_CONFIG_FILENAME: Final = "med_config.json"
IMAGE_REWARD_MEAN: Final = 0.16717362830052426
IMAGE_REWARD_STD: Final = 1.0333394966054072
MAX_PROMPT_TOKENS: Final = 35


def _load_tokenizer(tokenizer: str, token: str | None) -> Any:
    from transformers import BertTokenizer

    folder = resolve_folder(
        tokenizer,
        ("vocab.txt",),
        ("tokenizer_config.json", "special_tokens_map.json"),
        argument="tokenizer",
        token=token,
    )
    loaded = BertTokenizer.from_pretrained(folder)
    loaded.add_special_tokens({"bos_token": "[DEC]"})
    loaded.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return loaded


def _checkpoint_files(model: str, token: str | None) -> tuple[Path, Path]:
    """``ImageReward.pt`` and ``med_config.json`` from a hub id, a folder, or the ``.pt`` file."""
    path = Path(model).expanduser()
    if path.is_file():
        med = path.parent / MED_CONFIG_FILENAME
        if not med.is_file():
            raise FileNotFoundError(f"model={model!r}: no {MED_CONFIG_FILENAME!r} beside the file")
        return path, med
    checkpoint = resolve_file(model, CHECKPOINT_FILENAME, argument="model", token=token)
    return checkpoint, resolve_file(model, MED_CONFIG_FILENAME, argument="model", token=token)


@final
class ImageRewardScorer(nn.Module):
    """ImageReward v1.0 scores of (image, prompt) pairs from the original files; frozen
    weights, no gradients except through `differentiable_forward`.

    Args:
        model: a hub repository id, a folder holding ``ImageReward.pt`` and ``med_config.json``,
            or the ``.pt`` file (with ``med_config.json`` beside it).
        device: where to run; default CUDA when available, else CPU.
        batch_size: images per forward pass.
        token: Hugging Face token for the hub.
        tokenizer: hub id or local folder of the BERT tokenizer (``vocab.txt``).
        dtype: dtype of the encoders (float32 by default; the head runs in float32).

    Raises:
        ValueError: if ``batch_size`` is not a positive int, ``med_config.json`` lacks a size,
            or the checkpoint does not fit (the message names missing and unexpected keys).
        FileNotFoundError, OSError: if a file cannot be found locally nor fetched from the hub.
    """

    def __init__(
        self,
        model: str = DEFAULT_IMAGE_REWARD_REPO,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 16,
        token: str | None = None,
        tokenizer: str = "bert-base-uncased",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.batch_size = check_batch_size(batch_size)
        self.tokenizer = _load_tokenizer(tokenizer, token)
        checkpoint, med_path = _checkpoint_files(model, token)
        argument = f"model={model!r}"
        try:
            med_config = json.loads(med_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{argument}: {med_path} is not a JSON file: {exc}") from exc
        if not isinstance(med_config, dict):
            raise ValueError(f"{argument}: {med_path} does not hold a JSON object")
        state = load_torch_state_dict(checkpoint, argument=argument)
        vision_config = blip_vision_config(state, argument=argument)
        text_config = blip_text_config(
            med_config, encoder_width=vision_config.hidden_size, argument=argument
        )
        if len(self.tokenizer) > text_config.vocab_size:
            raise ValueError(
                f"tokenizer={tokenizer!r} has {len(self.tokenizer)} tokens (with [DEC] and "
                f"[ENC]) but med_config.json's vocab_size is {text_config.vocab_size}"
            )
        self.model = ImageRewardModel(vision_config, text_config)
        self.model.load_imagereward(state, argument=argument)
        self.image_size = int(vision_config.image_size)
        self.dtype = dtype
        self.device = resolve_device(device)
        self.requires_grad_(False)
        self.eval()
        self.model.to(self.device)
        for encoder in (self.model.vision, self.model.text_encoder):
            nn.Module.to(encoder, dtype)

    def tokenize(
        self, prompts: list[str]
    ) -> tuple[Int[torch.Tensor, "batch 35"], Int[torch.Tensor, "batch 35"]]:
        """Token ids and attention mask, padded and truncated to 35 tokens."""
        encoded = self.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=MAX_PROMPT_TOKENS,
            return_tensors="pt",
        )
        return encoded["input_ids"], encoded["attention_mask"]

    def preprocess(self, images: Any) -> Float[torch.Tensor, "batch 3 size size"]:
        """The original's image preprocessing (see the module docstring), float32 on the CPU;
        images as ``to_uint8_nhwc`` takes them."""
        return pil_resize_crop(images, **self._steps())

    def differentiable_preprocess(
        self, images: Float[torch.Tensor, "batch 3 height width"]
    ) -> Float[torch.Tensor, "batch 3 size size"]:
        """The original's preprocessing in torch on float images with their gradients, device
        and dtype, not quantised (:func:`ddpo.rewards._preprocess.resize_crop`)."""
        return resize_crop(images, **self._steps())

    def _steps(self) -> dict[str, Any]:
        """The original's transform settings, as both preprocessing functions take them."""
        return {
            "shortest_edge": self.image_size,
            "crop": (self.image_size, self.image_size),
            "mean": OPENAI_CLIP_MEAN,
            "std": OPENAI_CLIP_STD,
            "convention": "torchvision",
        }

    def raw_scores(
        self, images: UInt8[np.ndarray, "batch height width 3"], prompts: list[str]
    ) -> Float[torch.Tensor, " batch"]:
        """The head's output ``MLP(h_[CLS])`` for one chunk, before standardisation."""
        return self.score_pixels(self.preprocess(images), prompts)

    def score_pixels(
        self, pixels: Float[torch.Tensor, "batch 3 size size"], prompts: list[str]
    ) -> Float[torch.Tensor, " batch"]:
        """``MLP(h_[CLS])`` of preprocessed pixels, on the model's device, with gradients."""
        dtype = self.model.vision.embeddings.patch_embedding.weight.dtype
        ids, mask = self.tokenize(prompts)
        scores: torch.Tensor = self.model(
            pixels.to(self.device, dtype), ids.to(self.device), mask.to(self.device)
        )
        return scores

    def differentiable_forward(
        self, images: Float[torch.Tensor, "batch 3 height width"], prompts: Any
    ) -> Float[torch.Tensor, " batch"]:
        """Standardised scores of float images in [0, 1] with gradients to them, on their
        device, float32 (float64 for a float64 model); torch preprocessing, no quantisation.

        Raises:
            ValueError: if ``images`` is not a float batch or ``prompts`` not one str per image.
        """
        images = check_float_images(images)
        texts = check_prompts(prompts, images.shape[0])
        raw = [
            self.score_pixels(
                self.differentiable_preprocess(images[start : start + self.batch_size]),
                texts[start : start + self.batch_size],
            )
            for start in range(0, images.shape[0], self.batch_size)
        ]
        if not raw:
            return images.new_zeros(0)
        return ((torch.cat(raw) - IMAGE_REWARD_MEAN) / IMAGE_REWARD_STD).to(images.device)

    @torch.no_grad()
    def forward(self, images: Any, prompts: Any) -> Float[torch.Tensor, " batch"]:
        """Standardised ImageReward scores, float32 on CPU, in chunks of ``batch_size``.

        Raises:
            ValueError: if ``prompts`` is not one string per image, or ``images`` has another
                layout than those of ``to_uint8_nhwc``.
        """
        pixels = to_uint8_nhwc(images)
        texts = check_prompts(prompts, pixels.shape[0])
        raw = torch.cat(
            [
                self.raw_scores(
                    pixels[start : start + self.batch_size],
                    texts[start : start + self.batch_size],
                )
                for start in range(0, pixels.shape[0], self.batch_size)
            ]
        )
        return ((raw.float() - IMAGE_REWARD_MEAN) / IMAGE_REWARD_STD).cpu()


@final
class ImageRewardFn:
    """Reward function ``(images, prompts, prompt_metadata) -> (ImageReward scores, {})``.

    Args:
        scorer: the ImageReward model.
        differentiable: score float images with gradients (torchvision's preprocessing in
            torch, no 8-bit round trip; see :mod:`ddpo.rewards._preprocess`) instead of exactly
            as the original.
    """

    def __init__(self, scorer: ImageRewardScorer, *, differentiable: bool = False) -> None:
        self.scorer = scorer
        self.differentiable = differentiable

    def __call__(
        self, images: Any, prompts: Any, prompt_metadata: Any = None
    ) -> tuple[Float[torch.Tensor, " batch"], dict[str, Any]]:
        del prompt_metadata
        if self.differentiable:
            return self.scorer.differentiable_forward(images, prompts), {}
        return self.scorer(images, prompts), {}


def image_reward(
    model: str = DEFAULT_IMAGE_REWARD_REPO,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 16,
    token: str | None = None,
    tokenizer: str = "bert-base-uncased",
    dtype: torch.dtype = torch.float32,
    differentiable: bool = False,
) -> ImageRewardFn:
    """The ImageReward v1.0 reward function; ``differentiable`` as :class:`ImageRewardFn`, the
    other arguments as :class:`ImageRewardScorer`."""
    check_batch_size(batch_size)
    return ImageRewardFn(
        ImageRewardScorer(
            model,
            device=device,
            batch_size=batch_size,
            token=token,
            tokenizer=tokenizer,
            dtype=dtype,
        ),
        differentiable=differentiable,
    )
