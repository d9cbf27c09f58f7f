"""`ddpo.core.awm_log_likelihood` and `awm_kl_penalty`: Advantage Weighted Matching (Xue et al.,
2025, arXiv 2509.25050). A hand-computed case (the authors' ``train_sd3_awm.py`` computes these
inline in a training script that cannot run here; its formulas were read and the numbers below
worked by hand), and on-policy, with PPO's loss, the gradient of the advantage-weighted
matching loss."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpo.core import awm_kl_penalty, awm_log_likelihood, ppo_clip_loss


def test_a_hand_computed_case() -> None:
    velocity = torch.tensor([1.0, 2.0]).view(1, 1, 1, 2)
    target = torch.zeros(1, 1, 1, 2)
    sigma = torch.tensor([0.5])
    # mean squared error (1 + 4) / 2 = 2.5, weighted by 1, sigma, sigma^2
    for weighting, expected in (("uniform", -2.5), ("sigma", -1.25), ("sigma_squared", -0.625)):
        value = awm_log_likelihood(velocity, target, sigma, weighting=weighting)  # type: ignore[arg-type]
        torch.testing.assert_close(value, torch.tensor([expected], dtype=torch.float64))
    # ghuber, p = 0.25: -sigma ((2.5 + 1e-10)^0.25 - 1e-10^0.25) / 0.25 = -2 (1.2574334 - 0.0031623)
    #   = -2.5085422
    ghuber = awm_log_likelihood(velocity, target, sigma, weighting="ghuber")
    torch.testing.assert_close(ghuber, torch.tensor([-2 * (2.5**0.25 - 1e-10**0.25)],
                                                    dtype=torch.float64))  # fmt: skip
    torch.testing.assert_close(ghuber, torch.tensor([-2.50854], dtype=torch.float64),
                               atol=1e-4, rtol=0)  # fmt: skip
    with pytest.raises(ValueError, match=r"ghuber_power must be > 0, got 0"):
        awm_log_likelihood(velocity, target, sigma, weighting="ghuber", ghuber_power=0)
    # std_t = 0.7 sqrt(0.5 / 0.5) = 0.7: 2.5 / (2 * 0.49) = 2.5510204
    torch.testing.assert_close(awm_kl_penalty(velocity, target, sigma),
                               torch.tensor([2.5 / 0.98]))  # fmt: skip
    torch.testing.assert_close(awm_kl_penalty(velocity, target, sigma, weighting="uniform"),
                               torch.tensor([2.5]))  # fmt: skip
    with pytest.raises(ValueError, match=r"weighting must be one of .* got 'huber'"):
        awm_log_likelihood(velocity, target, sigma, weighting="huber")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"weighting must be one of .* got 't'"):
        awm_kl_penalty(velocity, target, sigma, weighting="t")  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), advantage=st.floats(-3.0, 3.0),
       weighting=st.sampled_from(["uniform", "sigma", "sigma_squared", "ghuber"]))  # fmt: skip
def test_on_policy_a_constant_advantage_trains_the_weighted_matching_loss(
    seed: int, advantage: float, weighting: str
) -> None:
    g = torch.Generator().manual_seed(seed)
    velocity = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
    target = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
    sigma = torch.rand(4, generator=g, dtype=torch.float64)
    v = velocity.clone().requires_grad_(True)
    log_p = awm_log_likelihood(v, target, sigma, weighting=weighting)  # type: ignore[arg-type]
    advantages = torch.full((4,), advantage, dtype=torch.float64)
    loss = ppo_clip_loss(log_p, log_p.detach(), advantages, clip_range=1e-4).loss
    (grad,) = torch.autograd.grad(loss, v)
    u = velocity.clone().requires_grad_(True)
    matching = -awm_log_likelihood(u, target, sigma, weighting=weighting).mean()  # type: ignore[arg-type]
    (matching_grad,) = torch.autograd.grad(matching, u)
    torch.testing.assert_close(grad, advantage * matching_grad)


@pytest.mark.parametrize("weighting", ["uniform", "sigma", "sigma_squared", "ghuber"])
def test_the_surrogate_and_the_regulariser_pass_gradcheck_in_float64(weighting: str) -> None:
    g = torch.Generator().manual_seed(3)
    velocity = torch.randn(2, 1, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 1, 2, 2, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.3, 0.8], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda v: awm_log_likelihood(v, target, sigma, weighting=weighting),  # type: ignore[arg-type]
        (velocity,),
    )
    for kl_weighting in ("elbo", "uniform"):
        assert torch.autograd.gradcheck(
            lambda v, w=kl_weighting: awm_kl_penalty(v, target, sigma, weighting=w),  # type: ignore[misc]
            (velocity,),
        )
