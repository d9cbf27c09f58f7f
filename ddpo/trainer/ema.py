"""`WeightsEMA`: the exponential moving average of a run's trained weights (``DDPOConfig``'s
``ema_decay``, ``ema_update_every``), kept beside them on their device, updated after
optimizer steps, swapped in for evaluation and for ``final_ema/``, and saved in checkpoints.
The math is :func:`ddpo.core.ema_decay_at` and :func:`ddpo.core.ema_step`.
"""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor, distribute_tensor

from ddpo.core import ema_decay_at, ema_step

__all__ = ["WeightsEMA"]


class WeightsEMA:
    """The moving average of named parameters (shadow copies, same device and dtype).

    Args:
        parameters: the trained parameters by name, kept by reference: updates read them and
            `swapped_in` writes them; the average starts at their values.
        decay: the decay before its warm-up (`ddpo.core.ema_decay_at`), in (0, 1).
        update_every: update after every this many optimizer steps.
        convention: when to update (`after_micro_batch`): ``"step"`` (ours) or
            ``"flow_grpo"`` (Flow-GRPO's ``train_sd3.py``).
    """

    def __init__(
        self,
        parameters: Mapping[str, Tensor],
        decay: float,
        update_every: int,
        *,
        convention: str = "step",
    ) -> None:
        self.decay, self.update_every, self.convention = decay, update_every, convention
        self.parameters = dict(parameters)
        self.shadow = {name: p.detach().clone() for name, p in parameters.items()}

    def after_micro_batch(self, global_step: int, stepped: bool) -> bool:
        """The update after a training micro-batch, by the convention; returns whether it
        updated.

        - ``"step"``: once per optimizer step (``stepped``), when the step count ``global_step``
          is a multiple of ``update_every``, with the decay ``ema_decay_at(global_step)``;
        - ``"flow_grpo"``: after every micro-batch whose step count satisfies ``(global_step
          + 1) % update_every == 0``, with the same decay: Flow-GRPO calls its
          ``EMAModuleWrapper.step`` once per training batch, so with gradient accumulation it
          updates once per accumulated micro-batch of such a step.
        """
        if self.convention == "flow_grpo":
            if (global_step + 1) % self.update_every:
                return False
            self._update(global_step)
            return True
        return stepped and self.update(global_step)

    def update(self, step: int) -> bool:
        """After optimizer step number ``step`` (1 for the first): when ``step`` is a multiple
        of ``update_every``, move the average towards the parameters with the decay
        ``ema_decay_at(step, decay)``. Returns whether it updated."""
        if step % self.update_every:
            return False
        self._update(step)
        return True

    @torch.no_grad()
    def _update(self, step: int) -> None:
        decay = ema_decay_at(step, decay=self.decay)
        for name, average in self.shadow.items():
            average.copy_(ema_step(average, self.parameters[name].detach(), decay=decay))

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Within the block the parameters hold the average; their own values after it."""
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
        """Set the average to ``weights`` (by name, as the shadow's; moved to its devices).

        Raises:
            ValueError: when the names differ from the trained parameters'.
        """
        if set(weights) != set(self.shadow):
            missing, unexpected = set(self.shadow) - set(weights), set(weights) - set(self.shadow)
            raise ValueError(
                f"EMA weights do not match the trained parameters (missing {sorted(missing)[:5]}"
                f", unexpected {sorted(unexpected)[:5]})"
            )
        with torch.no_grad():
            for name, average in self.shadow.items():
                value = weights[name].to(device=average.device, dtype=average.dtype)
                if isinstance(average, DTensor):  # this process's shard of the whole tensor
                    value = distribute_tensor(value, average.device_mesh, average.placements)
                average.copy_(value)
