"""Tests of ddpo.core.noising: diffusers parity of the forward noising and the training targets,
the inverse maps, properties, gradients, errors."""

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

import beartype.roar
import jaxtyping
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpo.core import (
    alpha_bar_at,
    ddim_step_with_logprob,
    flow_add_noise,
    flow_cps_step_with_logprob,
    flow_predicted_x0,
    flow_velocity_target,
    vp_add_noise,
    vp_predicted_x0,
    vp_training_target,
    vp_velocity,
)

TYPE_ERRORS = (jaxtyping.TypeCheckError, beartype.roar.BeartypeException)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
BETA_SCHEDULES = {
    "linear": {"beta_schedule": "linear"},
    "scaled_linear": SD_BETAS,
    "squaredcos_cap_v2": {"beta_schedule": "squaredcos_cap_v2"},
    # alpha_bar = 0 at t = 999 (Lin et al., 2024), as the packaged tiny model's scheduler
    "scaled_linear_zero_snr": {**SD_BETAS, "rescale_betas_zero_snr": True},
}
TIMESTEP_PAIRS = ((0, 999), (999, 0), (1, 500), (998, 250))


def randn(seed: int, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- parity with diffusers: variance preserving ----------------------------------------------


@pytest.mark.parametrize("timesteps", TIMESTEP_PAIRS, ids=str)
@pytest.mark.parametrize("betas", BETA_SCHEDULES.values(), ids=BETA_SCHEDULES.keys())
@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, DDIMScheduler])
def test_vp_matches_diffusers_add_noise_and_get_velocity(
    scheduler_class: Any, betas: dict[str, Any], timesteps: tuple[int, int]
) -> None:
    """SD-sized latents with a different timestep per row: ``alpha_bar_at`` + ``vp_add_noise``
    is ``add_noise``, ``vp_velocity`` and the v target are ``get_velocity``."""
    scheduler: Any = scheduler_class(num_train_timesteps=1000, **betas)
    t = torch.tensor(timesteps)
    x0, noise = randn(0, 2, 4, 64, 64), randn(1, 2, 4, 64, 64)
    alpha_bar_t = alpha_bar_at(scheduler.alphas_cumprod, t)

    x_t = vp_add_noise(x0, noise, alpha_bar_t)
    torch.testing.assert_close(x_t, scheduler.add_noise(x0, noise, t), rtol=1e-6, atol=1e-6)
    expected_v = scheduler.get_velocity(x0, noise, t)
    torch.testing.assert_close(
        vp_velocity(x0, noise, alpha_bar_t), expected_v, rtol=1e-6, atol=1e-6
    )
    target = vp_training_target(x0, noise, alpha_bar_t, prediction_type="v_prediction")
    torch.testing.assert_close(target, expected_v, rtol=1e-6, atol=1e-6)
    # diffusers' own noisy point and velocity give x_0 back
    x0_hat = vp_predicted_x0(x_t, expected_v, alpha_bar_t, prediction_type="v_prediction")
    torch.testing.assert_close(x0_hat, x0, rtol=1e-5, atol=1e-5)


def test_alpha_bar_at_reads_the_table_for_any_integer_dtype() -> None:
    """A uint8 index would be a boolean mask in torch; every integer dtype gathers the same."""
    table = DDPMScheduler(**SD_BETAS).alphas_cumprod  # type: ignore[attr-defined]
    t = torch.tensor([0, 7, 255, 3])
    expected = torch.stack([table[int(i)] for i in t])
    for dtype in (torch.uint8, torch.int32, torch.int64):
        out = alpha_bar_at(table, t.to(dtype))
        assert out.dtype == table.dtype
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_zero_terminal_snr_point_is_pure_noise() -> None:
    """At ``alpha_bar = 0`` the noisy point is ``eps``, the velocity ``-x_0``, and v-prediction
    still recovers ``x_0`` (epsilon prediction cannot, and is refused: see the error tests)."""
    x0, noise = randn(0, 2, 3, 4, 4), randn(1, 2, 3, 4, 4)
    zero = torch.zeros(2)
    torch.testing.assert_close(vp_add_noise(x0, noise, zero), noise, rtol=0, atol=0)
    torch.testing.assert_close(vp_velocity(x0, noise, zero), -x0, rtol=0, atol=0)
    v = vp_training_target(x0, noise, zero, prediction_type="v_prediction")
    x0_hat = vp_predicted_x0(noise, v, zero, prediction_type="v_prediction")
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=0)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_vp_predicted_x0_is_the_ddim_steps_pred_original_sample(prediction_type: Any) -> None:
    scheduler: Any = DDIMScheduler(**SD_BETAS)
    alpha_bar_t = alpha_bar_at(scheduler.alphas_cumprod, torch.tensor([999, 20, 500]))
    x_t, model_output = randn(0, 3, 4, 8, 8), randn(1, 3, 4, 8, 8)
    step = ddim_step_with_logprob(
        model_output,
        x_t,
        alpha_bar_t,
        alpha_bar_t.clamp(max=0.99) + 0.005,
        eta=1.0,
        prediction_type=prediction_type,
        noise=randn(2, 3, 4, 8, 8),
    )
    x0_hat = vp_predicted_x0(x_t, model_output, alpha_bar_t, prediction_type=prediction_type)
    torch.testing.assert_close(x0_hat, step.pred_original_sample, rtol=0, atol=0)


