"""Tests of ddpo.core.ddim: TRL and diffusers parity, properties, gradients, errors."""

import inspect
import json
from pathlib import Path
from typing import Any

import beartype.roar
import jaxtyping
import pytest
import torch
from diffusers import DDIMScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

import ddpo
from ddpo.core import ddim_step_with_logprob

TYPE_ERRORS = (jaxtyping.TypeCheckError, beartype.roar.BeartypeException)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TRL_CASES = ("eps50_eta1", "eps20_eta05", "v25_eta1", "x0_10_eta08")
# The packaged model's scheduler: v-prediction, zero terminal SNR, trailing spacing.
ZERO_SNR_CONFIG = (
    Path(ddpo.__file__).parent / "models/ddpo-tiny-shapes/scheduler/scheduler_config.json"
)
# Step counts at which diffusers' 1 - alpha_bar_prev - sigma_t^2 rounds below 0 at t = 999
# (alpha_bar_t = 0) with eta = 1, making its DDIM step NaN.
ZERO_SNR_NAN_STEP_COUNTS = (6, 10, 13, 14, 19, 20, 23, 24, 25)


def alpha_bars(
    scheduler: DDIMScheduler, timesteps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``alpha_bar_t`` and ``alpha_bar_prev`` as diffusers' DDIM step looks them up."""
    table = scheduler.alphas_cumprod
    prev = timesteps - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alpha_bar_prev = torch.where(
        prev >= 0, table[prev.clamp(min=0)], scheduler.final_alpha_cumprod.to(table.dtype)
    )
    return table[timesteps], alpha_bar_prev


def zero_snr_scheduler(num_inference_steps: int, prediction_type: str) -> DDIMScheduler:
    """The packaged model's DDIM scheduler (``alpha_bar = 0`` at t = 999) after set_timesteps."""
    config = json.loads(ZERO_SNR_CONFIG.read_text())
    scheduler = DDIMScheduler.from_config({**config, "prediction_type": prediction_type})
    scheduler.set_timesteps(num_inference_steps)
    return scheduler


def random_step(
    seed: int, batch: int = 3, shape: tuple[int, int, int] = (2, 3, 3), dtype: Any = torch.float32
) -> dict[str, torch.Tensor]:
    """Random inputs of one step: model output, sample, alpha bars with a_prev > a_t, noise."""
    g = torch.Generator().manual_seed(seed)
    alpha_bar_t = 0.02 + 0.9 * torch.rand(batch, generator=g, dtype=dtype)
    alpha_bar_prev = alpha_bar_t + (1 - alpha_bar_t) * (0.05 + 0.9 * torch.rand(batch, generator=g))
    return {
        "model_output": torch.randn(batch, *shape, generator=g, dtype=dtype),
        "sample": torch.randn(batch, *shape, generator=g, dtype=dtype),
        "alpha_bar_t": alpha_bar_t,
        "alpha_bar_prev": alpha_bar_prev.to(dtype),
        "noise": torch.randn(batch, *shape, generator=g, dtype=dtype),
    }


def _scoring(inputs: dict[str, torch.Tensor], prev_sample: torch.Tensor) -> dict[str, torch.Tensor]:
    return {**{k: v for k, v in inputs.items() if k != "noise"}, "prev_sample": prev_sample}


# --- parity with TRL 0.11.4 (tests/fixtures) -------------------------------------------------


@pytest.mark.parametrize("case", TRL_CASES)
def test_matches_trl_reference(
    case: str, trl_reference: dict[str, Any], trl_ddim_tensors: dict[str, torch.Tensor]
) -> None:
    """Sampling with the fixture's noise and scoring the stored transitions reproduce TRL."""
    meta = next(c for c in trl_reference["ddim_cases"] if c["name"] == case)
    t = {k.split(".", 1)[1]: v for k, v in trl_ddim_tensors.items() if k.startswith(case + ".")}
    step = 1000 // meta["num_inference_steps"]
    prev = (t["timesteps"] - step).clamp(min=0)
    common = {
        "model_output": t["model_output"],
        "sample": t["sample"],
        "alpha_bar_t": t["alphas_cumprod"][t["timesteps"]],
        "alpha_bar_prev": t["alphas_cumprod"][prev],
        "eta": meta["eta"],
        "prediction_type": meta["prediction_type"],
    }
    sampled = ddim_step_with_logprob(**common, noise=t["noise"])
    torch.testing.assert_close(sampled.prev_sample, t["prev_sample"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sampled.log_prob, t["log_prob"], rtol=1e-5, atol=1e-6)

    scored = ddim_step_with_logprob(**common, prev_sample=t["scored_prev_sample"])
    torch.testing.assert_close(scored.log_prob, t["scored_log_prob"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scored.prev_sample, t["scored_prev_sample"], rtol=0, atol=0)

    rescored = ddim_step_with_logprob(**common, prev_sample=t["prev_sample"])
    torch.testing.assert_close(rescored.log_prob, t["log_prob"], rtol=1e-5, atol=1e-6)


# --- parity with diffusers' DDIMScheduler.step ---------------------------------------------


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize(
    ("num_inference_steps", "eta", "set_alpha_to_one", "clip_sample"),
    [
        (50, 1.0, False, False),
        (20, 0.5, True, False),
        (7, 0.3, False, True),
        (100, 1.0, True, False),
        (3, 0.8, True, True),
    ],
)
def test_matches_diffusers_ddim_step(
    prediction_type: str,
    num_inference_steps: int,
    eta: float,
    set_alpha_to_one: bool,
    clip_sample: bool,
) -> None:
    """Each sample's ``prev_sample`` equals diffusers' step at its own timestep with that noise."""
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=clip_sample,
        set_alpha_to_one=set_alpha_to_one,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    scheduler.set_timesteps(num_inference_steps)
    g = torch.Generator().manual_seed(num_inference_steps)
    batch = 6
    # Random timesteps of the schedule, always including its first and last step.
    picks = torch.randint(0, num_inference_steps, (batch,), generator=g)
    picks[0], picks[1] = 0, num_inference_steps - 1
    timesteps = scheduler.timesteps[picks]
    model_output = torch.randn(batch, 4, 5, 5, generator=g)
    sample = torch.randn(batch, 4, 5, 5, generator=g)
    noise = torch.randn(batch, 4, 5, 5, generator=g)

    alpha_bar_t, alpha_bar_prev = alpha_bars(scheduler, timesteps)
    ours = ddim_step_with_logprob(
        model_output,
        sample,
        alpha_bar_t,
        alpha_bar_prev,
        eta=eta,
        prediction_type=prediction_type,  # type: ignore[arg-type]
        noise=noise,
        clip_sample_range=scheduler.config.clip_sample_range if clip_sample else None,
    )
    for i in range(batch):
        ref = scheduler.step(
            model_output[i : i + 1],
            int(timesteps[i]),
            sample[i : i + 1],
            eta=eta,
            variance_noise=noise[i : i + 1],
        )
        torch.testing.assert_close(
            ours.prev_sample[i : i + 1], ref.prev_sample, rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(
            ours.pred_original_sample[i : i + 1], ref.pred_original_sample, rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("eta", [1.0, 0.6])
@pytest.mark.parametrize("num_inference_steps", [1, 5, 6, 7, 10, 50])
def test_matches_diffusers_on_the_zero_snr_schedule(
    prediction_type: str, eta: float, num_inference_steps: int
) -> None:
    """At every timestep of the zero-terminal-SNR trailing schedule ``prev_sample`` equals
    diffusers' wherever diffusers' is finite, and is finite wherever the math allows.

    At t = 999 (``alpha_bar_t = 0``) with ``eta = 1`` the exact direction coefficient
    ``sqrt(1 - alpha_bar_prev - sigma_t^2)`` is 0; diffusers' radicand there is 0 or an ulp
    either side, so its coefficient is NaN (6 steps), ``2^-12`` (7 steps) or 0 (5 steps): the
    comparison allows ``2^-11 |eps_hat|`` at that step, ``eps_hat`` being ``x_t`` there.
    """
    scheduler = zero_snr_scheduler(num_inference_steps, prediction_type)
    timesteps = scheduler.timesteps
    batch = len(timesteps)
    g = torch.Generator().manual_seed(num_inference_steps)
    model_output, sample, noise = (torch.randn(batch, 2, 3, 3, generator=g) for _ in range(3))
    alpha_bar_t, alpha_bar_prev = alpha_bars(scheduler, timesteps)
    ours = ddim_step_with_logprob(
        model_output,
        sample,
        alpha_bar_t,
        alpha_bar_prev,
        eta=eta,
        prediction_type=prediction_type,  # type: ignore[arg-type]
        noise=noise,
    )
    compared = 0
    for i in range(batch):
        ref = scheduler.step(
            model_output[i : i + 1],
            int(timesteps[i]),
            sample[i : i + 1],
            eta=eta,
            variance_noise=noise[i : i + 1],
        ).prev_sample
        mine = ours.prev_sample[i : i + 1]
        # x0_hat = (x_t - eps) / 0 for epsilon prediction at alpha_bar_t = 0, in both.
        infinite_x0 = prediction_type == "epsilon" and float(alpha_bar_t[i]) == 0
        assert bool(torch.isfinite(mine).all()) != infinite_x0
        if not bool(torch.isfinite(ref).all()):
            assert float(alpha_bar_t[i]) == 0  # diffusers fails only at zero SNR
            continue
        slack = 2**-11 * sample[i : i + 1].abs() if float(alpha_bar_t[i]) == 0 else 0.0
        assert ((mine - ref).abs() <= 1e-5 + 1e-5 * ref.abs() + slack).all()
        compared += 1
    assert compared >= batch - 1


@pytest.mark.parametrize("num_inference_steps", ZERO_SNR_NAN_STEP_COUNTS)
@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_zero_snr_first_step_has_no_direction_term(
    num_inference_steps: int, prediction_type: str
) -> None:
    """Regression: at t = 999 of the zero-SNR schedule with ``eta = 1``, ``sigma_t^2 = 1 -
    alpha_bar_prev`` and the mean's coefficient of ``eps_hat`` is exactly 0, so the step is
    finite at the step counts where diffusers' (and formerly this) step is NaN."""
    scheduler = zero_snr_scheduler(num_inference_steps, prediction_type)
    timesteps = scheduler.timesteps[:1].expand(3)
    alpha_bar_t, alpha_bar_prev = alpha_bars(scheduler, timesteps)
    assert int(timesteps[0]) == 999 and float(alpha_bar_t[0]) == 0.0
    g = torch.Generator().manual_seed(num_inference_steps)
    model_output, sample, noise = (torch.randn(3, 4, 4, 4, generator=g) for _ in range(3))
    out = ddim_step_with_logprob(
        model_output,
        sample,
        alpha_bar_t,
        alpha_bar_prev,
        eta=1.0,
        prediction_type=prediction_type,  # type: ignore[arg-type]
        noise=noise,
    )
    for name, value in out._asdict().items():
        assert bool(torch.isfinite(value).all()), name
    # mu = sqrt(alpha_bar_prev) x0_hat + 0 * eps_hat, bit for bit.
    x0_term = alpha_bar_prev.sqrt().reshape(3, 1, 1, 1) * out.pred_original_sample
    assert torch.equal(out.mean, x0_term)
    torch.testing.assert_close(out.std_dev, (1 - alpha_bar_prev).sqrt())
    rescored = ddim_step_with_logprob(
        model_output,
        sample,
        alpha_bar_t,
        alpha_bar_prev,
        eta=1.0,
        prediction_type=prediction_type,  # type: ignore[arg-type]
        prev_sample=out.prev_sample,
    )
    torch.testing.assert_close(rescored.log_prob, out.log_prob, rtol=1e-6, atol=1e-6)


# --- properties --------------------------------------------------------------------------


seeds = st.integers(0, 2**31 - 1)
prediction_types = st.sampled_from(PREDICTION_TYPES)
etas = st.floats(0.1, 1.0)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, prediction_type=prediction_types, eta=etas)
def test_scoring_the_sample_reproduces_its_log_prob(
    seed: int, prediction_type: str, eta: float
) -> None:
    """Scoring the ``prev_sample`` that sampling produced gives the sampling log-prob."""
    inputs = random_step(seed)
    kw: Any = {"eta": eta, "prediction_type": prediction_type}
    sampled = ddim_step_with_logprob(**inputs, **kw)
    scored = ddim_step_with_logprob(**_scoring(inputs, sampled.prev_sample), **kw)
    torch.testing.assert_close(scored.log_prob, sampled.log_prob, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scored.mean, sampled.mean, rtol=0, atol=0)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, prediction_type=prediction_types, eta=etas)
def test_log_prob_is_largest_at_the_mean(seed: int, prediction_type: str, eta: float) -> None:
    """The Gaussian log-density peaks at its mean, where it is ``-log sigma - log sqrt(2 pi)``."""
    inputs = random_step(seed)
    kw: Any = {"eta": eta, "prediction_type": prediction_type}
    sampled = ddim_step_with_logprob(**inputs, **kw)
    at_mean = ddim_step_with_logprob(**_scoring(inputs, sampled.mean), **kw)
    assert (at_mean.log_prob >= sampled.log_prob).all()
    expected = -sampled.std_dev.log() - 0.5 * torch.log(torch.tensor(2 * torch.pi))
    torch.testing.assert_close(at_mean.log_prob, expected)


@settings(max_examples=20, deadline=None)
@given(seed=seeds, prediction_type=prediction_types, eta=etas)
def test_batch_equals_per_sample(seed: int, prediction_type: str, eta: float) -> None:
    """A batch gives the same results as its samples one at a time."""
    inputs = random_step(seed, batch=4)
    kw: Any = {"eta": eta, "prediction_type": prediction_type}
    batched = ddim_step_with_logprob(**inputs, **kw)
    for i in range(4):
        single = ddim_step_with_logprob(**{k: v[i : i + 1] for k, v in inputs.items()}, **kw)
        for name in ("prev_sample", "log_prob", "mean", "std_dev"):
            torch.testing.assert_close(getattr(single, name), getattr(batched, name)[i : i + 1])


@settings(max_examples=20, deadline=None)
@given(seed=seeds, prediction_type=prediction_types, eta=etas)
def test_sum_is_mean_times_number_of_elements(seed: int, prediction_type: str, eta: float) -> None:
    """``log_prob_reduction="sum"`` is the mean reduction times channels * height * width."""
    inputs = random_step(seed, shape=(2, 3, 4))
    kw: Any = {"eta": eta, "prediction_type": prediction_type}
    mean = ddim_step_with_logprob(**inputs, **kw, log_prob_reduction="mean")
    total = ddim_step_with_logprob(**inputs, **kw, log_prob_reduction="sum")
    torch.testing.assert_close(total.log_prob, mean.log_prob * 24, rtol=1e-5, atol=1e-4)


@settings(max_examples=20, deadline=None)
@given(seed=seeds, prediction_type=prediction_types, eta=st.floats(0.5, 1.0))
def test_bfloat16_inputs_agree_with_float32(seed: int, prediction_type: str, eta: float) -> None:
    """bfloat16 latents work, compute in float32, and agree with float32 within bf16 rounding.

    The alpha bars stay float32: in bfloat16 ``1 - alpha_bar`` near the end of the schedule
    rounds to zero (the adapters keep the scheduler table in float32). The sampled ``x_{t-1}`` is
    rounded to bfloat16 (8 significant bits) and its log-density shifts by about
    ``|x| 2^-8 / sigma_t`` per element, so the comparison uses DDPO's ``eta`` range (0.5 to 1)
    where ``sigma_t`` is not tiny.
    """
    inputs = random_step(seed)
    kw: Any = {"eta": eta, "prediction_type": prediction_type}
    reference = ddim_step_with_logprob(**inputs, **kw)
    low = {k: v.to(torch.bfloat16) if v.ndim > 1 else v for k, v in inputs.items()}  # latents only
    out = ddim_step_with_logprob(**low, **kw)
    assert out.prev_sample.dtype == torch.bfloat16
    assert out.log_prob.dtype == torch.float32 and out.mean.dtype == torch.float32
    # Inputs are rounded to 8 significant bits; x0 estimates can amplify that by 1/sqrt(a_t).
    scale = 1 + reference.prev_sample.abs()
    assert ((out.prev_sample.float() - reference.prev_sample).abs() <= 0.06 * scale).all()
    torch.testing.assert_close(out.log_prob, reference.log_prob, rtol=0.02, atol=0.05)


def test_float64_inputs_compute_in_float64() -> None:
    inputs = {k: v.double() for k, v in random_step(0).items()}
    out = ddim_step_with_logprob(**inputs, eta=1.0)
    assert out.log_prob.dtype == torch.float64 and out.prev_sample.dtype == torch.float64


@settings(max_examples=20, deadline=None)
@given(seed=seeds, prediction_type=prediction_types, log10_eta=st.floats(-30.0, -24.0))
def test_log_prob_is_finite_where_sigma_squared_underflows(
    seed: int, prediction_type: str, log10_eta: float
) -> None:
    """With ``eta`` of 1e-30 to 1e-24, ``sigma_t^2`` underflows to 0 in float32 but ``sigma_t``
    does not: sampling and re-scoring give the finite peak ``-log sigma_t - log sqrt(2 pi)``."""
    inputs = random_step(seed)
    kw: Any = {"eta": 10.0**log10_eta, "prediction_type": prediction_type}
    sampled = ddim_step_with_logprob(**inputs, **kw)
    assert bool((sampled.std_dev > 0).all()) and bool((sampled.std_dev**2 == 0).all())
    scored = ddim_step_with_logprob(**_scoring(inputs, sampled.prev_sample), **kw)
    expected = -sampled.std_dev.log() - 0.5 * torch.log(torch.tensor(2 * torch.pi))
    torch.testing.assert_close(sampled.log_prob, expected)
    torch.testing.assert_close(scored.log_prob, expected)


# --- gradients ---------------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradcheck_log_prob_wrt_model_output(prediction_type: str, reduction: str) -> None:
    """``torch.autograd.gradcheck`` of the scored log-prob w.r.t. the model output, float64."""
    inputs = {k: v.double() for k, v in random_step(1, batch=2, shape=(2, 2, 2)).items()}
    prev_sample = inputs["sample"] * 0.9 + 0.1 * inputs.pop("noise")
    model_output = inputs.pop("model_output").requires_grad_(True)

    def log_prob(out: torch.Tensor) -> torch.Tensor:
        return ddim_step_with_logprob(
            out,
            **inputs,
            prev_sample=prev_sample,
            eta=0.7,
            prediction_type=prediction_type,  # type: ignore[arg-type]
            log_prob_reduction=reduction,  # type: ignore[arg-type]
        ).log_prob

    assert torch.autograd.gradcheck(log_prob, (model_output,))


def test_gradient_does_not_flow_to_prev_sample_in_scoring_mode() -> None:
    inputs = random_step(2)
    prev_sample = torch.randn_like(inputs["sample"]).requires_grad_(True)
    model_output = inputs["model_output"].clone().requires_grad_(True)
    out = ddim_step_with_logprob(
        model_output,
        inputs["sample"],
        inputs["alpha_bar_t"],
        inputs["alpha_bar_prev"],
        eta=1.0,
        prev_sample=prev_sample,
    )
    grad_prev, grad_out = torch.autograd.grad(
        out.log_prob.sum(), (prev_sample, model_output), allow_unused=True
    )
    assert grad_prev is None
    assert grad_out is not None and grad_out.abs().sum() > 0


def test_gradient_does_not_flow_through_sampled_noise_path() -> None:
    """In sampling mode the log-density is taken at a detached ``x_{t-1}``: its gradient w.r.t.
    the model output is that of scoring the same (constant) sample."""
    inputs = random_step(3)
    model_output = inputs.pop("model_output").requires_grad_(True)
    sampled = ddim_step_with_logprob(model_output, **inputs, eta=1.0)
    (grad_sampled,) = torch.autograd.grad(sampled.log_prob.sum(), model_output)
    scoring = _scoring(inputs, sampled.prev_sample.detach())
    scored = ddim_step_with_logprob(model_output, **scoring, eta=1.0)
    (grad_scored,) = torch.autograd.grad(scored.log_prob.sum(), model_output)
    torch.testing.assert_close(grad_sampled, grad_scored)


# --- errors ------------------------------------------------------------------------------

_raw_ddim = inspect.unwrap(ddim_step_with_logprob)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"eta": 0.0}, "eta"),
        ({"eta": -1.0}, "eta"),
        ({"eta": 1.5}, "eta"),
        ({"eta": 1.0, "clip_sample_range": 0.0}, "clip_sample_range"),
        ({"eta": 1.0, "prediction_type": "x0"}, "prediction_type"),
        ({"eta": 1.0, "log_prob_reduction": "max"}, "log_prob_reduction"),
    ],
)
def test_invalid_hyper_parameters_raise(kwargs: dict[str, Any], argument: str) -> None:
    """Bad hyper-parameters raise ValueError naming them (or, for values outside a Literal, the
    test suite's type check, which also names them)."""
    inputs = random_step(0)
    with pytest.raises((ValueError, *TYPE_ERRORS), match=argument):
        ddim_step_with_logprob(**inputs, **kwargs)
    with pytest.raises(ValueError, match=argument):
        _raw_ddim(**inputs, **kwargs)


