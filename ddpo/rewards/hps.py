"""Human Preference Score v2.1 as a reward (Wu et al. 2023, "Human Preference Score v2").

HPS v2.1 is an OpenCLIP ViT-H/14 (laion2B-s32B-b79K) fine-tuned on human preference pairs. The
score of an image x for a prompt p is the cosine similarity of their CLIP embeddings::

    HPS(x, p) = <f(x) / ||f(x)||, g(p) / ||g(p)||>

(``image_features @ text_features.T`` of the normalised features in the HPSv2 package, about
0.2-0.35 for typical images; no logit scale and no factor 100).

Preprocessing follows hpsv2's own (``img_score.score`` with ``light_augmentation=True``), which
scores a PIL image: the float images are quantised to 8 bits as saving them would, the longest
side is resized to 224 (bicubic, antialiased, on the float tensor, sizes rounded), zeros pad the
image to 224 x 224 (centred), and it is normalised with the OpenAI CLIP mean and std; no crop
and no clamp (:func:`ddpo.rewards._preprocess.resize_longest_and_pad`). Prompts are cleaned as
OpenCLIP's tokenizer cleans them (``ftfy.fix_text``, HTML unescaping twice, runs of whitespace
to one space, stripped; ``ftfy`` comes with ``pip install 'ddpo[hps]'``), then tokenised with
OpenAI's CLIP BPE, lower-cased, padded and truncated to the 77-token context.

Implementation: the weights are the original ``HPS_v2.1_compressed.pt`` (hub repository
``xswu/HPSv2``; a torch file whose ``"state_dict"`` holds OpenCLIP key names), converted at load
time onto transformers' ``CLIPModel`` (:mod:`ddpo.rewards._openclip_convert`). The
``open-clip-torch`` and ``hpsv2`` packages are not used: both require torchvision. The
architecture is read from the checkpoint's shapes, so a smaller OpenCLIP ViT checkpoint loads by
the same code path. The text embedding is taken at the first end-of-text token, which is
OpenCLIP's ``argmax`` pooling for its vocabulary (end-of-text has the highest id). The tests
compare the scores with hpsv2 1.2.0's on the same weights and images.

Real model: 986M parameters (vision tower 631M, text tower 353M, projections 2M), 3.9 GB in
float32 (2 GB in bfloat16) plus activations.
"""

import html
from pathlib import Path
from typing import Any, Final, final

import torch
from jaxtyping import Float, Int
from torch import nn

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
from ddpo.rewards._openclip_convert import openclip_config, openclip_to_clip_state_dict
from ddpo.rewards._preprocess import (
    check_float_images,
    quantised_float_nchw,
    resize_longest_and_pad,
)

__all__ = [
    "DEFAULT_HPS_FILENAME",
    "DEFAULT_HPS_REPO",
    "DEFAULT_HPS_TOKENIZER",
    "HPSReward",
    "HPSScorer",
    "clean_prompt",
    "hps_reward",
]

DEFAULT_HPS_REPO: Final = "xswu/HPSv2"
DEFAULT_HPS_FILENAME: Final = "HPS_v2.1_compressed.pt"
DEFAULT_HPS_TOKENIZER: Final = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def _require_ftfy() -> Any:
    """The ``ftfy`` module, or an ImportError saying how to install it."""
    try:
        import ftfy
    except ImportError as exc:
        raise ImportError(
            "the HPS reward cleans prompts with ftfy, as the original does: pip install 'ddpo[hps]'"
        ) from exc
    return ftfy


def clean_prompt(prompt: str) -> str:
    """A prompt cleaned as OpenCLIP's tokenizer cleans it before BPE: ``ftfy.fix_text``, HTML
    unescaped twice, stripped, every run of whitespace made one space (lower-casing is left to
    the tokenizer)."""
    import regex

    text = html.unescape(html.unescape(_require_ftfy().fix_text(prompt))).strip()
    return str(regex.sub(r"\s+", " ", text)).strip()


def _load_tokenizer(tokenizer: str, token: str | None) -> Any:
    from transformers import CLIPTokenizer

    folder = resolve_folder(
        tokenizer,
        ("vocab.json", "merges.txt"),
        ("tokenizer_config.json", "special_tokens_map.json"),
        argument="tokenizer",
        token=token,
    )
    return CLIPTokenizer.from_pretrained(folder)


