"""The flow presets (``sd3``, ``flux``, ``qwenimage``, ``wan-1.3b``, ``wan-14b`` and their tiny
ones): their settings, the full-size architectures against the published parameter counts (on
the ``meta`` device), their folder builder, the epoch budget's arithmetic against a count
written out here, the ``meta``-device FLOP count on small configs of each new architecture kind,
and against a real, counted sampling call of the same policy."""

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_window
import flow_flops
import flow_models
import harness
import presets


def _resolve(**kwargs: object) -> presets.Preset:
    return presets.resolve(argparse.Namespace(**kwargs))


def test_full_size_flow_presets_use_flow_grpo_settings_at_1024() -> None:
    for name, guidance in (("sd3", 4.5), ("flux", 3.5)):
        preset = _resolve(preset=name)
        assert (preset.model, preset.dtype, preset.lora_rank) == (name, "bf16", 4)
        assert (preset.num_steps, preset.noise_level, preset.guidance_scale) == (10, 0.7, guidance)
        assert preset.kl_coef > 0
        # both re-score the policy that sampled (SD3: with CFG, as Flow-GRPO's train.cfg)
        assert preset.train_cfg is True
        assert preset.sde_window_size is None  # every step trained unless narrowed
        samples = preset.sample_batch_size * preset.sample_num_batches_per_epoch
        assert (samples, preset.group_size, samples % preset.group_size) == (192, 24, 0)
        assert presets.family(preset.model) == name
    # SD3.5 Medium's native size is 1024: sample size 128 x the 8x VAE
    assert flow_models.SD35_MEDIUM_TRANSFORMER["sample_size"] * 8 == 1024
    assert flow_models.FLUX_VAE["sample_size"] == 1024


def test_tiny_flow_presets_are_the_builtin_models() -> None:
    sd3, flux = _resolve(preset="tiny-sd3"), _resolve(preset="tiny-flux", steps=4)
    assert (sd3.model, sd3.dtype, sd3.num_steps) == ("ddpo-tiny-sd3-random", "fp32", 10)
    assert (flux.model, flux.num_steps, flux.guidance_scale) == ("ddpo-tiny-flux-random", 4, 3.5)
    assert presets.is_flow(sd3) and presets.is_flow(flux)


def test_window_override_is_checked_against_the_family_and_the_steps() -> None:
    assert _resolve(preset="sd3", sde_window_size=2).sde_window_size == 2
    assert _resolve(preset="flux", sde_window_size=1).sde_window_size == 1
    assert _resolve(preset="sd3", sde_window_size=0).sde_window_size is None  # 0: every step
    with pytest.raises(ValueError, match=r"sde_window_size must be in \[1, num_steps=10\], got 11"):
        _resolve(preset="sd3", sde_window_size=11)
    with pytest.raises(ValueError, match="sde_window_size must be >= 0"):
        _resolve(preset="sd3", sde_window_size=-1)
    with pytest.raises(ValueError, match=r"apply to the flow presets.*'sdxl'"):
        _resolve(preset="sdxl", sde_window_size=2)
    assert bench_window.windows(10) == [10, 2, 1]
    assert bench_window.windows(2) == [2, 1]
    arms = bench_window.arms(10)
    assert list(arms) == ["10", "2", "1", "2_flash"]
    assert arms["10"][1] == {"sde_window_size": None}
    assert arms["2_flash"] == (2, {"sde_window_size": 2, **bench_window.FLASH})
    assert "2_flash" not in bench_window.arms(2)  # nothing after a window of every step


def test_flow_architectures_widths_fit_together() -> None:
    sd3 = flow_models.ARCHITECTURES["sd3"]
    clip_l, clip_g, t5 = (sizes for _, sizes, _ in sd3.text_encoders)
    assert (
        sd3.transformer["pooled_projection_dim"]
        == clip_l["projection_dim"] + clip_g["projection_dim"]
    )
    assert sd3.transformer["joint_attention_dim"] == t5["d_model"] == 4096
    heads, head_dim = sd3.transformer["num_attention_heads"], sd3.transformer["attention_head_dim"]
    assert sd3.transformer["caption_projection_dim"] == heads * head_dim == 1536
    assert sd3.transformer["dual_attention_layers"] == tuple(range(13))
    flux = flow_models.ARCHITECTURES["flux"]
    clip, t5_flux = (sizes for _, sizes, _ in flux.text_encoders)
    assert t5_flux == flow_models.T5_XXL_ENCODER  # the same T5-XXL encoder as SD3's
    assert flux.transformer["pooled_projection_dim"] == clip["hidden_size"] == 768
    assert flux.transformer["in_channels"] == 4 * flux.vae["latent_channels"] == 64
    assert sum(flux.transformer["axes_dims_rope"]) == flux.transformer["attention_head_dim"]
    assert [tokens for _, _, tokens in flux.text_encoders] == [77, 512]


