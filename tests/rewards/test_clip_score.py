"""CLIPScore with a tiny random CLIP saved in the transformers format and loaded by path."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from originals import PROMPTS as ODD_PROMPTS
from originals import SIZES, run_original, sample_images, save_pngs, to_uint8

from ddpo.adapters.common.tokenizer import write_clip_tokenizer
from ddpo.rewards.clip_score import clip_score_reward

pytestmark = pytest.mark.slow

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
WORDS = ("a", "photo", "of", "cat", "dog", "red", "blue", "car")
PROMPTS = ["a photo of a cat", "a red car", "blue dog", "a photo of a blue car", "cat"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip"))


def build_tiny_clip(folder: Path) -> Path:
    """A CLIP folder as ``openai/clip-vit-large-patch14`` has: model, tokenizer, processor."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

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
    """Random images of 8-bit values (which the reward's quantisation leaves as they are)."""
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(3))
    return (images * 255).round() / 255


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
    """Our preprocessing of float images equals transformers' PIL image processor on the 8-bit
    image (odd sizes: the long side truncated, the crop offset floored)."""
    from transformers import CLIPImageProcessorPil

    reward = clip_score_reward(str(tiny_clip), device="cpu")
    y, x = torch.meshgrid(torch.linspace(0, 1, 47), torch.linspace(0, 1, 83), indexing="ij")
    image = torch.stack([x, y, (x + y) / 2])[None]
    ours = reward.similarity.transform(image)
    uint8 = (image[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    processor = CLIPImageProcessorPil.from_pretrained(tiny_clip)
    theirs = processor(images=[uint8], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (1, 3, 32, 32)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


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


def test_a_processor_that_resizes_to_a_fixed_size_is_refused(
    tiny_clip: Path, tmp_path: Path
) -> None:
    """transformers resizes ``{"height", "width"}`` to exactly that size: not what ours does, so
    refused by name rather than scored differently."""
    import shutil

    folder = shutil.copytree(tiny_clip, tmp_path / "clip")
    config = json.loads((folder / "preprocessor_config.json").read_text())
    config["size"] = {"height": 32, "width": 32}
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"size=\{'height': 32, 'width': 32\} is not supported"):
        clip_score_reward(str(folder), device="cpu")


def test_unreachable_model_names_the_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=r"model='nobody/no-such-clip' is not a local .*Hub"):
        clip_score_reward("nobody/no-such-clip", device="cpu")


# --- against torchmetrics 1.9.0's CLIPScore (run in a subprocess: see originals.py) --------------


@pytest.fixture(scope="module")
def clip_against_torchmetrics(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny random CLIP at 224 pixels in a folder as ``openai/clip-vit-large-patch14`` has it
    (torchmetrics takes a path whose name holds "openai"), the same images as PNG files, and
    torchmetrics' ``CLIPScore`` of each (with transformers' PIL image processor)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("clip_score_original")
    folder = root / "openai-clip-tiny"
    write_clip_tokenizer(folder, WORDS, model_max_length=77)
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    torch.manual_seed(5)
    config = CLIPConfig(
        text_config={
            "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
            "num_hidden_layers": 2, "vocab_size": len(tokenizer), "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
            "num_hidden_layers": 2, "image_size": 224, "patch_size": 32,
        },
        projection_dim=32,
    )  # fmt: skip
    model = CLIPModel(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
        # one offset shared by the two towers' last norms and projections, so that most cosines
        # are positive (torchmetrics clips the others to 0) and still vary with image and prompt
        offset = 0.5 * torch.randn(64)
        model.vision_model.post_layernorm.bias.copy_(offset)
        model.text_model.final_layer_norm.bias.copy_(offset)
        model.text_projection.weight.copy_(model.visual_projection.weight)
    model.save_pretrained(folder)
    processor = {
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(MEAN),
        "image_std": list(STD), "resample": 3, "size": 224,
    }  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    images = {size: sample_images(size, len(ODD_PROMPTS), seed=i) for i, size in enumerate(SIZES)}
    paths = [p for s, x in images.items() for p in save_pngs(to_uint8(x), root, f"{s[0]}x{s[1]}")]
    prompts = list(ODD_PROMPTS) * len(SIZES)
    last = (len(paths) - len(ODD_PROMPTS), len(paths))  # the large images, sent as one batch
    request = {"model": str(folder), "images": paths, "prompts": prompts, "batch": last,
               "image_processor": "pil"}  # fmt: skip
    answer = run_original("clip_score", request, root)
    assert answer["backend"] == "pil"
    scores = torch.tensor(answer["scores"]).view(len(SIZES), len(ODD_PROMPTS))
    return {
        "reward": clip_score_reward(str(folder), device="cpu"),
        "images": images,
        "scores": dict(zip(SIZES, scores, strict=True)),
        "batch": answer["batch"],
    }


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_scores_are_torchmetrics_over_40(
    clip_against_torchmetrics: dict[str, Any], size: tuple[int, int]
) -> None:
    """torchmetrics' CLIPScore of one image is ``100 max(cos, 0)``: 40 times ours, on the same
    weights and the saved 8-bit images. Measured max difference 1.5e-5 in torchmetrics' units
    over the sizes (0.65 to 0.97 at the non-square sizes before the fix)."""
    ours, metadata = clip_against_torchmetrics["reward"](
        clip_against_torchmetrics["images"][size], list(ODD_PROMPTS), None
    )
    theirs = clip_against_torchmetrics["scores"][size]
    assert bool((theirs > 0).all()) and len(set(theirs.tolist())) == len(ODD_PROMPTS)
    torch.testing.assert_close(40 * ours, theirs, rtol=0, atol=1e-4)
    if size == SIZES[-1]:  # the last batch sent whole: max(mean of 100 cos, 0), not a mean of max
        cosine = metadata["cosine"]
        assert clip_against_torchmetrics["batch"] == pytest.approx(
            max(100 * float(cosine.mean()), 0.0), abs=1e-4
        )


def test_weight_and_prefix_options(tiny_clip: Path) -> None:
    """``weight=100.0`` is torchmetrics' scale; ``prefix`` is put before every prompt (Hessel
    et al.'s code uses "A photo depicts "); the weight is checked before the model loads."""
    images = _images(3)
    default = clip_score_reward(str(tiny_clip), device="cpu")
    hessel = clip_score_reward(str(tiny_clip), device="cpu", prefix="A photo depicts ")
    scale_100 = clip_score_reward(str(tiny_clip), device="cpu", weight=100.0)
    scores, metadata = default(images, PROMPTS[:3], None)
    torch.testing.assert_close(scale_100(images, PROMPTS[:3], None)[0], 40 * scores)
    prefixed = [f"A photo depicts {p}" for p in PROMPTS[:3]]
    _, expected = default(images, prefixed, None)
    _, got = hessel(images, PROMPTS[:3], None)
    torch.testing.assert_close(got["cosine"], expected["cosine"])
    assert not torch.allclose(got["cosine"], metadata["cosine"])
    for bad in (-1.0, 0.0, float("nan")):
        with pytest.raises(ValueError, match=rf"weight must be positive and finite, got {bad}"):
            clip_score_reward("/no/such/folder", weight=bad)
