"""Tests of ddpo.core.flow: Flow-GRPO parity, the ODE limit, properties, gradients, errors, for
the SDE step and the coefficients-preserving (CPS) step."""

import inspect
import json
import math
from pathlib import Path
from typing import Any

import beartype.roar
import jaxtyping
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from ddpo.core import flow_cps_step_with_logprob, flow_sde_step_with_logprob

TYPE_ERRORS = (jaxtyping.TypeCheckError, beartype.roar.BeartypeException)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FLOW_CASES: list[dict[str, Any]] = json.loads((FIXTURES / "flow_grpo_sde.json").read_text())
SIGMA_MAX = 0.97


@pytest.fixture(scope="module")
def flow_grpo_tensors() -> dict[str, torch.Tensor]:
    """``flow_grpo_sde.safetensors``: Flow-GRPO's outputs, keyed ``c<i>_<name>``."""
    return load_file(FIXTURES / "flow_grpo_sde.safetensors")


def random_step(
    seed: int,
    batch: int = 3,
    shape: tuple[int, int, int] = (2, 3, 3),
    dtype: Any = torch.float32,
    first_step: bool = True,
) -> dict[str, torch.Tensor]:
    """Random inputs of one step with ``0 < sigma_prev < sigma <= 1`` (sample 0 at sigma = 1)."""
    g = torch.Generator().manual_seed(seed)
    sigma = 0.05 + 0.95 * torch.rand(batch, generator=g, dtype=dtype)
    if first_step:
        sigma[0] = 1.0
    sigma_prev = sigma * (0.05 + 0.9 * torch.rand(batch, generator=g, dtype=dtype))
    return {
        "model_output": torch.randn(batch, *shape, generator=g, dtype=dtype),
        "sample": torch.randn(batch, *shape, generator=g, dtype=dtype),
        "sigma": sigma,
        "sigma_prev": sigma_prev,
        "noise": torch.randn(batch, *shape, generator=g, dtype=dtype),
    }


def _scoring(inputs: dict[str, torch.Tensor], prev_sample: torch.Tensor) -> dict[str, torch.Tensor]:
    return {**{k: v for k, v in inputs.items() if k != "noise"}, "prev_sample": prev_sample}


# --- parity with Flow-GRPO (tests/fixtures) --------------------------------------------------


@pytest.mark.parametrize("case", FLOW_CASES, ids=lambda c: c["key"].rstrip("_"))
def test_matches_flow_grpo_reference(
    case: dict[str, Any], flow_grpo_tensors: dict[str, torch.Tensor]
) -> None:
    """Sampling with the fixture's noise and scoring ``other`` reproduce Flow-GRPO's step."""
    key = case["key"]
    t = {k.removeprefix(key): v for k, v in flow_grpo_tensors.items() if k.startswith(key)}
    assert t["sample"].shape == tuple(case["shape"]) and float(t["sigma"][0]) == 1.0
    common: dict[str, Any] = {
        "model_output": t["model_output"],
        "sample": t["sample"],
        "sigma": t["sigma"],
        "sigma_prev": t["sigma_prev"],
        "noise_level": case["noise_level"],
        "sigma_max": case["sigma_max"],
    }
    _check_sampled_and_scored(flow_sde_step_with_logprob, common, t, std_atol=1e-6)


