"""The prompt function's own random stream: Python's and numpy's global RNG states, swapped in
while prompts are drawn, so that nothing else using the global RNGs shifts the prompts, and
checkpointed so that a resumed run draws the same sequence."""

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np


class PromptRNG:
    """Python and numpy global-RNG states reserved for the prompt function."""

    def __init__(self, python_state: Any, numpy_state: Any) -> None:
        self.python_state = python_state
        self.numpy_state = numpy_state

    @classmethod
    def seeded(cls, seed: int) -> "PromptRNG":
        """Fresh states from a seed."""
        python_state = random.Random(seed).getstate()
        numpy_state = np.random.RandomState(seed % 2**32).get_state()
        return cls(python_state, numpy_state)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Swap these states into ``random`` and ``numpy.random`` for the duration."""
        outer_python, outer_numpy = random.getstate(), np.random.get_state()
        random.setstate(self.python_state)
        np.random.set_state(self.numpy_state)
        try:
            yield
        finally:
            self.python_state, self.numpy_state = random.getstate(), np.random.get_state()
            random.setstate(outer_python)
            np.random.set_state(outer_numpy)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable copy (for checkpoints)."""
        version, internal, gauss = self.python_state
        name, keys, pos, has_gauss, cached = self.numpy_state
        return {
            "python": [version, list(internal), gauss],
            "numpy": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PromptRNG":
        """Inverse of `to_json`."""
        version, internal, gauss = data["python"]
        name, keys, pos, has_gauss, cached = data["numpy"]
        numpy_state = (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
        return cls((version, tuple(internal), gauss), numpy_state)
