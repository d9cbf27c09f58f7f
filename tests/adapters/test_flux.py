"""DefaultDDPOFluxPipeline on tiny random FLUX.1 models built from config (no hub).

Stock diffusers' ``FluxPipeline`` is the reference: the same prompt encoding, packing and
position ids, the same images in the ODE limit (with the guidance embedding of a dev-like model
and without it for a schnell-like one), and our LoRA and full saves load in it. The Flow-GRPO
SDE step itself is tested in ``tests/core``; here its use: the window, re-scoring, the reference.
"""

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import FluxPipeline

from ddpo.adapters.flux.checks import latent_image_ids, pack_latents, unpack_latents
from ddpo.adapters.flux.policy import DefaultDDPOFluxPipeline
from ddpo.adapters.flux.tiny import (
    TinyFluxConfig,
    save_flux_pipeline,
    tiny_flux_components,
    tiny_flux_path,
)
from ddpo.adapters.sd3.tiny import save_sd3_pipeline, tiny_sd3_components

pytestmark = pytest.mark.slow

PROMPTS = ["a red circle", "a blue square"]
SHAPE = (2, 4, 8, 8)  # unpacked latents of two 64x64 images
T5_TOKENS = 32  # a short T5 sequence keeps the tiny models fast (FLUX.1 takes 512)


@pytest.fixture(scope="module")
def schnell_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No guidance embedding, and schnell's static schedule (shift 1, no dynamic shifting)."""
    folder = tmp_path_factory.mktemp("tiny-flux-schnell")
    components = tiny_flux_components(0, config=TinyFluxConfig(guidance_embeds=False))
    scheduler = components["scheduler"]
    components["scheduler"] = type(scheduler).from_config(
        scheduler.config, use_dynamic_shifting=False, shift=1.0
    )
    save_flux_pipeline(components, folder)
    return folder


def new_policy(folder: Path, **kwargs: Any) -> DefaultDDPOFluxPipeline:
    pipe = DefaultDDPOFluxPipeline(folder, max_sequence_length=T5_TOKENS, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def ours(flux_path: Path) -> DefaultDDPOFluxPipeline:
    return new_policy(flux_path)


def stock_pipeline(folder: Path) -> Any:
    stock = FluxPipeline.from_pretrained(folder)
    stock.set_progress_bar_config(disable=True)
    return stock


def ode_images(
    pipe: Any,
    *,
    stock: bool,
    steps: int = 3,
    guidance: float = 3.5,
    size: tuple[int, int] = (64, 64),
) -> torch.Tensor:
    extra: dict[str, Any] = {"noise_level": 0}
    if stock:
        extra = {"max_sequence_length": T5_TOKENS, "height": size[0], "width": size[1]}
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


def test_packing_and_position_ids_equal_diffusers() -> None:
    x = torch.randn(2, 4, 8, 6, generator=torch.Generator().manual_seed(0))
    packed = pack_latents(x)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(x, 2, 4, 8, 6), atol=0, rtol=0)
    # written out: token (r, c) holds x[:, ch, 2r + i, 2c + j] at feature 4 ch + 2 i + j
    assert packed.shape == (2, 12, 16)
    for r, c, ch, i, j in [(0, 0, 0, 0, 0), (1, 2, 3, 1, 0), (3, 1, 2, 0, 1), (2, 2, 1, 1, 1)]:
        assert packed[1, 3 * r + c, 4 * ch + 2 * i + j] == x[1, ch, 2 * r + i, 2 * c + j]
    theirs = FluxPipeline._unpack_latents(packed, 8 * 8, 6 * 8, 8)
    torch.testing.assert_close(unpack_latents(packed, 8, 6), theirs, atol=0, rtol=0)
    torch.testing.assert_close(unpack_latents(packed, 8, 6), x, atol=0, rtol=0)
    ids = latent_image_ids(4, 3, device=torch.device("cpu"), dtype=torch.float32)
    expected = FluxPipeline._prepare_latent_image_ids(2, 4, 3, "cpu", torch.float32)
    torch.testing.assert_close(ids, expected, atol=0, rtol=0)
    assert ids[5].tolist() == [0.0, 1.0, 2.0]  # token 5 is row 1, column 2
    with pytest.raises(ValueError, match="even height and width"):
        pack_latents(torch.zeros(1, 4, 7, 6))
    with pytest.raises(ValueError, match=r"not 2x2 patches of 8x8"):
        unpack_latents(packed, 8, 8)


