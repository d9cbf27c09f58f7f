"""Tests of ddpo.core.per_prompt: TRL parity, pure state, invariances, checkpoints, errors."""

import json
from typing import Any

import beartype.roar
import jaxtyping
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ddpo.core import (
    PerPromptStatState,
    PerPromptStatTracker,
    init_per_prompt_stats,
    update_per_prompt_stats,
)

TYPE_ERRORS = (jaxtyping.TypeCheckError, beartype.roar.BeartypeException)


def test_matches_trl_reference(trl_reference: dict[str, Any]) -> None:
    """The six-batch sequence of TRL 0.11.4 (batch 3 all tied, buffers overflowing by batch 5)."""
    ref = trl_reference["per_prompt_stat_tracker"]
    tracker = PerPromptStatTracker(ref["buffer_size"], ref["min_count"])
    state = init_per_prompt_stats(buffer_size=ref["buffer_size"], min_count=ref["min_count"])
    for batch in ref["batches"]:
        rewards = torch.tensor(batch["rewards"])
        expected = torch.tensor(batch["advantages"], dtype=torch.float64)
        from_class = tracker.update(batch["prompts"], rewards)
        from_pure, state = update_per_prompt_stats(state, batch["prompts"], rewards)
        torch.testing.assert_close(from_class.double(), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(from_pure, from_class, rtol=0, atol=0)
    assert tracker.state == state
    assert all(len(b) == ref["buffer_size"] for _, b in state.buffers)


def test_update_is_pure_and_the_state_immutable() -> None:
    state = init_per_prompt_stats(buffer_size=4, min_count=2)
    adv1, new = update_per_prompt_stats(state, ["a", "b", "a"], torch.tensor([1.0, 2.0, 3.0]))
    assert state.buffers == ()
    adv2, new2 = update_per_prompt_stats(state, ["a", "b", "a"], torch.tensor([1.0, 2.0, 3.0]))
    assert new == new2 and torch.equal(adv1, adv2)
    assert isinstance(new, PerPromptStatState) and isinstance(new.buffers, tuple)
    assert dict(new.buffers) == {"a": (1.0, 3.0), "b": (2.0,)}
    hash(new)  # immutable all the way down


def test_buffer_keeps_the_newest_rewards_and_falls_back_to_the_batch() -> None:
    state = init_per_prompt_stats(buffer_size=3, min_count=3)
    # "a" has 2 < min_count rewards: batch statistics; "b" has 3: its own.
    rewards = torch.tensor([1.0, 5.0, 2.0, 6.0, 7.0], dtype=torch.float64)
    adv, state = update_per_prompt_stats(state, ["a", "b", "a", "b", "b"], rewards)
    batch_std = rewards.std(correction=0) + 1e-6
    torch.testing.assert_close(adv[[0, 2]], (rewards[[0, 2]] - rewards.mean()) / batch_std)
    b = torch.tensor([5.0, 6.0, 7.0], dtype=torch.float64)
    torch.testing.assert_close(adv[[1, 3, 4]], (b - b.mean()) / (b.std(correction=0) + 1e-6))
    # Two more for "a": the oldest (1.0) is dropped; now a's own statistics.
    adv, state = update_per_prompt_stats(state, ["a", "a"], torch.tensor([4.0, 9.0]))
    assert dict(state.buffers)["a"] == (2.0, 4.0, 9.0)
    a = torch.tensor([2.0, 4.0, 9.0])
    torch.testing.assert_close(adv, (a[1:] - a.mean()) / (a.std(correction=0) + 1e-6))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 12),
    value=st.floats(-100, 100),
    min_count=st.integers(0, 8),
)
def test_tied_rewards_give_exactly_zero(n: int, value: float, min_count: int) -> None:
    state = init_per_prompt_stats(buffer_size=8, min_count=min_count)
    prompts = [f"p{i % 3}" for i in range(n)]
    adv, _ = update_per_prompt_stats(state, prompts, torch.full((n,), value))
    assert (adv == 0).all()


