"""Tests of ddpo.core.guidance.classifier_free_guidance."""

import beartype.roar
import jaxtyping
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpo.core import classifier_free_guidance

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
