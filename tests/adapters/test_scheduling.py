"""``ddim_alpha_bars`` against diffusers' ``DDIMScheduler``."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpo.adapters import ddim_alpha_bars
from ddpo.core import ddim_step_with_logprob


def _scheduler(steps: int, **overrides: object) -> DDIMScheduler:
    config = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
              "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}  # fmt: skip
    config.update(overrides)
    scheduler = DDIMScheduler(**config)  # type: ignore[arg-type]
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize("steps", [1, 7, 20, 50])
@pytest.mark.parametrize("set_alpha_to_one", [False, True])
def test_matches_diffusers_step_for_every_timestep(steps: int, set_alpha_to_one: bool) -> None:
    scheduler = _scheduler(steps, set_alpha_to_one=set_alpha_to_one)
    gen = torch.Generator().manual_seed(steps)
    for t in scheduler.timesteps:
        sample = torch.randn(2, 4, 8, 8, generator=gen)
        model_output = torch.randn(2, 4, 8, 8, generator=gen)
        noise = torch.randn(2, 4, 8, 8, generator=gen)
        expected = scheduler.step(model_output, t, sample, eta=1.0, variance_noise=noise)
        alpha_bar_t, alpha_bar_prev = ddim_alpha_bars(scheduler, t.expand(2))
        ours = ddim_step_with_logprob(
            model_output, sample, alpha_bar_t, alpha_bar_prev, eta=1.0, noise=noise
        )
        torch.testing.assert_close(ours.prev_sample, expected.prev_sample, atol=1e-6, rtol=1e-5)


def test_last_step_uses_final_alpha_cumprod() -> None:
    for set_alpha_to_one in (False, True):
        scheduler = _scheduler(10, set_alpha_to_one=set_alpha_to_one)
        last = scheduler.timesteps[-1:]
        _, alpha_bar_prev = ddim_alpha_bars(scheduler, last)
        assert float(alpha_bar_prev[0]) == pytest.approx(float(scheduler.final_alpha_cumprod))


@settings(max_examples=30, deadline=None)
@given(steps=st.integers(1, 60), picks=st.lists(st.integers(0, 10_000), min_size=1, max_size=9))
def test_per_sample_timesteps_equal_one_at_a_time(steps: int, picks: list[int]) -> None:
    scheduler = _scheduler(steps)
    timesteps = scheduler.timesteps[torch.tensor([p % steps for p in picks])]
    batch_t, batch_prev = ddim_alpha_bars(scheduler, timesteps)
    for i, t in enumerate(timesteps):
        one_t, one_prev = ddim_alpha_bars(scheduler, t.reshape(1))
        assert float(one_t[0]) == float(batch_t[i]) and float(one_prev[0]) == float(batch_prev[i])
    assert batch_t.dtype == torch.float32 and batch_t.shape == timesteps.shape
    assert bool((batch_prev >= batch_t).all())  # alpha_bar grows toward t = 0


def test_needs_set_timesteps() -> None:
    scheduler = DDIMScheduler()
    with pytest.raises(ValueError, match="num_inference_steps must be set"):
        ddim_alpha_bars(scheduler, torch.tensor([10]))


def test_rejects_non_ddim_schedulers() -> None:
    flow = FlowMatchEulerDiscreteScheduler()
    flow.set_timesteps(4)
    with pytest.raises(TypeError, match="FlowMatchEulerDiscreteScheduler has no 'alphas_cumprod'"):
        ddim_alpha_bars(flow, torch.tensor([1]))
    ddpm = DDPMScheduler()  # has the tables but no final_alpha_cumprod: not DDIM
    ddpm.set_timesteps(4)
    with pytest.raises(TypeError, match="DDPMScheduler has no 'final_alpha_cumprod'"):
        ddim_alpha_bars(ddpm, torch.tensor([1]))


def test_rejects_out_of_range_timesteps() -> None:
    scheduler = _scheduler(10)
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 1000\).*1000"):
        ddim_alpha_bars(scheduler, torch.tensor([5, 1000]))
