"""`ShadowWeights`: a copy of the trained parameters kept beside them (an EMA of them, or
DiffusionNFT's old policy), moved towards them with `ddpo.core.ema_step`, swapped in for a
block (evaluation, sampling, the old policy's prediction) and loaded from a checkpoint;
`WeightsAtStart`: such a copy taken when an objective first sees the parameters, or restored
from a checkpoint before then."""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor, distribute_tensor

from ddpo.core import ema_step

__all__ = ["ShadowWeights", "WeightsAtStart"]


class ShadowWeights:
    """Shadow copies of named parameters (same device, dtype and sharding), by name.

    Args:
        parameters: the trained parameters by name, kept by reference: `move_towards` reads
            them and `swapped_in` writes them; the copies start at their values.
    """

    def __init__(self, parameters: Mapping[str, Tensor]) -> None:
        self.parameters = dict(parameters)
        self.shadow = {name: p.detach().clone() for name, p in parameters.items()}

    @torch.no_grad()
    def move_towards(self, decay: float) -> None:
        """``shadow = decay * shadow + (1 - decay) * parameter`` for each (`ddpo.core.
        ema_step`)."""
        for name, average in self.shadow.items():
            average.copy_(ema_step(average, self.parameters[name].detach(), decay=decay))

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Within the block the parameters hold the shadow values; their own values after it."""
        with torch.no_grad():
            kept = {name: p.detach().clone() for name, p in self.parameters.items()}
            for name, p in self.parameters.items():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.parameters.items():
                    p.copy_(kept[name])

    def load(self, weights: Mapping[str, Tensor]) -> None:
        """Set the shadow to ``weights`` (whole tensors by name, as the shadow's; moved to its
        devices and, for sharded parameters, to this process's shards).

        Raises:
            ValueError: when the names differ from the trained parameters'.
        """
        if set(weights) != set(self.shadow):
            missing, unexpected = set(self.shadow) - set(weights), set(weights) - set(self.shadow)
            raise ValueError(
                f"saved weights do not match the trained parameters (missing "
                f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
            )
        with torch.no_grad():
            for name, average in self.shadow.items():
                value = weights[name].to(device=average.device, dtype=average.dtype)
                if isinstance(average, DTensor):  # this process's shard of the whole tensor
                    value = distribute_tensor(value, average.device_mesh, average.placements)
                average.copy_(value)


class WeightsAtStart:
    """`ShadowWeights` of the trained parameters as an objective first sees them (the run's
    start), or as a checkpoint restored them before then: DiffusionNFT's old policy starts
    there, and reward backpropagation's pull is towards them."""

    def __init__(self) -> None:
        self.weights: ShadowWeights | None = None
        self._pending: dict[str, Tensor] | None = None

    def of(self, parameters: Mapping[str, Tensor]) -> ShadowWeights:
        """The copy, taken from ``parameters`` on the first call (then the restored values)."""
        if self.weights is None:
            self.weights = ShadowWeights(parameters)
            if self._pending is not None:
                self.weights.load(self._pending)
                self._pending = None
        return self.weights

    def state_dict(self) -> dict[str, Tensor]:
        """The copy by parameter name (the restored one, or nothing, before the first call)."""
        if self.weights is None:
            return dict(self._pending or {})
        return dict(self.weights.shadow)

    def load(self, tensors: Mapping[str, Tensor]) -> None:
        """Restore the copy (applied at the first call where it has not been taken yet)."""
        if self.weights is not None:
            self.weights.load(tensors)
        else:
            self._pending = dict(tensors)