# --- parity with diffusers: rectified flow ---------------------------------------------------

# diffusers' calculate_shift for a 64x64 latent in 2x2 patches (1024 tokens), FLUX.1's defaults
FLUX_MU = 0.5 + (1.15 - 0.5) * (1024 - 256) / (4096 - 256)
FLOW_SCHEDULERS = {
    "no_shift": ({"shift": 1.0}, {}),
    "sd3_shift_3": ({"shift": 3.0}, {}),
    "flux_dynamic_shift": (
        {
            "use_dynamic_shifting": True,
            "base_shift": 0.5,
            "max_shift": 1.15,
            "base_image_seq_len": 256,
            "max_image_seq_len": 4096,
            "shift": 3.0,
        },
        {"mu": FLUX_MU},
    ),
}


@pytest.mark.parametrize("indices", [(0, 27), (5, 14), (27, 1)], ids=str)
@pytest.mark.parametrize("config", FLOW_SCHEDULERS.values(), ids=FLOW_SCHEDULERS.keys())
def test_flow_add_noise_matches_diffusers_scale_noise(
    config: tuple[dict[str, Any], dict[str, Any]], indices: tuple[int, int]
) -> None:
    """After ``set_timesteps(28)``, timesteps taken from ``scheduler.timesteps``: ``scale_noise``
    is ``flow_add_noise`` at the schedule's sigma (index 0 is sigma = 1)."""
    scheduler: Any = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **config[0])
    scheduler.set_timesteps(28, **config[1])
    index = torch.tensor(indices)
    timestep, sigma = scheduler.timesteps[index], scheduler.sigmas[index]
    x0, noise = randn(0, 2, 16, 64, 64), randn(1, 2, 16, 64, 64)

    x_sigma = flow_add_noise(x0, noise, sigma)
    expected = scheduler.scale_noise(x0, timestep, noise)
    torch.testing.assert_close(x_sigma, expected, rtol=1e-6, atol=1e-6)
    # the exact velocity takes the noisy point back to x_0
    x0_hat = flow_predicted_x0(x_sigma, flow_velocity_target(x0, noise), sigma)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-5, atol=1e-5)


def test_flow_velocity_is_the_derivative_along_the_path() -> None:
    """``d x_sigma / d sigma = eps - x_0`` (float64 central difference at several sigmas)."""
    x0, noise = randn(0, 3, 2, 4, 4, dtype=torch.float64), randn(1, 3, 2, 4, 4, dtype=torch.float64)
    sigma, h = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64), 1e-4
    slope = (flow_add_noise(x0, noise, sigma + h) - flow_add_noise(x0, noise, sigma - h)) / (2 * h)
    torch.testing.assert_close(slope, flow_velocity_target(x0, noise), rtol=1e-9, atol=1e-9)


def test_flow_predicted_x0_is_the_cps_steps_clean_estimate() -> None:
    """With ``sigma_prev = 0`` the CPS step's mean is its ``x0_hat = x - sigma v``."""
    x_t, velocity = randn(0, 3, 4, 8, 8), randn(1, 3, 4, 8, 8)
    sigma = torch.tensor([1.0, 0.6, 0.05])
    step = flow_cps_step_with_logprob(
        velocity, x_t, sigma, torch.zeros(3), noise_level=0.8, noise=randn(2, 3, 4, 8, 8)
    )
    torch.testing.assert_close(flow_predicted_x0(x_t, velocity, sigma), step.mean, rtol=0, atol=0)