def _check_sampled_and_scored(
    step: Any, common: dict[str, Any], t: dict[str, torch.Tensor], *, std_atol: float
) -> None:
    """``step`` sampling with the fixture's noise and scoring its ``other`` give the reference's
    ``prev_sample``, ``mean``, ``std_dev`` and both log-probs."""
    sampled = step(**common, noise=t["noise"])
    torch.testing.assert_close(sampled.prev_sample, t["prev_sample"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sampled.mean, t["mean"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sampled.std_dev, t["std_dev"], rtol=1e-6, atol=std_atol)
    torch.testing.assert_close(sampled.log_prob, t["log_prob"], rtol=1e-5, atol=1e-6)
    scored = step(**common, prev_sample=t["other"])
    torch.testing.assert_close(scored.log_prob, t["log_prob_other"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scored.prev_sample, t["other"], rtol=0, atol=0)


# --- the ODE limit and the formula -----------------------------------------------------------


@pytest.mark.parametrize("noise_level", [1e-6, 1e-12])
def test_vanishing_noise_gives_the_euler_ode_step(noise_level: float) -> None:
    """As ``noise_level -> 0`` the mean is the Euler step of the flow ODE, ``x + v dt``."""
    inputs = {k: v.double() for k, v in random_step(0, batch=5).items()}
    out = flow_sde_step_with_logprob(**inputs, noise_level=noise_level, sigma_max=SIGMA_MAX)
    dt = (inputs["sigma_prev"] - inputs["sigma"]).reshape(-1, 1, 1, 1)
    euler = inputs["sample"] + inputs["model_output"] * dt
    tol = 1e3 * noise_level**2
    torch.testing.assert_close(out.mean, euler, rtol=tol, atol=tol)
    torch.testing.assert_close(out.prev_sample, euler, rtol=0, atol=1e3 * noise_level)


def test_std_dev_uses_sigma_max_only_at_sigma_one() -> None:
    inputs = random_step(1, batch=4)
    out = flow_sde_step_with_logprob(**inputs, noise_level=0.7, sigma_max=SIGMA_MAX)
    sigma = inputs["sigma"]
    expected = 0.7 * torch.sqrt(sigma / (1 - torch.where(sigma == 1, SIGMA_MAX, sigma)))
    torch.testing.assert_close(out.std_dev, expected)
    assert bool(torch.isfinite(out.std_dev).all())


# --- properties --------------------------------------------------------------------------


seeds = st.integers(0, 2**31 - 1)
noise_levels = st.floats(0.05, 1.5)
sigma_maxes = st.floats(0.5, 0.999)
shapes = st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5))


@st.composite
def sigma_pairs(draw: st.DrawFn, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``0 < sigma_prev < sigma <= 1``, sometimes exactly 1 (the first step)."""
    sigmas, prevs = [], []
    for _ in range(batch):
        sigma = draw(st.one_of(st.just(1.0), st.floats(1e-3, 1.0)))
        prev = draw(st.floats(1e-3, 0.999)) * sigma  # apart in float32
        sigmas.append(sigma)
        prevs.append(prev)
    return torch.tensor(sigmas), torch.tensor(prevs)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), seed=seeds, noise_level=noise_levels, sigma_max=sigma_maxes, shape=shapes)
def test_outputs_are_finite(
    data: st.DataObject, seed: int, noise_level: float, sigma_max: float, shape: Any
) -> None:
    inputs = random_step(seed, batch=3, shape=shape)
    inputs["sigma"], inputs["sigma_prev"] = data.draw(sigma_pairs(3))
    kw: Any = {"noise_level": noise_level, "sigma_max": sigma_max}
    out = flow_sde_step_with_logprob(**inputs, **kw)
    for name, value in out._asdict().items():
        assert bool(torch.isfinite(value).all()), name
    assert out.log_prob.shape == (3,) and out.std_dev.shape == (3,)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, noise_level=noise_levels, sigma_max=sigma_maxes)
def test_scoring_the_sample_reproduces_its_log_prob(
    seed: int, noise_level: float, sigma_max: float
) -> None:
    """Scoring the ``prev_sample`` that sampling produced gives the sampling log-prob."""
    inputs = random_step(seed)
    kw: Any = {"noise_level": noise_level, "sigma_max": sigma_max}
    sampled = flow_sde_step_with_logprob(**inputs, **kw)
    scored = flow_sde_step_with_logprob(**_scoring(inputs, sampled.prev_sample), **kw)
    torch.testing.assert_close(scored.log_prob, sampled.log_prob, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scored.mean, sampled.mean, rtol=0, atol=0)


@settings(max_examples=20, deadline=None)
@given(seed=seeds, noise_level=noise_levels)
def test_log_prob_is_largest_at_the_mean(seed: int, noise_level: float) -> None:
    """The log-density peaks at the mean, at ``-log(std_t sqrt(-dt)) - log sqrt(2 pi)``."""
    inputs = random_step(seed)
    kw: Any = {"noise_level": noise_level, "sigma_max": SIGMA_MAX}
    sampled = flow_sde_step_with_logprob(**inputs, **kw)
    at_mean = flow_sde_step_with_logprob(**_scoring(inputs, sampled.mean), **kw)
    assert (at_mean.log_prob >= sampled.log_prob).all()
    step_std = sampled.std_dev * (inputs["sigma"] - inputs["sigma_prev"]).sqrt()
    expected = -step_std.log() - 0.5 * torch.log(torch.tensor(2 * torch.pi))
    torch.testing.assert_close(at_mean.log_prob, expected)


@settings(max_examples=20, deadline=None)
@given(data=st.data(), seed=seeds, noise_level=noise_levels, shape=shapes)
def test_batch_equals_per_sample(
    data: st.DataObject, seed: int, noise_level: float, shape: Any
) -> None:
    """A batch gives the same results as its samples one at a time."""
    inputs = random_step(seed, batch=4, shape=shape)
    inputs["sigma"], inputs["sigma_prev"] = data.draw(sigma_pairs(4))
    kw: Any = {"noise_level": noise_level, "sigma_max": SIGMA_MAX}
    batched = flow_sde_step_with_logprob(**inputs, **kw)
    for i in range(4):
        single = flow_sde_step_with_logprob(**{k: v[i : i + 1] for k, v in inputs.items()}, **kw)
        for name in ("prev_sample", "log_prob", "mean", "std_dev"):
            torch.testing.assert_close(getattr(single, name), getattr(batched, name)[i : i + 1])


@settings(max_examples=20, deadline=None)
@given(seed=seeds, noise_level=noise_levels)
def test_sum_is_mean_times_number_of_elements(seed: int, noise_level: float) -> None:
    inputs = random_step(seed, shape=(2, 3, 4))
    kw: Any = {"noise_level": noise_level, "sigma_max": SIGMA_MAX}
    mean = flow_sde_step_with_logprob(**inputs, **kw, log_prob_reduction="mean")
    total = flow_sde_step_with_logprob(**inputs, **kw, log_prob_reduction="sum")
    torch.testing.assert_close(total.log_prob, mean.log_prob * 24, rtol=1e-5, atol=1e-4)


@settings(max_examples=20, deadline=None)
@given(data=st.data(), seed=seeds, noise_level=st.floats(0.3, 1.0))
def test_bfloat16_inputs_agree_with_float32(
    data: st.DataObject, seed: int, noise_level: float
) -> None:
    """bfloat16 latents compute in float32 and agree with float32 within bf16 rounding.

    The sigmas stay float32 (the adapters keep the scheduler's table in float32). The sampled
    ``x_prev`` is rounded to bfloat16 (8 significant bits) and its log-density shifts by about
    ``|x| 2^-8 / (std_t sqrt(-dt))`` per element, so the step is kept from being tiny.
    """
    inputs = random_step(seed)
    sigma, sigma_prev = data.draw(sigma_pairs(3))
    inputs["sigma"], inputs["sigma_prev"] = sigma.clamp(min=0.2), sigma_prev.clamp(min=0.1) / 2
    kw: Any = {"noise_level": noise_level, "sigma_max": SIGMA_MAX}
    reference = flow_sde_step_with_logprob(**inputs, **kw)
    low = {k: v.to(torch.bfloat16) if v.ndim > 1 else v for k, v in inputs.items()}
    out = flow_sde_step_with_logprob(**low, **kw)
    assert out.prev_sample.dtype == torch.bfloat16
    assert out.log_prob.dtype == out.mean.dtype == out.std_dev.dtype == torch.float32
    scale = 1 + reference.prev_sample.abs()
    assert ((out.prev_sample.float() - reference.prev_sample).abs() <= 0.05 * scale).all()
    torch.testing.assert_close(out.std_dev, reference.std_dev, rtol=0, atol=0)
    torch.testing.assert_close(out.log_prob, reference.log_prob, rtol=0.02, atol=0.05)
    # Re-scoring the rounded sample reproduces the sampling log-prob exactly.
    scored = flow_sde_step_with_logprob(**_scoring(low, out.prev_sample), **kw)
    torch.testing.assert_close(scored.log_prob, out.log_prob, rtol=1e-6, atol=1e-6)


def test_float64_inputs_compute_in_float64() -> None:
    inputs = {k: v.double() for k, v in random_step(0).items()}
    out = flow_sde_step_with_logprob(**inputs, noise_level=0.7, sigma_max=SIGMA_MAX)
    assert out.log_prob.dtype == torch.float64 and out.prev_sample.dtype == torch.float64


def test_sigma_prev_zero_is_the_last_step() -> None:
    """The schedule's last step goes to ``sigma_prev = 0``; it is finite."""
    inputs = random_step(4)
    inputs["sigma_prev"] = torch.zeros(3)
    out = flow_sde_step_with_logprob(**inputs, noise_level=0.7, sigma_max=SIGMA_MAX)
    for name, value in out._asdict().items():
        assert bool(torch.isfinite(value).all()), name


# --- gradients ---------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradcheck_log_prob_wrt_model_output(reduction: str) -> None:
    """``torch.autograd.gradcheck`` of the scored log-prob w.r.t. the velocity, float64."""
    inputs = {k: v.double() for k, v in random_step(1, batch=2, shape=(2, 2, 2)).items()}
    prev_sample = inputs["sample"] * 0.9 + 0.1 * inputs.pop("noise")
    model_output = inputs.pop("model_output").requires_grad_(True)

    def log_prob(out: torch.Tensor) -> torch.Tensor:
        return flow_sde_step_with_logprob(
            out,
            **inputs,
            prev_sample=prev_sample,
            noise_level=0.7,
            sigma_max=SIGMA_MAX,
            log_prob_reduction=reduction,  # type: ignore[arg-type]
        ).log_prob

    assert torch.autograd.gradcheck(log_prob, (model_output,))


def test_gradient_flows_through_the_mean_only() -> None:
    """The density is taken at a detached ``x_prev``: no gradient reaches ``prev_sample``, and
    sampling mode's gradient equals that of scoring the same (constant) sample."""
    inputs = random_step(3)
    model_output = inputs.pop("model_output").requires_grad_(True)
    kw: Any = {"noise_level": 0.7, "sigma_max": SIGMA_MAX}
    sampled = flow_sde_step_with_logprob(model_output, **inputs, **kw)
    (grad_sampled,) = torch.autograd.grad(sampled.log_prob.sum(), model_output)
    prev_sample = sampled.prev_sample.detach().clone().requires_grad_(True)
    scored = flow_sde_step_with_logprob(model_output, **_scoring(inputs, prev_sample), **kw)
    grad_prev, grad_scored = torch.autograd.grad(
        scored.log_prob.sum(), (prev_sample, model_output), allow_unused=True
    )
    assert grad_prev is None
    assert grad_scored is not None and grad_scored.abs().sum() > 0
    torch.testing.assert_close(grad_sampled, grad_scored)


# --- errors ------------------------------------------------------------------------------

_raw_flow = inspect.unwrap(flow_sde_step_with_logprob)
_OK: dict[str, Any] = {"noise_level": 0.7, "sigma_max": SIGMA_MAX}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise_level": 0.0}, "noise_level must be > 0.*got 0.0"),
        ({"noise_level": -0.5}, "noise_level must be > 0.*got -0.5"),
        ({"sigma_max": 1.0}, r"sigma_max must be in \(0, 1\), got sigma_max=1.0"),
        ({"sigma_max": 0.0}, "sigma_max=0.0"),
        ({"log_prob_reduction": "max"}, "log_prob_reduction.*'max'"),
    ],
)
def test_invalid_hyper_parameters_raise(kwargs: dict[str, Any], match: str) -> None:
    """Bad hyper-parameters raise ValueError naming them and the value (or, for a value outside
    the Literal, the test suite's type check, which names the argument too)."""
    inputs = random_step(0)
    argument = next(iter(kwargs))
    with pytest.raises((ValueError, *TYPE_ERRORS), match=argument):
        flow_sde_step_with_logprob(**inputs, **{**_OK, **kwargs})
    with pytest.raises(ValueError, match=match):
        _raw_flow(**inputs, **{**_OK, **kwargs})


@pytest.mark.parametrize(
    ("sigma", "sigma_prev", "match"),
    [
        (
            [1.0, 0.5, 0.5],
            [0.9, 0.5, 0.1],
            r"sigma_prev must be in \[0, sigma\), got sigma_prev=\[0.5",
        ),
        ([1.0, 0.5, 0.5], [0.9, 0.6, 0.1], r"sigma_prev=\[0.6"),
        ([1.0, 0.5, 0.5], [0.9, -0.1, 0.1], r"sigma_prev=\[-0.1"),
        ([1.5, 0.5, 0.5], [0.9, 0.4, 0.1], r"sigma must be in \(0, 1\], got sigma=\[1.5\]"),
        ([1.0, 0.0, 0.5], [0.9, 0.0, 0.1], r"sigma=\[0.0\]"),
        ([1.0, float("nan"), 0.5], [0.9, 0.1, 0.1], r"sigma=\[nan\]"),
    ],
)
def test_invalid_sigmas_raise(sigma: list[float], sigma_prev: list[float], match: str) -> None:
    inputs = random_step(0)
    inputs["sigma"], inputs["sigma_prev"] = torch.tensor(sigma), torch.tensor(sigma_prev)
    with pytest.raises(ValueError, match=match):
        flow_sde_step_with_logprob(**inputs, **_OK)


def test_exactly_one_of_noise_and_prev_sample() -> None:
    inputs = random_step(0)
    with pytest.raises(ValueError, match="noise=a tensor, prev_sample=a tensor"):
        flow_sde_step_with_logprob(
            **_scoring(inputs, inputs["sample"]), noise=inputs["noise"], **_OK
        )
    del inputs["noise"]
    with pytest.raises(ValueError, match="noise=None, prev_sample=None"):
        flow_sde_step_with_logprob(**inputs, **_OK)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            {"sigma": torch.full((4,), 0.5)},
            r"sigma must have shape \(batch,\) = \(3,\), got \(4,\)",
        ),
        ({"sigma_prev": torch.full((3, 1), 0.1)}, r"sigma_prev must have shape .* got \(3, 1\)"),
        (
            {"model_output": torch.randn(3, 2, 3, 4)},
            r"model_output must have .* got \(3, 2, 3, 4\)",
        ),
        ({"noise": torch.randn(3, 2, 3, 4)}, r"noise must have .* got \(3, 2, 3, 4\)"),
    ],
)
def test_mismatched_shapes_raise(change: dict[str, torch.Tensor], match: str) -> None:
    """Mismatched shapes fail the test suite's type check, and without it raise ValueError
    naming the argument and its shape."""
    inputs = {**random_step(0), **change}
    with pytest.raises((ValueError, *TYPE_ERRORS)):
        flow_sde_step_with_logprob(**inputs, **_OK)
    with pytest.raises(ValueError, match=match):
        _raw_flow(**inputs, **_OK)


