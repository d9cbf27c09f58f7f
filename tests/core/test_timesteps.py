"""Tests of ddpo.core.timesteps.subsample_timesteps."""

import beartype.roar
import jaxtyping
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpo.core import subsample_timesteps

TYPE_ERRORS = (jaxtyping.TypeCheckError, beartype.roar.BeartypeException)


def _perms(batch: int, steps: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(steps, generator=g) for _ in range(batch)])


@settings(max_examples=50, deadline=None)
@given(
    batch=st.integers(1, 6),
    steps=st.integers(1, 60),
    fraction=st.floats(0.01, 1.0),
    seed=st.integers(0, 1000),
)
def test_keeps_int_steps_times_fraction_distinct_steps_per_sample(
    batch: int, steps: int, fraction: float, seed: int
) -> None:
    k = int(steps * fraction)
    perm = _perms(batch, steps, seed)
    if k < 1:
        with pytest.raises(ValueError, match="timestep_fraction"):
            subsample_timesteps(perm, timestep_fraction=fraction)
        return
    out = subsample_timesteps(perm, timestep_fraction=fraction)
    assert out.shape == (batch, k)
    assert torch.equal(out, perm[:, :k])
    for row in out:
        assert len(set(row.tolist())) == k and int(row.min()) >= 0 and int(row.max()) < steps


def test_reference_default_keeps_every_step() -> None:
    perm = _perms(3, 10)
    assert torch.equal(subsample_timesteps(perm), perm)


@pytest.mark.parametrize(("steps", "kept"), [(10, 9), (40, 39), (1, 1), (2, 1)])
def test_identity_keeps_the_first_steps_in_order_as_flow_grpo(steps: int, kept: int) -> None:
    """Flow-GRPO's ``timestep_fraction = 0.99``: ``int(0.99 N)`` steps, 0 to N - 2 (N >= 2)."""
    identity = torch.arange(steps).expand(3, steps)
    out = subsample_timesteps(identity, timestep_fraction=0.99 if steps > 1 else 1.0)
    assert torch.equal(out, torch.arange(kept).expand(3, kept))


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5, float("nan")])
def test_fraction_outside_unit_interval_raises(fraction: float) -> None:
    with pytest.raises(ValueError, match="timestep_fraction"):
        subsample_timesteps(_perms(2, 10), timestep_fraction=fraction)


def test_rows_must_be_permutations() -> None:
    bad = _perms(2, 5)
    bad[1, 0] = bad[1, 1]
    with pytest.raises(ValueError, match="permutation"):
        subsample_timesteps(bad, timestep_fraction=0.5)
    with pytest.raises(ValueError, match="permutation"):
        subsample_timesteps(_perms(2, 5) + 1, timestep_fraction=0.5)


def test_wrong_shape_or_dtype_fails_the_type_check() -> None:
    with pytest.raises(TYPE_ERRORS):
        subsample_timesteps(torch.randperm(5), timestep_fraction=0.5)
    with pytest.raises(TYPE_ERRORS):
        subsample_timesteps(_perms(2, 5).float(), timestep_fraction=0.5)
