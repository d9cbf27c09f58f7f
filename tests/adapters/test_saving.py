"""Saving and loading of the SD pipeline: LoRA folders from a built-in name or trained elsewhere,
a LoRA folder into full training, TRL's accelerate checkpoint hooks, the README's snippet. What
every family does (LoRA and full saves load in stock diffusers and in ours) is in
``test_conformance.py``."""

import json
from pathlib import Path

import pytest
import torch

from ddpo.adapters import DefaultDDPOStableDiffusionPipeline

pytestmark = pytest.mark.slow

PROMPTS = ["a red circle", "a photo of a cat"]
KWARGS = {"num_inference_steps": 5, "guidance_scale": 5.0, "eta": 1.0, "output_type": "pt"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def _images(pipe, seed: int = 0) -> torch.Tensor:  # type: ignore[no-untyped-def]
    out = pipe(PROMPTS, generator=torch.Generator().manual_seed(seed), **KWARGS)
    images: torch.Tensor = out.images
    return images


def _stock(folder: Path):  # type: ignore[no-untyped-def]
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _no_pickles(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES]


@pytest.fixture(scope="module")
def tuned_images(tuned_lora_pipeline) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return _images(tuned_lora_pipeline)


def test_tuned_adapters_change_the_images(tuned_images, lora_pipeline) -> None:  # type: ignore[no-untyped-def]
    """Guards the round trips below: a lost LoRA would be visible."""
    assert (tuned_images - _images(lora_pipeline)).abs().max() > 0.05


def test_lora_folder_from_a_builtin_name_records_the_name(
    use_tiny_cache: Path, tmp_path: Path, perturb
) -> None:  # type: ignore[no-untyped-def]
    pipe = DefaultDDPOStableDiffusionPipeline("ddpo-tiny-random")
    pipe.set_progress_bar_config(disable=True)
    perturb(pipe, seed=5, scale=0.1)
    folder = pipe.save_lora_weights(tmp_path / "lora")
    record = json.loads((folder / "ddpo_base_model.json").read_text())
    assert record["pretrained_model_name"] == "ddpo-tiny-random"
    loaded = DefaultDDPOStableDiffusionPipeline(folder)
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(_images(loaded), _images(pipe), atol=1e-6, rtol=0)


def test_lora_folder_into_full_unet_training(
    tuned_lora_pipeline, tuned_images, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    folder = tuned_lora_pipeline.save_lora_weights(tmp_path / "lora")
    full = DefaultDDPOStableDiffusionPipeline(folder, use_lora=False)
    full.set_progress_bar_config(disable=True)
    assert not any("lora_" in n for n, _ in full.unet.named_parameters())
    torch.testing.assert_close(_images(full), tuned_images, atol=1e-3, rtol=0)


@pytest.mark.parametrize("use_lora", [True, False])
def test_checkpoint_hooks_round_trip(
    tiny_path: Path, tmp_path: Path, perturb, use_lora: bool
) -> None:  # type: ignore[no-untyped-def]
    trained = DefaultDDPOStableDiffusionPipeline(tiny_path, use_lora=use_lora)
    perturb(trained, seed=4, scale=0.05)
    models: list[object] = [torch.nn.Linear(2, 2), trained.unet]
    weights: list[object] = [{"a": 1}, {"unet": "state"}]
    trained.save_checkpoint(models, weights, str(tmp_path))
    assert weights == [{"a": 1}]  # the UNet's entry popped, as accelerate expects
    _no_pickles(tmp_path)
    if use_lora:
        assert (tmp_path / "pytorch_lora_weights.safetensors").is_file()
    else:
        assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()

    fresh = DefaultDDPOStableDiffusionPipeline(tiny_path, use_lora=use_lora)
    before = fresh.trainable_parameters()
    models = [torch.nn.Linear(2, 2), fresh.unet]
    fresh.load_checkpoint(models, str(tmp_path))
    assert len(models) == 1 and isinstance(models[0], torch.nn.Linear)
    loaded, expected = fresh.trainable_parameters(), trained.trainable_parameters()
    assert set(loaded) == set(expected) == set(before)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert all(p.dtype == torch.float32 for p in loaded.values())


def test_checkpoint_hooks_with_accelerate(tiny_path: Path, tmp_path: Path, perturb) -> None:  # type: ignore[no-untyped-def]
    from accelerate import Accelerator

    def run(pipe):  # type: ignore[no-untyped-def]
        accelerator = Accelerator(cpu=True, project_dir=str(tmp_path))
        accelerator.register_save_state_pre_hook(pipe.save_checkpoint)
        accelerator.register_load_state_pre_hook(pipe.load_checkpoint)
        params = list(pipe.trainable_parameters().values())
        unet, _optimizer = accelerator.prepare(pipe.unet, torch.optim.AdamW(params, lr=1e-3))
        return accelerator, unet

    trained = DefaultDDPOStableDiffusionPipeline(tiny_path)
    perturb(trained, seed=6, scale=0.05)
    accelerator, _ = run(trained)
    accelerator.save_state(str(tmp_path / "ckpt"))
    assert (tmp_path / "ckpt" / "pytorch_lora_weights.safetensors").is_file()
    assert not (tmp_path / "ckpt" / "model.safetensors").exists()  # accelerate skipped the UNet

    fresh = DefaultDDPOStableDiffusionPipeline(tiny_path)
    accelerator, _ = run(fresh)
    accelerator.load_state(str(tmp_path / "ckpt"))
    loaded, expected = fresh.trainable_parameters(), trained.trainable_parameters()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_use_the_fine_tuned_model_readme_flow(
    tuned_lora_pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The README's "Use a fine-tuned model" snippet, run as written on the tiny model."""
    tuned_lora_pipeline.save_pretrained(tmp_path / "ddpo-finetuned")
    monkeypatch.chdir(tmp_path)
    # --- README snippet start ---
    import torch
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained("ddpo-finetuned")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    pipeline = pipeline.to(device, dtype)

    prompts = ["a photo of a cat", "a red circle"]
    images = pipeline(prompts, num_inference_steps=20, guidance_scale=5.0).images
    for i, image in enumerate(images):
        image.save(f"sample_{i}.png")
    # --- README snippet end ---
    import numpy as np
    from PIL import Image

    for i in range(2):
        with Image.open(tmp_path / f"sample_{i}.png") as saved:
            assert saved.size == (64, 64)
            pixels = np.asarray(saved.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 10  # an image, not a blank


def test_lora_trained_elsewhere_with_other_targets_loads(tiny_path: Path, tmp_path: Path) -> None:
    """LoRA weights saved by stock diffusers (rank 2 on to_q/to_v only) load with their config."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    from ddpo.adapters.common.sources import write_base_model

    stock = _stock(tiny_path)
    config = LoraConfig(r=2, lora_alpha=3, target_modules=["to_q", "to_v"])
    stock.unet.add_adapter(config)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, param in sorted(stock.unet.named_parameters()):
            if "lora_" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    expected = stock(PROMPTS, generator=torch.Generator().manual_seed(0), **KWARGS).images
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(stock.unet))
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=layers, unet_lora_adapter_metadata=config.to_dict()
    )
    write_base_model(tmp_path, str(tiny_path), "main")
    ours = DefaultDDPOStableDiffusionPipeline(tmp_path)
    ours.set_progress_bar_config(disable=True)
    assert (ours.lora_rank, ours.lora_alpha) == (2, 3.0)
    assert all(".to_q." in n or ".to_v." in n for n in ours.trainable_parameters())
    torch.testing.assert_close(_images(ours), expected, atol=1e-5, rtol=0)


def test_lora_folder_without_a_base_is_an_error(tuned_lora_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tuned_lora_pipeline.save_lora_weights(tmp_path / "lora")
    (folder / "ddpo_base_model.json").unlink()
    with pytest.raises(ValueError, match=r"no model_index\.json nor ddpo_base_model\.json"):
        DefaultDDPOStableDiffusionPipeline(folder)
