"""The flow presets (``sd3``, ``flux``, ``tiny-sd3``, ``tiny-flux``): their settings, the full-size
architectures against the published parameter counts (on the ``meta`` device), their folder
builder, the epoch budget's arithmetic against a count written out here, and the ``meta``-device
FLOP count against a real, counted sampling call of the same policy."""

import argparse
import sys
from pathlib import Path

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
    from ddpo.adapters.sd3.tiny import TINY_SD3_NAME

    for name in (TINY_SD3_NAME, TINY_FLUX_NAME):
        assert flow_models.FAMILY_OF_MODEL[name] == model_family(name).name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
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
    prompts_encoded = 2 if name == "tiny-sd3" else 1  # SD3 also encodes the negative prompt
    expected = steps * counts["sample_forward"] + counts["vae_decode"]
    expected += prompts_encoded * counts["text"]
    assert real == pytest.approx(expected, rel=1e-3)
    assert counts["sample_rows"] == (2 if name == "tiny-sd3" else 1)  # CFG doubling: SD3 only
    # SD3 re-scores with CFG, a doubled batch as when sampling; FLUX never doubles
    assert counts["train_rows"] == counts["sample_rows"]
    assert counts["kl_reference_forward"] > 0  # kl_coef > 0
