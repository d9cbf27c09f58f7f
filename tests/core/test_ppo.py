"""Tests of ddpo.core.ppo: TRL parity, properties, gradients, errors."""

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

from ddpo.core import clip_advantages, ppo_clip_loss, score_function_loss

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

TYPE_ERRORS = (jaxtyping.TypeCheckError, beartype.roar.BeartypeException)

floats = st.floats(-5, 5, allow_nan=False, width=32)


def test_matches_trl_reference(trl_reference: dict[str, Any]) -> None:
    """Advantages clipped to ``±adv_clip_max``, then the loss and diagnostics of TRL 0.11.4."""
    ref = trl_reference["ppo_clip_loss"]
    advantages = clip_advantages(
        torch.tensor(ref["advantages"], dtype=torch.float64), adv_clip_max=ref["adv_clip_max"]
    )
    out = ppo_clip_loss(
        torch.tensor(ref["log_prob"], dtype=torch.float64),
        torch.tensor(ref["old_log_prob"], dtype=torch.float64),
        advantages,
        clip_range=ref["clip_range"],
    )
    assert out.loss.dtype == torch.float64
    assert math.isclose(out.loss.item(), ref["loss"], rel_tol=1e-9)
    assert math.isclose(out.approx_kl.item(), ref["approx_kl"], rel_tol=1e-9)
    assert out.clip_fraction.item() == ref["clipfrac"]
    # float32 inputs (what a trainer passes) agree within 1e-5 relative.
    out32 = ppo_clip_loss(
        torch.tensor(ref["log_prob"]),
        torch.tensor(ref["old_log_prob"]),
        advantages.float(),
        clip_range=ref["clip_range"],
    )
    assert math.isclose(out32.loss.item(), ref["loss"], rel_tol=1e-5)


@settings(max_examples=50, deadline=None)
@given(
    log_prob=st.lists(floats, min_size=1, max_size=16),
    data=st.data(),
    clip_range=st.floats(1e-4, 0.5),
)
def test_ratio_one_gives_minus_mean_advantage(
    log_prob: list[float], data: st.DataObject, clip_range: float
) -> None:
    advantages = data.draw(st.lists(floats, min_size=len(log_prob), max_size=len(log_prob)))
    lp, adv = torch.tensor(log_prob), torch.tensor(advantages)
    out = ppo_clip_loss(lp, lp.clone(), adv, clip_range=clip_range)
    torch.testing.assert_close(out.loss, -adv.mean())
    assert out.approx_kl.item() == 0 and out.clip_fraction.item() == 0


@settings(max_examples=50, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 16),
    low=st.floats(1e-3, 0.9),
    high=st.floats(1e-3, 2.0),
)
def test_loss_is_the_pessimistic_bound_and_matches_the_formula(
    data: st.DataObject, n: int, low: float, high: float
) -> None:
    """Elementwise against a plain-Python statement of the objective, asymmetric clipping."""
    vec = st.lists(st.floats(-1, 1, width=32), min_size=n, max_size=n)
    log_prob, old, adv = (torch.tensor(data.draw(vec), dtype=torch.float64) for _ in range(3))
    out = ppo_clip_loss(log_prob, old, adv, clip_range=(low, high))
    terms, outside = [], 0
    for lp, o, a in zip(log_prob.tolist(), old.tolist(), adv.tolist(), strict=True):
        r = math.exp(lp - o)
        terms.append(max(-a * r, -a * min(max(r, 1 - low), 1 + high)))
        outside += r < 1 - low or r > 1 + high
    assert math.isclose(out.loss.item(), sum(terms) / n, rel_tol=1e-9, abs_tol=1e-12)
    assert out.clip_fraction.item() == outside / n
    ratio = torch.exp(log_prob - old)
    assert out.loss >= (-adv * ratio).mean() - 1e-12  # never more optimistic than unclipped
    approx_kl = 0.5 * ((log_prob - old) ** 2).mean()
    torch.testing.assert_close(out.approx_kl, approx_kl)


def test_symmetric_float_equals_pair() -> None:
    g = torch.Generator().manual_seed(0)
    lp, old, adv = (torch.randn(32, generator=g) * 0.1 for _ in range(3))
    a = ppo_clip_loss(lp, old, adv, clip_range=0.05)
    b = ppo_clip_loss(lp, old, adv, clip_range=(0.05, 0.05))
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)
    # |ratio - 1| > clip, the reference's clipfrac
    ratio = torch.exp(lp - old)
    assert a.clip_fraction.item() == ((ratio - 1).abs() > 0.05).float().mean().item()


