"""`ddpo.core.sliding_window_start`: MixGRPO's progressive window (Li et al., 2025, arXiv
2507.21802; its ``GRPOTrainingStates.update_iteration``, read, not copied), by hand."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_decay_holds_the_later_steps_for_fewer_iterations() -> None:
    # 5 iterations at step 0, falling linearly to 1 at the last start 4: 5 4 3 2 1 (each
    # 5 (1 - p/4) + p/4 exact in binary), then the end (or step 0 again with roll_back).
    decay = {"shift_interval": 5, "stride": 1, "max_start": 4, "strategy": "decay"}
    starts = [sliding_window_start(i, **decay) for i in range(17)]
    assert starts == [0] * 5 + [1] * 4 + [2] * 3 + [3] * 2 + [4] * 3
    assert sliding_window_start(15, roll_back=True, **decay) == 0
    assert sliding_window_start(20, roll_back=True, **decay) == 1
    # min_shift_interval is the end of the line: 5, 4.5, 4, 3.5, 3 truncated with m = 3.
    ending_at_3 = [sliding_window_start(i, min_shift_interval=3, **decay) for i in range(25)]
    assert [ending_at_3.count(p) for p in range(4)] == [5, 4, 4, 3]


def test_exp_decay_holds_until_its_threshold_then_decays() -> None:
    # threshold 1, rate 1: ceil(4), ceil(4), ceil(4/e) = 2, ceil(4/e^2) = 1, ceil(4/e^3) = 1.
    exp = {"shift_interval": 4, "stride": 1, "max_start": 4, "strategy": "exp_decay"}
    starts = [sliding_window_start(i, decay_threshold=1, decay_rate=1.0, **exp) for i in range(14)]
    assert starts == [0] * 4 + [1] * 4 + [2] * 2 + [3] + [4] * 3
    # rate 0: every position is held shift_interval iterations, as ``progressive``.
    for i in range(30):
        assert sliding_window_start(i, decay_rate=0.0, **exp) == sliding_window_start(
            i, shift_interval=4, stride=1, max_start=4
        )


class _MixGRPOStates:
    """MixGRPO's ``GRPOTrainingStates`` as its docstrings and code describe it (our own
    writing): a counter of iterations in the current position and a current step, moved by
    ``update_iteration`` after each iteration; a start past the end is clipped to it or rolled
    back to 0. Its ``max_timesteps`` is our ``max_start``."""

    def __init__(self, interval: int, stride: int, end: int, **options: object) -> None:
        self.interval, self.stride, self.end, self.options = interval, stride, end, options
        self.step, self.count = 0, 0

    def held(self) -> int:
        strategy = self.options["strategy"]
        if strategy == "decay":
            low = int(self.options["min_shift_interval"])  # type: ignore[call-overload]
            progress = self.step / self.end if self.end else 0.0
            return max(low, int(self.interval * (1 - progress) + low * progress))
        if strategy == "exp_decay":
            over = max(0, self.step - int(self.options["decay_threshold"]))  # type: ignore[call-overload]
            return int(np.ceil(self.interval * np.exp(-float(self.options["decay_rate"]) * over)))  # type: ignore[arg-type]
        return self.interval

    def update(self) -> None:
        self.count += 1
        if self.count >= self.held():
            self.count = 0
            self.step += self.stride
        if self.step > self.end:
            if self.options["roll_back"]:
                self.step, self.count = 0, 0
            else:
                self.step = self.end


@settings(max_examples=60, deadline=None)
@given(
    interval=st.integers(1, 6),
    stride=st.integers(1, 3),
    end=st.integers(0, 9),
    strategy=st.sampled_from(["progressive", "decay", "exp_decay"]),
    low=st.integers(1, 3),
    threshold=st.integers(0, 5),
    rate=st.sampled_from([0.0, 0.1, 0.5, 1.3]),
    roll_back=st.booleans(),
)
def test_the_schedule_is_mixgrpos_state_machine(
    interval: int,
    stride: int,
    end: int,
    strategy: str,
    low: int,
    threshold: int,
    rate: float,
    roll_back: bool,
) -> None:
    options = {"strategy": strategy, "min_shift_interval": low, "decay_threshold": threshold,
               "decay_rate": rate, "roll_back": roll_back}  # fmt: skip
    states = _MixGRPOStates(interval, stride, end, **options)
    for iteration in range(60):
        ours = sliding_window_start(
            iteration, shift_interval=interval, stride=stride, max_start=end, **options
        )
        assert ours == states.step, (iteration, options)
        states.update()


def test_the_decay_arguments_are_checked() -> None:
    base = {"shift_interval": 2, "stride": 1, "max_start": 3}
    with pytest.raises(ValueError, match=r"strategy must be one of .*got 'random'"):
        sliding_window_start(0, strategy="random", **base)
    with pytest.raises(ValueError, match=r"min_shift_interval must be >= 1, got 0"):
        sliding_window_start(0, strategy="decay", min_shift_interval=0, **base)
    with pytest.raises(ValueError, match=r"decay_rate must be >= 0, got -0.5"):
        sliding_window_start(0, strategy="exp_decay", decay_rate=-0.5, **base)


def test_the_config_offers_the_cores_strategies() -> None:
    # The config's rules import no torch: they keep their own copy of the names.
    from ddpo.core import SLIDING_WINDOW_STRATEGIES
    from ddpo.trainer.config_checks import SLIDING_WINDOW_STRATEGIES as CONFIG_STRATEGIES

    assert CONFIG_STRATEGIES == SLIDING_WINDOW_STRATEGIES