# --- the coefficients-preserving step (Flow-GRPO's sde_type="cps") ---------------------------

CPS_CASES: list[dict[str, Any]] = json.loads((FIXTURES / "flow_grpo_cps.json").read_text())
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@pytest.fixture(scope="module")
def flow_grpo_cps_tensors() -> dict[str, torch.Tensor]:
    """``flow_grpo_cps.safetensors``: Flow-GRPO's CPS outputs, keyed ``c<i>_<name>``."""
    return load_file(FIXTURES / "flow_grpo_cps.safetensors")


def cps_step(seed: int, batch: int = 3, shape: tuple[int, int, int] = (2, 3, 3)) -> dict[str, Any]:
    """Random inputs of one CPS step: sample 0 at ``sigma == 1``, the last at ``sigma_prev ==
    0`` (the schedule's first and last steps)."""
    inputs = random_step(seed, batch=batch, shape=shape)
    inputs["sigma_prev"][-1] = 0.0
    return inputs


@pytest.mark.parametrize("case", CPS_CASES, ids=lambda c: c["key"].rstrip("_"))
def test_cps_matches_flow_grpo_reference(
    case: dict[str, Any], flow_grpo_cps_tensors: dict[str, torch.Tensor]
) -> None:
    """Sampling with the fixture's noise and scoring ``other`` reproduce Flow-GRPO's CPS step,
    at the first step (``sigma == 1``) and, in two cases, the last (``sigma_prev == 0``)."""
    key = case["key"]
    t = {k.removeprefix(key): v for k, v in flow_grpo_cps_tensors.items() if k.startswith(key)}
    assert t["sample"].shape == tuple(case["shape"]) and float(t["sigma"][0]) == 1.0
    common: dict[str, Any] = {
        "model_output": t["model_output"],
        "sample": t["sample"],
        "sigma": t["sigma"],
        "sigma_prev": t["sigma_prev"],
        "noise_level": case["noise_level"],
    }
    _check_sampled_and_scored(flow_cps_step_with_logprob, common, t, std_atol=1e-7)
    # the same step's exact Gaussian log-density: Flow-GRPO's value over 2 std^2, minus
    # log std and log sqrt(2 pi) (0 where the last step has no noise)
    gauss = flow_cps_step_with_logprob(**common, prev_sample=t["other"], log_prob_form="gaussian")
    std = t["std_dev"].double()
    expected = t["log_prob_other"].double() / (2 * std**2) - std.log() - LOG_SQRT_2PI
    expected = torch.where(std > 0, expected, torch.zeros_like(expected))
    torch.testing.assert_close(gauss.log_prob.double(), expected, rtol=1e-5, atol=1e-4)
    if case["step_indices"][-1] == case["steps"] - 1:
        assert float(t["std_dev"][-1]) == 0.0 and float(gauss.log_prob[-1]) == 0.0


