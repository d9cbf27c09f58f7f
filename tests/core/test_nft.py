"""`ddpo.core.nft_loss` and `nft_optimality`: DiffusionNFT's objective (Zheng et al., 2025,
arXiv 2509.16117). A hand-computed fixture (the authors' ``train_nft_sd3.py`` is a training
script over SD3 that cannot run here; its formula was read and the numbers below worked by
hand), the reduction to flow matching where the old policy is the current one, and float64
gradients against their closed form."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpo.core import (
    flow_add_noise,
    flow_predicted_x0,
    nft_clean_loss,
    nft_loss,
    nft_old_policy_decay,
    nft_optimality,
)


def test_optimality_maps_clipped_advantages_to_the_unit_interval() -> None:
    advantages = torch.tensor([-7.0, -5.0, -2.5, 0.0, 2.5, 5.0, 9.0])
    expected = torch.tensor([0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    torch.testing.assert_close(nft_optimality(advantages), expected)
    torch.testing.assert_close(nft_optimality(torch.tensor([1.0]), adv_clip_max=2.0),
                               torch.tensor([0.75]))  # fmt: skip
    with pytest.raises(ValueError, match=r"adv_clip_max must be > 0, got 0\.0"):
        nft_optimality(advantages, adv_clip_max=0.0)


def test_a_hand_computed_case() -> None:
    # one sample of two elements: x0 = (0, 1), x_sigma = (0.2, 0.6), sigma = 0.5, beta = 0.5,
    # v = (0.5, 0), v_old = (1, 1), r = 0.75.
    # v+ = (0.75, 0.5): x0+ = (-0.175, 0.35), error (-0.175, -0.65), w+ = 0.4125,
    #   E+ = (0.175^2 + 0.65^2) / 2 / 0.4125 = 0.549242...
    # v- = (1.25, 1.5): x0- = (-0.425, -0.15), error (-0.425, -1.15), w- = 0.7875,
    #   E- = (0.425^2 + 1.15^2) / 2 / 0.7875 = 0.954365...
    # L = 0.75 E+ / 0.5 + 0.25 E- / 0.5 = 1.3010462
    shape = (1, 1, 1, 2)
    loss = nft_loss(
        torch.tensor([0.0, 1.0]).view(shape),
        torch.tensor([0.2, 0.6]).view(shape),
        torch.tensor([0.5]),
        torch.tensor([0.5, 0.0]).view(shape),
        torch.tensor([1.0, 1.0]).view(shape),
        torch.tensor([0.75]),
        beta=0.5,
    )
    torch.testing.assert_close(loss, torch.tensor([1.3010462]))
    with pytest.raises(ValueError, match="beta must be > 0, got 0"):
        nft_loss(*([torch.zeros(shape)] * 2), torch.tensor([0.5]), *([torch.zeros(shape)] * 2),
                 torch.tensor([0.5]), beta=0.0)  # fmt: skip


def _case(seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    sigma = torch.rand(3, generator=g, dtype=torch.float64) * 0.9 + 0.05
    velocity = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    return x0, flow_add_noise(x0, noise, sigma), sigma, velocity


def _weighted_flow_matching(x0: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor,
                            velocity: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The adaptively weighted flow-matching error, written out from the paper's definitions."""
    error = flow_predicted_x0(x_t, velocity, sigma) - x0
    weight = error.detach().abs().mean(dim=(1, 2, 3)).clamp(min=1e-5)
    return (error**2).mean(dim=(1, 2, 3)) / weight


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), beta=st.floats(0.01, 2.0), r=st.floats(0.0, 1.0))
def test_where_the_old_policy_is_the_current_one_it_is_weighted_flow_matching(
    seed: int, beta: float, r: float
) -> None:
    x0, x_t, sigma, velocity = _case(seed)
    optimality = torch.full((3,), r, dtype=torch.float64)
    v = velocity.clone().requires_grad_(True)
    loss = nft_loss(x0, x_t, sigma, v, velocity, optimality, beta=beta)
    u = velocity.clone().requires_grad_(True)
    matching = _weighted_flow_matching(x0, x_t, sigma, u)
    torch.testing.assert_close(loss, matching.detach() / beta)
    (grad,) = torch.autograd.grad(loss.sum(), v)
    (matching_grad,) = torch.autograd.grad(matching.sum(), u)
    torch.testing.assert_close(grad, (2 * r - 1) * matching_grad)  # r = 1/2: no pull at all


