"""Flow-GRPO's sampling-side options of the flow policies (SD3 and FLUX.1), on tiny random models.

What does not depend on the family (the window drawn within a range, the ``cps`` step, the
initial noise drawn per row) is tested on SD3; what does (the LoRA layers, the scheduler
fallbacks of each stock pipeline) on both. The step math itself is tested in ``tests/core``.
"""

import json
import math
import shutil
from pathlib import Path
from typing import Any

import beartype.roar
import jaxtyping
import pytest
import torch
from diffusers import AutoencoderKL, FluxPipeline, StableDiffusion3Pipeline
from diffusers.configuration_utils import FrozenDict

from ddpo.adapters.flow.sampling import (
    FEED_FORWARD_TARGET_MODULES,
    check_sde_type,
    lora_target_modules,
    ode_step,
    post_window_schedule,
    probe_schedule,
)
from ddpo.adapters.flux.policy import FLUX_LORA_TARGET_MODULES, DefaultDDPOFluxPipeline
from ddpo.adapters.flux.tiny import save_flux_pipeline, tiny_flux_components
from ddpo.adapters.sd3.policy import DefaultDDPOStableDiffusion3Pipeline
from ddpo.core import flow_cps_step_with_logprob, flow_dpm_solver_step

pytestmark = pytest.mark.slow

PROMPTS = ["a red circle", "a blue square"]
SD3_SHAPE = (2, 16, 8, 8)  # latents of two 64x64 images
T5_TOKENS = 32  # a short T5 sequence keeps the tiny FLUX fast
DYNAMIC_SHIFT = {  # a dynamic shift whose every key differs from both stock fallbacks
    "use_dynamic_shifting": True,
    "base_image_seq_len": 4,
    "max_image_seq_len": 64,
    "base_shift": 0.3,
    "max_shift": 1.4,
}
TYPE_ERRORS = (jaxtyping.TypeCheckError, beartype.roar.BeartypeException)
SHIFT_KEYS = ("base_image_seq_len", "max_image_seq_len", "base_shift", "max_shift")


def _with_dynamic_shift(folder: Path, out: Path) -> Path:
    shutil.copytree(folder, out)
    config_file = out / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **DYNAMIC_SHIFT}))
    return out