@pytest.mark.parametrize("noise_level", [1e-6, 1e-9])
def test_cps_vanishing_noise_gives_the_euler_ode_step(noise_level: float) -> None:
    inputs = {k: v.double() for k, v in cps_step(0, batch=5).items()}
    out = flow_cps_step_with_logprob(**inputs, noise_level=noise_level)
    dt = (inputs["sigma_prev"] - inputs["sigma"]).reshape(-1, 1, 1, 1)
    euler = inputs["sample"] + inputs["model_output"] * dt
    torch.testing.assert_close(out.mean, euler, rtol=1e-10, atol=10 * noise_level**2)
    torch.testing.assert_close(out.prev_sample, euler, rtol=0, atol=10 * noise_level)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), seed=seeds, noise_level=st.floats(0.01, 1.0))
def test_cps_preserves_the_coefficients_of_the_marginal(
    data: st.DataObject, seed: int, noise_level: float
) -> None:
    """With the exact velocity of ``x = (1 - sigma) x_0 + sigma eps`` (``v = eps - x_0``), the
    step is ``(1 - sigma_prev) x_0`` plus noise of standard deviation ``sigma_prev`` per element:
    ``sqrt(sigma_prev^2 - std^2) eps`` from the sample and ``std`` fresh."""
    g = torch.Generator().manual_seed(seed)
    x0, eps = (torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64) for _ in range(2))
    sigma, sigma_prev = (v.double() for v in data.draw(sigma_pairs(3)))
    s, s_prev = sigma.reshape(-1, 1, 1, 1), sigma_prev.reshape(-1, 1, 1, 1)
    x = (1 - s) * x0 + s * eps
    out = flow_cps_step_with_logprob(
        eps - x0, x, sigma, sigma_prev, noise_level=noise_level, prev_sample=x
    )
    std = s_prev * math.sin(noise_level * math.pi / 2)
    expected = (1 - s_prev) * x0 + torch.sqrt(s_prev**2 - std**2) * eps
    torch.testing.assert_close(out.mean, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.std_dev, std.reshape(-1), rtol=1e-12, atol=0)


