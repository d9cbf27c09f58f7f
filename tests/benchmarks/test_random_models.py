"""The full-size benchmark architectures (SD 1.5, SDXL base) and the SDXL model folder builder.

The architectures are checked on the ``meta`` device (no memory, no arithmetic) against the
published parameter counts; the SDXL builder is run with the sizes shrunk (the same code path)
and its folder loaded through ``ddpo.adapters.load_policy`` as the ``sdxl`` preset loads it.
"""

import argparse
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import presets
import random_models as models


def _parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.slow
def test_architectures_have_the_published_parameter_counts() -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        counts = {
            "sd15_unet": _parameters(UNet2DConditionModel(**models.SD15_UNET)),
            "sdxl_unet": _parameters(UNet2DConditionModel(**models.SDXL_UNET)),
            "sdxl_vae": _parameters(AutoencoderKL(**models.SDXL_VAE)),
            "clip_l": _parameters(CLIPTextModel(CLIPTextConfig(**models.CLIP_L_TEXT))),
            "bigg": _parameters(
                CLIPTextModelWithProjection(CLIPTextConfig(**models.OPENCLIP_BIGG_TEXT))
            ),
        }
    # stable-diffusion-v1-5 and stable-diffusion-xl-base-1.0 as published (safetensors headers).
    assert counts == {
        "sd15_unet": 859_520_964,
        "sdxl_unet": 2_567_463_684,
        "sdxl_vae": 83_653_863,
        "clip_l": 123_060_480,
        "bigg": 694_659_840,
    }


def test_sdxl_widths_fit_together() -> None:
    unet, vae = models.ARCHITECTURES["sdxl"]
    text_1, text_2 = models.CLIP_L_TEXT, models.OPENCLIP_BIGG_TEXT
    width = text_1["hidden_size"] + text_2["hidden_size"]
    assert unet["cross_attention_dim"] == 768 + 1280 == width
    # six micro-conditioning time ids of 256 channels each, plus bigG's pooled projection
    assert unet["projection_class_embeddings_input_dim"] == 6 * 256 + text_2["projection_dim"]
    assert unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1) == 1024
    assert (vae["scaling_factor"], vae["force_upcast"]) == (0.13025, True)


def test_sdxl_preset_is_the_sd15_epoch_at_1024_with_lora_rank_4() -> None:
    sdxl = presets.resolve(argparse.Namespace(preset="sdxl"))
    sd15 = presets.resolve(argparse.Namespace(preset="sd15"))
    assert (sdxl.model, sdxl.dtype, sdxl.lora_rank, sdxl.num_steps) == ("sdxl", "bf16", 4, 50)
    samples = sdxl.sample_batch_size * sdxl.sample_num_batches_per_epoch
    assert samples == sd15.sample_batch_size * sd15.sample_num_batches_per_epoch == 256
    tiny = presets.resolve(argparse.Namespace(preset="tiny-sdxl", steps=3))
    assert (tiny.model, tiny.num_steps, tiny.dtype) == ("ddpo-tiny-sdxl-random", 3, "fp32")


SMALL_UNET: dict[str, Any] = {
    **models.SDXL_UNET,
    "sample_size": 8,
    "block_out_channels": (16, 32, 32),
    "layers_per_block": 1,
    "transformer_layers_per_block": (1, 1, 1),
    "attention_head_dim": (2, 2, 2),
    "cross_attention_dim": 32,
    "addition_embed_type_num_heads": 4,
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 6 * 8 + 16,
    "norm_num_groups": 8,
}
SMALL_TEXT = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2}
SMALL_TEXT.update(num_attention_heads=2, projection_dim=16)


@pytest.mark.slow
def test_sdxl_builder_writes_a_folder_that_load_policy_loads_as_sdxl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ddpo.adapters import DefaultDDPOStableDiffusionXLPipeline, load_policy

    monkeypatch.setattr(models, "SDXL_UNET", SMALL_UNET)
    vae = {**models.SDXL_VAE, "block_out_channels": (8, 8, 8, 8), "norm_num_groups": 4}
    monkeypatch.setattr(models, "SDXL_VAE", vae)
    monkeypatch.setattr(models, "CLIP_L_TEXT", {**models.CLIP_L_TEXT, **SMALL_TEXT})
    monkeypatch.setattr(models, "OPENCLIP_BIGG_TEXT", {**models.OPENCLIP_BIGG_TEXT, **SMALL_TEXT})

    folder = models.sdxl_path(tmp_path)
    assert folder == tmp_path / models.SDXL_FORMAT
    policy = load_policy(folder, use_lora=True, lora_rank=4)
    assert isinstance(policy, DefaultDDPOStableDiffusionXLPipeline)
    assert policy.resolution == (64, 64)  # sample size 8 x the VAE's 8x
    sdxl = policy.pipeline
    assert sdxl.text_encoder_2.config.hidden_act == "gelu"  # bigG; CLIP-L uses quick_gelu
    assert sdxl.text_encoder.config.hidden_act == "quick_gelu"
    assert sdxl.vae.config.scaling_factor == 0.13025
    assert sdxl.text_encoder_2.dtype == torch.bfloat16  # saved in the preset's dtype
    ids = sdxl.tokenizer_2(["a photo of a zebra"]).input_ids[0]
    assert len(ids) == 2 + 5  # bos, five single-token words, eos
