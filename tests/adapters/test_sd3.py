"""DefaultDDPOStableDiffusion3Pipeline on a tiny random SD3 built from config (no hub): what
is SD3's own, and the flow base's window, tested on SD3 for both flow families.

What every family does (stock images in the ODE limit, the stock prompt encoding, the reference
policy, LoRA and full saves in stock diffusers, gradient checkpointing) is in
``test_conformance.py``. The Flow-GRPO SDE step itself is tested in ``tests/core``; here its use:
the stochastic window (sampled, re-scored, the ODE outside it), the flow arguments' checks, and
SD3's dynamic shift.
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

pytestmark = pytest.mark.slow

PROMPTS = ["a red circle", "a blue square"]
SHAPE = (2, 16, 8, 8)  # latents of two 64x64 images


def new_policy(folder: Path, **kwargs: Any) -> DefaultDDPOStableDiffusion3Pipeline:
    pipe = DefaultDDPOStableDiffusion3Pipeline(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock_pipeline(folder: Path) -> Any:
    stock = StableDiffusion3Pipeline.from_pretrained(folder)
    stock.set_progress_bar_config(disable=True)
    return stock


def perturb_lora(pipe: Any, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(pipe.trainable_parameters().items()):
            param.add_(0.2 * torch.randn(param.shape, generator=gen))


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


def test_bad_flow_arguments_get_clear_errors_before_model_work(
    sd3_path: Path, tmp_path: Path
) -> None:
    # argument errors come before the folder is even looked at
    missing = tmp_path / "nowhere"
    for level in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="noise_level"):
            DefaultDDPOStableDiffusion3Pipeline(missing, noise_level=level)
    with pytest.raises(ValueError, match=r"noise_level=0 samples with the ODE .* unused"):
        DefaultDDPOStableDiffusion3Pipeline(missing, noise_level=0, sde_window_size=2)
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