@pytest.mark.slow
def test_flow_architectures_have_the_published_parameter_counts() -> None:
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    with torch.device("meta"):
        counts = {
            "sd35m": count(SD3Transformer2DModel(**flow_models.SD35_MEDIUM_TRANSFORMER)),
            "flux_dev": count(FluxTransformer2DModel(**flow_models.FLUX_DEV_TRANSFORMER)),
            "vae": count(AutoencoderKL(**flow_models.SD3_VAE)),
            "t5_xxl": count(flow_models.text_encoder("t5", flow_models.T5_XXL_ENCODER)),
            "clip_l_projection": count(
                flow_models.text_encoder("clip_projection", presets.models.CLIP_L_TEXT)
            ),
        }
    # stable-diffusion-3.5-medium, FLUX.1-dev and t5-v1_1-xxl as published (safetensors headers)
    assert counts == {
        "sd35m": 2_243_171_520,
        "flux_dev": 11_901_408_320,
        "vae": 83_819_683,
        "t5_xxl": 4_762_310_656,
        "clip_l_projection": 123_650_304,
    }


def test_epoch_budget_scales_training_with_the_window_and_keeps_sampling() -> None:
    counts = {
        "sample_forward": 7,
        "train_forward_backward": 11,
        "kl_reference_forward": 5,
        "vae_decode": 3,
        "text": 2,
    }
    samples, steps = 4, 10
    for window in (10, 2, 1):
        budget = flow_flops.epoch_budget(counts, samples, steps, window)
        # written out: 4 samples x (10 steps x 7 + 3 + 2); 4 x window x (11 + 5)
        assert budget["sampling"] == 4 * (10 * 7 + 3 + 2)
        assert budget["training"] == 4 * window * (11 + 5)
        assert budget["total"] == budget["sampling"] + budget["training"]


