"""Tests of ddpo.core._broadcast: the per-sample broadcasting helper and the compute dtype."""

import inspect

import jaxtyping
import pytest
import torch

from ddpo.core._broadcast import float_dtype, per_sample


def test_per_sample_reshapes_to_the_rank_of_like() -> None:
    values = torch.tensor([1.0, 2.0, 3.0])
    out = per_sample(values, torch.zeros(3, 4, 5, 6))
    assert out.shape == (3, 1, 1, 1)
    assert torch.equal((out * torch.ones(3, 4, 5, 6))[:, 2, 3, 4], values)
    assert per_sample(values, torch.zeros(3)).shape == (3,)


def test_per_sample_refuses_a_batch_mismatch_instead_of_broadcasting() -> None:
    with pytest.raises(jaxtyping.TypeCheckError):  # the suite's shape check
        per_sample(torch.tensor([1.0]), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="1 entries but the batch has 3"):  # unchecked
        inspect.unwrap(per_sample)(torch.tensor([1.0]), torch.zeros(3, 2))


@pytest.mark.parametrize(
    ("dtypes", "expected"),
    [
        ((torch.bfloat16,), torch.float32),
        ((torch.float16, torch.bfloat16), torch.float32),
        ((torch.float32,), torch.float32),
        ((torch.float32, torch.float64), torch.float64),
    ],
)
def test_float_dtype_is_float32_at_least(
    dtypes: tuple[torch.dtype, ...], expected: torch.dtype
) -> None:
    assert float_dtype(*(torch.zeros(1, dtype=d) for d in dtypes)) == expected
