"""ImageReward on a tiny checkpoint in the original format, checked against the models it came from.

The checkpoint is written as ImageReward ships it: a bare ``torch.save`` state dict with
``blip.visual_encoder.*`` (BLIP's timm-style ViT names), ``blip.text_encoder.*``, ``mlp.layers.*``
and the unused ``blip.vision_proj`` / ``blip.text_proj`` and ``position_ids``, beside a
``med_config.json``. The expected score is computed here from the tiny BlipVisionModel,
BlipTextModel and head, with the tokenisation, preprocessing and standardisation written out.
"""

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from originals import PROMPTS as ODD_PROMPTS
from originals import SIZES, run_original, sample_images, save_pngs, to_uint8
from torch import nn

from ddpo.rewards._checkpoint_files import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from ddpo.rewards.image_reward import ImageRewardScorer, image_reward

pytestmark = pytest.mark.slow

VOCAB = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "cat", "blue"]
VOCAB += ["dog", "photo", "of", "on", "the", "grass", "##s"]
IMAGE_SIZE = 32
LAYERS = 2
VISION_WIDTH = 128
TEXT_WIDTH = 64


def _med_config(vocab_size: int) -> dict[str, Any]:
    return {
        "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": TEXT_WIDTH,
        "initializer_range": 0.02, "intermediate_size": 96, "layer_norm_eps": 1e-12,
        "max_position_embeddings": 40, "model_type": "bert", "num_attention_heads": 4,
        "num_hidden_layers": LAYERS, "pad_token_id": 0, "type_vocab_size": 2,
        "vocab_size": vocab_size, "encoder_width": VISION_WIDTH, "add_cross_attention": True,
    }  # fmt: skip


def _original_state_dict(
    vision: Any, text: Any, head: nn.Module, *, proj_dim: int = 8
) -> dict[str, torch.Tensor]:
    """The tiny models' weights under ImageReward's key names (the layout of ImageReward.pt)."""
    v = vision.state_dict()
    out = {
        "blip.visual_encoder.cls_token": v["embeddings.class_embedding"],
        "blip.visual_encoder.pos_embed": v["embeddings.position_embedding"],
        "blip.visual_encoder.patch_embed.proj.weight": v["embeddings.patch_embedding.weight"],
        "blip.visual_encoder.patch_embed.proj.bias": v["embeddings.patch_embedding.bias"],
        "blip.visual_encoder.norm.weight": v["post_layernorm.weight"],
        "blip.visual_encoder.norm.bias": v["post_layernorm.bias"],
    }
    for i in range(vision.config.num_hidden_layers):
        for kind in ("weight", "bias"):
            for theirs, ours in (
                ("norm1", "layer_norm1"), ("attn.qkv", "self_attn.qkv"),
                ("attn.proj", "self_attn.projection"), ("norm2", "layer_norm2"),
                ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"),
            ):  # fmt: skip
                key = f"blip.visual_encoder.blocks.{i}.{theirs}.{kind}"
                out[key] = v[f"encoder.layers.{i}.{ours}.{kind}"]
    out.update({f"blip.text_encoder.{k}": t for k, t in text.state_dict().items()})
    positions = torch.arange(text.config.max_position_embeddings).expand(1, -1)
    out["blip.text_encoder.embeddings.position_ids"] = positions  # as old transformers saved it
    out.update({f"mlp.{k}": t for k, t in head.state_dict().items()})
    widths = (("vision_proj", vision.config.hidden_size), ("text_proj", text.config.hidden_size))
    for name, width in widths:
        out[f"blip.{name}.weight"] = torch.randn(proj_dim, width)
        out[f"blip.{name}.bias"] = torch.randn(proj_dim)
    return {k: t.clone().contiguous() for k, t in out.items()}


def _head(width: int = TEXT_WIDTH) -> nn.Module:
    module = nn.Module()
    module.layers = nn.Sequential(
        nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
    )  # fmt: skip
    return module.eval()


@pytest.fixture(scope="module")
def tiny_ir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_tiny_image_reward(tmp_path_factory.mktemp("image_reward"))


