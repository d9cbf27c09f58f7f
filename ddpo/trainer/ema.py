"""`WeightsEMA`: the exponential moving average of a run's trained weights (``DDPOConfig``'s
``ema_decay``, ``ema_update_every``), kept beside them on their device, updated after
optimizer steps, swapped in for evaluation and for ``final_ema/``, and saved in checkpoints.
The math is :func:`ddpo.core.ema_decay_at` and :func:`ddpo.core.ema_step`.
"""

from collections.abc import Mapping

from torch import Tensor

from ddpo.core import ema_decay_at
from ddpo.objectives.weights import ShadowWeights

__all__ = ["WeightsEMA"]


class WeightsEMA(ShadowWeights):
    """The moving average of named parameters (shadow copies, same device and dtype; swapped
    in and loaded as `ddpo.objectives.weights.ShadowWeights`).

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
        super().__init__(parameters)
        self.decay, self.update_every, self.convention = decay, update_every, convention

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

    def _update(self, step: int) -> None:
        self.move_towards(ema_decay_at(step, decay=self.decay))
