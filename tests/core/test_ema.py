"""`ddpo.core.ema_decay_at` and `ddpo.core.ema_step`: the warm-up's values and the update's
properties."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpo.core import ema_decay_at, ema_step


def test_the_decay_warms_up_then_holds() -> None:
    # min((1 + s) / (10 + s), decay), as diffusers' EMAModel and Flow-GRPO's EMAModuleWrapper
    assert ema_decay_at(0, decay=0.9) == pytest.approx(0.1)
    assert ema_decay_at(8, decay=0.9) == pytest.approx(9 / 18)
    assert ema_decay_at(80, decay=0.9) == 0.9  # (81 / 90 = 0.9): the configured decay from here on
    assert ema_decay_at(1000, decay=0.9) == 0.9
    assert ema_decay_at(5, decay=0.0) == 0.0
    with pytest.raises(ValueError, match="step must be >= 0, got -1"):
        ema_decay_at(-1, decay=0.9)
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\], got 1.5"):
        ema_decay_at(1, decay=1.5)


@settings(max_examples=40, deadline=None)
@given(
    decay=st.floats(0.0, 1.0),
    values=st.lists(st.floats(-10, 10), min_size=2, max_size=2),
)
def test_an_update_is_the_convex_combination(decay: float, values: list[float]) -> None:
    average = torch.tensor([values[0]], dtype=torch.float64)
    value = torch.tensor([values[1]], dtype=torch.float64)
    out = ema_step(average, value, decay=decay)
    torch.testing.assert_close(out, decay * average + (1 - decay) * value)
    low, high = min(values), max(values)
    assert low - 1e-9 <= float(out) <= high + 1e-9
    torch.testing.assert_close(ema_step(average, value, decay=1.0), average)  # frozen
    torch.testing.assert_close(ema_step(average, value, decay=0.0), value)  # follows


def test_a_constant_sequence_is_its_own_average_and_the_input_is_left_alone() -> None:
    average = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    kept = average.clone()
    value = torch.full((3, 4), 2.0)
    out = average
    for step in range(200):
        out = ema_step(out, value, decay=ema_decay_at(step, decay=0.9))
    torch.testing.assert_close(out, value)
    assert torch.equal(average, kept)  # a new tensor each time