@pytest.mark.parametrize("guidance_scale", [1.0, 5.0])
def test_ode_limit_draws_the_stock_images(
    ours: Any, flux_path: Path, guidance_scale: float
) -> None:
    stock = stock_pipeline(flux_path)
    mine = ours(PROMPTS, num_inference_steps=4, guidance_scale=guidance_scale, noise_level=0,
                generator=torch.Generator().manual_seed(3), output_type="pt")  # fmt: skip
    theirs = stock(PROMPTS, num_inference_steps=4, guidance_scale=guidance_scale, height=64,
                   width=64, max_sequence_length=T5_TOKENS,
                   generator=torch.Generator().manual_seed(3), output_type="pt")  # fmt: skip
    torch.testing.assert_close(mine.images, theirs.images, atol=2e-5, rtol=0)
    assert mine.latents.shape == (2, 5, *SHAPE[1:]) and mine.log_probs.shape == (2, 0)
    assert float((mine.images - 0.5).abs().mean()) > 0.01  # not a blank image
    # the initial latents are the generator's first draw (unpacked), as in diffusers
    first = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(mine.latents[:, 0], first, atol=0, rtol=0)


def test_guidance_embedding_acts_only_in_guidance_distilled_models(
    ours: Any, flux_path: Path, schnell_path: Path
) -> None:
    assert ours.guidance_embeds
    low, high = (ode_images(ours, stock=False, guidance=g) for g in (1.0, 5.0))
    assert not torch.allclose(low, high, atol=1e-4)
    schnell = new_policy(schnell_path)
    assert not schnell.guidance_embeds and schnell._mu() is None
    mine = ode_images(schnell, stock=False, guidance=5.0)
    torch.testing.assert_close(mine, ode_images(schnell, stock=False, guidance=1.0), atol=0, rtol=0)
    theirs = ode_images(stock_pipeline(schnell_path), stock=True, guidance=5.0)
    torch.testing.assert_close(mine, theirs, atol=2e-5, rtol=0)
    # schnell's static schedule: sigmas linspace(1, 1/3, 3) with shift 1, then 0
    expected = torch.tensor([1.0, 2 / 3, 1 / 3, 0.0])
    torch.testing.assert_close(schnell.scheduler.sigmas, expected, atol=1e-6, rtol=0)


def test_encode_equals_stock_encode_prompt(ours: Any, flux_path: Path) -> None:
    stock = stock_pipeline(flux_path)
    cond = ours.encode(PROMPTS, "ignored")
    with torch.no_grad():  # as ours (autograd on may pick other attention kernels)
        embeds, pooled, ids = stock.encode_prompt(
            PROMPTS, None, device="cpu", max_sequence_length=T5_TOKENS
        )
    assert set(cond.tensors) == {"prompt_embeds", "pooled_prompt_embeds"}
    torch.testing.assert_close(cond["prompt_embeds"], embeds, atol=0, rtol=0)
    torch.testing.assert_close(cond["pooled_prompt_embeds"], pooled, atol=0, rtol=0)
    assert cond["prompt_embeds"].shape == (2, T5_TOKENS, 32) and pooled.shape == (2, 32)
    assert ids.shape == (T5_TOKENS, 3) and not ids.any()  # what we make in the call
    assert not torch.allclose(cond["pooled_prompt_embeds"][0], cond["pooled_prompt_embeds"][1])