def build_tiny_image_reward(folder: Path) -> dict[str, Any]:
    """The tiny original models, tokenizer, checkpoint folder (``ckpt``) and tokenizer (``tok``)."""
    from transformers import (
        BertTokenizer,
        BlipTextConfig,
        BlipTextModel,
        BlipVisionConfig,
        BlipVisionModel,
    )

    tok_dir = folder / "bert"
    tok_dir.mkdir()
    (tok_dir / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizer.from_pretrained(tok_dir)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    med = _med_config(len(tokenizer))
    torch.manual_seed(0)
    vision = BlipVisionModel(
        BlipVisionConfig(
            hidden_size=VISION_WIDTH,
            intermediate_size=192,
            num_attention_heads=2,
            num_hidden_layers=LAYERS,
            image_size=IMAGE_SIZE,
            patch_size=8,
            layer_norm_eps=1e-6,
        )
    ).eval()
    text = BlipTextModel(
        BlipTextConfig(
            vocab_size=med["vocab_size"],
            hidden_size=TEXT_WIDTH,
            intermediate_size=96,
            num_attention_heads=4,
            num_hidden_layers=LAYERS,
            max_position_embeddings=40,
            encoder_hidden_size=VISION_WIDTH,
            is_decoder=True,
            pad_token_id=0,
        ),
        add_pooling_layer=False,
    ).eval()
    head = _head()
    with (
        torch.no_grad()
    ):  # larger than the default init (the ViT's is ~1e-10), so all weights matter
        for model in (vision, text, head):
            for param in model.parameters():
                param.add_(0.05 * torch.randn_like(param))
    ckpt_dir = folder / "ckpt"
    ckpt_dir.mkdir()
    torch.save(_original_state_dict(vision, text, head), ckpt_dir / "ImageReward.pt")
    (ckpt_dir / "med_config.json").write_text(json.dumps(med, indent=2))
    return {"vision": vision, "text": text, "head": head, "tokenizer": tokenizer,
            "ckpt": ckpt_dir, "tok": tok_dir}  # fmt: skip


def _expected(m: dict[str, Any], images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """(MLP(h_[CLS]) - mean) / std through the tiny original models."""
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    enc = m["tokenizer"](
        prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt"
    )
    with torch.no_grad():
        image_embeds = m["vision"](pixel_values=(images - mean) / std).last_hidden_state
        hidden = m["text"](
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
            encoder_hidden_states=image_embeds, is_decoder=False,
        ).last_hidden_state  # fmt: skip
        raw = m["head"].layers(hidden[:, 0]).squeeze(-1)
    return (raw - 0.16717362830052426) / 1.0333394966054072


def _images(batch: int, size: int = IMAGE_SIZE, seed: int = 1) -> torch.Tensor:
    """Random images of 8-bit values (which the reward's quantisation leaves as they are)."""
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return to_uint8(images).float() / 255


PROMPTS = ["a red cat", "a photo of a blue dog on the grass", "a red cat", "cats"]


def test_score_equals_the_original_computation(tiny_ir) -> None:  # type: ignore[no-untyped-def]
    reward = image_reward(str(tiny_ir["ckpt"]), tokenizer=str(tiny_ir["tok"]), batch_size=3)
    images = _images(4)
    rewards, metadata = reward(images, tuple(PROMPTS), ({},) * 4)
    assert metadata == {} and rewards.shape == (4,) and rewards.dtype == torch.float32
    torch.testing.assert_close(rewards, _expected(tiny_ir, images, PROMPTS))
    assert len(set(rewards.tolist())) == 4
    # the same prompt with other images scores differently: cross-attention sees the image
    other = reward(_images(4, seed=2), tuple(PROMPTS), None)[0]
    assert not torch.allclose(other, rewards)
    # the .pt file itself (med_config.json beside it) loads the same; batched equals one by one
    scorer = ImageRewardScorer(
        str(tiny_ir["ckpt"] / "ImageReward.pt"), tokenizer=str(tiny_ir["tok"])
    )
    single = torch.cat([scorer(images[i : i + 1], PROMPTS[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(single, rewards, rtol=1e-5, atol=1e-5)


def test_tokenizer_and_config_follow_imagereward(tiny_ir) -> None:  # type: ignore[no-untyped-def]
    scorer = ImageRewardScorer(str(tiny_ir["ckpt"]), tokenizer=str(tiny_ir["tok"]))
    ids, mask = scorer.tokenize(["a red cat", " ".join(["dog"] * 50)])
    assert ids.shape == (2, 35) and ids[0, :5].tolist() == [3, 6, 7, 8, 4]  # [CLS] a red cat [SEP]
    assert mask[0].sum() == 5 and ids[1, -1] == 4  # padded; truncated with [SEP] last
    tok = scorer.tokenizer
    assert (tok.bos_token, tok.convert_tokens_to_ids("[ENC]")) == ("[DEC]", len(VOCAB) + 1)
    vision = scorer.model.vision.config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size) == (128, 2, 32)
    assert (vision.patch_size, vision.num_attention_heads, vision.layer_norm_eps) == (8, 2, 1e-6)
    text = scorer.model.text_encoder.config
    assert (text.hidden_size, text.num_attention_heads, text.encoder_hidden_size) == (64, 4, 128)
    # larger, non-square images are resized and centre-cropped to the model's size
    assert torch.isfinite(scorer(_images(2, size=48)[..., :40], PROMPTS[:2])).all()


def test_wrong_keys_are_named(tiny_ir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    state = _original_state_dict(tiny_ir["vision"], tiny_ir["text"], tiny_ir["head"])
    del state["blip.text_encoder.encoder.layer.1.crossattention.self.key.bias"]
    state["blip.itm_head.weight"] = torch.zeros(2, TEXT_WIDTH)
    torch.save(state, tmp_path / "ImageReward.pt")
    (tmp_path / "med_config.json").write_text((tiny_ir["ckpt"] / "med_config.json").read_text())
    with pytest.raises(
        ValueError, match=r"missing keys \['blip.text_encoder.encoder.layer.1.cross"
    ) as info:
        ImageRewardScorer(str(tmp_path), tokenizer=str(tiny_ir["tok"]))
    assert "unexpected keys ['blip.itm_head.weight']" in str(info.value)
    # a med_config.json whose sizes do not fit the checkpoint: shapes named
    med = json.loads((tiny_ir["ckpt"] / "med_config.json").read_text())
    (tmp_path / "med_config.json").write_text(json.dumps({**med, "intermediate_size": 80}))
    torch.save(_original_state_dict(tiny_ir["vision"], tiny_ir["text"], tiny_ir["head"]),
               tmp_path / "ImageReward.pt")  # fmt: skip
    with pytest.raises(ValueError, match=r"shape mismatches.*intermediate.dense.bias"):
        ImageRewardScorer(str(tmp_path), tokenizer=str(tiny_ir["tok"]))
    (tmp_path / "med_config.json").write_text(json.dumps({**med, "add_cross_attention": False}))
    with pytest.raises(ValueError, match=r"add_cross_attention"):
        ImageRewardScorer(str(tmp_path), tokenizer=str(tiny_ir["tok"]))


def test_bad_arguments_fail_clearly(tiny_ir, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import huggingface_hub.constants

    ckpt, tok = str(tiny_ir["ckpt"]), str(tiny_ir["tok"])
    for bad in (0, -1, False):
        with pytest.raises(ValueError, match=rf"batch_size must be a positive int, got {bad!r}"):
            image_reward(ckpt, tokenizer=tok, batch_size=bad)
    with pytest.raises(FileNotFoundError, match=r"holds no 'ImageReward.pt'"):
        image_reward(str(tmp_path), tokenizer=tok)
    torch.save({}, tmp_path / "lonely.pt")
    with pytest.raises(FileNotFoundError, match=r"no 'med_config.json' beside the file"):
        image_reward(str(tmp_path / "lonely.pt"), tokenizer=tok)
    with pytest.raises(FileNotFoundError, match=r"tokenizer=.*holds no \['vocab.txt'\]"):
        image_reward(ckpt, tokenizer=str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=r"model='nobody/no-such-ir'.*'ImageReward.pt'.*Hub"):
        image_reward("nobody/no-such-ir", tokenizer=tok)
    with pytest.raises(OSError, match=r"tokenizer='nobody/no-such-bert'.*'vocab.txt'.*Hub"):
        image_reward(ckpt, tokenizer="nobody/no-such-bert")
    reward = image_reward(ckpt, tokenizer=tok)
    with pytest.raises(ValueError, match=r"prompts must be a sequence of 2 strings"):
        reward(_images(2), "a red cat", None)


# --- against the original package (image-reward 1.5, run in a subprocess: see originals.py) -----


@pytest.fixture(scope="module")
def ir_against_original(
    tiny_ir: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A tiny random ImageReward.pt at 224 pixels (text width 768, which the original's head
    requires), the same images as PNG files, and image-reward's own scores of them."""
    from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

    folder = tmp_path_factory.mktemp("image_reward_original")
    med = {**_med_config(len(tiny_ir["tokenizer"])), "hidden_size": 768,
           "num_attention_heads": 12, "intermediate_size": 256}  # fmt: skip
    torch.manual_seed(3)
    vision = BlipVisionModel(
        BlipVisionConfig(
            hidden_size=VISION_WIDTH, intermediate_size=4 * VISION_WIDTH, num_attention_heads=2,
            num_hidden_layers=LAYERS, image_size=224, patch_size=32, layer_norm_eps=1e-6,
        )
    ).eval()  # fmt: skip
    text = BlipTextModel(
        BlipTextConfig(
            vocab_size=med["vocab_size"], hidden_size=768, intermediate_size=256,
            num_attention_heads=12, num_hidden_layers=LAYERS, max_position_embeddings=40,
            encoder_hidden_size=VISION_WIDTH, is_decoder=True, pad_token_id=0,
        ),
        add_pooling_layer=False,
    ).eval()  # fmt: skip
    head = _head(768)
    with torch.no_grad():
        for model in (vision, text, head):
            for param in model.parameters():
                param.add_(0.05 * torch.randn_like(param))
    ckpt_dir = folder / "ckpt"
    ckpt_dir.mkdir()
    state = _original_state_dict(vision, text, head, proj_dim=256)
    torch.save(state, ckpt_dir / "ImageReward.pt")
    (ckpt_dir / "med_config.json").write_text(json.dumps(med, indent=2))
    images = {size: sample_images(size, len(ODD_PROMPTS), seed=i) for i, size in enumerate(SIZES)}
    paths = [p for s, x in images.items() for p in save_pngs(to_uint8(x), folder, f"{s[0]}x{s[1]}")]
    answer = run_original(
        "image_reward",
        {
            "checkpoint": str(ckpt_dir / "ImageReward.pt"),
            "med_config": str(ckpt_dir / "med_config.json"),
            "tokenizer": str(tiny_ir["tok"]),
            "vision": {"width": VISION_WIDTH, "depth": LAYERS, "heads": 2, "patch_size": 32},
            "images": paths,
            "prompts": list(ODD_PROMPTS) * len(SIZES),
        },
        folder,
    )
    scores = torch.tensor(answer["scores"]).view(len(SIZES), len(ODD_PROMPTS))
    reward = image_reward(str(ckpt_dir), tokenizer=str(tiny_ir["tok"]), device="cpu")
    return {"reward": reward, "images": images, "scores": dict(zip(SIZES, scores, strict=True))}


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_scores_equal_image_rewards(
    ir_against_original: dict[str, Any], size: tuple[int, int]
) -> None:
    """Our reward on float images equals ``ImageReward.score`` on the saved 8-bit images (PIL
    bicubic resize of the shortest side to 224, torchvision's centre crop). Measured max
    difference 6e-7 over the sizes (2e-2 to 7e-2 at the non-square sizes before the fix)."""
    ours, _ = ir_against_original["reward"](
        ir_against_original["images"][size], list(ODD_PROMPTS), None
    )
    theirs = ir_against_original["scores"][size]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=5e-6)
