"""DefaultDDPOStableDiffusionXLPipeline on a tiny random SDXL built from config (no hub): what
is SDXL's own.

Stock diffusers' ``StableDiffusionXLPipeline`` with a DDIM scheduler is the reference: the
micro-conditioning (time ids, guidance rescale), the empty negative prompt with and without
``force_zeros_for_empty_prompt``, a replacement VAE, SDXL's folder checks. What every family
does (stock images, the stock prompt encoding, the reference policy, LoRA and full saves,
gradient checkpointing, the family read from ``model_index.json``) is in
``test_conformance.py``.
"""

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline

from ddpo import DefaultDDPOStableDiffusionXLPipeline
from ddpo.adapters.sd.tiny import TinyModelConfig, tiny_vae
from ddpo.adapters.sdxl.tiny import TinySDXLConfig, save_sdxl_pipeline, tiny_sdxl_components

pytestmark = pytest.mark.slow

PROMPTS = ["a red circle", "a blue square"]


def stock_pipeline(folder: Path) -> Any:
    stock = StableDiffusionXLPipeline.from_pretrained(folder)
    stock.scheduler = DDIMScheduler.from_config(stock.scheduler.config)
    stock.set_progress_bar_config(disable=True)
    return stock


def test_micro_conditioning_and_guidance_rescale_match_stock(sdxl_path: Path) -> None:
    ours = DefaultDDPOStableDiffusionXLPipeline(
        sdxl_path,
        original_size=(128, 96),
        crops_coords_top_left=(8, 4),
        target_size=(64, 64),
        guidance_rescale=0.7,
    )
    ours.set_progress_bar_config(disable=True)
    stock = stock_pipeline(sdxl_path)
    extra = {
        "original_size": (128, 96),
        "crops_coords_top_left": (8, 4),
        "target_size": (64, 64),
        "guidance_rescale": 0.7,
    }
    mine = ours(PROMPTS, num_inference_steps=3, guidance_scale=6.0, eta=1.0, output_type="pt",
                generator=torch.Generator().manual_seed(5))  # fmt: skip
    theirs = stock(PROMPTS, num_inference_steps=3, guidance_scale=6.0, eta=1.0, output_type="pt",
                   generator=torch.Generator().manual_seed(5), **extra)  # fmt: skip
    torch.testing.assert_close(mine.images, theirs.images, atol=2e-5, rtol=0)
    # the conditioning really differs from the defaults' (the check above is not vacuous)
    plain = stock(PROMPTS, num_inference_steps=3, guidance_scale=6.0, eta=1.0, output_type="pt",
                  generator=torch.Generator().manual_seed(5))  # fmt: skip
    assert not torch.allclose(plain.images, theirs.images, atol=1e-4)


def test_the_empty_negative_prompt_is_zeros_only_with_force_zeros(
    sdxl_policy: Any, tmp_path: Path
) -> None:
    # the tiny SDXL sets force_zeros_for_empty_prompt, as SDXL base: zeros (as diffusers)
    zeros = sdxl_policy.encode(["a cat"], "")
    assert sdxl_policy.pipeline.config.force_zeros_for_empty_prompt
    assert torch.count_nonzero(zeros["negative_prompt_embeds"]) == 0
    assert torch.count_nonzero(zeros["negative_pooled_prompt_embeds"]) == 0
    # without it, the empty prompt is encoded
    config = TinySDXLConfig(force_zeros_for_empty_prompt=False)
    save_sdxl_pipeline(tiny_sdxl_components(0, config=config), tmp_path)
    pipe = DefaultDDPOStableDiffusionXLPipeline(tmp_path)
    cond = pipe.encode(["a cat"], "")
    empty = pipe.encode([""], "")
    torch.testing.assert_close(cond["negative_prompt_embeds"], empty["prompt_embeds"])
    assert torch.count_nonzero(cond["negative_prompt_embeds"]) > 0


def test_replacement_vae_and_float32_decoding(sdxl_path: Path, tmp_path: Path) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(123)
        vae = tiny_vae(TinyModelConfig())
    vae.register_to_config(force_upcast=True)
    vae.save_pretrained(tmp_path / "vae-fix")
    pipe = DefaultDDPOStableDiffusionXLPipeline(sdxl_path, vae=tmp_path / "vae-fix")
    loaded = AutoencoderKL.from_pretrained(tmp_path / "vae-fix")
    for (name, a), (_, b) in zip(
        pipe.vae.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    # half-precision weights: the UNet stays in float16, the VAE (force_upcast) in float32
    half = DefaultDDPOStableDiffusionXLPipeline(
        sdxl_path, vae=tmp_path / "vae-fix", torch_dtype=torch.float16
    )
    assert half.vae.dtype == torch.float32
    assert next(p for n, p in half.unet.named_parameters() if "lora" not in n).dtype == (
        torch.float16
    )
    with pytest.raises(ValueError, match="vae="):
        DefaultDDPOStableDiffusionXLPipeline(sdxl_path, vae=tmp_path / "nowhere" / "vae")


def _edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_wrong_folders_get_clear_errors(sdxl_path: Path, tmp_path: Path) -> None:
    refiner = tmp_path / "refiner"
    shutil.copytree(sdxl_path, refiner)
    _edit_json(
        refiner / "model_index.json",
        _class_name="StableDiffusionXLImg2ImgPipeline",
        text_encoder=[None, None],
        tokenizer=[None, None],
    )
    with pytest.raises(ValueError, match="refiner"):
        DefaultDDPOStableDiffusionXLPipeline(refiner)
    mismatched = tmp_path / "mismatched"
    shutil.copytree(sdxl_path, mismatched)
    _edit_json(mismatched / "tokenizer_2" / "tokenizer_config.json", model_max_length=64)
    with pytest.raises(ValueError, match="tokenizer and tokenizer_2 pad to different lengths"):
        DefaultDDPOStableDiffusionXLPipeline(mismatched)
    widths = tmp_path / "widths"
    shutil.copytree(sdxl_path, widths)
    _edit_json(widths / "unet" / "config.json", cross_attention_dim=48)
    with pytest.raises(ValueError, match="cross_attention_dim=48"):
        DefaultDDPOStableDiffusionXLPipeline(widths)
    with pytest.raises(ValueError, match="resolution"):
        DefaultDDPOStableDiffusionXLPipeline(sdxl_path, resolution=60)


def test_resolution_sets_the_image_size_and_time_ids(sdxl_path: Path) -> None:
    pipe = DefaultDDPOStableDiffusionXLPipeline(sdxl_path, resolution=(32, 48))
    cond = pipe.encode(PROMPTS, "")
    assert cond["add_time_ids"][0].tolist() == [32, 48, 0, 0, 32, 48]
    out = pipe.rollout(cond, num_steps=2, guidance_scale=5.0,
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.images.shape == (2, 3, 32, 48) and out.latents.shape == (2, 3, 4, 4, 6)