@settings(max_examples=30, deadline=None)
@given(
    data=st.data(),
    seed=seeds,
    noise_level=st.floats(0.01, 1.0),
    shape=shapes,
    form=st.sampled_from(["flow_grpo", "gaussian"]),
)
def test_cps_outputs_are_finite_and_rescoring_reproduces_them(
    data: st.DataObject, seed: int, noise_level: float, shape: Any, form: str
) -> None:
    inputs = cps_step(seed, batch=3, shape=shape)
    inputs["sigma"], inputs["sigma_prev"] = data.draw(sigma_pairs(3))
    kw: Any = {"noise_level": noise_level, "log_prob_form": form}
    sampled = flow_cps_step_with_logprob(**inputs, **kw)
    for name, value in sampled._asdict().items():
        assert bool(torch.isfinite(value).all()), name
    scored = flow_cps_step_with_logprob(**_scoring(inputs, sampled.prev_sample), **kw)
    torch.testing.assert_close(scored.log_prob, sampled.log_prob, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scored.mean, sampled.mean, rtol=0, atol=0)


@settings(max_examples=20, deadline=None)
@given(seed=seeds, noise_level=st.floats(0.05, 1.0))
def test_cps_flow_grpo_log_prob_peaks_at_zero_at_the_mean(seed: int, noise_level: float) -> None:
    """Flow-GRPO's form is minus the mean squared residual: 0 at the mean, below elsewhere."""
    inputs = cps_step(seed)
    kw: Any = {"noise_level": noise_level}
    sampled = flow_cps_step_with_logprob(**inputs, **kw)
    at_mean = flow_cps_step_with_logprob(**_scoring(inputs, sampled.mean), **kw)
    torch.testing.assert_close(at_mean.log_prob, torch.zeros(3), rtol=0, atol=0)
    residual = (sampled.prev_sample - sampled.mean).square().mean(dim=(1, 2, 3))
    torch.testing.assert_close(sampled.log_prob, -residual)
    assert (sampled.log_prob[:-1] < 0).all() and float(sampled.log_prob[-1]) == 0.0


