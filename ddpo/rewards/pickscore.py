"""PickScore v1 as a reward: a human-preference score of an image for its prompt.

``PickScore(x, p) = exp(t) * cos(E_I(x), E_T(p))`` (Kirstain et al. 2023, "Pick-a-Pic", §4),
with ``E_I``, ``E_T`` the embeddings of a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences
(transformers ``CLIPModel``, default ``yuvalkirstain/PickScore_v1``) and ``exp(t)`` its learned
logit scale (100 for the released model, so scores are about 15 to 25). The tokenizer and image
preprocessing come from the processor repository (default
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``). The raw cosine comes back in the metadata as
``cosine``.
"""

from typing import Any, Final, final

import torch
from jaxtyping import Float

from ddpo.rewards._clip import (
    ClipImageTransform,
    ClipSimilarity,
    check_batch_size,
    load_clip_model,
    load_clip_tokenizer,
    read_preprocessor_config,
    resolve_device,
)

__all__ = [
    "DEFAULT_PICKSCORE_MODEL",
    "DEFAULT_PICKSCORE_PROCESSOR",
    "PickScoreReward",
    "pickscore_reward",
]

DEFAULT_PICKSCORE_MODEL: Final = "yuvalkirstain/PickScore_v1"
DEFAULT_PICKSCORE_PROCESSOR: Final = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


@final
class PickScoreReward:
    """Reward ``(images, prompts, prompt_metadata) -> (exp(t) * cos, {"cosine": cos})``.

    Args:
        similarity: the CLIP model, tokenizer and preprocessing (see `pickscore_reward`).
        logit_scale: ``exp(t)``, the model's ``logit_scale.exp()``.
        differentiable: score float images with gradients (torch preprocessing, no 8-bit
            round trip; see :mod:`ddpo.rewards._preprocess`) instead of exactly as the original.
    """

    def __init__(
        self, similarity: ClipSimilarity, *, logit_scale: float, differentiable: bool = False
    ) -> None:
        self.similarity = similarity
        self.logit_scale = float(logit_scale)
        self.differentiable = differentiable

    def __call__(
        self, images: Any, prompts: Any, prompt_metadata: Any = None
    ) -> tuple[Float[torch.Tensor, " batch"], dict[str, Any]]:
        """PickScores (float32, CPU, ``(batch,)``) of images ``(batch, 3, H, W)`` in [0, 1]
        (or uint8 / PIL, see `ddpo.rewards._images`) against their prompts; when
        ``differentiable``, of float images, on their device, with their gradients.

        Raises:
            ValueError: if the images are not a batch or prompts are not one str per image.
        """
        del prompt_metadata
        if self.differentiable:
            cosine = self.similarity.differentiable_forward(images, prompts)
        else:
            cosine = self.similarity(images, prompts)
        return self.logit_scale * cosine, {"cosine": cosine}


def pickscore_reward(
    model: str = DEFAULT_PICKSCORE_MODEL,
    *,
    processor: str = DEFAULT_PICKSCORE_PROCESSOR,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    token: str | None = None,
    differentiable: bool = False,
) -> PickScoreReward:
    """The PickScore reward.

    Args:
        model: hub id or local folder of the ``CLIPModel`` (``save_pretrained`` format).
        processor: hub id or local folder holding the tokenizer and ``preprocessor_config.json``.
        device: where the model runs; default CUDA when available, else CPU.
        batch_size: image-prompt pairs per forward pass.
        token: Hugging Face token for downloads.
        differentiable: score float images with gradients (see `PickScoreReward`).

    Returns:
        A `PickScoreReward`.

    Raises:
        ValueError: if ``batch_size`` is not a positive int (before anything loads).
        OSError: if ``model`` or ``processor`` is neither a local folder nor reachable on the hub.
    """
    check_batch_size(batch_size)
    clip = load_clip_model(model, argument="model", token=token)
    tokenizer = load_clip_tokenizer(processor, argument="processor", token=token)
    transform = ClipImageTransform.from_config(
        read_preprocessor_config(processor, token=token),
        image_size=int(clip.config.vision_config.image_size),
    )
    similarity = ClipSimilarity(
        clip, tokenizer, transform, device=resolve_device(device), batch_size=batch_size
    )
    return PickScoreReward(
        similarity, logit_scale=float(clip.logit_scale.exp()), differentiable=differentiable
    )
