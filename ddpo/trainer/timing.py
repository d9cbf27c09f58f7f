"""Wall time per phase of an epoch, kept in one place (``time_<phase>_s`` in the metrics)."""

import time
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseTimer:
    """Adds up the wall time spent in named phases; a phase may be entered many times.

    ``with timer.phase("sample"): ...`` adds to ``sample``; `metrics` gives
    ``{"time_sample_s": ...}`` for every phase entered.
    """

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block and add it to ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        """``{"time_<phase>_s": seconds}``, in the order the phases were first entered."""
        return {f"time_{name}_s": seconds for name, seconds in self._seconds.items()}


__all__ = ["PhaseTimer"]