# --- the inverse maps, properties, gradients ---------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    prediction_type=st.sampled_from(PREDICTION_TYPES),
    low=st.floats(1e-3, 1.0),
)
def test_vp_target_reconstructs_x0(seed: int, prediction_type: Any, low: float) -> None:
    """``vp_predicted_x0`` of the noisy point with the exact target is ``x_0`` (float64)."""
    x0, noise = randn(seed, 3, 2, 3, 3, dtype=torch.float64), randn(seed + 1, 3, 2, 3, 3).double()
    alpha_bar_t = torch.tensor([low, (1 + low) / 2, 1.0], dtype=torch.float64)
    x_t = vp_add_noise(x0, noise, alpha_bar_t)
    target = vp_training_target(x0, noise, alpha_bar_t, prediction_type=prediction_type)
    x0_hat = vp_predicted_x0(x_t, target, alpha_bar_t, prediction_type=prediction_type)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-10, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), low=st.floats(0.0, 1.0))
def test_flow_target_reconstructs_x0(seed: int, low: float) -> None:
    x0, noise = randn(seed, 3, 2, 3, 3, dtype=torch.float64), randn(seed + 1, 3, 2, 3, 3).double()
    sigma = torch.tensor([low, (1 + low) / 2, 1.0], dtype=torch.float64)
    x_t = flow_add_noise(x0, noise, sigma)
    x0_hat = flow_predicted_x0(x_t, flow_velocity_target(x0, noise), sigma)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-10, atol=1e-10)