@settings(max_examples=50, deadline=None)
@given(data=st.data(), n=st.integers(1, 16), clip_range=st.floats(1e-5, 0.9))
def test_equal_bounds_equal_the_symmetric_loss(
    data: st.DataObject, n: int, clip_range: float
) -> None:
    """``(eps, eps)`` is ``eps``: loss, diagnostics and gradient (Flow-GRPO's ``clip_range_lt =
    clip_range_gt = clip_range``)."""
    vec = st.lists(st.floats(-0.5, 0.5, width=32), min_size=n, max_size=n)
    log_prob, old, adv = (torch.tensor(data.draw(vec)) for _ in range(3))
    lp_a, lp_b = log_prob.clone().requires_grad_(True), log_prob.clone().requires_grad_(True)
    a = ppo_clip_loss(lp_a, old, adv, clip_range=clip_range)
    b = ppo_clip_loss(lp_b, old, adv, clip_range=(clip_range, clip_range))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    (grad_a,) = torch.autograd.grad(a.loss, lp_a)
    (grad_b,) = torch.autograd.grad(b.loss, lp_b)
    assert torch.equal(grad_a, grad_b)


def test_matches_flow_grpo_policy_loss() -> None:
    """Flow-GRPO's per-step ``policy_loss`` on its own tensors (``tests/fixtures/flow_grpo_loss.*``:
    advantages clipped to ``±adv_clip_max``, then the clipped surrogate at ``clip_range``)."""
    tensors = load_file(FIXTURES / "flow_grpo_loss.safetensors")
    cases = json.loads((FIXTURES / "flow_grpo_loss.json").read_text())["cases"]
    for case in cases:
        t = {
            k.split(".", 1)[1]: v
            for k, v in tensors.items()
            if k.startswith(f"case{case['case']}.")
        }
        advantages = clip_advantages(t["advantages"], adv_clip_max=case["adv_clip_max"])
        out = ppo_clip_loss(
            t["log_prob"], t["old_log_prob"], advantages, clip_range=case["clip_range"]
        )
        torch.testing.assert_close(out.loss, t["policy_loss"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("clip_range", "loss", "clip_fraction"),
    [((0.1, 0.2), (0.9 - 1.2 - 1.2) / 3, 1.0), ((0.6, 0.2), (0.5 - 1.2 - 1.2) / 3, 2 / 3)],
)
def test_asymmetric_reference_values(
    clip_range: tuple[float, float], loss: float, clip_fraction: float
) -> None:
    """By hand, with Flow-GRPO's ``clamp(ratio, 1 - clip_range_lt, 1 + clip_range_gt)``: ratios
    0.5 (A = -1), 1.5 and 1.5 (A = 1); the lower bound 0.9 binds the first, 1.2 the others."""
    ratio = torch.tensor([0.5, 1.5, 1.5], dtype=torch.float64)
    out = ppo_clip_loss(
        ratio.log(),
        torch.zeros(3, dtype=torch.float64),
        torch.tensor([-1.0, 1.0, 1.0]),
        clip_range=clip_range,
    )
    assert out.loss.item() == pytest.approx(loss, rel=1e-12)
    assert out.clip_fraction.item() == pytest.approx(clip_fraction)


def test_clip_fraction_counts_each_side_of_an_asymmetric_range() -> None:
    ratio = torch.tensor([0.5, 0.85, 1.0, 1.15, 1.5, 3.0])
    out = ppo_clip_loss(ratio.log(), torch.zeros(6), torch.ones(6), clip_range=(0.1, 1.0))
    # outside [0.9, 2.0]: 0.5, 0.85, 3.0
    assert out.clip_fraction.item() == pytest.approx(3 / 6)


def test_gradients_and_detached_diagnostics() -> None:
    """Clipped entries (on the pessimistic side) get no gradient; diagnostics are detached."""
    ratio = torch.tensor([1.0, 1.5, 0.5, 1.5, 0.5])
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0])
    log_prob = ratio.log().requires_grad_(True)
    out = ppo_clip_loss(log_prob, torch.zeros(5), adv, clip_range=0.2)
    assert out.loss.requires_grad
    assert not out.approx_kl.requires_grad and not out.clip_fraction.requires_grad
    (grad,) = torch.autograd.grad(out.loss, log_prob)
    # d/dlp of -A*r/n = -A*r/n where unclipped; zero where the clipped term is the max.
    expected = torch.tensor([-1.0, 0.0, -0.5, 1.5, 0.0]) / 5
    torch.testing.assert_close(grad, expected)


def test_works_per_sample_and_step() -> None:
    """Any shape, as long as the three agree: (batch, steps) equals its flattening."""
    g = torch.Generator().manual_seed(1)
    lp, old, adv = (torch.randn(4, 5, generator=g) * 0.01 for _ in range(3))
    a = ppo_clip_loss(lp, old, adv, clip_range=0.005)
    b = ppo_clip_loss(lp.flatten(), old.flatten(), adv.flatten(), clip_range=0.005)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)