@settings(max_examples=20, deadline=None)
@given(data=st.data(), seed=seeds, noise_level=st.floats(0.05, 1.0), shape=shapes)
def test_cps_batch_equals_per_sample(
    data: st.DataObject, seed: int, noise_level: float, shape: Any
) -> None:
    inputs = cps_step(seed, batch=4, shape=shape)
    inputs["sigma"], inputs["sigma_prev"] = data.draw(sigma_pairs(4))
    batched = flow_cps_step_with_logprob(**inputs, noise_level=noise_level)
    for i in range(4):
        one = {k: v[i : i + 1] for k, v in inputs.items()}
        single = flow_cps_step_with_logprob(**one, noise_level=noise_level)
        for name in ("prev_sample", "log_prob", "mean", "std_dev"):
            torch.testing.assert_close(getattr(single, name), getattr(batched, name)[i : i + 1])


@pytest.mark.parametrize("form", ["flow_grpo", "gaussian"])
def test_cps_sum_is_mean_times_number_of_elements(form: str) -> None:
    inputs = cps_step(5, shape=(2, 3, 4))
    kw: Any = {"noise_level": 0.8, "log_prob_form": form}
    mean = flow_cps_step_with_logprob(**inputs, **kw)
    total = flow_cps_step_with_logprob(**inputs, **kw, log_prob_reduction="sum")
    torch.testing.assert_close(total.log_prob, mean.log_prob * 24, rtol=1e-5, atol=1e-4)