SMALL_TEXT = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2}
SMALL_TEXT.update(num_attention_heads=2, projection_dim=16)
SMALL_T5 = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4}
SMALL_VAE = {"block_out_channels": (8, 8, 8, 8), "norm_num_groups": 4, "sample_size": 64}
SMALL_TRANSFORMERS = {
    "sd3": {
        "sample_size": 8,
        "num_layers": 2,
        "attention_head_dim": 8,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,
        "caption_projection_dim": 16,
        "pooled_projection_dim": 32,
        "pos_embed_max_size": 16,
        "dual_attention_layers": (0,),
    },
    "flux": {
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,
        "pooled_projection_dim": 16,
        "axes_dims_rope": (4, 6, 6),
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_flow_builder_writes_a_folder_that_load_policy_loads(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ddpo.adapters import (
        DefaultDDPOFluxPipeline,
        DefaultDDPOStableDiffusion3Pipeline,
        load_policy,
    )

    arch = flow_models.ARCHITECTURES[name]
    small = arch._replace(
        transformer={**arch.transformer, **SMALL_TRANSFORMERS[name]},
        vae={**arch.vae, **SMALL_VAE},
        text_encoders=tuple(
            (kind, {**sizes, **(SMALL_T5 if kind == "t5" else SMALL_TEXT)}, tokens)
            for kind, sizes, tokens in arch.text_encoders
        ),
    )
    monkeypatch.setitem(flow_models.ARCHITECTURES, name, small)

    folder = flow_models.MODEL_FOLDERS[name](tmp_path)
    expected_folder = flow_models.SD3_FORMAT if name == "sd3" else flow_models.FLUX_FORMAT
    assert folder == tmp_path / expected_folder
    policy = load_policy(folder, use_lora=True, lora_rank=4)
    classes = {"sd3": DefaultDDPOStableDiffusion3Pipeline, "flux": DefaultDDPOFluxPipeline}
    assert isinstance(policy, classes[name])
    assert policy.resolution == (64, 64)
    pipe = policy.pipeline
    from safetensors import safe_open

    # saved in the presets' dtype (diffusers upcasts on load unless given torch_dtype)
    for part in ("transformer", "vae"):
        with safe_open(folder / part / "diffusion_pytorch_model.safetensors", "pt") as weights:
            first = next(iter(weights.keys()))
            assert weights.get_tensor(first).dtype == torch.bfloat16, part
    shift = {"sd3": 0.0609, "flux": 0.1159}[name]
    assert (pipe.vae.config.latent_channels, pipe.vae.config.shift_factor) == (16, shift)
    t5_tokenizer = pipe.tokenizer_3 if name == "sd3" else pipe.tokenizer_2
    ids = t5_tokenizer(["a photo of a zebra"]).input_ids[0]
    assert len(ids) == 5 + 1  # five single-piece words, then </s>


@pytest.mark.slow
def test_known_families_agree_with_the_model_folders() -> None:
    from ddpo.adapters import model_family
    from ddpo.adapters.flux.tiny import TINY_FLUX_NAME
    from ddpo.adapters.qwenimage.tiny import TINY_QWENIMAGE_NAME
    from ddpo.adapters.sd3.tiny import TINY_SD3_NAME
    from ddpo.adapters.wan.tiny import TINY_WAN_NAME

    for name in (TINY_SD3_NAME, TINY_FLUX_NAME, TINY_QWENIMAGE_NAME, TINY_WAN_NAME):
        assert flow_models.FAMILY_OF_MODEL[name] == model_family(name).name


def _qwen_text_tokens(policy: Any, prompt: str) -> int:
    """Tokens Qwen2.5-VL reads for ``prompt``: the stock pipeline's template around it."""
    pipe = policy.pipeline
    return len(pipe.tokenizer(pipe.prompt_template_encode.format(prompt)).input_ids)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux", "tiny-qwenimage", "tiny-wan"])
def test_meta_count_matches_a_counted_sampling_call(name: str) -> None:
    preset = presets.resolve(argparse.Namespace(preset=name))
    counts = flow_flops.flow_flops(preset)
    policy = presets.load_pipeline(preset, torch.device("cpu"))
    steps = 3
    with torch.no_grad(), policy.reference_policy():  # adapters off: the base transformer
        real = harness.count_flops(
            lambda: policy(
                presets.prompts(1),
                num_inference_steps=steps,
                guidance_scale=preset.guidance_scale,
                noise_level=0,
                output_type="pt",
            )
        )
    # SD3, Qwen-Image and Wan2.1 also encode the negative prompt ("")
    prompts_encoded = 1 if name == "tiny-flux" else 2
    text = prompts_encoded * counts["text"]
    if name == "tiny-qwenimage":  # its encoder reads the prompt's own length, not 512 tokens
        arch = flow_flops.architecture(preset)
        ((kind, sizes, _),) = arch.text_encoders
        lengths = [_qwen_text_tokens(policy, prompt) for prompt in (presets.prompts(1)[0], "")]
        assert lengths[1] == flow_models.QWEN_TEMPLATE_TOKENS  # the template alone: 34 + 5
        text = sum(
            flow_flops.text_flops(arch._replace(text_encoders=((kind, sizes, n),))) for n in lengths
        )
    expected = steps * counts["sample_forward"] + counts["vae_decode"] + text
    assert real == pytest.approx(expected, rel=1e-3)
    assert counts["sample_rows"] == (1 if name == "tiny-flux" else 2)  # CFG: all but FLUX
    # SD3, Qwen-Image and Wan2.1 re-score with CFG, two rows as when sampling; FLUX never doubles
    assert counts["train_rows"] == counts["sample_rows"]
    assert counts["kl_reference_forward"] > 0  # kl_coef > 0
    frames = {"tiny-wan": 5}.get(name, 1)  # the tiny Wan model's native 5 frames: 2 latent
    assert (counts["height"], counts["width"], counts["num_frames"]) == (64, 64, frames)
    assert counts["image_tokens"] == 16 * (2 if name == "tiny-wan" else 1)


# ---- Qwen-Image and Wan2.1 (issue #26): full sizes on the meta device, FLOP-only presets ----


def test_qwenimage_and_wan_presets_use_flow_grpo_settings_at_stock_sizes() -> None:
    for name, guidance in (("qwenimage", 4.0), ("wan-1.3b", 5.0), ("wan-14b", 5.0)):
        preset = _resolve(preset=name)
        assert (preset.model, preset.dtype, preset.lora_rank) == (name, "bf16", 4)
        assert (preset.num_steps, preset.noise_level, preset.guidance_scale) == (10, 0.7, guidance)
        assert preset.kl_coef > 0 and preset.train_cfg is True
        assert preset.sde_window_size is None
        samples = preset.sample_batch_size * preset.sample_num_batches_per_epoch
        assert (samples, preset.group_size) == (192, 24)  # the sd3 and flux epochs'
        assert (preset.resolution, preset.num_frames) == (None, None)  # the stock sizes
        assert presets.is_flow(preset)
        assert presets.family(name) == ("qwenimage" if name == "qwenimage" else "wan")
        arch = flow_flops.architecture(preset)
        assert flow_flops.size(arch, preset) == (
            (1024, 1024) if name == "qwenimage" else (480, 832)
        )
        assert flow_flops.frames(arch, preset) == (1 if name == "qwenimage" else 81)
    # Wan2.1's 81 frames are 21 latent frames of 60 x 104: 21 x 30 x 52 tokens per row
    wan = _resolve(preset="wan-1.3b")
    assert flow_flops.latent_shape(flow_flops.architecture(wan), wan) == (1, 16, 21, 60, 104)
    qwen = _resolve(preset="qwenimage")
    assert flow_flops.latent_shape(flow_flops.architecture(qwen), qwen) == (1, 16, 128, 128)
    tiny = {name: _resolve(preset=name) for name in ("tiny-qwenimage", "tiny-wan")}
    assert tiny["tiny-qwenimage"].model == "ddpo-tiny-qwenimage-random"
    assert (tiny["tiny-wan"].model, tiny["tiny-wan"].guidance_scale) == (
        "ddpo-tiny-wan-random",
        5.0,
    )


def test_video_sizes_and_the_flop_only_presets_are_checked() -> None:
    assert presets.parse_size("512") == 512
    assert presets.parse_size("240x416") == (240, 416)
    for bad in ("0", "240x", "a", "1x2x3", "-16x16"):
        with pytest.raises(ValueError, match="resolution must be a side or HxW"):
            presets.parse_size(bad)
    small = _resolve(preset="wan-1.3b", resolution=(240, 416), num_frames=33)
    assert (small.resolution, small.num_frames) == ((240, 416), 33)
    arch = flow_flops.architecture(small)
    assert flow_flops.latent_shape(arch, small) == (1, 16, 9, 30, 52)
    with pytest.raises(ValueError, match=r"num_frames must be 4 k \+ 1"):
        _resolve(preset="wan-14b", num_frames=80)
    with pytest.raises(ValueError, match="--num-frames applies to the video presets"):
        _resolve(preset="qwenimage", num_frames=5)
    odd = _resolve(preset="qwenimage", resolution=1000)
    with pytest.raises(ValueError, match="multiples of 16 per side"):
        flow_flops.size(flow_flops.architecture(odd), odd)
    assert _resolve(preset="qwenimage", sde_window_size=2).sde_window_size == 2
    for name in ("qwenimage", "wan-1.3b", "wan-14b"):
        with pytest.raises(ValueError, match="serves the flops benchmark"):
            presets.model_location(_resolve(preset=name))
    with pytest.raises(ValueError, match="not 'wan'; its preset runs the flops benchmark"):
        presets.prepare(argparse.Namespace(preset="tiny-wan", device="cpu"))


def test_qwenimage_and_wan_widths_fit_together() -> None:
    qwen = flow_models.ARCHITECTURES["qwenimage"]
    ((kind, text, tokens),) = qwen.text_encoders
    assert (kind, tokens) == ("qwen2_5_vl", 34 + 5 + 512)
    assert qwen.transformer["joint_attention_dim"] == text["text_config"]["hidden_size"] == 3584
    assert qwen.transformer["in_channels"] == 4 * qwen.vae["z_dim"] == 64
    assert qwen.transformer["out_channels"] == qwen.vae["z_dim"]
    assert sum(qwen.transformer["axes_dims_rope"]) == qwen.transformer["attention_head_dim"]
    assert text["vision_config"]["out_hidden_size"] == 3584
    for name, width in (("wan-1.3b", 1536), ("wan-14b", 5120)):
        wan = flow_models.ARCHITECTURES[name]
        ((kind, umt5, tokens),) = wan.text_encoders
        assert (kind, umt5, tokens) == ("umt5", flow_models.UMT5_XXL_ENCODER, 512)
        heads, head_dim = (
            wan.transformer["num_attention_heads"],
            wan.transformer["attention_head_dim"],
        )
        assert heads * head_dim == width
        assert wan.transformer["text_dim"] == umt5["d_model"] == 4096
        assert wan.transformer["in_channels"] == wan.vae["z_dim"] == 16
        assert wan.vae == flow_models.QWEN_IMAGE_VAE  # the same causal video VAE layout
    assert flow_models.FLOP_ONLY == ("qwenimage", "wan-1.3b", "wan-14b")


def test_qwenimage_and_wan_architectures_have_the_published_parameter_counts() -> None:
    from diffusers import (
        AutoencoderKLQwenImage,
        AutoencoderKLWan,
        QwenImageTransformer2DModel,
        WanTransformer3DModel,
    )

    def count(module: Any) -> int:
        return sum(p.numel() for p in module.parameters())

    with torch.device("meta"):
        qwen_vl: Any = flow_models.text_encoder("qwen2_5_vl", flow_models.QWEN25_VL_7B)
        counts = {
            "qwen_image": count(QwenImageTransformer2DModel(**flow_models.QWEN_IMAGE_TRANSFORMER)),
            "qwen_image_vae": count(AutoencoderKLQwenImage(**flow_models.QWEN_IMAGE_VAE)),
            "qwen2_5_vl_7b": count(qwen_vl),
            "qwen2_5_vl_7b_language_model": count(qwen_vl.model.language_model),
            "qwen2_5_vl_7b_lm_head": count(qwen_vl.lm_head),
            "qwen2_5_vl_7b_vision": count(qwen_vl.model.visual),
            "wan_1_3b": count(WanTransformer3DModel(**flow_models.WAN21_T2V_1_3B_TRANSFORMER)),
            "wan_14b": count(WanTransformer3DModel(**flow_models.WAN21_T2V_14B_TRANSFORMER)),
            "wan_vae": count(AutoencoderKLWan(**flow_models.WAN_VAE)),
            "umt5_xxl": count(flow_models.text_encoder("umt5", flow_models.UMT5_XXL_ENCODER)),
        }
    # the published figures: Qwen-Image 20.4 B; Qwen2.5-VL-7B's language model 7.07 B without
    # the vision tower (8.29 B in all); Wan2.1 1.3B 1.42 B and 14B 14.3 B; UMT5-XXL's encoder 5.7 B
    assert counts == {
        "qwen_image": 20_430_401_088,
        "qwen_image_vae": 126_892_531,
        "qwen2_5_vl_7b": 8_292_166_656,
        "qwen2_5_vl_7b_language_model": 7_070_619_136,
        "qwen2_5_vl_7b_lm_head": 544_997_376,
        "qwen2_5_vl_7b_vision": 676_550_144,
        "wan_1_3b": 1_418_996_800,
        "wan_14b": 14_288_491_584,
        "wan_vae": 126_892_531,
        "umt5_xxl": 5_680_910_336,
    }
    # the language model, LM head and vision tower are the whole encoder
    parts = ("language_model", "lm_head", "vision")
    assert sum(counts[f"qwen2_5_vl_7b_{part}"] for part in parts) == counts["qwen2_5_vl_7b"]


SMALL_VIDEO_VAE: dict[str, Any] = {"base_dim": 8, "num_res_blocks": 1}
SMALL_NEW: dict[str, dict[str, Any]] = {
    "qwenimage": {
        "transformer": {
            "num_layers": 1,
            "attention_head_dim": 16,
            "num_attention_heads": 2,
            "joint_attention_dim": 32,
            "axes_dims_rope": (4, 6, 6),
        },
        "text": {
            "text_config": {
                "vocab_size": 64,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]},
            },
            "vision_config": {
                "depth": 1,
                "hidden_size": 16,
                "intermediate_size": 16,
                "num_heads": 2,
                "out_hidden_size": 32,
                "fullatt_block_indexes": [0],
            },
        },
    },
    "wan": {
        "transformer": {
            "num_attention_heads": 2,
            "attention_head_dim": 12,
            "text_dim": 32,
            "freq_dim": 16,
            "ffn_dim": 48,
            "num_layers": 1,
            "rope_max_seq_len": 32,
        },
        "text": {**SMALL_T5, "vocab_size": 64, "relative_attention_num_buckets": 8},
    },
}


def _small_preset(
    monkeypatch: pytest.MonkeyPatch, name: str, **changes: Any
) -> tuple[presets.Preset, flow_models.FlowArchitecture]:
    """Preset ``name`` at 64x64 (Wan: 9 frames) over its architecture shrunk (same code path)."""
    arch = flow_models.ARCHITECTURES[name]
    small = SMALL_NEW[arch.family]
    ((kind, _, tokens),) = arch.text_encoders
    shrunk = arch._replace(
        transformer={**arch.transformer, **small["transformer"]},
        vae={**arch.vae, **SMALL_VIDEO_VAE},
        text_encoders=((kind, small["text"], tokens),),
    )
    monkeypatch.setitem(flow_models.ARCHITECTURES, name, shrunk)
    frames = {"num_frames": 9} if arch.family == "wan" else {}
    preset = _resolve(preset=name, resolution=64, **frames)
    return dataclasses.replace(preset, **changes), shrunk


@pytest.mark.parametrize("name", ["qwenimage", "wan-1.3b"])
def test_meta_count_of_small_qwenimage_and_wan_configs(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    preset, arch = _small_preset(monkeypatch, name)
    counts = flow_flops.flow_flops(preset)
    transformer, vae = flow_flops._modules(arch)  # what was counted: shapes only
    assert {p.device.type for p in (*transformer.parameters(), *vae.parameters())} == {"meta"}
    wan = arch.family == "wan"
    # 64x64: 8x8 latents, 4x4 tokens per frame; Wan's 9 frames: 3 latent frames
    assert counts["image_tokens"] == (3 if wan else 1) * 16
    assert (counts["sample_rows"], counts["train_rows"]) == (2, 2)
    # true CFG is exactly a second row: the unguided count doubles (Wan: a second pass)
    unguided = flow_flops.flow_flops(dataclasses.replace(preset, guidance_scale=1.0))
    assert (unguided["sample_rows"], unguided["train_rows"]) == (1, 1)
    assert counts["sample_forward"] == 2 * unguided["sample_forward"] > 0
    assert counts["kl_reference_forward"] == counts["sample_forward"]
    assert counts["train_forward_backward"] == 2 * unguided["train_forward_backward"]
    assert counts["train_forward_backward"] > counts["sample_forward"]  # forward + backward
    # re-scoring without CFG: one row; no KL term: no reference forward
    off = flow_flops.flow_flops(dataclasses.replace(preset, train_cfg=False, kl_coef=0.0))
    assert off["sample_forward"] == counts["sample_forward"]
    assert off["train_forward_backward"] == unguided["train_forward_backward"]
    assert off["kl_reference_forward"] == 0
    # the VAE decodes every frame; the text encoder's count grows with its tokens
    assert counts["vae_decode"] > 0 and counts["text"] > 0
    if wan:
        one = flow_flops.flow_flops(dataclasses.replace(preset, num_frames=1))
        assert one["image_tokens"] == 16
        assert 2 * one["vae_decode"] < counts["vae_decode"]
        assert one["text"] == counts["text"]
    fewer = arch._replace(text_encoders=((arch.text_encoders[0][0], arch.text_encoders[0][1], 8),))
    assert 0 < flow_flops.text_flops(fewer) < counts["text"]
    budget = flow_flops.epoch_budget(counts, 192, 10, 10)
    assert budget["sampling"] == 192 * (
        10 * counts["sample_forward"] + counts["vae_decode"] + counts["text"]
    )
