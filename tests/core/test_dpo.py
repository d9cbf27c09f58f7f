"""`ddpo.core.diffusion_dpo_loss`: Diffusion-DPO's loss (Wallace et al., 2023, arXiv
2311.12908). A hand-computed case (the authors' ``train.py`` computes the loss inline in a
training script that cannot run here; its formula was read and the numbers below worked by
hand), the swap property, the reference point, and float64 gradients against their closed
form."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpo.core import diffusion_dpo_loss


def _one(value: float) -> torch.Tensor:
    return torch.tensor([value]).view(1, 1, 1, 1)


def test_a_hand_computed_pair() -> None:
    # errors: model w 1.0, model l 0.25 (diff 0.75); reference w 0.25, reference l 1.0 (diff
    # -0.75); x = -beta / 2 (0.75 + 0.75) = -1.5 at beta 2; L = log(1 + e^1.5) = 1.7014132
    out = diffusion_dpo_loss(_one(1.0), _one(0.5), _one(0.5), _one(1.0), _one(0.0), _one(0.0),
                             beta=2.0)  # fmt: skip
    torch.testing.assert_close(out.logit, torch.tensor([-1.5]))
    torch.testing.assert_close(out.loss, torch.tensor([math.log1p(math.exp(1.5))]))
    torch.testing.assert_close(out.model_diff, torch.tensor([0.75]))
    torch.testing.assert_close(out.reference_diff, torch.tensor([-0.75]))
    with pytest.raises(ValueError, match=r"beta must be > 0, got 0\.0"):
        diffusion_dpo_loss(*([_one(0.0)] * 6), beta=0.0)
    with pytest.raises(ValueError, match="one shape"):
        diffusion_dpo_loss(*([_one(0.0)] * 5), torch.zeros(1, 1, 1, 2), beta=1.0)


def _pairs(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64) for _ in range(6)]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), beta=st.floats(0.1, 50.0))
def test_swapping_the_pair_negates_the_logit(seed: int, beta: float) -> None:
    p_w, p_l, r_w, r_l, t_w, t_l = _pairs(seed)
    forward = diffusion_dpo_loss(p_w, p_l, r_w, r_l, t_w, t_l, beta=beta)
    swapped = diffusion_dpo_loss(p_l, p_w, r_l, r_w, t_l, t_w, beta=beta)
    torch.testing.assert_close(swapped.logit, -forward.logit)
    # -log sigmoid(x) + log sigmoid(-x) = -x
    torch.testing.assert_close(forward.loss - swapped.loss, -forward.logit)
    # the model equal to its reference: no preference yet, the loss is log 2
    at_reference = diffusion_dpo_loss(r_w, r_l, r_w, r_l, t_w, t_l, beta=beta)
    torch.testing.assert_close(
        at_reference.loss, torch.full((4,), math.log(2), dtype=torch.float64)
    )


def test_the_gradient_is_its_closed_form_in_float64() -> None:
    """dL/dp_w = sigmoid(-x) beta (p_w - t_w) / n and dL/dp_l = -sigmoid(-x) beta (p_l - t_l) / n,
    n the elements per sample; the reference gets none."""
    p_w, p_l, r_w, r_l, t_w, t_l = _pairs(3)
    w, l_ = p_w.clone().requires_grad_(True), p_l.clone().requires_grad_(True)
    beta = 7.0
    out = diffusion_dpo_loss(w, l_, r_w, r_l, t_w, t_l, beta=beta)
    grad_w, grad_l = torch.autograd.grad(out.loss.sum(), (w, l_))
    scale = (torch.sigmoid(-out.logit.detach()) * beta / p_w[0].numel()).view(4, 1, 1, 1)
    torch.testing.assert_close(grad_w, scale * (p_w - t_w))
    torch.testing.assert_close(grad_l, -scale * (p_l - t_l))
    ref = r_w.clone().requires_grad_(True)
    assert not diffusion_dpo_loss(p_w, p_l, ref, r_l, t_w, t_l, beta=beta).loss.requires_grad