@final
class HPSScorer(nn.Module):
    """HPS v2.1 scores of (image, prompt) pairs, from the original checkpoint; frozen weights,
    no gradients except through `differentiable_forward`.

    Args:
        model: a hub repository id holding ``filename``, a local folder holding it, or the file.
        filename: the checkpoint's file name in a repository or folder.
        tokenizer: a hub id or local folder of the CLIP tokenizer (``vocab.json``,
            ``merges.txt``).
        device: where to run; default CUDA when available, else CPU.
        batch_size: images per forward pass.
        token: Hugging Face token for the hub.
        dtype: dtype of the CLIP weights (float32 by default; bfloat16 halves the memory).

    Raises:
        ValueError: if ``batch_size`` is not a positive int, or the checkpoint's keys or shapes
            do not form an OpenCLIP ViT (the message names missing and unexpected keys).
        FileNotFoundError, OSError: if the checkpoint or the tokenizer cannot be found locally
            nor fetched from the hub.
    """

    def __init__(
        self,
        model: str = DEFAULT_HPS_REPO,
        *,
        filename: str = DEFAULT_HPS_FILENAME,
        tokenizer: str = DEFAULT_HPS_TOKENIZER,
        device: str | torch.device | None = None,
        batch_size: int = 16,
        token: str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        from transformers import CLIPModel

        self.batch_size = check_batch_size(batch_size)
        _require_ftfy()
        self.tokenizer = _load_tokenizer(tokenizer, token)
        path = resolve_file(model, filename, argument="model", token=token)
        state = load_torch_state_dict(path, argument=f"model={model!r}")
        config = openclip_config(
            state,
            argument=f"model={model!r}",
            bos_token_id=self.tokenizer.bos_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id or 0,
        )
        if len(self.tokenizer) > config.text_config.vocab_size:
            raise ValueError(
                f"tokenizer={tokenizer!r} has {len(self.tokenizer)} tokens but the checkpoint's "
                f"vocabulary only {config.text_config.vocab_size}"
            )
        clip = CLIPModel(config)
        converted = openclip_to_clip_state_dict(
            state, clip.state_dict(), argument=f"model={model!r}"
        )
        clip.load_state_dict(converted)
        self.image_size = int(config.vision_config.image_size)
        self.context_length = int(config.text_config.max_position_embeddings)
        self.model = clip
        self.dtype = dtype
        self.device = resolve_device(device)
        self.requires_grad_(False)
        self.eval()
        self.to(device=self.device, dtype=dtype)

    def tokenize(self, prompts: list[str]) -> Int[torch.Tensor, "batch tokens"]:
        """Token ids of the cleaned prompts (:func:`clean_prompt`), padded and truncated to the
        context length (end-of-text kept last)."""
        encoded = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        ids: torch.Tensor = encoded["input_ids"]
        return ids

    def text_embeds(self, prompts: list[str]) -> Float[torch.Tensor, "batch dim"]:
        """Unit-norm text embeddings: projection of the end-of-text token's final state."""
        ids = self.tokenize(prompts).to(self.device)
        hidden = self.model.text_model(input_ids=ids).last_hidden_state
        eos = (ids == self.tokenizer.eos_token_id).int().argmax(dim=-1)
        pooled = hidden[torch.arange(ids.shape[0], device=self.device), eos]
        embeds = self.model.text_projection(pooled)
        embeds = embeds.to(torch.promote_types(embeds.dtype, torch.float32))
        return embeds / torch.linalg.vector_norm(embeds, dim=-1, keepdim=True)

    def image_embeds(
        self, images: Float[torch.Tensor, "batch 3 height width"]
    ) -> Float[torch.Tensor, "batch dim"]:
        """Unit-norm image embeddings of float images (preprocessed here, in torch, with their
        gradients); float32 (float64 for a float64 model)."""
        dtype = self.model.visual_projection.weight.dtype
        pixels = resize_longest_and_pad(
            images.to(self.device), size=self.image_size, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD
        )
        pooled = self.model.vision_model(pixel_values=pixels.to(dtype)).pooler_output
        embeds = self.model.visual_projection(pooled)
        embeds = embeds.to(torch.promote_types(dtype, torch.float32))
        return embeds / torch.linalg.vector_norm(embeds, dim=-1, keepdim=True)

    def scores(
        self, pixels: Float[torch.Tensor, "batch 3 height width"], prompts: Any
    ) -> Float[torch.Tensor, " batch"]:
        """HPS of float images (taken as they are) with their prompts, in chunks of
        ``batch_size``, on the model's device, gradients kept to the images (not the text)."""
        texts = check_prompts(prompts, pixels.shape[0])
        unique = sorted(set(texts))
        with torch.no_grad():
            text = self.text_embeds(unique)
        row_of = {prompt: row for row, prompt in enumerate(unique)}
        rows = torch.tensor([row_of[p] for p in texts], device=self.device)
        scores = []
        for start in range(0, pixels.shape[0], self.batch_size):
            image = self.image_embeds(pixels[start : start + self.batch_size])
            chunk = rows[start : start + self.batch_size]
            scores.append((image * text[chunk].to(image.dtype)).sum(dim=-1))
        return torch.cat(scores) if scores else pixels.new_zeros(0)

    def differentiable_forward(
        self, images: Float[torch.Tensor, "batch 3 height width"], prompts: Any
    ) -> Float[torch.Tensor, " batch"]:
        """HPS of float images in [0, 1] with gradients to them, on their device: OpenCLIP's
        resize and pad in torch without the 8-bit quantisation.

        Raises:
            ValueError: if ``images`` is not a float batch or ``prompts`` not one str per image.
        """
        images = check_float_images(images)
        return self.scores(images, prompts).to(images.device)

    @torch.no_grad()
    def forward(self, images: Any, prompts: Any) -> Float[torch.Tensor, " batch"]:
        """HPS of each image with its prompt, float32 on CPU, in chunks of ``batch_size``.

        Raises:
            ValueError: if ``prompts`` is not one string per image, or ``images`` has another
                layout than those of ``to_uint8_nhwc``.
        """
        return self.scores(quantised_float_nchw(images), prompts).cpu()


@final
class HPSReward:
    """Reward function ``(images, prompts, prompt_metadata) -> (HPS v2.1 scores, {})``.

    Args:
        scorer: the HPS model.
        differentiable: score float images with gradients (OpenCLIP's preprocessing in torch
            without the 8-bit round trip) instead of exactly as the original.
    """

    def __init__(self, scorer: HPSScorer, *, differentiable: bool = False) -> None:
        self.scorer = scorer
        self.differentiable = differentiable

    def __call__(
        self, images: Any, prompts: Any, prompt_metadata: Any = None
    ) -> tuple[Float[torch.Tensor, " batch"], dict[str, Any]]:
        del prompt_metadata
        if self.differentiable:
            return self.scorer.differentiable_forward(images, prompts), {}
        return self.scorer(images, prompts), {}


def hps_reward(
    model: str = DEFAULT_HPS_REPO,
    *,
    filename: str = DEFAULT_HPS_FILENAME,
    tokenizer: str = DEFAULT_HPS_TOKENIZER,
    device: str | torch.device | None = None,
    batch_size: int = 16,
    token: str | None = None,
    dtype: torch.dtype = torch.float32,
    differentiable: bool = False,
) -> HPSReward:
    """The HPS v2.1 reward function; ``differentiable`` as :class:`HPSReward`, the other
    arguments as :class:`HPSScorer`.

    ``model`` may be the hub id (default ``xswu/HPSv2``), a folder holding ``filename``, or the
    checkpoint file itself (a path such as ``~/ckpt/HPS_v2.1_compressed.pt``).
    """
    check_batch_size(batch_size)
    if not filename or Path(filename).name != filename:
        raise ValueError(f"filename must be a bare file name, got {filename!r}")
    return HPSReward(
        HPSScorer(
            model,
            filename=filename,
            tokenizer=tokenizer,
            device=device,
            batch_size=batch_size,
            token=token,
            dtype=dtype,
        ),
        differentiable=differentiable,
    )