def test_rescoring_the_window_transitions_gives_ratio_one(flux_path: Path) -> None:
    pipe = new_policy(flux_path, sde_window_size=2, noise_level=0.7)
    perturb_lora(pipe)
    cond = pipe.encode(PROMPTS, "")
    out = pipe.rollout(cond, num_steps=5, guidance_scale=3.5,
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.latents.shape == (2, 3, *SHAPE[1:]) and out.log_probs.shape == (2, 2)
    sigmas = pipe.scheduler.sigmas  # set by the rollout's 5 steps
    sigma_max = float(sigmas[1])  # sigmas[0] == 1: Flow-GRPO's sigma_max
    for j in range(2):
        step = int(out.timesteps[j])
        with torch.no_grad():
            score = pipe.score(cond, out.latents[:, j], out.latents[:, j + 1],
                               out.schedule[j].expand(2, -1))  # fmt: skip
        torch.testing.assert_close(score.log_prob, out.log_probs[:, j], atol=1e-4, rtol=0)
        sigma, sigma_prev = float(sigmas[step]), float(sigmas[step + 1])
        std_t = 0.7 * math.sqrt(sigma / (1 - (sigma_max if sigma == 1 else sigma)))
        expected = std_t * math.sqrt(sigma - sigma_prev)
        torch.testing.assert_close(score.std_dev, torch.full((2,), expected), atol=1e-6, rtol=1e-5)
        # the transition is a draw of the Gaussian: its standardised residual is ~ N(0, 1)
        z = (out.latents[:, j + 1] - score.mean) / expected
        assert 0.8 < float(z.std()) < 1.2 and abs(float(z.mean())) < 0.2
        # another guidance scale is another policy (the embedding enters the velocity)
        rows = out.schedule[j].expand(2, -1).clone()
        rows[:, -1] = 1.0  # the row's guidance scale
        with torch.no_grad():
            other = pipe.score(cond, out.latents[:, j], out.latents[:, j + 1], rows, cfg=False)
        assert not torch.allclose(other.log_prob, score.log_prob, atol=1e-3)


def test_window_steps_and_start(flux_path: Path) -> None:
    fixed = new_policy(flux_path, sde_window_size=2, sde_window_start=1)
    cond = fixed.encode(PROMPTS, "")
    out = fixed.rollout(cond, num_steps=4, guidance_scale=3.5,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.timesteps.tolist() == [1, 2] and out.timesteps.dtype == torch.int64
    assert out.latents.shape == (2, 3, *SHAPE[1:]) and fixed.transitions_per_rollout(4) == 2
    everywhere = new_policy(flux_path)
    out = everywhere.rollout(cond, num_steps=3, guidance_scale=3.5,
                             generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.timesteps.tolist() == [0, 1, 2] and out.log_probs.shape == (2, 3)
    assert everywhere.transitions_per_rollout(3) == 3
    # a drawn start: uniform in [0, num_steps - k] from the generator, after the initial noise
    drawn = new_policy(flux_path, sde_window_size=1)
    starts = set()
    for seed in range(6):
        gen = torch.Generator().manual_seed(seed)
        torch.randn(SHAPE, generator=gen)
        expected = int(torch.randint(0, 3, (1,), generator=gen))
        got = drawn.rollout(cond, num_steps=3, guidance_scale=3.5,
                            generator=torch.Generator().manual_seed(seed)).timesteps  # fmt: skip
        assert got.tolist() == [expected]
        starts.add(expected)
    assert len(starts) > 1


def test_steps_outside_the_window_are_the_deterministic_ode(flux_path: Path) -> None:
    pipe = new_policy(flux_path, sde_window_size=1, sde_window_start=2)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    common: dict[str, Any] = {"num_inference_steps": 4, "guidance_scale": 3.5, "latents": x,
                              "output_type": "pt"}  # fmt: skip
    ode = pipe(PROMPTS, noise_level=0, **common)
    a = pipe(PROMPTS, generator=torch.Generator().manual_seed(1), **common)
    b = pipe(PROMPTS, generator=torch.Generator().manual_seed(2), **common)
    torch.testing.assert_close(a.latents[:, 0], ode.latents[:, 2], atol=0, rtol=0)
    torch.testing.assert_close(b.latents[:, 0], ode.latents[:, 2], atol=0, rtol=0)
    assert a.latents.shape == (2, 2, *SHAPE[1:]) and a.log_probs.shape == (2, 1)
    assert not torch.allclose(a.latents[:, 1], b.latents[:, 1], atol=1e-3)
    assert not torch.allclose(a.images, b.images, atol=1e-4)


def test_lora_weights_load_in_stock_flux_and_draw_the_same_images(
    flux_path: Path, tmp_path: Path
) -> None:
    pipe = new_policy(flux_path, lora_rank=2, lora_alpha=4)
    perturb_lora(pipe)
    pipe.save_lora_weights(tmp_path / "lora")
    stock = stock_pipeline(flux_path)
    before = ode_images(stock, stock=True)
    stock.load_lora_weights(tmp_path / "lora")
    theirs = ode_images(stock, stock=True)
    mine = ode_images(pipe, stock=False)
    torch.testing.assert_close(mine, theirs, atol=2e-5, rtol=0)
    assert not torch.allclose(before, theirs, atol=1e-3)  # the LoRA acts
    # adapters on the double- and the single-stream blocks' attention
    names = list(pipe.trainable_parameters())
    assert any(n.startswith("single_transformer_blocks.") for n in names)
    assert any(".attn.add_q_proj." in n for n in names) and not any(".ff." in n for n in names)
    again = new_policy(tmp_path / "lora")  # our class loads it on top of its recorded base
    assert again.lora_rank == 2 and again.lora_alpha == 4.0
    torch.testing.assert_close(ode_images(again, stock=False), mine, atol=1e-6, rtol=0)


@pytest.mark.parametrize("use_lora", [True, False])
def test_save_pretrained_loads_in_stock_flux(
    flux_path: Path, tmp_path: Path, use_lora: bool
) -> None:
    pipe = new_policy(flux_path, use_lora=use_lora)
    perturb_lora(pipe) if use_lora else perturb_full(pipe)
    pipe.save_pretrained(tmp_path / "final")
    index = json.loads((tmp_path / "final" / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    stock = stock_pipeline(tmp_path / "final")
    theirs = ode_images(stock, stock=True)
    torch.testing.assert_close(ode_images(pipe, stock=False), theirs, atol=5e-5, rtol=0)
    base = ode_images(stock_pipeline(flux_path), stock=True)
    assert not torch.allclose(base, theirs, atol=1e-3)  # the fine-tuned weights were saved


def _score_means(pipe: Any, cond: Any, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    mean: torch.Tensor = pipe.score(cond, x, 0.9 * x, rows, cfg=False).mean
    return mean


@pytest.mark.parametrize("use_lora", [True, False])
def test_reference_policy_is_the_model_before_fine_tuning(flux_path: Path, use_lora: bool) -> None:
    pipe = new_policy(flux_path, use_lora=use_lora)
    cond = pipe.encode(PROMPTS[:1], "")
    rows = pipe.rollout(cond, num_steps=3, guidance_scale=3.5,
                        generator=torch.Generator().manual_seed(0)).schedule[:1]  # fmt: skip
    x = torch.randn(1, *SHAPE[1:], generator=torch.Generator().manual_seed(0))
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


def test_gradient_checkpointing_gives_the_same_gradients(flux_path: Path) -> None:
    grads = []
    for checkpointing in (False, True):
        pipe = new_policy(flux_path)
        pipe.prepare(torch.device("cpu"), gradient_checkpointing=checkpointing)
        cond = pipe.encode(PROMPTS, "")
        out = pipe.rollout(cond, num_steps=3, guidance_scale=3.5,
                           generator=torch.Generator().manual_seed(0))  # fmt: skip
        pipe.transformer.train()
        assert pipe.transformer.is_gradient_checkpointing == checkpointing
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
        score = pipe.score(cond, x, 0.9 * x, out.schedule[:2], cfg=False)  # steps 0 and 1
        score.log_prob.sum().backward()
        grads.append({n: p.grad.clone() for n, p in pipe.trainable_parameters().items()})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert any(float(g.abs().max()) > 0 for g in grads[0].values())
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_bad_input_gets_clear_errors_before_model_work(
    flux_path: Path, tmp_path: Path, tiny_path: Path
) -> None:
    sd3 = tmp_path / "sd3"
    save_sd3_pipeline(tiny_sd3_components(0), sd3)
    with pytest.raises(ValueError, match=r"'StableDiffusion3Pipeline'\), not FluxPipeline"):
        DefaultDDPOFluxPipeline(sd3)
    with pytest.raises(ValueError, match=r"'StableDiffusionPipeline'\), not FluxPipeline"):
        DefaultDDPOFluxPipeline(tiny_path)
    # argument errors come before the folder is even looked at
    missing = tmp_path / "nowhere"
    for level in (0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="noise_level"):
            DefaultDDPOFluxPipeline(missing, noise_level=level)
    with pytest.raises(ValueError, match="sde_window_size=0"):
        DefaultDDPOFluxPipeline(missing, sde_window_size=0)
    with pytest.raises(ValueError, match="sde_window_start=1 needs sde_window_size"):
        DefaultDDPOFluxPipeline(missing, sde_window_start=1)
    with pytest.raises(ValueError, match="max_sequence_length=513"):
        DefaultDDPOFluxPipeline(missing, max_sequence_length=513)
    # 72 = 9 latents: a multiple of the VAE's 8 but not of the 2x2 packing's 16
    with pytest.raises(ValueError, match=r"multiples of 16.*packing.*resolution=\(64, 72\)"):
        DefaultDDPOFluxPipeline(flux_path, resolution=(64, 72))
    pipe = new_policy(flux_path, sde_window_size=3, sde_window_start=2)
    with pytest.raises(ValueError, match=r"sde_window_size=3 is more than .*sample_num_steps=2"):
        pipe.check_num_steps(2)
    with pytest.raises(ValueError, match=r"sde_window_start=2 .*sample_num_steps=4"):
        pipe.check_num_steps(4)
    pipe.check_num_steps(5)
    with pytest.raises(ValueError, match="at least 2 steps"):
        new_policy(flux_path).check_num_steps(1)
    with pytest.raises(ValueError, match=r"schedule must be \(2, 5\)"):  # a row per transition
        cond = pipe.encode(PROMPTS, "")
        pipe.score(cond, torch.zeros(SHAPE), torch.zeros(SHAPE), torch.zeros(2, 3))


def test_resolution_dependent_shift_matches_stock(flux_path: Path) -> None:
    pipe = new_policy(flux_path, resolution=(64, 32))
    mine = ode_images(pipe, stock=False)
    theirs = ode_images(stock_pipeline(flux_path), stock=True, size=(64, 32))
    torch.testing.assert_close(mine, theirs, atol=2e-5, rtol=0)
    assert mine.shape == (2, 3, 64, 32)
    # mu for 4x2 = 8 packed tokens: linear through (256, 0.5) and (4096, 1.15), FLUX's values
    slope = (1.15 - 0.5) / (4096 - 256)
    mu = 0.5 + (8 - 256) * slope
    assert pipe._mu() == pytest.approx(mu)
    # sigmas: linspace(1, 1/3, 3) under the exponential time shift exp(mu) / (exp(mu) + 1/s - 1)
    base = torch.tensor([1.0, 2 / 3, 1 / 3], dtype=torch.float64)
    shifted = math.exp(mu) / (math.exp(mu) + (1 / base - 1))
    expected = torch.cat([shifted, torch.zeros(1, dtype=torch.float64)]).float()
    torch.testing.assert_close(pipe.scheduler.sigmas, expected, atol=1e-6, rtol=0)


def test_builtin_tiny_flux_folder_loads_with_the_defaults(tmp_path: Path) -> None:
    folder = tiny_flux_path(tmp_path, seed=0)
    assert tiny_flux_path(tmp_path, seed=0) == folder  # built once, then reused
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    pipe = DefaultDDPOFluxPipeline(folder)
    assert pipe.resolution == (64, 64) and pipe.max_sequence_length == 512
    assert pipe.guidance_embeds and pipe.noise_level == 0.7
    assert pipe.encode(PROMPTS[:1], "")["prompt_embeds"].shape == (1, 512, 32)
    assert pipe.transitions_per_rollout(10) == 10
