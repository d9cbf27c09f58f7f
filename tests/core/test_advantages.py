"""Tests of ddpo.core.advantages: global and group normalization, clipping."""

import math
from fractions import Fraction
from typing import Any

import beartype.roar
import jaxtyping
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ddpo.core import clip_advantages, group_normalize_advantages, normalize_advantages

TYPE_ERRORS = (jaxtyping.TypeCheckError, beartype.roar.BeartypeException)
reward = st.floats(-100, 100, allow_nan=False)
rewards_lists = st.lists(reward, min_size=1, max_size=24)


def population_std(x: torch.Tensor) -> torch.Tensor:
    return x.std(correction=0)


# --- normalize_advantages ------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(rewards=rewards_lists)
def test_normalize_matches_the_formula(rewards: list[float]) -> None:
    """Against exact rational arithmetic (a float64 mean can be off by an ulp, which the
    ``+ 1e-8`` then turns into a nonzero advantage for tied rewards)."""
    exact = [Fraction(v) for v in rewards]
    mean = sum(exact) / len(exact)
    std = math.sqrt(sum((v - mean) ** 2 for v in exact) / len(exact))
    expected = [float((v - mean) / Fraction(std + 1e-8)) for v in exact]
    r = torch.tensor(rewards, dtype=torch.float64)
    out = normalize_advantages(r)
    torch.testing.assert_close(
        out, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-6
    )


@settings(max_examples=50, deadline=None)
@given(value=reward, n=st.integers(1, 32), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_tied_rewards_give_exactly_zero(value: float, n: int, dtype: torch.dtype) -> None:
    r = torch.full((n,), value, dtype=dtype)
    assert (normalize_advantages(r) == 0).all()
    assert (group_normalize_advantages(r, torch.zeros(n, dtype=torch.long)) == 0).all()


def test_normalize_output_dtype() -> None:
    r = torch.tensor([1.0, 2.0, 4.0])
    assert normalize_advantages(r).dtype == torch.float32
    assert normalize_advantages(r.double()).dtype == torch.float64
    bf = normalize_advantages(r.bfloat16())
    assert bf.dtype == torch.float32
    torch.testing.assert_close(bf, normalize_advantages(r), rtol=1e-2, atol=1e-2)


# --- group_normalize_advantages ------------------------------------------------------------


@st.composite
def grouped(draw: Any) -> tuple[list[float], list[int]]:
    n = draw(st.integers(1, 24))
    values = draw(st.lists(reward, min_size=n, max_size=n))
    groups = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    return values, groups


@settings(max_examples=50, deadline=None)
@given(data=grouped(), std=st.sampled_from(["group", "global"]))
def test_group_normalize_matches_a_per_group_loop(
    data: tuple[list[float], list[int]], std: Any
) -> None:
    values, groups = data
    r, g = torch.tensor(values, dtype=torch.float64), torch.tensor(groups)
    out = group_normalize_advantages(r, g, std=std)
    for group in set(groups):
        mask = g == group
        scale = population_std(r[mask]) if std == "group" else population_std(r)
        expected = (r[mask] - r[mask].mean()) / (scale + 1e-4)
        torch.testing.assert_close(out[mask], expected, rtol=1e-6, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(data=grouped(), shifts=st.lists(reward, min_size=4, max_size=4), scales=st.data())
def test_group_advantages_invariant_to_per_group_affine_maps(
    data: tuple[list[float], list[int]], shifts: list[float], scales: st.DataObject
) -> None:
    """``std="group"``: shifting and positively scaling one group's rewards changes nothing."""
    values, groups = data
    r, g = torch.tensor(values, dtype=torch.float64), torch.tensor(groups)
    for group in set(groups):
        assume(population_std(r[g == group]) > 0.1 or (g == group).sum() == 1)
    factors = scales.draw(st.lists(st.floats(0.5, 10), min_size=4, max_size=4))
    mapped = r * torch.tensor(factors, dtype=torch.float64)[g] + torch.tensor(shifts)[g]
    torch.testing.assert_close(
        group_normalize_advantages(mapped, g, eps=1e-9),
        group_normalize_advantages(r, g, eps=1e-9),
        rtol=1e-5,
        atol=1e-5,
    )


@settings(max_examples=30, deadline=None)
@given(data=grouped(), value=reward)
def test_all_equal_groups_are_exactly_zero(
    data: tuple[list[float], list[int]], value: float
) -> None:
    values, groups = data
    r, g = torch.tensor(values, dtype=torch.float64), torch.tensor(groups)
    r[g == 0] = value
    for std in ("group", "global"):
        out = group_normalize_advantages(r, g, std=std)  # type: ignore[arg-type]
        assert (out[g == 0] == 0).all()


def test_group_ids_may_be_strings_and_a_single_group_is_global_normalization() -> None:
    r = torch.tensor([1.0, 3.0, 2.0, 8.0, 5.0])
    by_str = group_normalize_advantages(r, ["a", "b", "a", "b", "c"])
    by_int = group_normalize_advantages(r, torch.tensor([5, 7, 5, 7, 9]))
    torch.testing.assert_close(by_str, by_int)
    assert by_str[4] == 0  # a group of one
    one_group = group_normalize_advantages(r, ["p"] * 5, eps=1e-8)
    torch.testing.assert_close(one_group, normalize_advantages(r))


def test_group_normalize_permutation_equivariant() -> None:
    g = torch.Generator().manual_seed(0)
    r, ids = torch.randn(12, generator=g), torch.randint(0, 3, (12,), generator=g)
    perm = torch.randperm(12, generator=g)
    out = group_normalize_advantages(r, ids)
    torch.testing.assert_close(group_normalize_advantages(r[perm], ids[perm]), out[perm])


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [({"std": "batch"}, "std"), ({"eps": 0.0}, "eps"), ({"eps": -1e-3}, "eps")],
)
def test_group_normalize_invalid_hyper_parameters(kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises((ValueError, *TYPE_ERRORS), match=argument):
        group_normalize_advantages(torch.zeros(3), torch.zeros(3, dtype=torch.long), **kwargs)


def test_group_ids_must_match_rewards() -> None:
    with pytest.raises(ValueError, match="group_ids"):
        group_normalize_advantages(torch.zeros(3), ["a", "b"])
    with pytest.raises(ValueError, match="group_ids"):
        group_normalize_advantages(torch.zeros(3), "abc")
    with pytest.raises(TYPE_ERRORS):
        group_normalize_advantages(torch.zeros(3), torch.zeros(3))  # float ids


def test_normalize_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="eps"):
        normalize_advantages(torch.zeros(3), eps=0.0)
    with pytest.raises(ValueError, match="rewards"):
        normalize_advantages(torch.zeros(0))
    with pytest.raises(TYPE_ERRORS):
        normalize_advantages(torch.zeros(3, 2))


# --- clip_advantages -----------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(values=rewards_lists, bound=st.floats(1e-3, 50))
def test_clip_advantages_bounds_and_keeps_inner_values(values: list[float], bound: float) -> None:
    a = torch.tensor(values, dtype=torch.float64)
    out = clip_advantages(a, adv_clip_max=bound)
    assert (out.abs() <= bound).all()
    inside = a.abs() <= bound
    assert torch.equal(out[inside], a[inside])
    assert torch.equal(out[~inside], bound * a[~inside].sign())


@pytest.mark.parametrize("bound", [0.0, -1.0])
def test_clip_advantages_invalid_bound(bound: float) -> None:
    with pytest.raises(ValueError, match="adv_clip_max"):
        clip_advantages(torch.zeros(3), adv_clip_max=bound)
