"""``ddim_alpha_bars`` against diffusers' ``DDIMScheduler``."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import ddpo
from ddpo.adapters import ddim_alpha_bars
from ddpo.core import ddim_step_with_logprob

_PACKAGED = Path(ddpo.__file__).parent / "models/ddpo-tiny-shapes/scheduler/scheduler_config.json"
# v-prediction, rescale_betas_zero_snr=True, trailing spacing, set_alpha_to_one=False.
PACKAGED_SCHEDULER = {
    k: v for k, v in json.loads(_PACKAGED.read_text()).items() if not k.startswith("_")
}
SCHEDULES = {
    "sd": {},  # Stable Diffusion's: leading spacing, steps_offset=1
    "zero_snr_trailing": PACKAGED_SCHEDULER,
    "zero_snr_leading": {**PACKAGED_SCHEDULER, "timestep_spacing": "leading"},
    "zero_snr_linspace": {**PACKAGED_SCHEDULER, "timestep_spacing": "linspace"},
}


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


def test_epsilon_prediction_floors_a_zero_alpha_bar() -> None:
    """A zero-terminal-SNR table's ``alpha_bar = 0`` reads as ``2**-24`` for epsilon prediction
    (as diffusers' Euler scheduler sets it), and as 0 for v and x0 prediction (as DDIM's)."""
    for prediction_type, expected in [
        ("epsilon", 2.0**-24),
        ("v_prediction", 0.0),
        ("sample", 0.0),
    ]:
        scheduler = _scheduler(10, **{**PACKAGED_SCHEDULER, "prediction_type": prediction_type})
        assert float(scheduler.alphas_cumprod[999]) == 0.0
        everything = torch.arange(1000)
        alpha_bar_t, _ = ddim_alpha_bars(scheduler, everything)
        assert float(alpha_bar_t[999]) == expected
        assert torch.equal(alpha_bar_t[:999], scheduler.alphas_cumprod[:999])
    sd = _scheduler(10)  # no zero entry: nothing changes
    assert torch.equal(ddim_alpha_bars(sd, torch.arange(1000))[0], sd.alphas_cumprod)


@settings(max_examples=40, deadline=None)
@given(
    schedule=st.sampled_from(sorted(SCHEDULES)),
    steps=st.integers(1, 1000),
    prediction_type=st.sampled_from(["epsilon", "v_prediction", "sample"]),
    eta=st.one_of(st.just(1.0), st.floats(2.0**-100, 1.0)),
    seed=st.integers(0, 2**31 - 1),
)
@example(schedule="zero_snr_trailing", steps=6, prediction_type="v_prediction", eta=1.0, seed=0)
@example(schedule="zero_snr_trailing", steps=10, prediction_type="epsilon", eta=0.5, seed=0)
@example(schedule="zero_snr_trailing", steps=1000, prediction_type="sample", eta=1.0, seed=0)
@example(schedule="sd", steps=50, prediction_type="epsilon", eta=2.0**-100, seed=0)
def test_every_step_of_every_schedule_is_finite(
    schedule: str, steps: int, prediction_type: str, eta: float, seed: int
) -> None:
    """Through ``ddim_alpha_bars`` and the core step, at every timestep of Stable Diffusion's and
    zero-terminal-SNR schedules, ``prev_sample``, ``mean``, ``pred_original_sample``,
    ``std_dev`` and ``log_prob`` are finite, for every prediction type and ``eta`` in (0, 1].

    ``eta`` starts at ``2**-100``: ``sigma_t`` must be a float32 number above 0 (the smallest
    ``sqrt(variance)`` of these schedules is about 0.02). The one exception is documented: the
    last step from ``t = 0`` of ``"linspace"`` and long ``"trailing"`` schedules has
    ``alpha_bar_prev = alpha_bar_t`` (diffusers' ``final_alpha_cumprod``), so ``sigma_t = 0``:
    that step maps ``x_t`` to itself and has no log-density; its ``log_prob`` is defined as 0.
    """
    scheduler = _scheduler(1, **{**SCHEDULES[schedule], "prediction_type": prediction_type})
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    # Schedules diffusers itself cannot step (ddim_alpha_bars rejects them): "leading" with
    # steps_offset=1 and 1000 steps starts at t = 1000; "trailing" ends at t = -1 for 62 step
    # counts (61, 103, 121, ...: its float arange yields one timestep too many).
    assume(int(timesteps.min()) >= 0 and int(timesteps.max()) < 1000)
    batch = len(timesteps)
    g = torch.Generator().manual_seed(seed)
    model_output, sample, noise = (torch.randn(batch, 1, 2, 2, generator=g) for _ in range(3))
    alpha_bar_t, alpha_bar_prev = ddim_alpha_bars(scheduler, timesteps)
    out = ddim_step_with_logprob(
        model_output,
        sample,
        alpha_bar_t,
        alpha_bar_prev,
        eta=eta,
        prediction_type=prediction_type,  # type: ignore[arg-type]
        noise=noise,
    )
    for name in ("prev_sample", "mean", "pred_original_sample", "std_dev"):
        assert bool(torch.isfinite(getattr(out, name)).all()), name
    identity = alpha_bar_prev == alpha_bar_t
    assert torch.equal(out.std_dev == 0, identity)
    assert bool(torch.isfinite(out.log_prob).all())
    assert bool((out.log_prob[identity] == 0).all())
    if bool(identity.any()):
        assert int(timesteps[-1]) == 0 and bool(identity[-1]) and int(identity.sum()) == 1
        torch.testing.assert_close(out.prev_sample[-1], sample[-1], rtol=1e-5, atol=1e-5)
