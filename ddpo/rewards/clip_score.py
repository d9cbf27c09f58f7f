"""CLIPScore as a reward: how well an image matches its prompt (Hessel et al. 2021).

``CLIPScore(x, p) = w * max(cos(E_I(x), E_T(prefix + p)), 0)``, ``w = 2.5`` (Hessel et al. 2021,
§3, eq. 1), with ``E_I`` and ``E_T`` the CLIP image and text embeddings (transformers
``CLIPModel``, default ``openai/clip-vit-large-patch14``). The raw cosine comes back in the
metadata as ``cosine``.

Which definition: by default the paper's formula and scale (scores in [0, 2.5]) on the prompt as
it is, with no prefix. Hessel et al.'s reference code scores the caption ``"A photo depicts " +
caption``: pass ``prefix="A photo depicts "`` for that (their code also uses OpenAI's ViT-B/32 and
its preprocessing, which this reward does not reproduce). torchmetrics' ``CLIPScore`` (1.9) uses
no prefix and returns ``max(100 * mean(cos), 0)`` over what it is given: for one image that is
``100 * max(cos, 0)``, 40 times this reward (``weight=100`` gives it), which the tests check on
the same weights and images; for a batch it is the clipped mean, not a mean of per-image scores.

Images are preprocessed as transformers' CLIP image processor does with the 8-bit images (its
PIL backend: transformers 4's default, and transformers 5's without torchvision; see
:mod:`ddpo.rewards._clip`); with transformers 5's torchvision backend torchmetrics' scores
differ from 40 times ours by up to 6e-3 (6e-5 in the cosine) on the tests' tiny model.
"""

import math
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

__all__ = ["CLIP_SCORE_WEIGHT", "DEFAULT_CLIP_SCORE_MODEL", "ClipScoreReward", "clip_score_reward"]

DEFAULT_CLIP_SCORE_MODEL: Final = "openai/clip-vit-large-patch14"
CLIP_SCORE_WEIGHT: Final = 2.5
"""``w`` of Hessel et al. (2021), eq. 1."""


def _check_weight(weight: float) -> float:
    if not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"weight must be positive and finite, got {weight!r}")
    return float(weight)


@final
class ClipScoreReward:
    """Reward ``(images, prompts, prompt_metadata) -> (w * max(cos, 0), {"cosine": cos})``.

    Args:
        similarity: the CLIP model, tokenizer and preprocessing (see `clip_score_reward`).
        weight: ``w``, 2.5 as in the paper (100 for torchmetrics' per-image scale).
        prefix: text put before every prompt ("A photo depicts " in Hessel et al.'s code).
        differentiable: score float images with gradients (torch preprocessing, no 8-bit
            round trip; see :mod:`ddpo.rewards._preprocess`) instead of exactly as the original.

    Raises:
        ValueError: naming ``weight`` when it is not positive and finite.
    """

    def __init__(
        self,
        similarity: ClipSimilarity,
        *,
        weight: float = CLIP_SCORE_WEIGHT,
        prefix: str = "",
        differentiable: bool = False,
    ) -> None:
        self.similarity = similarity
        self.weight = _check_weight(weight)
        self.prefix = prefix
        self.differentiable = differentiable

    def __call__(
        self, images: Any, prompts: Any, prompt_metadata: Any = None
    ) -> tuple[Float[torch.Tensor, " batch"], dict[str, Any]]:
        """CLIPScores (float32, CPU, ``(batch,)``) of images ``(batch, 3, H, W)`` in [0, 1]
        (or uint8 / PIL, see `ddpo.rewards._images`) against their prompts; when
        ``differentiable``, of float images, on their device, with their gradients.

        Raises:
            ValueError: if the images are not a batch or prompts are not one str per image.
        """
        del prompt_metadata
        if self.differentiable:
            cosine = self.similarity.differentiable_forward(images, prompts, prefix=self.prefix)
        else:
            cosine = self.similarity(images, prompts, prefix=self.prefix)
        return self.weight * cosine.clamp(min=0), {"cosine": cosine}


def clip_score_reward(
    model: str = DEFAULT_CLIP_SCORE_MODEL,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    token: str | None = None,
    weight: float = CLIP_SCORE_WEIGHT,
    prefix: str = "",
    differentiable: bool = False,
) -> ClipScoreReward:
    """The CLIPScore reward of a CLIP model (see the module docstring for the definitions).

    Args:
        model: hub id or local folder holding the ``CLIPModel`` (``save_pretrained`` format),
            its tokenizer and ``preprocessor_config.json`` (CLIP defaults at the vision config's
            ``image_size`` without it).
        device: where the model runs; default CUDA when available, else CPU.
        batch_size: image-prompt pairs per forward pass.
        token: Hugging Face token for downloads.
        weight: ``w``: 2.5 (Hessel et al.), or 100.0 for torchmetrics' scale.
        prefix: text put before every prompt: "" (torchmetrics), or "A photo depicts " (Hessel
            et al.'s reference code).
        differentiable: score float images with gradients (see `ClipScoreReward`).

    Returns:
        A `ClipScoreReward`.

    Raises:
        ValueError: if ``batch_size`` is not a positive int or ``weight`` not positive and
            finite (before anything loads).
        OSError: if ``model`` is neither a local folder nor reachable on the hub.
    """
    check_batch_size(batch_size)
    _check_weight(weight)
    clip = load_clip_model(model, argument="model", token=token)
    tokenizer = load_clip_tokenizer(model, argument="model", token=token)
    transform = ClipImageTransform.from_config(
        read_preprocessor_config(model, token=token),
        image_size=int(clip.config.vision_config.image_size),
    )
    similarity = ClipSimilarity(
        clip, tokenizer, transform, device=resolve_device(device), batch_size=batch_size
    )
    return ClipScoreReward(similarity, weight=weight, prefix=prefix, differentiable=differentiable)