def sd3_policy(folder: Path, **kwargs: Any) -> DefaultDDPOStableDiffusion3Pipeline:
    pipe = DefaultDDPOStableDiffusion3Pipeline(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_policy(folder: Path, **kwargs: Any) -> DefaultDDPOFluxPipeline:
    pipe = DefaultDDPOFluxPipeline(folder, max_sequence_length=T5_TOKENS, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock_pipeline(family: str, folder: Path) -> Any:
    stock = (StableDiffusion3Pipeline if family == "sd3" else FluxPipeline).from_pretrained(folder)
    stock.set_progress_bar_config(disable=True)
    return stock


def ode_images(pipe: Any, family: str, *, stock: bool, steps: int = 3) -> torch.Tensor:
    extra: dict[str, Any] = {} if stock else {"noise_level": 0}
    if stock and family == "flux":
        extra = {"max_sequence_length": T5_TOKENS, "height": 64, "width": 64}
    out = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=3.5, output_type="pt",
               generator=torch.Generator().manual_seed(3), **extra)  # fmt: skip
    images: torch.Tensor = out.images
    return images


def rollout(pipe: Any, num_steps: int, seed: int, **kwargs: Any) -> Any:
    cond = pipe.encode(PROMPTS, "")
    gen = torch.Generator().manual_seed(seed)
    return pipe.rollout(cond, num_steps=num_steps, guidance_scale=1.0, generator=gen, **kwargs)


# --- the window drawn within a range of steps (Flow-GRPO's sde_window_range) -----------------


def test_window_start_is_drawn_within_the_range(sd3_path: Path) -> None:
    """The start is uniform in ``[low, high - k]``, drawn from the rollout's generator after the
    initial noise; the default range (every start that fits) draws as before."""
    pipe = sd3_policy(sd3_path, sde_window_size=2, sde_window_range=(1, 5))
    assert pipe.sde_window_range == (1, 5) and pipe.transitions_per_rollout(6) == 2
    pipe.check_num_steps(5)
    starts = set()
    for seed in range(8):
        gen = torch.Generator().manual_seed(seed)
        torch.randn(SD3_SHAPE, generator=gen)
        expected = int(torch.randint(1, 4, (1,), generator=gen))
        out = rollout(pipe, 6, seed)
        assert out.timesteps.tolist() == [expected, expected + 1]
        assert out.latents.shape == (2, 3, *SD3_SHAPE[1:]) and out.log_probs.shape == (2, 2)
        starts.add(expected)
    assert starts == {1, 2, 3}
    # (0, num_steps) is the default draw, number for number
    full = sd3_policy(sd3_path, sde_window_size=2, sde_window_range=(0, 6))
    default = sd3_policy(sd3_path, sde_window_size=2)
    for seed in range(3):
        torch.testing.assert_close(rollout(full, 6, seed).timesteps,
                                   rollout(default, 6, seed).timesteps)  # fmt: skip


def test_window_range_is_checked_before_model_work(sd3_path: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for bad in ((3, 3), (-1, 2), (True, 3)):
        with pytest.raises(ValueError, match=r"sde_window_range must be None or two ints"):
            DefaultDDPOStableDiffusion3Pipeline(missing, sde_window_size=1, sde_window_range=bad)
    for bad in ((0, 2.5), (0, 1, 2), "0,3"):  # also refused by the test suite's type check
        with pytest.raises((ValueError, *TYPE_ERRORS), match="sde_window_range"):
            DefaultDDPOStableDiffusion3Pipeline(missing, sde_window_size=1, sde_window_range=bad)
    with pytest.raises(ValueError, match=r"sde_window_range=\(0, 4\) needs sde_window_size"):
        DefaultDDPOStableDiffusion3Pipeline(missing, sde_window_range=(0, 4))
    with pytest.raises(ValueError, match=r"sde_window_start .* or sde_window_range .*, not both"):
        DefaultDDPOStableDiffusion3Pipeline(
            missing, sde_window_size=1, sde_window_start=0, sde_window_range=(0, 4)
        )
    with pytest.raises(ValueError, match=r"sde_window_size=3 does not fit in .*\(1, 3\)"):
        DefaultDDPOStableDiffusion3Pipeline(missing, sde_window_size=3, sde_window_range=(1, 3))
    # against the step count, before training (the trainer calls check_num_steps)
    pipe = sd3_policy(sd3_path, sde_window_size=2, sde_window_range=(0, 5))
    with pytest.raises(ValueError, match=r"sde_window_range=\(0, 5\) ends at step 5, past "
                                         r"DDPOConfig.sample_num_steps=4"):  # fmt: skip
        pipe.check_num_steps(4)


# --- the coefficients-preserving step (Flow-GRPO's sde_type="cps") --------------------------


def test_cps_rollout_rescores_to_its_log_probs(sd3_path: Path, perturb: Any) -> None:
    """The CPS policy samples with the CPS step, re-scores its transitions to the same
    log-probabilities (Flow-GRPO's ``-mean((x_prev - mu)^2)``), and reports the step's standard
    deviation ``sigma_prev sin(a pi / 2)`` both as ``std_dev`` and as Flow-GRPO's KL divisor."""
    pipe = sd3_policy(sd3_path, sde_type="cps", noise_level=0.8, sde_window_size=2,
                      sde_window_start=1)  # fmt: skip
    perturb(pipe, scale=0.2)
    cond = pipe.encode(PROMPTS, "")
    out = rollout(pipe, 4, seed=0)
    assert out.timesteps.tolist() == [1, 2] and out.log_probs.shape == (2, 2)
    sigmas = pipe.scheduler.sigmas
    for j in range(2):
        step = int(out.timesteps[j])
        with torch.no_grad():
            score = pipe.score(cond, out.latents[:, j], out.latents[:, j + 1],
                               out.schedule[j].expand(2, -1), cfg=False)  # fmt: skip
        torch.testing.assert_close(score.log_prob, out.log_probs[:, j], atol=1e-6, rtol=1e-5)
        std = float(sigmas[step + 1]) * math.sin(0.8 * math.pi / 2)
        torch.testing.assert_close(score.std_dev, torch.full((2,), std), atol=1e-7, rtol=1e-6)
        torch.testing.assert_close(score.flow_grpo_std_dev, score.std_dev, atol=0, rtol=0)
        residual = (out.latents[:, j + 1] - score.mean).square().mean(dim=(1, 2, 3))
        torch.testing.assert_close(out.log_probs[:, j], -residual, atol=1e-6, rtol=1e-5)
        z = (out.latents[:, j + 1] - score.mean) / std  # a draw of N(mean, std^2)
        assert 0.8 < float(z.std()) < 1.2 and abs(float(z.mean())) < 0.2
    # the step the policy takes is the core function's
    with torch.no_grad():
        t = pipe.scheduler.timesteps[1].expand(2)
        velocity = pipe._velocity(pipe.transformer, cond, out.latents[:, 0], t, 1.0, False)
    expected = flow_cps_step_with_logprob(velocity, out.latents[:, 0], sigmas[1].expand(2),
                                          sigmas[2].expand(2), noise_level=0.8,
                                          prev_sample=out.latents[:, 1])  # fmt: skip
    torch.testing.assert_close(expected.log_prob, out.log_probs[:, 0], atol=1e-6, rtol=1e-5)


def test_cps_leaves_the_last_step_to_the_ode(sd3_path: Path) -> None:
    """The CPS step has no noise at the last step (``sigma_prev = 0``): without a window every
    other step is stochastic and recorded, and the last is Euler's ODE step."""
    pipe = sd3_policy(sd3_path, sde_type="cps", noise_level=0.5)
    assert pipe.transitions_per_rollout(4) == 3
    x = torch.randn(SD3_SHAPE, generator=torch.Generator().manual_seed(7))
    out = pipe(PROMPTS, num_inference_steps=4, guidance_scale=1.0, latents=x, output_type="latent",
               generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert out.latents.shape == (2, 4, *SD3_SHAPE[1:]) and out.log_probs.shape == (2, 3)
    # the last step: Euler's step from the last recorded latent, no noise
    cond = pipe.encode(PROMPTS, "")
    last = out.latents[:, 3]
    sigma, t = pipe.scheduler.sigmas[3], pipe.scheduler.timesteps[3].expand(2)
    with torch.no_grad():
        velocity = pipe._velocity(pipe.transformer, cond, last, t, 1.0, False)
    torch.testing.assert_close(
        out.images, ode_step(velocity, last, sigma, sigma * 0), atol=0, rtol=0
    )
    with pytest.raises(ValueError, match=r"sde_window_start=2 with sde_window_size=2 ends at "
                                         r"step 4, past .*sample_num_steps=4 \(with "
                                         r"sde_type='cps' the last step has no noise"):  # fmt: skip
        sd3_policy(sd3_path, sde_type="cps", sde_window_size=2, sde_window_start=2).check_num_steps(
            4
        )
    with pytest.raises(ValueError, match=r"sample_num_steps=1 .*: use at least 2 steps"):
        pipe.check_num_steps(1)


def test_cps_arguments_are_checked(sd3_path: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"  # argument errors come before the folder is looked at
    with pytest.raises((ValueError, *TYPE_ERRORS), match="sde_type"):
        DefaultDDPOStableDiffusion3Pipeline(missing, sde_type="ode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"sde_type must be one of \('sde', 'cps'\).*'ode'"):
        check_sde_type("ode")
    with pytest.raises(ValueError, match=r"noise_level must be <= 1 with sde_type='cps'.*1.2"):
        DefaultDDPOFluxPipeline(missing, sde_type="cps", noise_level=1.2)
    pipe = sd3_policy(sd3_path, sde_type="cps")
    with pytest.raises(ValueError, match=r"noise_level must be <= 1 with sde_type='cps'"):
        pipe(PROMPTS, num_inference_steps=2, noise_level=1.5)
    assert sd3_policy(sd3_path, noise_level=1.2).noise_level == 1.2  # the SDE's is unbounded


# --- the initial noise drawn per row (for DDPOConfig.sample_same_latent) ---------------------


def test_initial_noise_generators_draw_each_rows_x_T(sd3_path: Path) -> None:
    """Row ``i``'s ``x_T`` is the first draw of ``initial_noise_generators[i]``; the steps'
    noise still comes from ``generator``, so rows with equal ``x_T`` still differ."""
    pipe = sd3_policy(sd3_path)
    gens = [torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)]
    out = rollout(pipe, 3, seed=0, initial_noise_generators=gens)
    x_T = torch.randn(1, *SD3_SHAPE[1:], generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out.latents[:, 0], x_T.expand(SD3_SHAPE), atol=0, rtol=0)
    assert not torch.allclose(out.latents[0, 1], out.latents[1, 1], atol=1e-3)
    # the same generators give the same rollout
    fresh = [torch.Generator().manual_seed(5) for _ in range(2)]
    torch.testing.assert_close(
        rollout(pipe, 3, seed=0, initial_noise_generators=fresh).latents,
        out.latents,
        atol=0,
        rtol=0,
    )
    plain = rollout(pipe, 3, seed=0)
    assert not torch.allclose(plain.latents[:, 0], out.latents[:, 0])
    with pytest.raises(ValueError, match=r"one generator per row \(2\), got 1"):
        rollout(pipe, 3, seed=0, initial_noise_generators=gens[:1])


# --- LoRA on the feed-forward layers as well -------------------------------------------------


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_feed_forward_lora_loads_in_stock_and_draws_the_same_images(
    family: str, sd3_path: Path, flux_path: Path, tmp_path: Path, perturb: Any
) -> None:
    folder = sd3_path if family == "sd3" else flux_path
    make = sd3_policy if family == "sd3" else flux_policy
    pipe = make(folder, lora_rank=2, lora_alpha=4, lora_targets="attention_ff")
    names = list(pipe.trainable_parameters())
    for target in FEED_FORWARD_TARGET_MODULES:
        assert any(f".{target}.lora_A" in n for n in names), target
    assert any(".attn.to_q.lora_A" in n for n in names)
    attention_only = make(folder, lora_rank=2, lora_alpha=4)
    assert not any(".ff" in n for n in attention_only.trainable_parameters())
    perturb(pipe, scale=0.2)
    pipe.save_lora_weights(tmp_path / "lora")
    stock = stock_pipeline(family, folder)
    stock.load_lora_weights(tmp_path / "lora")
    mine = ode_images(pipe, family, stock=False)
    torch.testing.assert_close(mine, ode_images(stock, family, stock=True), atol=2e-5, rtol=0)
    again = make(tmp_path / "lora")  # our class reads the saved targets back
    assert set(again.trainable_parameters()) == set(names)
    torch.testing.assert_close(ode_images(again, family, stock=False), mine, atol=1e-6, rtol=0)
    # the feed-forward adapters act: without them the images differ
    with torch.no_grad():
        for name, param in pipe.trainable_parameters().items():
            if ".ff" in name and "lora_B" in name:
                param.zero_()
    assert not torch.allclose(ode_images(pipe, family, stock=False), mine, atol=1e-4)


def test_lora_targets_are_checked(tmp_path: Path) -> None:
    with pytest.raises((ValueError, *TYPE_ERRORS), match="lora_targets"):
        DefaultDDPOFluxPipeline(tmp_path / "nowhere", lora_targets="ff")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"lora_targets must be one of .*got lora_targets='ff'"):
        lora_target_modules(FLUX_LORA_TARGET_MODULES, "ff")


# --- fallback constants equal the stock pipeline's ---------------------------------------------


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_a_scheduler_config_lacking_a_shift_key_falls_back_as_the_stock_pipeline(
    family: str, sd3_path: Path, flux_path: Path, tmp_path: Path
) -> None:
    """With each of the dynamic shift's keys missing from the scheduler's config, the schedule
    equals the stock pipeline's (SD3 falls back to ``max_shift`` 1.16, FLUX to 1.15)."""
    folder = _with_dynamic_shift(sd3_path if family == "sd3" else flux_path, tmp_path / "m")
    pipe = (sd3_policy if family == "sd3" else flux_policy)(folder)
    stock = stock_pipeline(family, folder)
    full = dict(stock.scheduler.config)
    extra = {"max_sequence_length": T5_TOKENS} if family == "flux" else {}

    def timesteps(drop: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        config = FrozenDict({k: v for k, v in full.items() if k != drop})
        pipe.scheduler._internal_dict = stock.scheduler._internal_dict = config
        pipe(PROMPTS[:1], num_inference_steps=3, noise_level=0, output_type="latent")
        stock(PROMPTS[:1], num_inference_steps=3, output_type="latent", height=64, width=64,
              **extra)  # fmt: skip
        return pipe.scheduler.timesteps.clone(), stock.scheduler.timesteps.clone()

    configured, theirs = timesteps(None)
    torch.testing.assert_close(configured, theirs, atol=0, rtol=0)
    for key in SHIFT_KEYS:
        mine, theirs = timesteps(key)
        torch.testing.assert_close(mine, theirs, atol=0, rtol=0, msg=f"without {key}")
        assert not torch.allclose(mine, configured, atol=1e-3), key  # the fallback is used


def test_flux_default_resolution_without_a_vae_sample_size_is_the_stock_default(
    tmp_path: Path,
) -> None:
    """``FluxPipeline`` draws ``128 * vae_scale_factor`` pixels by default; a folder whose VAE
    config has no ``sample_size`` gets the same (a 4x VAE here: 512, not FLUX.1's 1024)."""
    components = tiny_flux_components(0)
    vae = components["vae"]
    components["vae"] = AutoencoderKL(
        **{**vae.config, "down_block_types": ("DownEncoderBlock2D",) * 3,
           "up_block_types": ("UpDecoderBlock2D",) * 3, "block_out_channels": (8, 16, 16)}
    )  # fmt: skip
    folder = tmp_path / "no-size"
    save_flux_pipeline(components, folder)
    config_file = folder / "vae" / "config.json"
    config = json.loads(config_file.read_text())
    del config["sample_size"]
    config_file.write_text(json.dumps(config))
    stock = stock_pipeline("flux", folder)
    side = stock.default_sample_size * stock.vae_scale_factor
    assert flux_policy(folder).resolution == (side, side) == (512, 512)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_the_vae_factor_without_block_out_channels_is_the_stock_pipelines(
    family: str, tmp_path: Path
) -> None:
    from ddpo.adapters.flux.checks import flux_latent_factor
    from ddpo.adapters.sd3.checks import sd3_latent_factor

    config = {"_class_name": "AutoencoderKL", "latent_channels": 16}
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps(config))
    vae = AutoencoderKL.from_config(config)
    stock = 2 ** (len(vae.config.block_out_channels) - 1)  # both pipelines' vae_scale_factor
    factor = sd3_latent_factor if family == "sd3" else flux_latent_factor
    assert factor(tmp_path) == stock


# --- MixGRPO-Flash's steps after the window (post_window_solver, post_window_step_ratio) ------


def test_the_steps_after_the_window_take_dpm_solver_plus_plus(sd3_path: Path, perturb: Any) -> None:
    """The window samples as before; after it, each step is DPM-Solver++'s second order from
    the previous step's clean estimate (the window's last, first), as `flow_dpm_solver_step`
    written out by hand; the final step to sigma 0 is the clean estimate."""
    window = {"sde_window_size": 2, "sde_window_start": 1}
    euler = sd3_policy(sd3_path, **window)
    dpm = sd3_policy(sd3_path, post_window_solver="dpmsolver++", **window)
    for pipe in (euler, dpm):
        perturb(pipe, scale=0.2)
    a, b = rollout(euler, 6, seed=0), rollout(dpm, 6, seed=0)
    torch.testing.assert_close(a.latents, b.latents, atol=0, rtol=0)
    torch.testing.assert_close(a.log_probs, b.log_probs, atol=0, rtol=0)
    assert (a.final_latents - b.final_latents).abs().max() > 1e-3
    cond = dpm.encode(PROMPTS, "")
    sigmas, timesteps = dpm.scheduler.sigmas, dpm.scheduler.timesteps

    def velocity(x: torch.Tensor, i: int) -> torch.Tensor:
        with torch.no_grad():
            return dpm._velocity(dpm.transformer, cond, x, timesteps[i].expand(2), 1.0, False)

    x = b.latents[:, 1]  # before the window's last step (2)
    previous = (x - sigmas[2] * velocity(x, 2), sigmas[2].expand(2))
    x = b.latents[:, 2]
    for i in range(3, 6):
        step = flow_dpm_solver_step(velocity(x, i), x, sigmas[i].expand(2),
                                    sigmas[i + 1].expand(2), previous_clean=previous[0],
                                    sigma_previous=previous[1])  # fmt: skip
        x, previous = step.prev_sample, (step.clean, sigmas[i].expand(2))
    torch.testing.assert_close(b.final_latents, x, atol=1e-5, rtol=1e-5)


def test_the_steps_after_the_window_can_be_fewer(sd3_path: Path) -> None:
    """``post_window_step_ratio``: MixGRPO-Flash's count, ``max(1, int((r + 1) ratio) - 1)`` of
    the ``r`` steps after the window, spaced evenly between the schedule's own sigmas; the
    transformer runs that many times fewer."""
    schedule = probe_schedule(sd3_policy(sd3_path).scheduler, 25)
    fast = post_window_schedule(schedule, 4, 0.4)  # 21 steps after the window: int(8.8) - 1
    assert fast.num_steps == 4 + 7 and fast.timesteps.shape == (11,)
    torch.testing.assert_close(fast.sigmas[:5], schedule.sigmas[:5], atol=0, rtol=0)
    assert float(fast.sigmas[-1]) == 0 and bool((fast.sigmas.diff() < 0).all())
    torch.testing.assert_close(fast.timesteps, fast.sigmas[:-1] * 1000, atol=1e-3, rtol=1e-5)
    halved = post_window_schedule(schedule, 5, 0.5)  # 20 after: 9 steps, every 20/9th sigma
    assert halved.num_steps == 14 and post_window_schedule(schedule, 4, 1.0) is schedule
    calls = []
    pipe = sd3_policy(sd3_path, sde_window_size=2, sde_window_start=1,
                      post_window_solver="dpmsolver++", post_window_step_ratio=0.5)  # fmt: skip
    pipe.transformer.register_forward_hook(lambda *_: calls.append(1))
    out = rollout(pipe, 6, seed=0)  # 3 steps after the window: max(1, int(2) - 1) = 1
    assert len(calls) == 3 + 1 and out.log_probs.shape == (2, 2)
    cond = pipe.encode(PROMPTS, "")
    with torch.no_grad():  # one first-order step to sigma 0: the clean estimate
        t = pipe.scheduler.timesteps[3].expand(2)
        v = pipe._velocity(pipe.transformer, cond, out.latents[:, 2], t, 1.0, False)
    clean = out.latents[:, 2] - pipe.scheduler.sigmas[3] * v
    torch.testing.assert_close(out.final_latents, clean, atol=1e-5, rtol=1e-5)


def test_the_post_window_options_are_checked_before_model_work(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises((ValueError, *TYPE_ERRORS), match="post_window_solver"):
        DefaultDDPOStableDiffusion3Pipeline(missing, sde_window_size=2, post_window_solver="rk4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"post_window_step_ratio must be in \(0, 1\], got 0"):
        DefaultDDPOFluxPipeline(missing, sde_window_size=2, post_window_step_ratio=0)
    with pytest.raises(ValueError, match=r"change the deterministic steps after a stochastic "
                                         r"window: set sde_window_size"):  # fmt: skip
        DefaultDDPOStableDiffusion3Pipeline(missing, post_window_solver="dpmsolver++")
