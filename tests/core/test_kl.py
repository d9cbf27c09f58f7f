"""Tests of ddpo.core.kl.gaussian_kl."""

from typing import Any

import beartype.roar
import jaxtyping
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpo.core import ddim_step_with_logprob, gaussian_kl

TYPE_ERRORS = (jaxtyping.TypeCheckError, beartype.roar.BeartypeException)


def _means(seed: int, shape: tuple[int, ...] = (3, 2, 4, 4)) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    std = 0.05 + torch.rand(shape[0], generator=g)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g), std


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_kl_formula_zero_at_equal_means_and_sum_is_mean_times_numel(seed: int) -> None:
    mean, ref, std = _means(seed)
    kl = gaussian_kl(mean, ref, std)
    expected = ((mean - ref) ** 2 / (2 * std.reshape(-1, 1, 1, 1) ** 2)).mean(dim=(1, 2, 3))
    torch.testing.assert_close(kl, expected)
    assert (kl >= 0).all()
    assert (gaussian_kl(mean, mean, std) == 0).all()
    torch.testing.assert_close(gaussian_kl(mean, ref, std, reduction="sum"), kl * 32)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_kl_equals_log_prob_difference_at_the_current_mean(reduction: Any) -> None:
    """For two Gaussians with one std, ``log N(mu; mu, s) - log N(mu; mu_ref, s)`` is the KL;
    checked through ``ddim_step_with_logprob`` with a current and a reference model output,
    which also ties the two functions' reductions together."""
    g = torch.Generator().manual_seed(0)
    sample, out, ref_out = (torch.randn(3, 2, 4, 4, generator=g) for _ in range(3))
    a_t = torch.tensor([0.2, 0.5, 0.9])
    a_prev = torch.tensor([0.3, 0.6, 0.95])
    kw: Any = {"eta": 1.0, "log_prob_reduction": reduction}
    cur = ddim_step_with_logprob(out, sample, a_t, a_prev, noise=torch.zeros_like(sample), **kw)
    ref = ddim_step_with_logprob(ref_out, sample, a_t, a_prev, prev_sample=cur.mean, **kw)
    kl = gaussian_kl(cur.mean, ref.mean, cur.std_dev, reduction=reduction)
    torch.testing.assert_close(kl, cur.log_prob - ref.log_prob, rtol=1e-4, atol=1e-4)


def test_kl_gradcheck_float64() -> None:
    mean, ref, std = (t.double() for t in _means(1, (2, 1, 2, 2)))
    mean.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m: gaussian_kl(m, ref, std), (mean,))


def test_kl_dtypes() -> None:
    mean, ref, std = _means(2)
    assert gaussian_kl(mean.bfloat16(), ref.bfloat16(), std).dtype == torch.float32
    assert gaussian_kl(mean.double(), ref, std).dtype == torch.float64


def test_kl_errors() -> None:
    mean, ref, std = _means(3)
    with pytest.raises((ValueError, *TYPE_ERRORS), match="reduction"):
        gaussian_kl(mean, ref, std, reduction="max")  # type: ignore[arg-type]
    with pytest.raises(TYPE_ERRORS):
        gaussian_kl(mean, ref[:2], std)
    with pytest.raises(TYPE_ERRORS):
        gaussian_kl(mean, ref, std[:2])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), reduction=st.sampled_from(["mean", "sum"]))
def test_kl_batch_equals_per_sample_and_bfloat16_agrees(seed: int, reduction: Any) -> None:
    mean, ref, std = _means(seed)
    kl = gaussian_kl(mean, ref, std, reduction=reduction)
    for i in range(mean.shape[0]):
        one = gaussian_kl(mean[i : i + 1], ref[i : i + 1], std[i : i + 1], reduction=reduction)
        torch.testing.assert_close(one, kl[i : i + 1])
    low = gaussian_kl(mean.bfloat16(), ref.bfloat16(), std, reduction=reduction)
    torch.testing.assert_close(low, kl, rtol=0.03, atol=0.03)


def test_deterministic_step_has_zero_kl_and_finite_gradient() -> None:
    mean = torch.randn(3, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    std = torch.tensor([0.5, 0.0, 0.2], dtype=torch.float64)
    kl = gaussian_kl(mean, ref, std)
    assert kl[1] == 0 and kl[0] > 0 and kl[2] > 0
    expected = (mean - ref).square().mean(dim=(1, 2, 3)) / (2 * std.square())
    torch.testing.assert_close(kl[[0, 2]], expected[[0, 2]])
    kl.sum().backward()
    assert mean.grad is not None and torch.isfinite(mean.grad).all()
    assert torch.count_nonzero(mean.grad[1]) == 0
