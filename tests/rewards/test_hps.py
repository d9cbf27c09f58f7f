"""HPS v2.1 on a tiny OpenCLIP-format checkpoint, checked against the tiny CLIPModel it came from.

The checkpoint is written the way HPSv2 ships it (``torch.save({"state_dict": ...})`` with
OpenCLIP key names), from a random transformers ``CLIPModel`` through a key mapping written out
here in the inverse direction of the library's conversion; the expected score is computed from
that original model with ``get_image_features`` / ``get_text_features``.
"""

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from originals import (
    PROMPTS as ODD_PROMPTS,
)
from originals import (
    SIZES,
    run_original,
    sample_images,
    save_pngs,
    to_uint8,
    write_openai_clip_tokenizer,
)

from ddpo.adapters.common.tokenizer import write_clip_tokenizer
from ddpo.rewards._checkpoint_files import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from ddpo.rewards.hps import HPSScorer, hps_reward

pytestmark = pytest.mark.slow

WORDS = ("a", "red", "cat", "blue", "dog", "photo", "of")
IMAGE_SIZE = 32
CONTEXT = 16
LAYERS = 2


def _openclip_state_dict(clip: Any) -> dict[str, torch.Tensor]:
    """CLIPModel weights under OpenCLIP's names (the layout of HPS_v2.1_compressed.pt)."""
    sd = clip.state_dict()
    out = {
        "logit_scale": sd["logit_scale"],
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].T,
        "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": sd["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": sd["vision_model.post_layernorm.bias"],
        "visual.proj": sd["visual_projection.weight"].T,
    }
    for ours, theirs in (("text_model.", ""), ("vision_model.", "visual.")):
        for i in range(LAYERS):
            src, dst = f"{ours}encoder.layers.{i}.", f"{theirs}transformer.resblocks.{i}."
            for kind in ("weight", "bias"):
                out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                    [sd[f"{src}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
                )
                out[f"{dst}attn.out_proj.{kind}"] = sd[f"{src}self_attn.out_proj.{kind}"]
                out[f"{dst}ln_1.{kind}"] = sd[f"{src}layer_norm1.{kind}"]
                out[f"{dst}ln_2.{kind}"] = sd[f"{src}layer_norm2.{kind}"]
                out[f"{dst}mlp.c_fc.{kind}"] = sd[f"{src}mlp.fc1.{kind}"]
                out[f"{dst}mlp.c_proj.{kind}"] = sd[f"{src}mlp.fc2.{kind}"]
    return {k: v.clone().contiguous() for k, v in out.items()}


@pytest.fixture(scope="module")
def tiny_hps(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path, Path]:
    return build_tiny_hps(tmp_path_factory.mktemp("hps"))


def build_tiny_hps(folder: Path) -> tuple[Any, Any, Path, Path]:
    """The tiny CLIPModel, its tokenizer, the checkpoint folder and the tokenizer folder."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    tok_dir = write_clip_tokenizer(folder / "tokenizer", WORDS, model_max_length=CONTEXT)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = CLIPConfig(
        text_config={
            "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2,
            "num_hidden_layers": LAYERS, "vocab_size": len(tokenizer),
            "max_position_embeddings": CONTEXT, "hidden_act": "gelu", **ids,
        },
        vision_config={
            "hidden_size": 128, "intermediate_size": 192, "num_attention_heads": 2,
            "num_hidden_layers": LAYERS, "image_size": IMAGE_SIZE, "patch_size": 8,
            "hidden_act": "gelu",
        },
        projection_dim=24,
    )  # fmt: skip
    clip = CLIPModel(config).eval()
    with torch.no_grad():  # larger than the default init, so that every weight matters
        for param in clip.parameters():
            param.add_(0.05 * torch.randn_like(param))
    ckpt_dir = folder / "ckpt"
    ckpt_dir.mkdir()
    torch.save({"state_dict": _openclip_state_dict(clip)}, ckpt_dir / "HPS_v2.1_compressed.pt")
    return clip, tokenizer, ckpt_dir, tok_dir


def _expected(clip: Any, tokenizer: Any, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """cos(image features, text features) through the original CLIPModel."""
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    ids = tokenizer(prompts, padding="max_length", max_length=CONTEXT, return_tensors="pt")
    with torch.no_grad():
        image = clip.get_image_features(pixel_values=(images - mean) / std).pooler_output
        text = clip.get_text_features(input_ids=ids["input_ids"]).pooler_output
    return torch.nn.functional.cosine_similarity(image, text, dim=-1)


def _images(batch: int, size: int = IMAGE_SIZE, seed: int = 1) -> torch.Tensor:
    """Random images of 8-bit values (which the reward's quantisation leaves as they are)."""
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return to_uint8(images).float() / 255


PROMPTS = ["a red cat", "a photo of a blue dog", "a red cat", "of"]


def test_score_equals_cosine_of_the_original_model(tiny_hps) -> None:  # type: ignore[no-untyped-def]
    clip, tokenizer, ckpt_dir, tok_dir = tiny_hps
    reward = hps_reward(str(ckpt_dir), tokenizer=str(tok_dir), device="cpu", batch_size=3)
    images = _images(4)
    rewards, metadata = reward(images, tuple(PROMPTS), ({},) * 4)
    assert metadata == {} and rewards.shape == (4,) and rewards.dtype == torch.float32
    torch.testing.assert_close(rewards, _expected(clip, tokenizer, images, PROMPTS))
    assert len(set(rewards.tolist())) == 4
    # the file path itself loads the same model; batched equals one by one
    scorer = HPSScorer(str(ckpt_dir / "HPS_v2.1_compressed.pt"), tokenizer=str(tok_dir))
    single = torch.cat([scorer(images[i : i + 1], PROMPTS[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(single, rewards, rtol=1e-5, atol=1e-6)


def test_config_is_read_from_the_checkpoint(tiny_hps) -> None:  # type: ignore[no-untyped-def]
    clip, _, ckpt_dir, tok_dir = tiny_hps
    scorer = HPSScorer(str(ckpt_dir), tokenizer=str(tok_dir))
    ours, theirs = scorer.model.config, clip.config
    for tower in ("text_config", "vision_config"):
        for field in (
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_hidden_layers",
        ):
            assert getattr(getattr(ours, tower), field) == getattr(getattr(theirs, tower), field)
    assert (scorer.image_size, scorer.context_length) == (IMAGE_SIZE, CONTEXT)
    assert ours.projection_dim == 24
    # larger, non-square images are resized and centre-cropped to the model's size
    assert torch.isfinite(scorer(_images(2, size=48)[..., :40], PROMPTS[:2])).all()


def test_bare_state_dict_with_module_prefix_loads(tiny_hps, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clip, tokenizer, _, tok_dir = tiny_hps
    state = {f"module.{k}": v for k, v in _openclip_state_dict(clip).items()}
    torch.save(state, tmp_path / "bare.pt")
    scorer = HPSScorer(str(tmp_path / "bare.pt"), tokenizer=str(tok_dir))
    images = _images(2, seed=3)
    expected = _expected(clip, tokenizer, images, PROMPTS[:2])
    torch.testing.assert_close(scorer(images, PROMPTS[:2]), expected)


def test_wrong_keys_are_named(tiny_hps, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clip, _, _, tok_dir = tiny_hps
    state = _openclip_state_dict(clip)
    del state["visual.ln_post.bias"]
    state["visual.extra_head.weight"] = torch.zeros(2)
    torch.save({"state_dict": state}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match=r"missing keys \['visual.ln_post.bias'\]") as info:
        HPSScorer(str(tmp_path / "wrong.pt"), tokenizer=str(tok_dir))
    assert "unexpected keys ['visual.extra_head.weight']" in str(info.value)
    state = _openclip_state_dict(clip)
    del state["visual.conv1.weight"]
    torch.save({"state_dict": state}, tmp_path / "no_conv.pt")
    with pytest.raises(ValueError, match=r"no key 'visual.conv1.weight'"):
        HPSScorer(str(tmp_path / "no_conv.pt"), tokenizer=str(tok_dir))


def test_bad_arguments_fail_clearly(tiny_hps, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import huggingface_hub.constants

    _, _, ckpt_dir, tok_dir = tiny_hps
    for bad in (0, -2, True):
        with pytest.raises(ValueError, match=rf"batch_size must be a positive int, got {bad!r}"):
            hps_reward(str(ckpt_dir), tokenizer=str(tok_dir), batch_size=bad)
    with pytest.raises(FileNotFoundError, match=r"holds no 'HPS_v2.1_compressed.pt'"):
        hps_reward(str(tmp_path), tokenizer=str(tok_dir))
    with pytest.raises(
        FileNotFoundError, match=r"tokenizer=.*holds no \['vocab.json', 'merges.txt'\]"
    ):
        hps_reward(str(ckpt_dir), tokenizer=str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=r"model='nobody/no-such-hps'.*Hub"):
        hps_reward("nobody/no-such-hps", tokenizer=str(tok_dir))
    with pytest.raises(OSError, match=r"tokenizer='nobody/no-such-tokenizer'.*'vocab.json'.*Hub"):
        hps_reward(str(ckpt_dir), tokenizer="nobody/no-such-tokenizer")
    reward = hps_reward(str(ckpt_dir), tokenizer=str(tok_dir))
    with pytest.raises(ValueError, match=r"prompts must be a sequence of 2 strings"):
        reward(_images(2), ["only one"], None)
    with pytest.raises(ValueError, match=r"images must be \(batch, 3, H, W\)"):
        reward(torch.rand(2, 4, 8, 8), ["a", "b"], None)


# --- against the original package (hpsv2 1.2.0, run in a subprocess: see originals.py) ----------


@pytest.fixture(scope="module")
def hps_against_hpsv2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny random OpenCLIP ViT (224 pixels, OpenAI's 49,408-token vocabulary) saved as
    ``HPS_v2.1_compressed.pt``, the same images as PNG files, and hpsv2's scores of them."""
    from transformers import CLIPConfig, CLIPModel

    folder = tmp_path_factory.mktemp("hps_original")
    tok_dir = write_openai_clip_tokenizer(folder / "tokenizer")
    torch.manual_seed(2)
    width, patch, embed = 128, 32, 32
    clip = CLIPModel(
        CLIPConfig(
            text_config={
                "hidden_size": width, "intermediate_size": 4 * width, "num_attention_heads": 2,
                "num_hidden_layers": LAYERS, "vocab_size": 49408, "max_position_embeddings": 77,
                "hidden_act": "gelu", "bos_token_id": 49406, "eos_token_id": 49407,
                "pad_token_id": 0,
            },
            vision_config={
                "hidden_size": width, "intermediate_size": 4 * width, "num_attention_heads": 2,
                "num_hidden_layers": LAYERS, "image_size": 224, "patch_size": patch,
                "hidden_act": "gelu",
            },
            projection_dim=embed,
        )
    ).eval()  # fmt: skip
    with torch.no_grad():
        for param in clip.parameters():
            param.add_(0.05 * torch.randn_like(param))
    ckpt_dir = folder / "ckpt"
    ckpt_dir.mkdir()
    checkpoint = ckpt_dir / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": _openclip_state_dict(clip)}, checkpoint)
    model_config = {
        "embed_dim": embed,
        "vision_cfg": {"image_size": 224, "layers": LAYERS, "width": width, "head_width": 64,
                       "patch_size": patch},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width, "heads": 2,
                     "layers": LAYERS},
    }  # fmt: skip
    (folder / "hps-tiny.json").write_text(json.dumps(model_config))
    images = {size: sample_images(size, len(ODD_PROMPTS), seed=i) for i, size in enumerate(SIZES)}
    paths = [p for s, x in images.items() for p in save_pngs(to_uint8(x), folder, f"{s[0]}x{s[1]}")]
    answer = run_original(
        "hps",
        {
            "model_config": str(folder / "hps-tiny.json"),
            "checkpoint": str(checkpoint),
            "images": paths,
            "prompts": list(ODD_PROMPTS) * len(SIZES),
        },
        folder,
    )
    scores = torch.tensor(answer["scores"]).view(len(SIZES), len(ODD_PROMPTS))
    reward = hps_reward(str(ckpt_dir), tokenizer=str(tok_dir), device="cpu")
    return {
        "reward": reward, "images": images, "tokens": answer["tokens"],
        "scores": dict(zip(SIZES, scores, strict=True)),
    }  # fmt: skip


def test_tokens_follow_hpsv2s_cleaning(hps_against_hpsv2: dict[str, Any]) -> None:
    """ftfy, HTML unescaping (twice) and whitespace cleaning, then OpenAI's BPE, as hpsv2."""
    ours = hps_against_hpsv2["reward"].scorer.tokenize(list(ODD_PROMPTS)).tolist()
    theirs = hps_against_hpsv2["tokens"][: len(ODD_PROMPTS)]
    for prompt, mine, original in zip(ODD_PROMPTS, ours, theirs, strict=True):
        end = original.index(49407) + 1  # the rest is padding, behind the causal mask
        assert mine[:end] == original[:end], prompt


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_scores_equal_hpsv2s(hps_against_hpsv2: dict[str, Any], size: tuple[int, int]) -> None:
    """Our reward on float images equals hpsv2's ``score`` on the saved 8-bit images (longest
    side to 224, zero padding, no clamp). Measured max difference 9e-8 over the sizes (0.18
    to 0.29 before the fix, mostly from the prompts' cleaning)."""
    ours, _ = hps_against_hpsv2["reward"](
        hps_against_hpsv2["images"][size], list(ODD_PROMPTS), None
    )
    theirs = hps_against_hpsv2["scores"][size]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-6)


def test_missing_ftfy_names_the_extra(tiny_hps, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _, _, ckpt_dir, tok_dir = tiny_hps
    monkeypatch.setitem(sys.modules, "ftfy", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"cleans prompts with ftfy.*pip install 'ddpo\[hps\]'"):
        hps_reward(str(ckpt_dir), tokenizer=str(tok_dir))
