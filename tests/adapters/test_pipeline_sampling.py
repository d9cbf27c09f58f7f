"""Sampling with the default SD pipeline through TRL's interface: the ratio-1 invariant of
``score_transitions``, per-image generators, per-prompt negatives, output types, the scheduler
step, and zero terminal SNR. What every family does (stock images, the same seed twice) is in
``test_conformance.py``."""

import numpy as np
import pytest
import torch
from PIL import Image

from ddpo.adapters import DDPOPipelineOutput

pytestmark = pytest.mark.slow

PROMPTS = ["a red circle", "a photo of a blue cat", "two green dogs", "a star"]


def _rescore(pipe, out, prompts, guidance_scale, eta=1.0):  # type: ignore[no-untyped-def]
    """Log-probs of every stored transition under the current weights, ``(batch, T)``."""
    batch, steps = out.log_probs.shape
    prompt_embeds = pipe.encode_prompt(prompts)
    negative = pipe.encode_prompt([""] * batch) if guidance_scale > 1 else None
    timesteps = pipe.scheduler.timesteps
    with torch.no_grad():
        scored = [
            pipe.score_transitions(
                out.latents[:, j],
                out.latents[:, j + 1],
                timesteps[j].expand(batch),
                prompt_embeds,
                negative,
                guidance_scale=guidance_scale,
                eta=eta,
            ).log_prob
            for j in range(steps)
        ]
    return torch.stack(scored, dim=1)


@pytest.mark.parametrize("batch", [1, 3, 4])
@pytest.mark.parametrize("guidance_scale", [1.0, 5.0])
@pytest.mark.parametrize("which", ["lora_pipeline", "full_pipeline"])
def test_rescoring_right_after_sampling_gives_ratio_one(
    request: pytest.FixtureRequest, which: str, batch: int, guidance_scale: float
) -> None:
    pipe = request.getfixturevalue(which)
    prompts = PROMPTS[:batch]
    out = pipe(
        prompts,
        num_inference_steps=6,
        guidance_scale=guidance_scale,
        eta=1.0,
        generator=torch.Generator().manual_seed(batch),
        output_type="pt",
    )
    new = _rescore(pipe, out, prompts, guidance_scale)
    ratio = torch.exp(new - out.log_probs)
    assert out.log_probs.dtype == torch.float32
    assert torch.isfinite(out.log_probs).all()
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)


