"""Tests of ddpo.core.guidance.classifier_free_guidance."""

import beartype.roar
import jaxtyping
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpo.core import classifier_free_guidance, rescale_guidance

TYPE_ERRORS = (jaxtyping.TypeCheckError, beartype.roar.BeartypeException)


@settings(max_examples=30, deadline=None)
@given(w=st.floats(-5, 15), seed=st.integers(0, 1000))
def test_guidance_is_the_affine_combination(w: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    uncond, cond = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    out = classifier_free_guidance(uncond, cond, w)
    torch.testing.assert_close(out, (1 - w) * uncond + w * cond, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(classifier_free_guidance(uncond, cond, 1.0), cond)
    torch.testing.assert_close(classifier_free_guidance(uncond, cond, 0.0), uncond)


def test_guidance_shapes_must_agree() -> None:
    with pytest.raises(TYPE_ERRORS):
        classifier_free_guidance(torch.zeros(2, 4, 3, 3), torch.zeros(1, 4, 3, 3), 7.5)


@settings(max_examples=30, deadline=None)
@given(phi=st.floats(0.0, 1.0), w=st.floats(1.0, 12.0), seed=st.integers(0, 1000))
def test_rescale_matches_diffusers(phi: float, w: float, seed: int) -> None:
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
        rescale_noise_cfg,
    )

    g = torch.Generator().manual_seed(seed)
    uncond, cond = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    guided = classifier_free_guidance(uncond, cond, w)
    expected = rescale_noise_cfg(guided, cond, guidance_rescale=phi)
    torch.testing.assert_close(
        rescale_guidance(guided, cond, guidance_rescale=phi), expected, rtol=1e-5, atol=1e-5
    )


def test_rescale_gives_the_conditional_std_at_one_and_nothing_at_zero() -> None:
    g = torch.Generator().manual_seed(0)
    guided, cond = 4 * torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 4, 6, 6, generator=g)
    assert rescale_guidance(guided, cond, guidance_rescale=0.0) is guided
    out = rescale_guidance(guided, cond, guidance_rescale=1.0)
    torch.testing.assert_close(out.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)))
    # the direction of each sample's prediction is kept
    cos = torch.nn.functional.cosine_similarity(out.flatten(1), guided.flatten(1))
    torch.testing.assert_close(cos, torch.ones(2))


@pytest.mark.parametrize("phi", [-0.1, 1.5])
def test_rescale_rejects_phi_outside_unit_interval(phi: float) -> None:
    with pytest.raises(ValueError, match="guidance_rescale"):
        rescale_guidance(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), guidance_rescale=phi)