def test_the_gradient_is_its_closed_form_in_float64() -> None:
    """dL/dv = -2 r sigma (x0+ - x0) / (w+ n) + 2 (1 - r) sigma (x0- - x0) / (w- n), with the
    adaptive weights w held fixed (detached) and n the elements per sample; old != current."""
    x0, x_t, sigma, velocity = _case(7)
    old = velocity + 0.3 * torch.randn(velocity.shape, dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(1))  # fmt: skip
    r = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    beta = 0.1
    v = velocity.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nft_loss(x0, x_t, sigma, v, old, r, beta=beta).sum(), v)
    s, n = sigma.view(3, 1, 1, 1), x0[0].numel()
    plus = x_t - s * (beta * velocity + (1 - beta) * old) - x0
    minus = x_t - s * ((1 + beta) * old - beta * velocity) - x0
    w_plus = plus.abs().mean(dim=(1, 2, 3), keepdim=True)
    w_minus = minus.abs().mean(dim=(1, 2, 3), keepdim=True)
    rr = r.view(3, 1, 1, 1)
    expected = -2 * rr * s * plus / (w_plus * n) + 2 * (1 - rr) * s * minus / (w_minus * n)
    torch.testing.assert_close(grad, expected)
    old_v = old.clone().requires_grad_(True)
    loss = nft_loss(x0, x_t, sigma, velocity, old_v, r, beta=beta).sum()
    assert not loss.requires_grad  # the old policy is a fixed target


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), beta=st.floats(0.05, 2.0))
def test_the_clean_form_is_the_velocity_form_for_a_flow(seed: int, beta: float) -> None:
    """`nft_clean_loss` on the clean latents that the velocities imply (``x_sigma - sigma v``)
    is `nft_loss`, values and gradients: mixing predictions mixes their clean estimates."""
    x0, x_t, sigma, velocity = _case(seed)
    g = torch.Generator().manual_seed(seed + 1)
    old = velocity + 0.2 * torch.randn(velocity.shape, dtype=torch.float64, generator=g)
    r = torch.rand(3, dtype=torch.float64, generator=g)
    v = velocity.clone().requires_grad_(True)
    u = velocity.clone().requires_grad_(True)
    direct = nft_loss(x0, x_t, sigma, v, old, r, beta=beta)
    clean = nft_clean_loss(
        x0, flow_predicted_x0(x_t, u, sigma), flow_predicted_x0(x_t, old, sigma), r, beta=beta
    )
    torch.testing.assert_close(clean, direct)
    (grad_direct,) = torch.autograd.grad(direct.sum(), v)
    (grad_clean,) = torch.autograd.grad(clean.sum(), u)
    torch.testing.assert_close(grad_clean, grad_direct)
    with pytest.raises(ValueError, match=r"beta must be > 0, got -1.0"):
        nft_clean_loss(x0, x0, x0, r, beta=-1.0)


def test_the_old_policys_schedules() -> None:
    """``decay_type`` 1: ``min(0.001 s, 0.5)``; 2: 0 for 75 steps, then 0.0075 per step up to
    0.999; 0: always 0 (the authors' ``return_decay``)."""
    assert [nft_old_policy_decay(s) for s in (0, 1, 100, 499, 500, 10_000)] == pytest.approx(
        [0.0, 0.001, 0.1, 0.499, 0.5, 0.5]
    )
    assert [nft_old_policy_decay(s, decay_type=2) for s in (0, 74, 75, 76, 200, 500)] == (
        pytest.approx([0.0, 0.0, 0.0, 0.0075, 0.9375, 0.999])
    )
    assert nft_old_policy_decay(10**6, decay_type=0) == 0.0
    with pytest.raises(ValueError, match=r"decay_type must be one of \[0, 1, 2\], got 3"):
        nft_old_policy_decay(1, decay_type=3)
    with pytest.raises(ValueError, match=r"optimizer_steps must be >= 0, got -1"):
        nft_old_policy_decay(-1)
