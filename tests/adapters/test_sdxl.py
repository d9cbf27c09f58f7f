"""DefaultDDPOStableDiffusionXLPipeline on a tiny random SDXL built from config (no hub).

Stock diffusers' ``StableDiffusionXLPipeline`` with a DDIM scheduler is the reference: the same
prompt encoding, time ids, images and trajectories; our LoRA and full saves load in it.
"""

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline

from ddpo import DefaultDDPOStableDiffusionPipeline, DefaultDDPOStableDiffusionXLPipeline
from ddpo.adapters import load_policy, model_family
from ddpo.adapters.sd.tiny import TinyModelConfig, tiny_vae
from ddpo.adapters.sdxl.tiny import TinySDXLConfig, save_sdxl_pipeline, tiny_sdxl_components

pytestmark = pytest.mark.slow

PROMPTS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def sdxl_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-sdxl")
    save_sdxl_pipeline(tiny_sdxl_components(0), folder)
    return folder


@pytest.fixture(scope="module")
def ours(sdxl_path: Path) -> DefaultDDPOStableDiffusionXLPipeline:
    pipe = DefaultDDPOStableDiffusionXLPipeline(sdxl_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock_pipeline(folder: Path) -> Any:
    stock = StableDiffusionXLPipeline.from_pretrained(folder)
    stock.scheduler = DDIMScheduler.from_config(stock.scheduler.config)
    stock.set_progress_bar_config(disable=True)
    return stock


def perturb_lora(pipe: Any, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(pipe.trainable_parameters().items()):
            param.add_(0.1 * torch.randn(param.shape, generator=gen))


def sample_pair(ours: Any, stock: Any, **kwargs: Any) -> tuple[Any, Any]:
    common = {"num_inference_steps": 4, "eta": 1.0, "output_type": "pt"} | kwargs
    mine = ours(PROMPTS, generator=torch.Generator().manual_seed(3), **common)
    theirs = stock(PROMPTS, generator=torch.Generator().manual_seed(3), **common)
    return mine, theirs


@pytest.mark.parametrize(
    ("guidance_scale", "negative"), [(1.0, ""), (5.0, ""), (5.0, "blue"), (7.0, "a star")]
)
def test_same_images_as_stock_sdxl(
    ours: Any, sdxl_path: Path, guidance_scale: float, negative: str
) -> None:
    stock = stock_pipeline(sdxl_path)
    extra = {"negative_prompt": negative} if negative else {}
    mine = ours(
        PROMPTS,
        num_inference_steps=4,
        guidance_scale=guidance_scale,
        eta=1.0,
        generator=torch.Generator().manual_seed(3),
        output_type="pt",
        **extra,
    )
    theirs = stock(
        PROMPTS,
        num_inference_steps=4,
        guidance_scale=guidance_scale,
        eta=1.0,
        generator=torch.Generator().manual_seed(3),
        output_type="pt",
        **({"negative_prompt": [negative] * 2} if negative else {}),
    )
    assert mine.latents.shape == (2, 5, 4, 8, 8) and mine.log_probs.shape == (2, 4)
    torch.testing.assert_close(mine.images, theirs.images, atol=2e-5, rtol=0)
    assert float((mine.images - 0.5).abs().mean()) > 0.01  # not a blank image


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


def test_encoding_and_time_ids_equal_diffusers(ours: Any, sdxl_path: Path) -> None:
    stock = stock_pipeline(sdxl_path)
    cond = ours.encode(PROMPTS, "")
    embeds, negative, pooled, negative_pooled = stock.encode_prompt(
        PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
    )
    torch.testing.assert_close(cond["prompt_embeds"], embeds)
    torch.testing.assert_close(cond["pooled_prompt_embeds"], pooled)
    assert torch.count_nonzero(cond["negative_prompt_embeds"]) == 0  # force_zeros_for_empty
    torch.testing.assert_close(cond["negative_prompt_embeds"], negative)
    torch.testing.assert_close(cond["negative_pooled_prompt_embeds"], negative_pooled)
    ids = stock._get_add_time_ids(
        (64, 64), (0, 0), (64, 64), dtype=embeds.dtype, text_encoder_projection_dim=32
    )
    torch.testing.assert_close(cond["add_time_ids"], ids.expand(2, -1))
    # a real negative prompt is encoded, as diffusers encodes it
    cond = ours.encode(PROMPTS, "blue")
    _, negative, _, negative_pooled = stock.encode_prompt(
        PROMPTS, device="cpu", do_classifier_free_guidance=True, negative_prompt=["blue"] * 2
    )
    torch.testing.assert_close(cond["negative_prompt_embeds"], negative)
    torch.testing.assert_close(cond["negative_pooled_prompt_embeds"], negative_pooled)


def test_empty_negative_prompt_is_encoded_without_force_zeros(tmp_path: Path) -> None:
    config = TinySDXLConfig(force_zeros_for_empty_prompt=False)
    save_sdxl_pipeline(tiny_sdxl_components(0, config=config), tmp_path)
    pipe = DefaultDDPOStableDiffusionXLPipeline(tmp_path)
    cond = pipe.encode(["a cat"], "")
    empty = pipe.encode([""], "")
    torch.testing.assert_close(cond["negative_prompt_embeds"], empty["prompt_embeds"])
    assert torch.count_nonzero(cond["negative_prompt_embeds"]) > 0


@pytest.mark.parametrize("guided", [False, True])
def test_rescoring_the_trajectory_gives_ratio_one(ours: Any, guided: bool) -> None:
    cond = ours.encode(PROMPTS, "")
    out = ours.rollout(
        cond, num_steps=4, guidance_scale=5.0 if guided else 1.0,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    for j in range(4):
        with torch.no_grad():
            score = ours.score(
                cond, out.latents[:, j], out.latents[:, j + 1], out.schedule[j].expand(2, -1),
                cfg=guided,
            )  # fmt: skip
        torch.testing.assert_close(score.log_prob, out.log_probs[:, j], atol=1e-4, rtol=0)


def test_lora_weights_load_in_stock_sdxl_and_draw_the_same_images(
    sdxl_path: Path, tmp_path: Path
) -> None:
    pipe = DefaultDDPOStableDiffusionXLPipeline(sdxl_path, lora_rank=2)
    pipe.set_progress_bar_config(disable=True)
    perturb_lora(pipe)
    pipe.save_lora_weights(tmp_path / "lora")
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    stock = stock_pipeline(sdxl_path)
    before = stock(PROMPTS, num_inference_steps=3, eta=1.0, output_type="pt",
                   generator=torch.Generator().manual_seed(1))  # fmt: skip
    stock.load_lora_weights(tmp_path / "lora")
    mine, theirs = sample_pair(pipe, stock, num_inference_steps=3, guidance_scale=5.0)
    torch.testing.assert_close(mine.images, theirs.images, atol=2e-5, rtol=0)
    assert not torch.allclose(before.images, theirs.images, atol=1e-3)  # the LoRA acts
    # and our class loads the LoRA folder on top of its recorded base
    again = DefaultDDPOStableDiffusionXLPipeline(tmp_path / "lora")
    again.set_progress_bar_config(disable=True)
    assert again.lora_rank == 2
    mine_again, _ = sample_pair(again, stock, num_inference_steps=3, guidance_scale=5.0)
    torch.testing.assert_close(mine_again.images, mine.images)


@pytest.mark.parametrize("use_lora", [True, False])
def test_save_pretrained_loads_in_stock_sdxl(
    sdxl_path: Path, tmp_path: Path, use_lora: bool
) -> None:
    pipe = DefaultDDPOStableDiffusionXLPipeline(sdxl_path, use_lora=use_lora)
    pipe.set_progress_bar_config(disable=True)
    perturb_lora(pipe) if use_lora else _perturb_full(pipe)
    pipe.save_pretrained(tmp_path / "final")
    index = json.loads((tmp_path / "final" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    stock = StableDiffusionXLPipeline.from_pretrained(tmp_path / "final")
    stock.set_progress_bar_config(disable=True)
    assert isinstance(stock.scheduler, DDIMScheduler)
    mine, theirs = sample_pair(pipe, stock, num_inference_steps=3, guidance_scale=4.0)
    torch.testing.assert_close(mine.images, theirs.images, atol=5e-5, rtol=0)
    original = stock_pipeline(sdxl_path)
    _, base = sample_pair(pipe, original, num_inference_steps=3, guidance_scale=4.0)
    assert not torch.allclose(base.images, theirs.images, atol=1e-3)  # fine-tuned weights saved


def _perturb_full(pipe: Any) -> None:
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "attn" in name and name.endswith("weight"):
                param.mul_(1.5)


def test_full_unet_reference_policy_is_the_frozen_copy(sdxl_path: Path) -> None:
    pipe = DefaultDDPOStableDiffusionXLPipeline(sdxl_path, use_lora=False)
    cond = pipe.encode(PROMPTS, "")
    out = pipe.rollout(cond, num_steps=3, guidance_scale=5.0,
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    args = (cond, out.latents[:, 0], out.latents[:, 1], out.schedule[0].expand(2, -1))
    with torch.no_grad():
        before = pipe.score(*args).mean
        _perturb_full(pipe)
        after = pipe.score(*args).mean
        with pipe.reference_policy():
            reference = pipe.score(*args).mean
    assert not torch.allclose(before, after)
    torch.testing.assert_close(reference, before)


def test_lora_reference_policy_disables_the_adapters(sdxl_path: Path) -> None:
    pipe = DefaultDDPOStableDiffusionXLPipeline(sdxl_path)
    cond = pipe.encode(PROMPTS[:1], "")
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    # [t, t_prev, eta, guidance_scale]: the second of 4 steps, guided
    rows = torch.tensor([[501.0, 251.0, 1.0, 5.0]], dtype=torch.float64)
    args = (cond, x, x, rows)
    with torch.no_grad():
        base = pipe.score(*args).mean
        perturb_lora(pipe)
        tuned = pipe.score(*args).mean
        with pipe.reference_policy():
            reference = pipe.score(*args).mean
    assert not torch.allclose(base, tuned)
    torch.testing.assert_close(reference, base)


def test_gradient_checkpointing_gives_the_same_gradients(sdxl_path: Path) -> None:
    grads = []
    for checkpointing in (False, True):
        pipe = DefaultDDPOStableDiffusionXLPipeline(sdxl_path)
        pipe.prepare(torch.device("cpu"), gradient_checkpointing=checkpointing)
        pipe.unet.train()
        assert pipe.unet.is_gradient_checkpointing == checkpointing
        cond = pipe.encode(PROMPTS, "")
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        rows = torch.tensor([[501.0, 251.0, 1.0, 5.0], [251.0, 1.0, 1.0, 5.0]], dtype=torch.float64)
        score = pipe.score(cond, x, 0.9 * x, rows)
        score.log_prob.sum().backward()
        grads.append({n: p.grad.clone() for n, p in pipe.trainable_parameters().items()})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


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


def test_wrong_folders_get_clear_errors(sdxl_path: Path, tmp_path: Path, tiny_path: Path) -> None:
    with pytest.raises(ValueError, match=r"Stable Diffusion 1\.x/2\.x.*StableDiffusionPipeline"):
        DefaultDDPOStableDiffusionXLPipeline(tiny_path)
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


def test_the_family_is_read_from_model_index(
    sdxl_path: Path, tiny_path: Path, tmp_path: Path
) -> None:
    assert model_family(sdxl_path).name == "sdxl"
    assert model_family(tiny_path).name == "sd"
    assert isinstance(load_policy(sdxl_path, resolution=32), DefaultDDPOStableDiffusionXLPipeline)
    sd = load_policy(tiny_path, use_lora=False)
    assert isinstance(sd, DefaultDDPOStableDiffusionPipeline) and not sd.use_lora
    other = tmp_path / "sd3"
    shutil.copytree(sdxl_path, other)
    _edit_json(other / "model_index.json", _class_name="KandinskyV22Pipeline")
    with pytest.raises(ValueError, match="'KandinskyV22Pipeline' model; ddpo trains"):
        load_policy(other)


def test_resolution_sets_the_image_size_and_time_ids(sdxl_path: Path) -> None:
    pipe = DefaultDDPOStableDiffusionXLPipeline(sdxl_path, resolution=(32, 48))
    cond = pipe.encode(PROMPTS, "")
    assert cond["add_time_ids"][0].tolist() == [32, 48, 0, 0, 32, 48]
    out = pipe.rollout(cond, num_steps=2, guidance_scale=5.0,
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.images.shape == (2, 3, 32, 48) and out.latents.shape == (2, 3, 4, 4, 6)
