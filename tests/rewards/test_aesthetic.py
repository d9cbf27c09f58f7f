"""The aesthetic scorer with a tiny random CLIP and a random MLP, both saved and loaded by path."""

import json
from pathlib import Path

import pytest
import torch
from originals import SIZES, sample_images
from safetensors.torch import load_file, save_file

from ddpo.adapters.common.tokenizer import write_clip_tokenizer
from ddpo.rewards._clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from ddpo.rewards.aesthetic import AestheticMLP, AestheticScorer, aesthetic_score

pytestmark = pytest.mark.slow

PROJECTION_DIM = 24


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return build_tiny_aesthetic(tmp_path_factory.mktemp("aesthetic"))


def build_tiny_aesthetic(folder: Path) -> tuple[Path, Path, Path]:
    """A tiny random CLIP folder and its random MLP as ``.safetensors`` and ``.pth`` files."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
            "num_hidden_layers": 1, "vocab_size": 100, "max_position_embeddings": 16,
        },
        vision_config={
            "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
            "num_hidden_layers": 1, "image_size": 32, "patch_size": 8,
        },
        projection_dim=PROJECTION_DIM,
    )  # fmt: skip
    clip_dir = folder / "clip"
    CLIPModel(config).save_pretrained(clip_dir)
    mlp = AestheticMLP(PROJECTION_DIM)
    safetensors_path = folder / "mlp.safetensors"
    save_file({k: v.contiguous() for k, v in mlp.state_dict().items()}, str(safetensors_path))
    pth_path = folder / "mlp.pth"
    torch.save(mlp.state_dict(), pth_path)
    return clip_dir, safetensors_path, pth_path


def _images(batch: int = 3, size: int = 40) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_scores_are_finite_shaped_deterministic_and_image_dependent(tiny_clip) -> None:  # type: ignore[no-untyped-def]
    clip_dir, safetensors_path, pth_path = tiny_clip
    scorer = AestheticScorer(str(clip_dir), str(safetensors_path))
    assert scorer.mlp.input_size == PROJECTION_DIM
    images = _images()
    scores = scorer(images)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    torch.testing.assert_close(scorer(images), scores, rtol=0, atol=0)
    assert len(set(scores.tolist())) == 3  # different images, different scores
    # the original .pth format gives the same scorer
    torch.testing.assert_close(AestheticScorer(str(clip_dir), str(pth_path))(images), scores)
    # batched equals one by one; uint8 input agrees with float input
    single = torch.cat([scorer(images[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(single, scores, rtol=1e-4, atol=1e-5)
    as_uint8 = (images * 255).round().to(torch.uint8)
    torch.testing.assert_close(scorer(as_uint8), scorer(as_uint8.float() / 255))


def test_preprocess_follows_clip_image_size(tiny_clip) -> None:  # type: ignore[no-untyped-def]
    clip_dir, safetensors_path, _ = tiny_clip
    scorer = AestheticScorer(str(clip_dir), str(safetensors_path))
    pixels = scorer.preprocess(torch.rand(2, 3, 48, 64))
    assert pixels.shape == (2, 3, 32, 32)
    grey = scorer.preprocess(torch.full((1, 3, 40, 40), 0.5))  # saved as 8-bit 128 (half even)
    expected = (128 / 255 - scorer.image_mean) / scorer.image_std
    torch.testing.assert_close(grey, expected.expand_as(grey), rtol=1e-4, atol=1e-4)


def test_reward_function_contract(tiny_clip) -> None:  # type: ignore[no-untyped-def]
    clip_dir, safetensors_path, _ = tiny_clip
    reward = aesthetic_score(str(clip_dir), str(safetensors_path))
    rewards, metadata = reward(_images(2), ("a", "b"), ({}, {}))
    assert rewards.shape == (2,) and metadata == {}


def test_mlp_must_fit_the_projection_dim(tiny_clip, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clip_dir, _, _ = tiny_clip
    wrong = tmp_path / "wrong.safetensors"
    save_file({k: v.contiguous() for k, v in AestheticMLP(8).state_dict().items()}, str(wrong))
    with pytest.raises(ValueError, match=r"projection_dim, got \(1024, 8\)"):
        AestheticScorer(str(clip_dir), str(wrong))


def test_unreachable_hub_ids_fail_with_a_clear_message(tiny_clip, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    clip_dir, _, _ = tiny_clip
    with pytest.raises(OSError, match=r"clip_model_name_or_path='nobody/no-such-clip'.*Hub"):
        AestheticScorer("nobody/no-such-clip", "nobody/no-such-mlp")
    with pytest.raises(OSError, match=r"mlp_weights_path_or_hub_id='nobody/no-such-mlp'.*Hub"):
        AestheticScorer(str(clip_dir), "nobody/no-such-mlp")


@pytest.fixture(scope="module")
def clip_224(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random CLIP at 224 pixels as ``openai/clip-vit-large-patch14`` has it (model,
    tokenizer, processor) and random MLP weights."""
    from transformers import CLIPConfig, CLIPModel

    folder = tmp_path_factory.mktemp("aesthetic_224")
    write_clip_tokenizer(folder, ("a", "photo"), model_max_length=77)
    torch.manual_seed(6)
    config = CLIPConfig(
        text_config={
            "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
            "num_hidden_layers": 1, "vocab_size": 600, "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
            "num_hidden_layers": 2, "image_size": 224, "patch_size": 32,
        },
        projection_dim=PROJECTION_DIM,
    )  # fmt: skip
    clip = CLIPModel(config)
    mlp = AestheticMLP(PROJECTION_DIM)
    with torch.no_grad():
        for param in [*clip.parameters(), *mlp.parameters()]:
            param.add_(0.05 * torch.randn_like(param))
    clip.save_pretrained(folder)
    processor = {
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD), "resample": 3, "size": 224,
    }  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    mlp_path = folder / "mlp.safetensors"
    save_file({k: v.contiguous() for k, v in mlp.state_dict().items()}, str(mlp_path))
    return folder, mlp_path


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_scores_equal_trls_scorer(clip_224: tuple[Path, Path], size: tuple[int, int]) -> None:
    """Against the original scorer (TRL's ``aesthetic_scorer``, after ddpo-pytorch's): uint8
    images through transformers' ``CLIPProcessor`` (PIL backend), ``get_image_features``,
    L2 normalisation, the MLP. Measured max difference 0 over the sizes (up to 1.7e-3 before
    the fix)."""
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    clip_dir, mlp_path = clip_224
    images = sample_images(size, 3, seed=sum(size))
    ours = aesthetic_score(str(clip_dir), str(mlp_path))(images)[0]

    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil.from_pretrained(clip_dir),
        tokenizer=CLIPTokenizer.from_pretrained(clip_dir),
    )
    clip = CLIPModel.from_pretrained(clip_dir).eval()
    mlp = AestheticMLP(PROJECTION_DIM).eval()
    mlp.load_state_dict(load_file(str(mlp_path)))
    uint8 = (images * 255).round().clamp(0, 255).to(torch.uint8)  # TRL's reward function
    with torch.no_grad():
        inputs = processor(images=uint8, return_tensors="pt")
        embed = clip.get_image_features(**inputs).pooler_output
        embed = embed / torch.linalg.vector_norm(embed, dim=-1, keepdim=True)
        theirs = mlp(embed)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
