"""`ddpo.core.sliding_window_start`: MixGRPO's progressive window (Li et al., 2025, arXiv
2507.21802; its ``GRPOTrainingStates.update_iteration``, read, not copied), by hand."""

import pytest

from ddpo.core import sliding_window_start


def test_the_window_moves_every_interval_and_stops_or_starts_over() -> None:
    # 2 iterations per position, 2 steps a move, the last start 5: 0 0 2 2 4 4, then clipped
    # at 5 (MixGRPO clips its start to the end), or back to 0 with roll_back.
    starts = [sliding_window_start(i, shift_interval=2, stride=2, max_start=5) for i in range(10)]
    assert starts == [0, 0, 2, 2, 4, 4, 5, 5, 5, 5]
    rolled = [
        sliding_window_start(i, shift_interval=2, stride=2, max_start=5, roll_back=True)
        for i in range(10)
    ]
    assert rolled == [0, 0, 2, 2, 4, 4, 0, 0, 2, 2]
    assert sliding_window_start(7, shift_interval=25, stride=4, max_start=12) == 0
    with pytest.raises(ValueError, match=r"shift_interval must be >= 1, got 0"):
        sliding_window_start(0, shift_interval=0, stride=1, max_start=3)
    with pytest.raises(ValueError, match=r"iteration must be >= 0, got -1"):
        sliding_window_start(-1, shift_interval=1, stride=1, max_start=3)
