"""Seeds mixed from integer keys: every random stream of a run (sampling, shuffling, prompts,
initial noise, an objective's noise) is seeded from the run's seed and where it is used."""

import numpy as np


def derive_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys (seed, stream, process, epoch, batch, ...)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


__all__ = ["derive_seed"]