def test_exactly_one_of_noise_and_prev_sample() -> None:
    inputs = random_step(0)
    with pytest.raises(ValueError, match="noise"):
        ddim_step_with_logprob(**_scoring(inputs, inputs["sample"]), noise=inputs["noise"], eta=1.0)
    del inputs["noise"]
    with pytest.raises(ValueError, match="prev_sample"):
        ddim_step_with_logprob(**inputs, eta=1.0)


@pytest.mark.parametrize(
    "change",
    [
        {"alpha_bar_t": torch.rand(4)},  # 4 alpha bars for a batch of 3
        {"alpha_bar_prev": torch.rand(3, 1)},  # not (batch,)
        {"model_output": torch.randn(3, 2, 3)},  # not 4-D
        {"noise": torch.randn(3, 2, 3, 4)},  # different shape from sample
        {"sample": torch.randint(0, 3, (3, 2, 3, 3))},  # integer latents
    ],
)
def test_wrong_shapes_and_dtypes_fail_the_type_check(change: dict[str, torch.Tensor]) -> None:
    inputs = {**random_step(0), **change}
    with pytest.raises(TYPE_ERRORS):
        ddim_step_with_logprob(**inputs, eta=1.0)


@settings(max_examples=20, deadline=None)
@given(seed=seeds, prediction_type=prediction_types, eta=etas)
def test_low_precision_scoring_reproduces_sampling(
    seed: int, prediction_type: str, eta: float
) -> None:
    """With bfloat16 latents the log-prob of sampling is that of the returned (rounded)
    ``prev_sample``, so re-scoring the stored transition gives ratio 1 in PPO's first epoch."""
    inputs = {k: v.to(torch.bfloat16) if v.ndim > 1 else v for k, v in random_step(seed).items()}
    kw: Any = {"eta": eta, "prediction_type": prediction_type}
    sampled = ddim_step_with_logprob(**inputs, **kw)
    scored = ddim_step_with_logprob(**_scoring(inputs, sampled.prev_sample), **kw)
    torch.testing.assert_close(scored.log_prob, sampled.log_prob, rtol=1e-6, atol=1e-6)


def test_deterministic_step_has_log_prob_zero_and_finite_gradient() -> None:
    """Where ``alpha_bar_prev == alpha_bar_t`` (the last step from ``t = 0``) ``sigma_t = 0``: the
    log-prob is defined as 0 (ratio 1) and no NaN reaches the gradient."""
    g = torch.Generator().manual_seed(0)
    model_output = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    sample = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    alpha_bar = torch.tensor([0.9991, 0.5], dtype=torch.float64)
    alpha_bar_prev = torch.tensor([0.9991, 0.7], dtype=torch.float64)  # sample 0: deterministic
    out = ddim_step_with_logprob(
        model_output,
        sample,
        alpha_bar,
        alpha_bar_prev,
        eta=1.0,
        prediction_type="v_prediction",
        prev_sample=sample + 0.1,
    )
    assert float(out.std_dev[0]) == 0 and float(out.std_dev[1]) > 0
    assert float(out.log_prob[0].detach()) == 0 and bool(torch.isfinite(out.log_prob[1]))
    out.log_prob.sum().backward()
    assert model_output.grad is not None and bool(torch.isfinite(model_output.grad).all())
    assert bool((model_output.grad[0] == 0).all()) and bool((model_output.grad[1] != 0).any())