def test_rescoring_in_one_batch_over_steps_matches(lora_pipeline) -> None:  # type: ignore[no-untyped-def]
    """The trainer scores (sample, step) pairs mixed in one batch; that gives the same values."""
    pipe = lora_pipeline
    out = pipe(PROMPTS[:2], num_inference_steps=4, guidance_scale=5.0, output_type="latent",
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    steps = out.log_probs.shape[1]
    rows = torch.arange(2).repeat_interleave(steps)
    cols = torch.arange(steps).repeat(2)
    embeds = pipe.encode_prompt(PROMPTS[:2])[rows]
    negative = pipe.encode_prompt(["", ""])[rows]
    with torch.no_grad():
        scored = pipe.score_transitions(
            out.latents[rows, cols],
            out.latents[rows, cols + 1],
            pipe.scheduler.timesteps[cols],
            embeds,
            negative,
            guidance_scale=5.0,
            eta=1.0,
        )
    torch.testing.assert_close(scored.log_prob, out.log_probs[rows, cols], atol=1e-5, rtol=0)


def test_trajectory_shapes_and_output_types(lora_pipeline) -> None:  # type: ignore[no-untyped-def]
    pipe = lora_pipeline
    kwargs = {"num_inference_steps": 5, "guidance_scale": 3.0}
    pil = pipe(PROMPTS[:2], generator=torch.Generator().manual_seed(0), **kwargs)
    pt = pipe(PROMPTS[:2], generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs)
    arr = pipe(PROMPTS[:2], generator=torch.Generator().manual_seed(0), output_type="np", **kwargs)
    assert isinstance(pil, DDPOPipelineOutput)
    assert pil.latents.shape == (2, 6, 4, 8, 8)
    assert pil.log_probs.shape == (2, 5)
    assert len(pipe.scheduler.timesteps) == 5
    assert all(isinstance(im, Image.Image) and im.size == (64, 64) for im in pil.images)
    assert pt.images.shape == (2, 3, 64, 64) and pt.images.dtype == torch.float32
    assert float(pt.images.min()) >= 0.0 and float(pt.images.max()) <= 1.0
    assert isinstance(arr.images, np.ndarray) and arr.images.shape == (2, 64, 64, 3)
    np.testing.assert_allclose(arr.images, pt.images.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    expected = (pt.images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(pil.images[0]), expected)


def test_generator_list_gives_per_image_reproducibility(lora_pipeline) -> None:  # type: ignore[no-untyped-def]
    """With one generator per image, an image does not depend on its batch-mates."""
    pipe = lora_pipeline
    both = pipe(PROMPTS[:2], num_inference_steps=3, guidance_scale=5.0, output_type="latent",
                generator=[torch.Generator().manual_seed(s) for s in (3, 4)])  # fmt: skip
    alone = pipe(PROMPTS[1:2], num_inference_steps=3, guidance_scale=5.0, output_type="latent",
                 generator=[torch.Generator().manual_seed(4)])  # fmt: skip
    torch.testing.assert_close(both.latents[1:], alone.latents, atol=1e-4, rtol=0)
    torch.testing.assert_close(both.log_probs[1:], alone.log_probs, atol=1e-4, rtol=0)


def test_per_prompt_negative_prompts_equal_stock_diffusers(lora_pipeline, tiny_path) -> None:  # type: ignore[no-untyped-def]
    """A negative prompt per prompt (TRL's pipeline call takes a list, as diffusers'): the stock
    images for the same seed. One negative for all, and the other families, are in
    test_conformance.py."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    stock = StableDiffusionPipeline.from_pretrained(tiny_path, safety_checker=None)
    stock.scheduler = DDIMScheduler.from_config(stock.scheduler.config)
    stock.set_progress_bar_config(disable=True)
    kwargs = {"num_inference_steps": 5, "guidance_scale": 5.0, "eta": 1.0,
              "output_type": "pt", "negative_prompt": ["", "a cat"]}  # fmt: skip
    ref = stock(PROMPTS[:2], generator=torch.Generator().manual_seed(11), **kwargs).images
    ours = lora_pipeline(PROMPTS[:2], generator=torch.Generator().manual_seed(11), **kwargs)
    torch.testing.assert_close(ours.images, ref, atol=1e-5, rtol=0)


def test_num_images_per_prompt_and_prompt_embeds(lora_pipeline) -> None:  # type: ignore[no-untyped-def]
    pipe = lora_pipeline
    by_text = pipe(PROMPTS[:2], num_images_per_prompt=2, num_inference_steps=3,
                   guidance_scale=5.0, output_type="latent",
                   generator=torch.Generator().manual_seed(5))  # fmt: skip
    embeds = pipe.encode_prompt(PROMPTS[:2])
    negative = pipe.encode_prompt(["", ""])
    by_embeds = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative,
                     num_images_per_prompt=2, num_inference_steps=3, guidance_scale=5.0,
                     output_type="latent", generator=torch.Generator().manual_seed(5))  # fmt: skip
    assert by_text.latents.shape[0] == 4
    torch.testing.assert_close(by_text.latents, by_embeds.latents, atol=0, rtol=0)
    torch.testing.assert_close(by_text.log_probs, by_embeds.log_probs, atol=0, rtol=0)


def test_scheduler_step_samples_and_scores(lora_pipeline) -> None:  # type: ignore[no-untyped-def]
    pipe = lora_pipeline
    pipe.scheduler.set_timesteps(10)
    t = pipe.scheduler.timesteps[3]
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=gen)
    model_output = torch.randn(2, 4, 8, 8, generator=gen)
    drawn = pipe.scheduler_step(model_output, t, sample, eta=1.0,
                                generator=torch.Generator().manual_seed(1))  # fmt: skip
    scored = pipe.scheduler_step(model_output, t, sample, eta=1.0, prev_sample=drawn.latents)
    torch.testing.assert_close(scored.log_probs, drawn.log_probs, atol=1e-6, rtol=0)
    # the same draw as diffusers' DDIMScheduler.step with the same generator
    ref = pipe.scheduler.step(model_output, t, sample, eta=1.0,
                              generator=torch.Generator().manual_seed(1)).prev_sample  # fmt: skip
    torch.testing.assert_close(drawn.latents, ref, atol=1e-6, rtol=1e-6)


def test_progress_bar_follows_its_config(lora_pipeline, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    pipe = lora_pipeline
    try:
        pipe.set_progress_bar_config(disable=False, desc="denoising")
        pipe("a cat", num_inference_steps=3, guidance_scale=1.0, output_type="latent")
        shown = capsys.readouterr().err
        pipe.set_progress_bar_config(disable=True)
        pipe("a cat", num_inference_steps=3, guidance_scale=1.0, output_type="latent")
        hidden = capsys.readouterr().err
    finally:
        pipe.set_progress_bar_config(disable=True)
    assert "denoising" in shown and "3/3" in shown
    assert "denoising" not in hidden


def test_device_argument_and_to(tiny_path) -> None:  # type: ignore[no-untyped-def]
    from ddpo.adapters import DefaultDDPOStableDiffusionPipeline

    pipe = DefaultDDPOStableDiffusionPipeline(tiny_path, device="cpu", use_lora=False)
    assert pipe.device == torch.device("cpu")
    assert pipe.to("cpu") is pipe
    assert pipe.pipeline.unet is pipe.unet
    assert pipe.sd_pipeline is pipe.pipeline  # TRL's attribute name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_ratio_one_on_cuda(tiny_path, dtype: torch.dtype) -> None:  # type: ignore[no-untyped-def]
    from ddpo.adapters import DefaultDDPOStableDiffusionPipeline

    pipe = DefaultDDPOStableDiffusionPipeline(tiny_path, torch_dtype=dtype, device="cuda")
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPTS[:4], num_inference_steps=6, guidance_scale=5.0, output_type="pt",
               generator=torch.Generator("cuda").manual_seed(0))  # fmt: skip
    assert out.latents.device.type == "cuda" and out.images.shape == (4, 3, 64, 64)
    new = _rescore(pipe, out, PROMPTS[:4], 5.0)
    torch.testing.assert_close(new, out.log_probs, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def zero_snr_v_path(tiny_path, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The tiny test model with a v-prediction, zero-terminal-SNR, trailing DDIM scheduler
    (the scheduler setting the packaged ``ddpo-tiny-shapes`` model uses)."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("zero-snr") / "pipe"
    shutil.copytree(tiny_path, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config.update(prediction_type="v_prediction", rescale_betas_zero_snr=True,
                  timestep_spacing="trailing")  # fmt: skip
    config_file.write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("guidance_scale", [1.0, 5.0])
def test_zero_terminal_snr_v_prediction_matches_stock_and_rescores(
    zero_snr_v_path, guidance_scale: float
) -> None:  # type: ignore[no-untyped-def]
    """The first trailing timestep has alpha_bar = 0 exactly: sampling must still equal stock
    diffusers' DDIM, and re-scoring must give ratio 1 with finite log-probs."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from ddpo import DefaultDDPOStableDiffusionPipeline

    ours = DefaultDDPOStableDiffusionPipeline(str(zero_snr_v_path), use_lora=True)
    ours.set_progress_bar_config(disable=True)
    assert ours.scheduler.config.prediction_type == "v_prediction"
    stock = StableDiffusionPipeline.from_pretrained(zero_snr_v_path, safety_checker=None)
    stock.scheduler = DDIMScheduler.from_config(stock.scheduler.config)
    stock.set_progress_bar_config(disable=True)
    kwargs = {"num_inference_steps": 5, "guidance_scale": guidance_scale, "eta": 1.0,
              "output_type": "pt"}  # fmt: skip
    ref = stock(PROMPTS[:2], generator=torch.Generator().manual_seed(5), **kwargs).images
    out = ours(PROMPTS[:2], generator=torch.Generator().manual_seed(5), **kwargs)
    assert int(ours.scheduler.timesteps[0]) == 999
    assert float(ours.scheduler.alphas_cumprod[999]) == 0.0
    torch.testing.assert_close(out.images, ref, atol=1e-5, rtol=0)
    assert bool(torch.isfinite(out.log_probs).all())
    ratio = torch.exp(_rescore(ours, out, PROMPTS[:2], guidance_scale) - out.log_probs)
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)
