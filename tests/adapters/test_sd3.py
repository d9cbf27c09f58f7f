"""DefaultDDPOStableDiffusion3Pipeline on a tiny random SD3 built from config (no hub).

Stock diffusers' ``StableDiffusion3Pipeline`` is the reference: the same prompt encoding, the
same images in the ODE limit, and our LoRA and full saves load in it. The Flow-GRPO SDE step
itself is tested in ``tests/core``; here its use: the window, re-scoring, the reference policy.
"""

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

from ddpo.adapters.sd3.policy import DefaultDDPOStableDiffusion3Pipeline
from ddpo.adapters.sdxl.tiny import save_sdxl_pipeline, tiny_sdxl_components

pytestmark = pytest.mark.slow

PROMPTS = ["a red circle", "a blue square"]
SHAPE = (2, 16, 8, 8)  # latents of two 64x64 images


@pytest.fixture(scope="module")
def ours(sd3_path: Path) -> DefaultDDPOStableDiffusion3Pipeline:
    pipe = DefaultDDPOStableDiffusion3Pipeline(sd3_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def new_policy(folder: Path, **kwargs: Any) -> DefaultDDPOStableDiffusion3Pipeline:
    pipe = DefaultDDPOStableDiffusion3Pipeline(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock_pipeline(folder: Path) -> Any:
    stock = StableDiffusion3Pipeline.from_pretrained(folder)
    stock.set_progress_bar_config(disable=True)
    return stock


def ode_images(pipe: Any, *, stock: bool, steps: int = 3, guidance: float = 4.0) -> torch.Tensor:
    extra = {} if stock else {"noise_level": 0}
    out = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
               generator=torch.Generator().manual_seed(3), **extra)  # fmt: skip
    images: torch.Tensor = out.images
    return images


def perturb_lora(pipe: Any, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(pipe.trainable_parameters().items()):
            param.add_(0.2 * torch.randn(param.shape, generator=gen))


def perturb_full(pipe: Any) -> None:
    with torch.no_grad():
        for name, param in pipe.transformer.named_parameters():
            if "attn" in name and name.endswith("weight"):
                param.mul_(1.5)


@pytest.mark.parametrize("guidance_scale", [1.0, 5.0])
def test_ode_limit_draws_the_stock_images(ours: Any, sd3_path: Path, guidance_scale: float) -> None:
    stock = stock_pipeline(sd3_path)
    mine = ours(PROMPTS, num_inference_steps=4, guidance_scale=guidance_scale, noise_level=0,
                generator=torch.Generator().manual_seed(3), output_type="pt")  # fmt: skip
    theirs = stock(PROMPTS, num_inference_steps=4, guidance_scale=guidance_scale,
                   generator=torch.Generator().manual_seed(3), output_type="pt")  # fmt: skip
    torch.testing.assert_close(mine.images, theirs.images, atol=2e-5, rtol=0)
    assert mine.latents.shape == (2, 5, 16, 8, 8) and mine.log_probs.shape == (2, 0)
    assert float((mine.images - 0.5).abs().mean()) > 0.01  # not a blank image
    # the initial latents are the generator's first draw, as in diffusers
    first = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(mine.latents[:, 0], first, atol=0, rtol=0)


def test_encode_equals_stock_encode_prompt(ours: Any, sd3_path: Path) -> None:
    stock = stock_pipeline(sd3_path)
    for negative in ("", "blue"):
        cond = ours.encode(PROMPTS, negative)
        with torch.no_grad():  # as ours (autograd on may pick other attention kernels)
            embeds, negative_embeds, pooled, negative_pooled = stock.encode_prompt(
                PROMPTS, None, None, device="cpu", do_classifier_free_guidance=True,
                negative_prompt=[negative] * 2 if negative else None,
            )  # fmt: skip
        torch.testing.assert_close(cond["prompt_embeds"], embeds, atol=0, rtol=0)
        torch.testing.assert_close(cond["pooled_prompt_embeds"], pooled, atol=0, rtol=0)
        torch.testing.assert_close(cond["negative_prompt_embeds"], negative_embeds, atol=0, rtol=0)
        torch.testing.assert_close(cond["negative_pooled_prompt_embeds"], negative_pooled)
    # 77 CLIP tokens then 256 T5 tokens, 32 wide; the empty prompt is encoded, not zeros
    assert cond["prompt_embeds"].shape == (2, 77 + 256, 32)
    assert torch.count_nonzero(ours.encode(PROMPTS, "")["negative_prompt_embeds"]) > 0


@pytest.mark.parametrize("guided", [False, True])
def test_rescoring_the_window_transitions_gives_ratio_one(sd3_path: Path, guided: bool) -> None:
    pipe = new_policy(sd3_path, sde_window_size=2, noise_level=0.7)
    perturb_lora(pipe)
    guidance = 5.0 if guided else 1.0
    cond = pipe.encode(PROMPTS, "")
    out = pipe.rollout(cond, num_steps=5, guidance_scale=guidance,
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.latents.shape == (2, 3, 16, 8, 8) and out.log_probs.shape == (2, 2)
    sigmas = pipe.scheduler.sigmas  # set by the rollout's 5 steps
    sigma_max = float(sigmas[1])  # sigmas[0] == 1: Flow-GRPO's sigma_max
    for j in range(2):
        step = int(out.timesteps[j])
        with torch.no_grad():
            score = pipe.score(cond, out.latents[:, j], out.latents[:, j + 1],
                               out.schedule[j].expand(2, -1), cfg=guided)  # fmt: skip
        torch.testing.assert_close(score.log_prob, out.log_probs[:, j], atol=1e-4, rtol=0)
        sigma, sigma_prev = float(sigmas[step]), float(sigmas[step + 1])
        std_t = 0.7 * math.sqrt(sigma / (1 - (sigma_max if sigma == 1 else sigma)))
        expected = std_t * math.sqrt(sigma - sigma_prev)
        torch.testing.assert_close(score.std_dev, torch.full((2,), expected), atol=1e-6, rtol=1e-5)
        # the transition is a draw of the Gaussian: its standardised residual is ~ N(0, 1)
        z = (out.latents[:, j + 1] - score.mean) / expected
        assert 0.8 < float(z.std()) < 1.2 and abs(float(z.mean())) < 0.2


def test_window_steps_and_start(sd3_path: Path) -> None:
    fixed = new_policy(sd3_path, sde_window_size=2, sde_window_start=1)
    cond = fixed.encode(PROMPTS, "")
    out = fixed.rollout(cond, num_steps=4, guidance_scale=1.0,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.timesteps.tolist() == [1, 2] and out.timesteps.dtype == torch.int64
    assert out.latents.shape == (2, 3, 16, 8, 8) and fixed.transitions_per_rollout(4) == 2
    # without a window every step is stochastic and recorded
    everywhere = new_policy(sd3_path)
    out = everywhere.rollout(cond, num_steps=3, guidance_scale=1.0,
                             generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.timesteps.tolist() == [0, 1, 2] and out.log_probs.shape == (2, 3)
    assert everywhere.transitions_per_rollout(3) == 3
    # a drawn start: uniform in [0, num_steps - k] from the generator, after the initial noise
    drawn = new_policy(sd3_path, sde_window_size=1)
    starts = set()
    for seed in range(6):
        gen = torch.Generator().manual_seed(seed)
        torch.randn(SHAPE, generator=gen)
        expected = int(torch.randint(0, 3, (1,), generator=gen))
        got = [
            int(drawn.rollout(cond, num_steps=3, guidance_scale=1.0,
                              generator=torch.Generator().manual_seed(seed)).timesteps[0])
            for _ in range(2)
        ]  # fmt: skip
        assert got == [expected, expected]
        starts.add(expected)
    assert len(starts) > 1


def test_steps_outside_the_window_are_the_deterministic_ode(sd3_path: Path) -> None:
    pipe = new_policy(sd3_path, sde_window_size=1, sde_window_start=2)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    common: dict[str, Any] = {"num_inference_steps": 4, "guidance_scale": 3.0, "latents": x,
                              "output_type": "pt"}  # fmt: skip
    ode = pipe(PROMPTS, noise_level=0, **common)
    a = pipe(PROMPTS, generator=torch.Generator().manual_seed(1), **common)
    b = pipe(PROMPTS, generator=torch.Generator().manual_seed(2), **common)
    # before the window: the ODE's latent, whatever the generator
    torch.testing.assert_close(a.latents[:, 0], ode.latents[:, 2], atol=0, rtol=0)
    torch.testing.assert_close(b.latents[:, 0], ode.latents[:, 2], atol=0, rtol=0)
    # the window's step is stochastic, and so is everything after it
    assert a.latents.shape == (2, 2, 16, 8, 8) and a.log_probs.shape == (2, 1)
    assert not torch.allclose(a.latents[:, 1], b.latents[:, 1], atol=1e-3)
    assert not torch.allclose(a.images, b.images, atol=1e-4)


def test_lora_weights_load_in_stock_sd3_and_draw_the_same_images(
    sd3_path: Path, tmp_path: Path
) -> None:
    pipe = new_policy(sd3_path, lora_rank=2, lora_alpha=4)
    perturb_lora(pipe)
    pipe.save_lora_weights(tmp_path / "lora")
    stock = stock_pipeline(sd3_path)
    before = ode_images(stock, stock=True)
    stock.load_lora_weights(tmp_path / "lora")
    theirs = ode_images(stock, stock=True)
    mine = ode_images(pipe, stock=False)
    torch.testing.assert_close(mine, theirs, atol=2e-5, rtol=0)
    assert not torch.allclose(before, theirs, atol=1e-3)  # the LoRA acts
    again = new_policy(tmp_path / "lora")  # our class loads it on top of its recorded base
    assert again.lora_rank == 2 and again.lora_alpha == 4.0
    torch.testing.assert_close(ode_images(again, stock=False), mine, atol=1e-6, rtol=0)


@pytest.mark.parametrize("use_lora", [True, False])
def test_save_pretrained_loads_in_stock_sd3(sd3_path: Path, tmp_path: Path, use_lora: bool) -> None:
    pipe = new_policy(sd3_path, use_lora=use_lora)
    perturb_lora(pipe) if use_lora else perturb_full(pipe)
    pipe.save_pretrained(tmp_path / "final")
    index = json.loads((tmp_path / "final" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    stock = stock_pipeline(tmp_path / "final")
    theirs = ode_images(stock, stock=True)
    torch.testing.assert_close(ode_images(pipe, stock=False), theirs, atol=5e-5, rtol=0)
    base = ode_images(stock_pipeline(sd3_path), stock=True)
    assert not torch.allclose(base, theirs, atol=1e-3)  # the fine-tuned weights were saved


def _score_means(pipe: Any, cond: Any, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    mean: torch.Tensor = pipe.score(cond, x, 0.9 * x, rows).mean
    return mean


@pytest.mark.parametrize("use_lora", [True, False])
def test_reference_policy_is_the_model_before_fine_tuning(sd3_path: Path, use_lora: bool) -> None:
    pipe = new_policy(sd3_path, use_lora=use_lora)
    cond = pipe.encode(PROMPTS[:1], "")
    rows = pipe.rollout(cond, num_steps=3, guidance_scale=5.0,
                        generator=torch.Generator().manual_seed(0)).schedule[:1]  # fmt: skip
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = _score_means(pipe, cond, x, rows)
        perturb_lora(pipe) if use_lora else perturb_full(pipe)
        tuned = _score_means(pipe, cond, x, rows)
        with pipe.reference_policy():
            reference = _score_means(pipe, cond, x, rows)
        after = _score_means(pipe, cond, x, rows)
    assert not torch.allclose(base, tuned, atol=1e-4)
    torch.testing.assert_close(reference, base)
    torch.testing.assert_close(after, tuned)  # the context restores the fine-tuned policy
    if not use_lora:
        frozen = pipe._frozen
        assert frozen is not None and not any(p.requires_grad for p in frozen.parameters())


def test_gradient_checkpointing_gives_the_same_gradients(sd3_path: Path) -> None:
    grads = []
    for checkpointing in (False, True):
        pipe = new_policy(sd3_path)
        pipe.prepare(torch.device("cpu"), gradient_checkpointing=checkpointing)
        cond = pipe.encode(PROMPTS, "")
        out = pipe.rollout(cond, num_steps=3, guidance_scale=5.0,
                           generator=torch.Generator().manual_seed(0))  # fmt: skip
        pipe.transformer.train()
        assert pipe.transformer.is_gradient_checkpointing == checkpointing
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
        score = pipe.score(cond, x, 0.9 * x, out.schedule[:2])  # steps 0 and 1, guided
        score.log_prob.sum().backward()
        grads.append({n: p.grad.clone() for n, p in pipe.trainable_parameters().items()})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert any(float(g.abs().max()) > 0 for g in grads[0].values())
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_bad_input_gets_clear_errors_before_model_work(
    sd3_path: Path, tmp_path: Path, tiny_path: Path
) -> None:
    sdxl = tmp_path / "sdxl"
    save_sdxl_pipeline(tiny_sdxl_components(0), sdxl)
    with pytest.raises(ValueError, match=r"'StableDiffusionXLPipeline'.*not StableDiffusion3"):
        DefaultDDPOStableDiffusion3Pipeline(sdxl)
    with pytest.raises(ValueError, match="'StableDiffusionPipeline'"):
        DefaultDDPOStableDiffusion3Pipeline(tiny_path)
    # argument errors come before the folder is even looked at
    missing = tmp_path / "nowhere"
    for level in (0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="noise_level"):
            DefaultDDPOStableDiffusion3Pipeline(missing, noise_level=level)
    with pytest.raises(ValueError, match="sde_window_size=0"):
        DefaultDDPOStableDiffusion3Pipeline(missing, sde_window_size=0)
    with pytest.raises(ValueError, match="sde_window_start=1 needs sde_window_size"):
        DefaultDDPOStableDiffusion3Pipeline(missing, sde_window_start=1)
    with pytest.raises(ValueError, match=r"multiples of 16.*resolution=\(40, 40\)"):
        DefaultDDPOStableDiffusion3Pipeline(sd3_path, resolution=40)
    pipe = new_policy(sd3_path, sde_window_size=3, sde_window_start=2)
    with pytest.raises(ValueError, match=r"sde_window_size=3 is more than .*sample_num_steps=2"):
        pipe.check_num_steps(2)
    with pytest.raises(ValueError, match=r"sde_window_start=2 .*sample_num_steps=4"):
        pipe.check_num_steps(4)
    pipe.check_num_steps(5)
    with pytest.raises(ValueError, match="at least 2 steps"):
        new_policy(sd3_path).check_num_steps(1)
    with pytest.raises(ValueError, match=r"schedule must be \(2, 5\)"):  # a row per transition
        cond = pipe.encode(PROMPTS, "")
        pipe.score(cond, torch.zeros(SHAPE), torch.zeros(SHAPE), torch.zeros(2, 3))


def test_dynamic_shifting_schedule_matches_stock(sd3_path: Path, tmp_path: Path) -> None:
    shifted = tmp_path / "dynamic"
    shutil.copytree(sd3_path, shifted)
    config_file = shifted / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config.update(
        use_dynamic_shifting=True, base_image_seq_len=4, max_image_seq_len=64, max_shift=1.25
    )
    config_file.write_text(json.dumps(config))
    pipe = new_policy(shifted, resolution=(64, 32))
    stock = stock_pipeline(shifted)
    mine = pipe(PROMPTS, num_inference_steps=3, guidance_scale=4.0, noise_level=0,
                generator=torch.Generator().manual_seed(3), output_type="pt")  # fmt: skip
    theirs = stock(PROMPTS, num_inference_steps=3, guidance_scale=4.0, height=64, width=32,
                   generator=torch.Generator().manual_seed(3), output_type="pt")  # fmt: skip
    torch.testing.assert_close(mine.images, theirs.images, atol=2e-5, rtol=0)
    assert mine.images.shape == (2, 3, 64, 32)
    # mu for 8 tokens (4x2 patches): linear through (4, 0.5) and (64, 1.25)
    slope = (1.25 - 0.5) / (64 - 4)
    assert pipe._mu() == pytest.approx(0.5 + (8 - 4) * slope)
    static = FlowMatchEulerDiscreteScheduler(shift=3.0)
    static.set_timesteps(3)
    assert not torch.allclose(pipe.scheduler.sigmas, static.sigmas, atol=1e-3)  # not shift=3
