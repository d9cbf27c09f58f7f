"""One epoch's samples as the trainer stores them and an objective trains on them."""

from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ddpo._typing import PerSample, Trajectory
from ddpo.policy import Conditioning

StepLatents = Float[Tensor, "batch steps channels *spatial"]
"""Per-transition latents, ``(batch, steps, C, h, w)`` (``(batch, steps, C, frames, h, w)`` for
video)."""


@dataclass
class Trajectories:
    """One epoch's samples on this process, in sampling order (one row per image).

    The per-transition fields hold the transitions the policy recorded (all of them, or after
    `select`, the kept ones); an objective that does not train on transitions
    (`ddpo.objectives.ObjectiveNeeds.transitions` False) gets them with 0 steps.

    Attributes:
        prompts: the prompt of each sample.
        conditioning: the model family's conditioning of each sample (opaque here).
        timesteps: each transition's timestep ``t``, ``(batch, T)``.
        latents: ``x_t`` of each transition, ``(batch, T, C, h, w)`` (``(batch, T, C, frames,
            h, w)`` for a video family).
        next_latents: the sampled ``x_{t-1}``, same shape.
        log_probs: the log-density of each transition when sampled, ``(batch, T)``.
        schedule: each transition's schedule values (`ddpo.policy.PolicyRollout.schedule`),
            ``(batch, T, V)``, which ``policy.score`` takes back.
        rewards: ``(batch,)``.
        advantages: ``(batch,)``, once computed.
        final_latents: the final (clean) latents ``x_0``, ``(batch, C, h, w)``, when the
            objective asks for them (`ObjectiveNeeds.final`).
        images: the decoded images ``(batch, 3, H, W)`` (videos ``(batch, frames, 3, H, W)``)
            in ``[0, 1]``, likewise.
        extras: what an objective attaches to each sample before training
            (``Objective.prepare_epoch``), by name, each tensor with the batch first (e.g. the
            noise and the old surrogate of Advantage Weighted Matching); selected, sliced and
            concatenated with the samples.
    """

    prompts: list[str]
    conditioning: Conditioning
    timesteps: Int[Tensor, "batch steps"]
    latents: StepLatents
    next_latents: StepLatents
    log_probs: Trajectory
    schedule: Float[Tensor, "batch steps values"]
    rewards: PerSample | None = None
    advantages: PerSample | None = None
    final_latents: Tensor | None = None
    images: Float[Tensor, "batch *frames 3 image_height image_width"] | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    def select(
        self,
        rows: Int[Tensor, " rows"],
        steps: Int[Tensor, "rows kept"] | None = None,
    ) -> "Trajectories":
        """The samples ``rows`` (in that order) and, per sample, the transitions ``steps``."""
        rows_cpu = rows.tolist()

        def per_step(value: Tensor) -> Tensor:
            value = value[rows]
            if steps is None:
                return value
            arange = torch.arange(len(rows_cpu), device=value.device).unsqueeze(1)
            return value[arange, steps.to(value.device)]

        def per_row(value: Tensor | None) -> Tensor | None:
            return None if value is None else value[rows]

        return replace(
            self,
            prompts=[self.prompts[i] for i in rows_cpu],
            conditioning=self.conditioning.select(rows),
            timesteps=per_step(self.timesteps),
            latents=per_step(self.latents),
            next_latents=per_step(self.next_latents),
            log_probs=per_step(self.log_probs),
            schedule=per_step(self.schedule),
            rewards=per_row(self.rewards),
            advantages=per_row(self.advantages),
            final_latents=per_row(self.final_latents),
            images=per_row(self.images),
            extras={name: value[rows] for name, value in self.extras.items()},
        )

    def rows(self, part: slice) -> "Trajectories":
        """The samples of the slice ``part`` (views, no copies)."""
        sliced: dict[str, Any] = {
            f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[part]
            for f in fields(self)
            if f.name not in ("prompts", "conditioning", "extras")
        }
        return replace(
            self,
            prompts=self.prompts[part],
            conditioning=self.conditioning.select(part),
            extras={name: value[part] for name, value in self.extras.items()},
            **sliced,
        )

    def micro_batches(self, size: int) -> Iterator["Trajectories"]:
        """Consecutive slices of ``size`` samples (views, no copies)."""
        for start in range(0, len(self), size):
            yield self.rows(slice(start, start + size))

    def split(self, count: int) -> Iterator["Trajectories"]:
        """``count`` consecutive slices whose sizes differ by at most one, the larger first
        (``torch.tensor_split``'s; ``micro_batches`` when ``count`` divides the samples).

        Raises:
            ValueError: if there are fewer samples than ``count``.
        """
        if not 0 < count <= len(self):
            raise ValueError(f"{len(self)} samples do not split into {count} parts")
        size, larger = divmod(len(self), count)
        start = 0
        for i in range(count):
            stop = start + size + (1 if i < larger else 0)
            yield self.rows(slice(start, stop))
            start = stop

    @staticmethod
    def cat(parts: list["Trajectories"]) -> "Trajectories":
        """The samples of ``parts`` one after another."""
        return Trajectories(
            prompts=[p for part in parts for p in part.prompts],
            conditioning=Conditioning.cat([p.conditioning for p in parts]),
            timesteps=torch.cat([p.timesteps for p in parts]),
            latents=torch.cat([p.latents for p in parts]),
            next_latents=torch.cat([p.next_latents for p in parts]),
            log_probs=torch.cat([p.log_probs for p in parts]),
            schedule=torch.cat([p.schedule for p in parts]),
            rewards=_cat_optional([p.rewards for p in parts]),
            advantages=_cat_optional([p.advantages for p in parts]),
            final_latents=_cat_optional([p.final_latents for p in parts]),
            images=_cat_optional([p.images for p in parts]),
            extras={name: torch.cat([p.extras[name] for p in parts]) for name in parts[0].extras},
        )


def _cat_optional(parts: list[Tensor | None]) -> Tensor | None:
    present = [p for p in parts if p is not None]
    if not present:
        return None
    if len(present) != len(parts):
        raise ValueError("Trajectories.cat: some parts have this field and some do not")
    return torch.cat(present)


__all__ = ["StepLatents", "Trajectories"]
