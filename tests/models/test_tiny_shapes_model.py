"""The packaged ddpo-tiny-shapes model: files, offline loading, measured quality, training."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from ddpo.models import tiny_shapes_path
from ddpo.models.evaluate_tiny_shapes import chance_accuracy, evaluate, generate, load_pipeline
from ddpo.models.train_tiny_shapes import TrainSettings, main, train


def test_packaged_folder_is_small_and_complete() -> None:
    root = tiny_shapes_path()
    files = [p for p in root.rglob("*") if p.is_file()]
    sizes = {p.relative_to(root).as_posix(): p.stat().st_size for p in files}
    assert sum(sizes.values()) < 10_000_000
    assert max(sizes.values()) < 5_000_000
    for name in (
        "model_index.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "scheduler/scheduler_config.json",
    ):
        assert name in sizes, name
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None]
    assert index["feature_extractor"] == [None, None]
    scheduler = json.loads((root / "scheduler/scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DDIMScheduler"
    assert scheduler["set_alpha_to_one"] is False and scheduler["steps_offset"] == 1
    # v-prediction on a zero-terminal-SNR schedule, sampled from t = 999 (docs/tiny_shapes.md)
    assert scheduler["prediction_type"] == "v_prediction"
    assert scheduler["rescale_betas_zero_snr"] is True
    assert scheduler["timestep_spacing"] == "trailing"
    weights = load_file(root / "unet/diffusion_pytorch_model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values())


@pytest.mark.slow
def test_loads_offline_with_stock_diffusers_and_draws_64px_images() -> None:
    pipe = load_pipeline()
    assert pipe.vae.config.scaling_factor != 1.0
    images = generate(pipe, ["a red circle", "a blue square"], num_inference_steps=4)
    assert images.shape == (2, 3, 64, 64)
    assert bool(torch.isfinite(images).all())
    assert float((images[0] - images[1]).abs().mean()) > 0.02


@pytest.mark.slow
def test_heldout_alignment_accuracy_is_well_above_chance() -> None:
    report, _, _ = evaluate(load_pipeline(), n=48, seed=1)
    # measured on 96 held-out prompts, seed 0 (docs/tiny_shapes.md): accuracy 0.50, colour 0.97,
    # position and background 1.0, shape 0.51 (chance 0.25), reward 0.66 against 0.17 for
    # shuffled prompts; on these 48 (seed 1): accuracy and shape 0.40, colour 1.0. The margins
    # leave room for sampling noise on another seed or platform. The first model, which drew
    # blobs, had shape accuracy 0.29 and accuracy 0.28 on the 96 prompts.
    assert report["colour_accuracy"] >= 0.75
    assert report["position_accuracy"] >= 0.85
    assert report["background_accuracy"] >= 0.85
    assert report["colour_shape_accuracy"] >= 3 * report["chance_colour_shape_accuracy"]
    assert report["accuracy"] >= 100 * report["chance_accuracy"]
    assert report["shape_accuracy"] >= 0.33  # the model draws the named shape, not one blob
    assert report["accuracy"] >= 0.3
    assert report["accuracy"] > report["shuffled_accuracy"] + 0.1
    assert report["reward_mean"] > report["shuffled_reward_mean"] + 0.25


@pytest.mark.slow
def test_prompted_colour_shows_in_the_mean_colour() -> None:
    pipe = load_pipeline()
    colours = {"red": 0, "green": 1, "blue": 2}
    prompts = [
        f"a {c} square in the center on a gray background" for c in colours for _ in range(3)
    ]
    images = generate(pipe, prompts, seed=2)
    center = images[:, :, 20:44, 20:44].mean(dim=(2, 3)).view(3, 3, 3).mean(dim=1)  # (colour, rgb)
    for row, channel in enumerate(colours.values()):
        # the prompted channel is the largest of the three in the image centre
        assert int(center[row].argmax()) == channel, center
    # and it is larger there than in the images of the other colours
    assert bool((center.diagonal() > center.sum(0) / 3).all()), center


@pytest.mark.slow
def test_the_tiny_model_builder_makes_the_packaged_architecture() -> None:
    """One builder: the adapters' tiny-model functions with the training script's settings."""
    from transformers import CLIPTokenizer

    from ddpo.adapters.sd.tiny import sd_v1_ddim_scheduler, tiny_text_encoder, tiny_unet, tiny_vae
    from ddpo.models.train_tiny_shapes import model_config

    root = tiny_shapes_path()
    config = model_config(TrainSettings())

    def public(values: Any) -> dict[str, Any]:
        skip = ("_", "scaling_factor")  # the scaling factor is measured by the training
        return {
            k: v for k, v in json.loads(json.dumps(dict(values))).items() if not k.startswith(skip)
        }

    scheduler: Any = sd_v1_ddim_scheduler(
        prediction_type=config.prediction_type, zero_terminal_snr=config.zero_terminal_snr
    )
    built = {"unet": tiny_unet(config).config, "vae": tiny_vae(config).config}
    for name, values in built.items():
        assert public(values) == public(json.loads((root / name / "config.json").read_text()))
    saved = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    assert public(scheduler.config) == public(saved)
    tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
    text = tiny_text_encoder(config, tokenizer).config.to_dict()
    saved = json.loads((root / "text_encoder" / "config.json").read_text())
    keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
            "max_position_embeddings", "vocab_size", "projection_dim", "eos_token_id")  # fmt: skip
    assert {k: text[k] for k in keys} == {k: saved[k] for k in keys}


def test_chance_accuracy() -> None:
    both = {"colour": "red", "shape": "circle", "position": "left", "background": "blue"}
    assert chance_accuracy([both]) == pytest.approx(1 / (6 * 4 * 5 * 8))
    assert chance_accuracy([{**both, "position": None, "background": None}]) == 1 / 24


_TINY = {
    "vae_steps": 2,
    "vae_batch_size": 2,
    "vae_channels": (8, 8, 8),
    "unet_steps": 2,
    "unet_batch_size": 2,
    "unet_channels": (8, 16, 16),
    "unet_data_size": 8,
    "text_hidden_size": 16,
    "log_every": 1,
    "save_every": 0,
    "warmup_steps": 1,
}


@pytest.mark.slow
def test_training_script_is_reproducible_and_saves_a_loadable_pipeline(tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    train(TrainSettings(**_TINY), tmp_path / "a")  # type: ignore[arg-type]
    args = [f"--{k.replace('_', '-')}" for k in _TINY]
    argv = ["--out", str(tmp_path / "b")]
    for flag, value in zip(args, _TINY.values(), strict=True):
        argv += [flag, *(map(str, value) if isinstance(value, tuple) else [str(value)])]
    main(argv)
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        first, second = load_file(tmp_path / "a" / part), load_file(tmp_path / "b" / part)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first)
    log = json.loads((tmp_path / "a/training_log.json").read_text())
    assert log["settings"]["unet_steps"] == 2 and len(log["unet_losses"]) == 2
    assert len(log["vae_losses"]) == 2 and log["wall_seconds"]["total"] > 0
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "a")
    assert pipe.unet.config.block_out_channels == [8, 16, 16]


@pytest.mark.slow
def test_init_from_continues_a_run_and_keeps_its_log(tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    train(TrainSettings(**_TINY), tmp_path / "a")  # type: ignore[arg-type]
    first = json.loads((tmp_path / "a/training_log.json").read_text())
    more = {**_TINY, "seed": 1, "unet_steps": 3, "init_from": str(tmp_path / "a")}
    train(TrainSettings(**more), tmp_path / "b")  # type: ignore[arg-type]
    log = json.loads((tmp_path / "b/training_log.json").read_text())
    assert log["init_log"] == first and log["vae_losses"] == []
    assert len(log["unet_losses"]) == 3 and log["settings"]["seed"] == 1
    assert log["wall_seconds"]["all_phases"] > first["wall_seconds"]["total"]
    a = AutoencoderKL.from_pretrained(tmp_path / "a" / "vae").state_dict()
    b = AutoencoderKL.from_pretrained(tmp_path / "b" / "vae").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the VAE is kept
    unet_a = load_file(tmp_path / "a/unet/diffusion_pytorch_model.safetensors")
    unet_b = load_file(tmp_path / "b/unet/diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(unet_a[k], unet_b[k]) for k in unet_a)  # the UNet trained on


def test_bad_settings_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unet_steps"):
        train(TrainSettings(unet_steps=0), tmp_path)
    with pytest.raises(ValueError, match="cfg_dropout"):
        train(TrainSettings(cfg_dropout=1.5), tmp_path)
    with pytest.raises(ValueError, match=r"prediction_type must be .* got 'sample'"):
        train(TrainSettings(prediction_type="sample"), tmp_path)
    with pytest.raises(ValueError, match=r"zero_terminal_snr=True needs .*'epsilon'"):
        train(TrainSettings(prediction_type="epsilon"), tmp_path)
    with pytest.raises(ValueError, match=r"init_from .*'a'.* vae_from .*'b'"):
        train(TrainSettings(init_from="a", vae_from="b"), tmp_path)
    assert not any(tmp_path.iterdir())  # refused before anything is written


@pytest.mark.slow
def test_noise_schedule_options_reach_the_saved_scheduler_and_vae_from(tmp_path: Path) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler

    train(TrainSettings(**_TINY), tmp_path / "v")  # type: ignore[arg-type]
    v = DDIMScheduler.from_pretrained(tmp_path / "v" / "scheduler")
    assert v.config.prediction_type == "v_prediction"
    assert v.config.rescale_betas_zero_snr and v.config.timestep_spacing == "trailing"
    assert float(v.alphas_cumprod[-1]) == 0.0
    argv = ["--out", str(tmp_path / "eps"), "--prediction-type", "epsilon",
            "--no-zero-terminal-snr", "--vae-from", str(tmp_path / "v")]  # fmt: skip
    for key, value in _TINY.items():
        values = value if isinstance(value, tuple) else [value]
        argv += [f"--{key.replace('_', '-')}", *map(str, values)]
    main(argv)
    eps = DDIMScheduler.from_pretrained(tmp_path / "eps" / "scheduler")
    assert eps.config.prediction_type == "epsilon" and not eps.config.rescale_betas_zero_snr
    assert eps.config.timestep_spacing == "leading" and float(eps.alphas_cumprod[-1]) > 0
    log = json.loads((tmp_path / "eps/training_log.json").read_text())
    assert log["vae_losses"] == [] and log["settings"]["vae_from"] == str(tmp_path / "v")
    first = AutoencoderKL.from_pretrained(tmp_path / "v" / "vae").state_dict()
    second = AutoencoderKL.from_pretrained(tmp_path / "eps" / "vae").state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.slow
def test_loads_through_the_ddpo_pipeline_by_name() -> None:
    from ddpo.adapters import DefaultDDPOStableDiffusionPipeline
    from ddpo.rewards.alignment import alignment_reward_fn

    pipe = DefaultDDPOStableDiffusionPipeline("ddpo-tiny-shapes")
    prompts = ["a red circle on a white background", "a blue square"]
    out = pipe(
        prompts,
        num_inference_steps=4,
        guidance_scale=3.0,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (2, 3, 64, 64)
    assert out.log_probs.shape == (2, 4) and bool(torch.isfinite(out.log_probs).all())
    rewards, info = alignment_reward_fn(out.images, prompts, [{}, {}])
    assert rewards.shape == (2,) and bool(((rewards >= 0) & (rewards <= 1)).all())
    assert "accuracy" in info