def test_bfloat16_inputs_compute_in_float32() -> None:
    g = torch.Generator().manual_seed(2)
    lp, old, adv = (torch.randn(16, generator=g) * 0.1 for _ in range(3))
    ref = ppo_clip_loss(lp, old, adv, clip_range=0.1)
    low = ppo_clip_loss(lp.bfloat16(), old.bfloat16(), adv.bfloat16(), clip_range=0.1)
    assert low.loss.dtype == torch.float32
    torch.testing.assert_close(low.loss, ref.loss, rtol=0.02, atol=0.02)


@pytest.mark.parametrize("clip_range", [0.0, -0.1, (0.1, 0.0), (-0.1, 0.2), math.inf, math.nan])
def test_invalid_clip_range_raises(clip_range: Any) -> None:
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="clip_range"):
        ppo_clip_loss(x, x, x, clip_range=clip_range)


@pytest.mark.parametrize("clip_range", [(0.1, 0.2, 0.3), (0.1,), "0.1", [0.1, 0.2]])
def test_malformed_clip_range_raises_naming_it(clip_range: Any) -> None:
    """Wrong types fail the suite's type check; unchecked, a ValueError names the argument."""
    x = torch.zeros(3)
    with pytest.raises((ValueError, *TYPE_ERRORS), match="clip_range"):
        ppo_clip_loss(x, x, x, clip_range=clip_range)
    if not isinstance(clip_range, list):
        with pytest.raises(ValueError, match="clip_range"):
            inspect.unwrap(ppo_clip_loss)(x, x, x, clip_range=clip_range)


@pytest.mark.parametrize("shapes", [((3,), (4,), (3,)), ((3,), (3,), (1,)), ((2, 3), (2, 3), (2,))])
def test_mismatched_shapes_fail_the_type_check(shapes: tuple[tuple[int, ...], ...]) -> None:
    tensors = [torch.zeros(s) for s in shapes]
    with pytest.raises(TYPE_ERRORS):
        ppo_clip_loss(*tensors, clip_range=0.1)


def test_integer_log_probs_fail_the_type_check() -> None:
    with pytest.raises(TYPE_ERRORS):
        ppo_clip_loss(torch.zeros(3, dtype=torch.long), torch.zeros(3), torch.zeros(3))


# --- score-function loss -------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(data=st.data(), n=st.integers(1, 16))
def test_score_function_loss_value_and_gradient(data: st.DataObject, n: int) -> None:
    vec = st.lists(floats, min_size=n, max_size=n)
    log_prob = torch.tensor(data.draw(vec), dtype=torch.float64, requires_grad=True)
    adv = torch.tensor(data.draw(vec), dtype=torch.float64)
    loss = score_function_loss(log_prob, adv)
    torch.testing.assert_close(loss, -(adv * log_prob).mean())
    (grad,) = torch.autograd.grad(loss, log_prob)
    torch.testing.assert_close(grad, -adv / n)


def test_score_function_gradient_equals_ppo_gradient_at_ratio_one() -> None:
    """At ratio 1 the PPO and score-function losses have the same gradient (Black et al., 4.3)."""
    g = torch.Generator().manual_seed(3)
    lp = torch.randn(8, generator=g, dtype=torch.float64).requires_grad_(True)
    adv = torch.randn(8, generator=g, dtype=torch.float64)
    (g_ppo,) = torch.autograd.grad(ppo_clip_loss(lp, lp.detach(), adv).loss, lp)
    (g_sf,) = torch.autograd.grad(score_function_loss(lp, adv), lp)
    torch.testing.assert_close(g_ppo, g_sf)


def test_score_function_loss_shapes_must_agree() -> None:
    with pytest.raises(TYPE_ERRORS):
        score_function_loss(torch.zeros(3), torch.zeros(2))


def test_gradcheck_float64() -> None:
    """PPO and score-function losses w.r.t. log-probs, ratios away from the clip kinks."""
    g = torch.Generator().manual_seed(4)
    old = torch.randn(6, generator=g, dtype=torch.float64)
    # ratios exp(+-0.05), exp(+-0.3): inside and outside a 0.1 clip range, none on its edge
    offsets = torch.tensor([0.05, -0.05, 0.3, -0.3, 0.3, -0.3], dtype=torch.float64)
    log_prob = (old + offsets).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda lp: ppo_clip_loss(lp, old, adv, clip_range=0.1).loss, (log_prob,)
    )
    assert torch.autograd.gradcheck(lambda lp: score_function_loss(lp, adv), (log_prob,))