@settings(max_examples=40, deadline=None)
@given(
    history=st.lists(st.floats(-10, 10), min_size=4, max_size=8),
    current=st.lists(st.floats(-10, 10), min_size=1, max_size=4),
    shift=st.floats(-50, 50),
    scale=st.floats(0.5, 10),
)
def test_a_prompts_advantages_are_invariant_to_affine_maps_of_its_rewards(
    history: list[float], current: list[float], shift: float, scale: float
) -> None:
    """Once a prompt uses its own buffer, shifting and positively scaling all its rewards (past
    and present) leaves its advantages unchanged, whatever the other prompts' rewards."""
    assume(torch.tensor(history + current, dtype=torch.float64).std(correction=0) > 0.1)

    def run(f: float, s: float) -> torch.Tensor:
        state = init_per_prompt_stats(buffer_size=8, min_count=4)
        prompts = ["p"] * len(history) + ["q", "q"]
        past = torch.tensor([*(h * f + s for h in history), 3.0, -1.0], dtype=torch.float64)
        _, state = update_per_prompt_stats(state, prompts, past)
        now = torch.tensor([*(c * f + s for c in current), 0.5], dtype=torch.float64)
        adv, _ = update_per_prompt_stats(state, ["p"] * len(current) + ["q"], now)
        return adv[:-1]

    torch.testing.assert_close(run(scale, shift), run(1.0, 0.0), rtol=1e-4, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(
    rewards=st.lists(st.floats(-10, 10), min_size=2, max_size=12),
    shift=st.floats(-50, 50),
    scale=st.floats(0.5, 10),
)
def test_batch_fallback_is_invariant_to_affine_maps_of_the_batch(
    rewards: list[float], shift: float, scale: float
) -> None:
    """Below ``min_count`` the batch statistics are used: invariant to maps of the whole batch."""
    r = torch.tensor(rewards, dtype=torch.float64)
    assume(r.std(correction=0) > 0.1)
    prompts = [f"p{i % 4}" for i in range(len(rewards))]
    state = init_per_prompt_stats(buffer_size=16, min_count=16)
    a, _ = update_per_prompt_stats(state, prompts, r)
    b, _ = update_per_prompt_stats(state, prompts, r * scale + shift)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_dtypes_and_sequence_rewards() -> None:
    tracker = PerPromptStatTracker(4, 1)
    out = tracker.update(["a", "b", "a"], [1.0, 2.0, 4.0])
    assert out.dtype == torch.float64
    torch.testing.assert_close(
        out, torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64), atol=1e-5, rtol=0
    )
    out32 = PerPromptStatTracker(4, 1).update(["a"], torch.tensor([1.0], dtype=torch.bfloat16))
    assert out32.dtype == torch.float32


def test_get_stats_and_state_dict_round_trip() -> None:
    tracker = PerPromptStatTracker(buffer_size=3, min_count=2)
    tracker.update(["a", "b", "a", "a", "a"], torch.tensor([1.0, 2.0, 3.0, 5.0, 7.0]))
    stats = tracker.get_stats()
    assert stats["a"]["count"] == 3 and stats["b"]["count"] == 1
    assert stats["a"]["mean"] == pytest.approx(5.0)
    assert stats["a"]["std"] == pytest.approx(
        torch.tensor([3.0, 5.0, 7.0]).std(correction=0).item()
    )

    snapshot = json.loads(json.dumps(tracker.state_dict()))
    restored = PerPromptStatTracker(buffer_size=3, min_count=2)
    restored.load_state_dict(snapshot)
    assert restored.state == tracker.state
    nxt = torch.tensor([0.0, 4.0])
    torch.testing.assert_close(restored.update(["a", "b"], nxt), tracker.update(["a", "b"], nxt))
    tracker.clear()
    assert tracker.get_stats() == {}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"buffer_size": 4}, "buffer_size"),
        ({"min_count": 1}, "min_count"),
        ({"buffers": {"a": [1.0] * 4}}, "buffers"),
        ({"buffers": {"a": []}}, "buffers"),
        ({"buffers": {"a": ["x"]}}, "buffers"),
    ],
)
def test_load_state_dict_rejects_bad_snapshots(change: dict[str, Any], match: str) -> None:
    snapshot = {"buffer_size": 3, "min_count": 2, "buffers": {"a": [1.0]}, **change}
    with pytest.raises(ValueError, match=match):
        PerPromptStatTracker(3, 2).load_state_dict(snapshot)
    with pytest.raises(ValueError, match="buffers"):
        PerPromptStatTracker(3, 2).load_state_dict({"buffer_size": 3, "min_count": 2})


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"buffer_size": 0, "min_count": 0}, "buffer_size"),
        ({"buffer_size": 4, "min_count": 5}, "min_count"),
        ({"buffer_size": 4, "min_count": -1}, "min_count"),
    ],
)
def test_invalid_sizes_raise(kwargs: dict[str, int], argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        init_per_prompt_stats(**kwargs)
    with pytest.raises(ValueError, match=argument):
        PerPromptStatTracker(**kwargs)


def test_prompts_must_match_rewards() -> None:
    state = init_per_prompt_stats(buffer_size=4, min_count=2)
    with pytest.raises(ValueError, match="prompts"):
        update_per_prompt_stats(state, ["a", "b"], torch.zeros(3))
    with pytest.raises(ValueError, match="prompts"):
        update_per_prompt_stats(state, "abc", torch.zeros(3))
    with pytest.raises(ValueError, match="prompts"):
        update_per_prompt_stats(state, [], torch.zeros(0))
    with pytest.raises(TYPE_ERRORS):
        update_per_prompt_stats(state, ["a", "b", "c"], torch.zeros(3, 1))
