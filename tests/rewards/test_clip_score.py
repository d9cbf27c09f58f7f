"""CLIPScore with a tiny random CLIP saved in the transformers format and loaded by path."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddpo.adapters.tokenizer import write_clip_tokenizer
from ddpo.rewards.clip_score import clip_score_reward

pytestmark = pytest.mark.slow

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
WORDS = ("a", "photo", "of", "cat", "dog", "red", "blue", "car")
PROMPTS = ["a photo of a cat", "a red car", "blue dog", "a photo of a blue car", "cat"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CLIP folder as ``openai/clip-vit-large-patch14`` has: model, tokenizer, processor."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("clip")
    write_clip_tokenizer(folder, WORDS, model_max_length=16)
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
            "num_hidden_layers": 1, "vocab_size": len(tokenizer), "max_position_embeddings": 16,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
            "num_hidden_layers": 1, "image_size": 32, "patch_size": 8,
        },
        projection_dim=12,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(folder)
    processor = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True, "size": {"shortest_edge": 32}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": 32, "width": 32},
        "do_normalize": True, "image_mean": list(MEAN), "image_std": list(STD),
    }  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def reference_cosine(folder: Path, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """cos(image, text) through transformers' own API, for images already at the crop size."""
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(folder).eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    tokens = tokenizer(
        prompts, padding="max_length", max_length=16, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        image = model.get_image_features(pixel_values=(images - mean) / std)
        text = model.get_text_features(**tokens)
    image = image if isinstance(image, torch.Tensor) else image.pooler_output
    text = text if isinstance(text, torch.Tensor) else text.pooler_output
    return F.cosine_similarity(image, text, dim=-1)


def _images(batch: int, size: int = 32) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(3))


def test_scores_are_the_paper_formula_on_transformers_embeddings(tiny_clip: Path) -> None:
    images = _images(len(PROMPTS))
    reward = clip_score_reward(str(tiny_clip), device="cpu", batch_size=2)  # 3 batches
    scores, metadata = reward(images, PROMPTS, [{}] * len(PROMPTS))
    cosine = reference_cosine(tiny_clip, images, PROMPTS)
    assert scores.shape == (5,) and scores.dtype == torch.float32 and scores.device.type == "cpu"
    torch.testing.assert_close(metadata["cosine"], cosine, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scores, 2.5 * cosine.clamp(min=0), rtol=1e-4, atol=1e-5)
    assert len(set(metadata["cosine"].tolist())) == 5  # image- and prompt-dependent


def test_negative_cosines_score_zero(tiny_clip: Path) -> None:
    reward = clip_score_reward(str(tiny_clip), device="cpu")
    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    prompts = [PROMPTS[i % 5] for i in range(16)]
    scores, metadata = reward(images, prompts, None)
    cosine = metadata["cosine"]
    assert bool((cosine < 0).any()) and bool((cosine > 0).any())  # both signs occur
    assert bool((scores[cosine < 0] == 0).all())
    torch.testing.assert_close(scores[cosine > 0], 2.5 * cosine[cosine > 0])


def test_batched_equals_per_sample_and_input_forms_agree(tiny_clip: Path) -> None:
    from PIL import Image

    reward = clip_score_reward(str(tiny_clip), device="cpu", batch_size=32)
    images = (_images(3, size=48) * 255).round() / 255
    scores, _ = reward(images, PROMPTS[:3], None)
    single = torch.cat([reward(images[i : i + 1], PROMPTS[i : i + 1], None)[0] for i in range(3)])
    torch.testing.assert_close(single, scores, rtol=1e-4, atol=1e-5)
    as_uint8 = (images * 255).round().to(torch.uint8)
    torch.testing.assert_close(reward(as_uint8, PROMPTS[:3], None)[0], scores)
    pil = [Image.fromarray(a) for a in as_uint8.permute(0, 2, 3, 1).numpy()]
    torch.testing.assert_close(reward(pil, PROMPTS[:3], None)[0], scores)


def test_resize_and_crop_follow_clips_image_processor(tiny_clip: Path) -> None:
    """Our tensor preprocessing against transformers' PIL image processor on a smooth image
    (the two resamplers differ slightly: PIL works on uint8)."""
    from transformers import CLIPImageProcessor

    reward = clip_score_reward(str(tiny_clip), device="cpu")
    y, x = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 80), indexing="ij")
    image = torch.stack([x, y, (x + y) / 2])[None]
    ours = reward.similarity.transform(image)
    uint8 = (image[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    processor = CLIPImageProcessor.from_pretrained(tiny_clip)
    theirs = processor(images=[uint8], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (1, 3, 32, 32)
    assert float((ours - theirs).abs().mean()) < 0.02
    assert float((ours - theirs).abs().max()) < 0.1


def test_bad_arguments_and_inputs_fail_clearly(tiny_clip: Path) -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        clip_score_reward("/no/such/folder", batch_size=0)  # checked before loading
    reward = clip_score_reward(str(tiny_clip), device="cpu")
    with pytest.raises(ValueError, match="prompts has 1 entries for a batch of 2 images"):
        reward(_images(2), ["a cat"], None)
    with pytest.raises(ValueError, match="prompts must be a sequence of str, got str"):
        reward(_images(1), "a cat", None)
    with pytest.raises(ValueError, match=r"images must be \(batch, 3, H, W\)"):
        reward(torch.rand(3, 32, 32), ["a"], None)
    assert np.isclose(reward.similarity.max_length, 16)


def test_unreachable_model_names_the_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=r"model='nobody/no-such-clip' is not a local .*Hub"):
        clip_score_reward("nobody/no-such-clip", device="cpu")
