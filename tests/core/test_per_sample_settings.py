"""Per-sample settings of the step functions (``eta``, ``sigma_max``, the guidance scale) give the
bits of the same number given as a Python float: what lets a policy re-score a stored transition
from its schedule row as tensors (no host read) exactly as it was sampled."""

import pytest
import torch

from ddpo.core import classifier_free_guidance, ddim_step_with_logprob, flow_sde_step_with_logprob

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", [7.5, 4.7, 0.3, 1.0, 3.14159])
def test_a_per_sample_guidance_scale_gives_the_bits_of_the_number(
    dtype: torch.dtype, scale: float
) -> None:
    gen = torch.Generator().manual_seed(0)
    uncond = torch.randn(3, 4, 8, 8, generator=gen).to(dtype)
    cond = torch.randn(3, 4, 8, 8, generator=gen).to(dtype)
    number = classifier_free_guidance(uncond, cond, scale)
    rows = classifier_free_guidance(uncond, cond, torch.full((3,), scale, dtype=torch.float64))
    assert rows.dtype == number.dtype == dtype
    assert torch.equal(rows, number)


def test_per_sample_guidance_scales_apply_per_row() -> None:
    uncond, cond = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    out = classifier_free_guidance(uncond, cond, torch.tensor([2.0, 3.0], dtype=torch.float64))
    assert out[0].eq(2.0).all() and out[1].eq(3.0).all()


@pytest.mark.parametrize("eta", [1.0, 0.7, 0.3, 1e-3])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_a_per_sample_eta_gives_the_bits_of_the_number(eta: float, prediction_type: str) -> None:
    gen = torch.Generator().manual_seed(1)
    kwargs = {
        "model_output": torch.randn(2, 4, 8, 8, generator=gen),
        "sample": torch.randn(2, 4, 8, 8, generator=gen),
        "alpha_bar_t": torch.tensor([0.3, 0.5]),
        "alpha_bar_prev": torch.tensor([0.6, 0.9]),
        "prediction_type": prediction_type,
        "prev_sample": torch.randn(2, 4, 8, 8, generator=gen),
    }
    number = ddim_step_with_logprob(**kwargs, eta=eta)  # type: ignore[arg-type]
    rows = ddim_step_with_logprob(**kwargs, eta=torch.full((2,), eta, dtype=torch.float64))  # type: ignore[arg-type]
    for got, expected in zip(rows, number, strict=True):
        assert torch.equal(got, expected)


def test_a_per_sample_eta_out_of_range_is_refused() -> None:
    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match=r"eta must be in \(0, 1\], got eta=\[1\.5\]"):
        ddim_step_with_logprob(
            x, x, torch.tensor([0.3, 0.5]), torch.tensor([0.6, 0.9]),
            eta=torch.tensor([1.0, 1.5], dtype=torch.float64), prev_sample=x,
        )  # fmt: skip


def test_a_per_sample_sigma_max_gives_the_bits_of_the_number() -> None:
    gen = torch.Generator().manual_seed(2)
    sigma_max = float(torch.tensor(0.9375))  # a float32 value, as a schedule's
    kwargs = {
        "model_output": torch.randn(2, 4, 8, 8, generator=gen),
        "sample": torch.randn(2, 4, 8, 8, generator=gen),
        "sigma": torch.tensor([1.0, 0.5]),  # the first row takes sigma_max's branch
        "sigma_prev": torch.tensor([0.9375, 0.25]),
        "noise_level": 0.7,
        "prev_sample": torch.randn(2, 4, 8, 8, generator=gen),
    }
    number = flow_sde_step_with_logprob(**kwargs, sigma_max=sigma_max)  # type: ignore[arg-type]
    rows = flow_sde_step_with_logprob(**kwargs, sigma_max=torch.full((2,), sigma_max))  # type: ignore[arg-type]
    for got, expected in zip(rows, number, strict=True):
        assert torch.equal(got, expected)
    with pytest.raises(ValueError, match=r"sigma_max must be in \(0, 1\)"):
        flow_sde_step_with_logprob(**kwargs, sigma_max=torch.tensor([0.5, 1.0]))  # type: ignore[arg-type]