def test_cps_bfloat16_inputs_compute_in_float32() -> None:
    inputs = cps_step(6)
    reference = flow_cps_step_with_logprob(**inputs, noise_level=0.8)
    low = {k: v.to(torch.bfloat16) if v.ndim > 1 else v for k, v in inputs.items()}
    out = flow_cps_step_with_logprob(**low, noise_level=0.8)
    assert out.prev_sample.dtype == torch.bfloat16
    assert out.log_prob.dtype == out.mean.dtype == out.std_dev.dtype == torch.float32
    torch.testing.assert_close(out.std_dev, reference.std_dev, rtol=0, atol=0)
    torch.testing.assert_close(out.mean, reference.mean, rtol=0.02, atol=0.05)
    scored = flow_cps_step_with_logprob(**_scoring(low, out.prev_sample), noise_level=0.8)
    torch.testing.assert_close(scored.log_prob, out.log_prob, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("form", ["flow_grpo", "gaussian"])
def test_cps_gradcheck_log_prob_wrt_model_output(form: str) -> None:
    inputs = {k: v.double() for k, v in cps_step(1, batch=2, shape=(2, 2, 2)).items()}
    inputs["sigma_prev"][-1] = 0.3 * inputs["sigma"][-1]  # a stochastic step
    prev_sample = inputs["sample"] * 0.9 + 0.1 * inputs.pop("noise")
    model_output = inputs.pop("model_output").requires_grad_(True)

    def log_prob(out: torch.Tensor) -> torch.Tensor:
        return flow_cps_step_with_logprob(
            out, **inputs, prev_sample=prev_sample, noise_level=0.8,
            log_prob_form=form,  # type: ignore[arg-type]
        ).log_prob  # fmt: skip

    assert torch.autograd.gradcheck(log_prob, (model_output,))


def test_cps_gradient_flows_through_the_mean_only() -> None:
    inputs = cps_step(3)
    model_output = inputs.pop("model_output").requires_grad_(True)
    sampled = flow_cps_step_with_logprob(model_output, **inputs, noise_level=0.8)
    (grad_sampled,) = torch.autograd.grad(sampled.log_prob.sum(), model_output)
    prev_sample = sampled.prev_sample.detach().clone().requires_grad_(True)
    scored = flow_cps_step_with_logprob(
        model_output, **_scoring(inputs, prev_sample), noise_level=0.8
    )
    grad_prev, grad_scored = torch.autograd.grad(
        scored.log_prob.sum(), (prev_sample, model_output), allow_unused=True
    )
    assert grad_prev is None
    assert grad_scored is not None and grad_scored.abs().sum() > 0
    torch.testing.assert_close(grad_sampled, grad_scored)


_raw_cps = inspect.unwrap(flow_cps_step_with_logprob)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise_level": 0.0}, r"noise_level must be in \(0, 1\].*got noise_level=0.0"),
        ({"noise_level": 1.5}, "noise_level=1.5"),
        ({"noise_level": float("nan")}, "noise_level=nan"),
        ({"log_prob_form": "exact"}, "log_prob_form must be .* got log_prob_form='exact'"),
        ({"log_prob_reduction": "max"}, "log_prob_reduction.*'max'"),
    ],
)
def test_cps_invalid_hyper_parameters_raise(kwargs: dict[str, Any], match: str) -> None:
    inputs = cps_step(0)
    with pytest.raises((ValueError, *TYPE_ERRORS), match=next(iter(kwargs))):
        flow_cps_step_with_logprob(**inputs, **{"noise_level": 0.8, **kwargs})
    with pytest.raises(ValueError, match=match):
        _raw_cps(**inputs, **{"noise_level": 0.8, **kwargs})


def test_cps_checks_sigmas_and_noise_like_the_sde_step() -> None:
    inputs = cps_step(0)
    inputs["sigma_prev"] = inputs["sigma"].clone()
    with pytest.raises(ValueError, match=r"sigma_prev must be in \[0, sigma\)"):
        flow_cps_step_with_logprob(**inputs, noise_level=0.8)
    del inputs["noise"]
    with pytest.raises(ValueError, match="noise=None, prev_sample=None"):
        flow_cps_step_with_logprob(**inputs, noise_level=0.8)
