"""PickScore with a tiny random CLIP and a separate processor folder, both loaded by path."""

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from originals import PROMPTS as ODD_PROMPTS
from originals import SIZES, sample_images, to_uint8

from ddpo.adapters.common.tokenizer import write_clip_tokenizer
from ddpo.rewards._clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from ddpo.rewards.pickscore import pickscore_reward

pytestmark = pytest.mark.slow

MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)
WORDS = ("a", "photo", "of", "cat", "dog", "red", "car")
PROMPTS = ["a photo of a cat", "a red car", "dog", "a photo of a red dog"]
LOGIT_SCALE = 50.0


@pytest.fixture(scope="module")
def tiny_pickscore(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_tiny_pickscore(tmp_path_factory.mktemp("pickscore"))


def build_tiny_pickscore(root: Path) -> tuple[Path, Path]:
    """A model folder (``CLIPModel.save_pretrained``, as ``yuvalkirstain/PickScore_v1``) and a
    processor folder (tokenizer and an old-format ``preprocessor_config.json`` with integer
    sizes, as ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` has)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    processor = root / "processor"
    write_clip_tokenizer(processor, WORDS, model_max_length=16)
    config = {
        "crop_size": 32, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(MEAN),
        "image_std": list(STD), "resample": 3, "size": 32,
    }  # fmt: skip
    (processor / "preprocessor_config.json").write_text(json.dumps(config))
    tokenizer = CLIPTokenizer.from_pretrained(processor)
    torch.manual_seed(1)
    model = CLIPModel(
        CLIPConfig(
            text_config={
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_attention_heads": 2,
                "num_hidden_layers": 1,
                "vocab_size": len(tokenizer),
                "max_position_embeddings": 16,
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id,
            },
            vision_config={
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_attention_heads": 2,
                "num_hidden_layers": 1,
                "image_size": 32,
                "patch_size": 8,
            },
            projection_dim=12,
        )
    )
    with torch.no_grad():
        model.logit_scale.fill_(math.log(LOGIT_SCALE))
    model.save_pretrained(root / "model")
    return root / "model", processor


def _images(batch: int) -> torch.Tensor:
    """Random images of 8-bit values (which the reward's quantisation leaves as they are)."""
    images = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    return to_uint8(images).float() / 255


def test_scores_are_logit_scale_times_cosine(tiny_pickscore: tuple[Path, Path]) -> None:
    from transformers import CLIPModel, CLIPTokenizer

    model_dir, processor_dir = tiny_pickscore
    reward = pickscore_reward(
        str(model_dir), processor=str(processor_dir), device="cpu", batch_size=3
    )
    assert reward.logit_scale == pytest.approx(LOGIT_SCALE)
    images = _images(len(PROMPTS))
    scores, metadata = reward(images, PROMPTS, None)

    # written out: the processor folder's statistics (not CLIP's defaults), transformers' own
    # feature functions, exp(logit_scale) * cos
    model = CLIPModel.from_pretrained(model_dir).eval()
    tokens = CLIPTokenizer.from_pretrained(processor_dir)(
        PROMPTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt"
    )
    pixels = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels)
        text = model.get_text_features(**tokens)
        scale = model.logit_scale.exp()
    image = image if isinstance(image, torch.Tensor) else image.pooler_output
    text = text if isinstance(text, torch.Tensor) else text.pooler_output
    cosine = F.cosine_similarity(image, text, dim=-1)
    assert scores.shape == (4,) and scores.dtype == torch.float32
    torch.testing.assert_close(metadata["cosine"], cosine, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scores, scale * cosine, rtol=1e-4, atol=1e-4)
    assert len(set(scores.tolist())) == 4


def test_batched_equals_per_sample(tiny_pickscore: tuple[Path, Path]) -> None:
    model_dir, processor_dir = tiny_pickscore
    reward = pickscore_reward(str(model_dir), processor=str(processor_dir), device="cpu")
    images = torch.rand(3, 3, 40, 56, generator=torch.Generator().manual_seed(2))
    scores, _ = reward(images, PROMPTS[:3], None)
    single = torch.cat([reward(images[i : i + 1], [PROMPTS[i]], None)[0] for i in range(3)])
    torch.testing.assert_close(single, scores, rtol=1e-4, atol=1e-4)


def test_missing_processor_and_bad_batch_size_fail_clearly(
    tiny_pickscore: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    model_dir, _ = tiny_pickscore
    with pytest.raises(ValueError, match="batch_size must be a positive int, got -1"):
        pickscore_reward("/no/such/model", batch_size=-1)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=r"processor='nobody/no-processor' is not a local"):
        pickscore_reward(str(model_dir), processor="nobody/no-processor", device="cpu")
    with pytest.raises(OSError, match=r"model='nobody/no-model' is not a local"):
        pickscore_reward("nobody/no-model", device="cpu")


# --- against the original: transformers' CLIPProcessor and CLIPModel as PickScore's README uses
# them (the CLIP image processor's PIL backend, which transformers 4 used and transformers 5 uses
# without torchvision) --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pickscore_224(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random PickScore model at 224 pixels and a processor folder as
    ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` has it (size 224, crop 224, bicubic)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("pickscore_224")
    processor = root / "processor"
    write_clip_tokenizer(processor, WORDS, model_max_length=77)
    config = {
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD), "resample": 3, "size": 224,
    }  # fmt: skip
    (processor / "preprocessor_config.json").write_text(json.dumps(config))
    tokenizer = CLIPTokenizer.from_pretrained(processor)
    torch.manual_seed(4)
    model = CLIPModel(
        CLIPConfig(
            text_config={
                "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
                "num_hidden_layers": 2, "vocab_size": len(tokenizer),
                "max_position_embeddings": 77, "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
            },
            vision_config={
                "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
                "num_hidden_layers": 2, "image_size": 224, "patch_size": 32,
            },
            projection_dim=32,
        )
    )  # fmt: skip
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
        model.logit_scale.fill_(math.log(100.0))
    model.save_pretrained(root / "model")
    return root / "model", processor


def _readme_pickscores(
    model_dir: Path, processor_dir: Path, images: list[Any], prompts: list[str]
) -> torch.Tensor:
    """PickScore's README: processor for images and text, normalised features, exp(t) * cos
    (each image with its own prompt: the diagonal)."""
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil.from_pretrained(processor_dir),
        tokenizer=CLIPTokenizer.from_pretrained(processor_dir),
    )
    model = CLIPModel.from_pretrained(model_dir).eval()
    image_inputs = processor(
        images=images, padding=True, truncation=True, max_length=77, return_tensors="pt"
    )
    text_inputs = processor(
        text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt"
    )
    with torch.no_grad():
        image_embs = model.get_image_features(**image_inputs).pooler_output
        image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
        text_embs = model.get_text_features(**text_inputs).pooler_output
        text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
        scores = model.logit_scale.exp() * (text_embs @ image_embs.T)
    return scores.diagonal()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_scores_equal_the_readme_computation(
    pickscore_224: tuple[Path, Path], size: tuple[int, int]
) -> None:
    """Our reward on float images equals the README's code on the saved 8-bit PIL images (PIL
    bicubic resize with the long side truncated, crop at floor offsets). Measured max
    difference 1.4e-5 over the sizes (0.26 to 0.47 at the non-square sizes before the fix)."""
    from PIL import Image

    model_dir, processor_dir = pickscore_224
    reward = pickscore_reward(str(model_dir), processor=str(processor_dir), device="cpu")
    images = sample_images(size, len(ODD_PROMPTS), seed=sum(size))
    ours, _ = reward(images, list(ODD_PROMPTS), None)
    pil = [Image.fromarray(a) for a in to_uint8(images).permute(0, 2, 3, 1).numpy()]
    theirs = _readme_pickscores(model_dir, processor_dir, pil, list(ODD_PROMPTS))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-4)