Fn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def functions(*, checked: bool = True) -> dict[str, Fn]:
    """Every function as ``f(latents, latents, per-sample values)``; with ``checked=False``
    without the test suite's runtime type check (as users call them)."""

    def get(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        return function if checked else inspect.unwrap(function)

    def velocity_target(x0: torch.Tensor, noise: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return get(flow_velocity_target)(x0, noise)

    return {
        "vp_add_noise": get(vp_add_noise),
        "vp_velocity": get(vp_velocity),
        **{
            f"vp_training_target[{p}]": partial(get(vp_training_target), prediction_type=p)
            for p in PREDICTION_TYPES
        },
        **{
            f"vp_predicted_x0[{p}]": partial(get(vp_predicted_x0), prediction_type=p)
            for p in PREDICTION_TYPES
        },
        "flow_add_noise": get(flow_add_noise),
        "flow_velocity_target": velocity_target,
        "flow_predicted_x0": get(flow_predicted_x0),
    }


FUNCTIONS = functions()


@pytest.mark.parametrize("name", FUNCTIONS)
@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_shape_dtype_and_batched_equals_per_sample(
    name: str, seed: int, shape: tuple[int, int, int, int], dtype: torch.dtype
) -> None:
    """The result has the first argument's shape and dtype, is computed in float32 (a bfloat16
    result is the float32 result rounded once), and each row is the row computed alone."""
    fn = FUNCTIONS[name]
    a, b = randn(seed, *shape).to(dtype), randn(seed + 1, *shape).to(dtype)
    s = 0.01 + 0.99 * torch.rand(shape[0], generator=torch.Generator().manual_seed(seed))
    out = fn(a, b, s)
    assert out.shape == a.shape and out.dtype == dtype
    torch.testing.assert_close(out, fn(a.float(), b.float(), s).to(dtype), rtol=0, atol=0)
    for i in range(shape[0]):
        row = fn(a[i : i + 1], b[i : i + 1], s[i : i + 1])
        torch.testing.assert_close(row, out[i : i + 1], rtol=0, atol=0)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_gradcheck(name: str) -> None:
    """``torch.autograd.gradcheck`` with respect to both latent arguments, float64."""
    a = randn(0, 2, 1, 2, 2, dtype=torch.float64).requires_grad_(True)
    b = randn(1, 2, 1, 2, 2, dtype=torch.float64).requires_grad_(True)
    s = torch.tensor([0.3, 0.8], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, y: FUNCTIONS[name](x, y, s), (a, b))


# --- errors ------------------------------------------------------------------------------------

VP_FUNCTIONS = [name for name in FUNCTIONS if name.startswith("vp_")]
SIGMA_FUNCTIONS = ["flow_add_noise", "flow_predicted_x0"]


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
@pytest.mark.parametrize("name", VP_FUNCTIONS + SIGMA_FUNCTIONS)
def test_schedule_values_outside_the_unit_interval_raise(name: str, value: float) -> None:
    argument = "sigma" if name.startswith("flow") else "alpha_bar_t"
    x = randn(0, 2, 1, 2, 2)
    with pytest.raises(ValueError, match=rf"{argument} must be in .0, 1\], got {argument}=\[\w*"):
        FUNCTIONS[name](x, x, torch.tensor([0.5, value]))


def test_epsilon_needs_a_positive_alpha_bar_to_predict_x0() -> None:
    x = randn(0, 2, 1, 2, 2)
    with pytest.raises(ValueError, match=r"alpha_bar_t must be in \(0, 1\], got alpha_bar_t=\[0"):
        vp_predicted_x0(x, x, torch.tensor([0.5, 0.0]), prediction_type="epsilon")
    for prediction_type in ("v_prediction", "sample"):
        out = vp_predicted_x0(x, x, torch.tensor([0.5, 0.0]), prediction_type=prediction_type)
        assert bool(torch.isfinite(out).all())


MISMATCHES = {
    "per_sample": (((2, 1, 2, 2), (2, 1, 2, 2), (3,)), r"shape \(batch,\) = \(2,\), got \(3,\)"),
    "latents": (((2, 1, 2, 2), (2, 1, 2, 3), (2,)), r"must have (x0|x_t)'s shape \(2, 1, 2, 2\)"),
}


@pytest.mark.parametrize(
    ("name", "mismatch"),
    [
        (name, mismatch)
        for name in FUNCTIONS
        for mismatch in MISMATCHES
        # flow_velocity_target takes no per-sample values
        if (name, mismatch) != ("flow_velocity_target", "per_sample")
    ],
)
def test_mismatched_shapes_raise(name: str, mismatch: str) -> None:
    """Mismatched shapes fail the test suite's type check, and without it raise ValueError
    naming the argument and its shape."""
    shapes, match = MISMATCHES[mismatch]
    a, b, s = randn(0, *shapes[0]), randn(1, *shapes[1]), torch.full(shapes[2], 0.5)
    with pytest.raises((ValueError, *TYPE_ERRORS)):
        FUNCTIONS[name](a, b, s)
    with pytest.raises(ValueError, match=match):
        functions(checked=False)[name](a, b, s)


@pytest.mark.parametrize("function", [vp_training_target, vp_predicted_x0])
def test_unknown_prediction_type_raises(function: Any) -> None:
    x = randn(0, 2, 1, 2, 2)
    with pytest.raises((ValueError, *TYPE_ERRORS), match="prediction_type"):
        function(x, x, torch.full((2,), 0.5), prediction_type="flow")
    with pytest.raises(ValueError, match=r"prediction_type must be one of .*got 'flow'"):
        inspect.unwrap(function)(x, x, torch.full((2,), 0.5), prediction_type="flow")


@pytest.mark.parametrize("bad", [[0, 1000], [-1, 5]], ids=["past_the_end", "negative"])
def test_alpha_bar_at_refuses_timesteps_outside_the_table(bad: list[int]) -> None:
    table = DDPMScheduler().alphas_cumprod  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 1000\), got timesteps="):
        alpha_bar_at(table, torch.tensor(bad))


def test_alpha_bar_at_refuses_float_timesteps_and_a_table_not_1d() -> None:
    table = DDPMScheduler().alphas_cumprod  # type: ignore[attr-defined]
    with pytest.raises((TypeError, *TYPE_ERRORS), match="timesteps"):
        alpha_bar_at(table, torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match=r"timesteps must be an integer tensor, got dtype"):
        inspect.unwrap(alpha_bar_at)(table, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"alphas_cumprod must be one-dimensional, got shape"):
        inspect.unwrap(alpha_bar_at)(table.reshape(10, 100), torch.tensor([1, 2]))
