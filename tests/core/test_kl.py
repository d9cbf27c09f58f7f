"""Tests of ddpo.core.kl: gaussian_kl and Flow-GRPO's flow_grpo_kl."""

import json
from pathlib import Path
from typing import Any

import beartype.roar
import jaxtyping
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from ddpo.core import ddim_step_with_logprob, flow_grpo_kl, flow_sde_step_with_logprob, gaussian_kl

TYPE_ERRORS = (jaxtyping.TypeCheckError, beartype.roar.BeartypeException)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LOSS_CASES: list[dict[str, Any]] = json.loads((FIXTURES / "flow_grpo_loss.json").read_text())[
    "cases"
]


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


# --- flow_grpo_kl: Flow-GRPO's penalty (tests/fixtures/flow_grpo_loss.*) ----------------------


@pytest.fixture(scope="module")
def flow_grpo_loss_tensors() -> dict[str, torch.Tensor]:
    """``flow_grpo_loss.safetensors``: Flow-GRPO's per-step loss inputs and results."""
    return load_file(FIXTURES / "flow_grpo_loss.safetensors")


@pytest.mark.parametrize("case", [c for c in LOSS_CASES if c["beta"] > 0], ids=lambda c: c["case"])
def test_flow_grpo_kl_matches_flow_grpo_reference(
    case: dict[str, Any], flow_grpo_loss_tensors: dict[str, torch.Tensor]
) -> None:
    """The batch mean is Flow-GRPO's ``kl_loss`` on its own tensors; the exact KL (the step's
    true standard deviation ``std_dev_t sqrt(-dt)``) is it divided by ``-dt`` per sample."""
    t = {
        k.split(".", 1)[1]: v
        for k, v in flow_grpo_loss_tensors.items()
        if k.startswith(f"case{case['case']}.")
    }
    std_dev_t = t["std_dev_t"].flatten()
    kl = flow_grpo_kl(t["prev_sample_mean"], t["prev_sample_mean_ref"], std_dev_t)
    torch.testing.assert_close(kl.mean(), t["kl_loss"], rtol=1e-6, atol=1e-9)
    minus_dt = (t["sigma"] - t["sigma_prev"]).flatten()
    exact = gaussian_kl(
        t["prev_sample_mean"], t["prev_sample_mean_ref"], std_dev_t * minus_dt.sqrt()
    )
    torch.testing.assert_close(exact, kl / minus_dt, rtol=1e-5, atol=0)
    assert bool((exact > kl).all())  # -dt < 1: the exact KL is the larger


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_flow_grpo_kl_is_the_exact_kl_times_the_step_size(seed: int) -> None:
    """On Flow-GRPO's SDE step: ``flow_grpo_kl(mu, mu_ref, std_t) = -dt * KL`` with the step's
    standard deviation ``std_t sqrt(-dt)``; equal means give 0; batched equals per sample."""
    g = torch.Generator().manual_seed(seed)
    sigma = 0.05 + 0.95 * torch.rand(3, generator=g, dtype=torch.float64)
    sigma_prev = sigma * torch.rand(3, generator=g, dtype=torch.float64)
    sample, out, ref_out = (
        torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64) for _ in "abc"
    )
    kw: Any = {"noise_level": 0.7, "sigma_max": 0.98, "prev_sample": sample}
    cur = flow_sde_step_with_logprob(out, sample, sigma, sigma_prev, **kw)
    ref = flow_sde_step_with_logprob(ref_out, sample, sigma, sigma_prev, **kw)
    minus_dt = sigma - sigma_prev
    theirs = flow_grpo_kl(cur.mean, ref.mean, cur.std_dev)
    ours = gaussian_kl(cur.mean, ref.mean, cur.std_dev * minus_dt.sqrt())
    torch.testing.assert_close(theirs, minus_dt * ours)
    torch.testing.assert_close(theirs, gaussian_kl(cur.mean, ref.mean, cur.std_dev))
    assert bool((theirs >= 0).all()) and bool(
        (flow_grpo_kl(cur.mean, cur.mean, cur.std_dev) == 0).all()
    )
    for i in range(3):
        one = flow_grpo_kl(cur.mean[i : i + 1], ref.mean[i : i + 1], cur.std_dev[i : i + 1])
        torch.testing.assert_close(one, theirs[i : i + 1])


def test_flow_grpo_kl_gradcheck_float64_and_dtypes() -> None:
    mean, ref, std = (t.double() for t in _means(4, (2, 1, 2, 2)))
    mean.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m: flow_grpo_kl(m, ref, std), (mean,))
    mean32, ref32, std32 = _means(5)
    assert flow_grpo_kl(mean32.bfloat16(), ref32.bfloat16(), std32).dtype == torch.float32
    assert flow_grpo_kl(mean32.double(), ref32, std32).dtype == torch.float64
    with pytest.raises(TYPE_ERRORS):
        flow_grpo_kl(mean32, ref32, std32[:2])


def test_flow_grpo_kl_deterministic_step_is_zero_with_finite_gradient() -> None:
    mean = torch.randn(2, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(2, 4, 2, 2, dtype=torch.float64)
    kl = flow_grpo_kl(mean, ref, torch.tensor([0.0, 0.3], dtype=torch.float64))
    assert kl[0] == 0 and kl[1] > 0
    kl.sum().backward()
    assert mean.grad is not None and torch.isfinite(mean.grad).all()
    assert torch.count_nonzero(mean.grad[0]) == 0
