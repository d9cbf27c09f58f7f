"""What every family's ``rollout`` and ``score`` share: the schedule rows of the recorded
transitions (`ddpo.policy.PolicyRollout.schedule`) made, checked and read as per-sample tensors,
the choice of the unconditional pass when re-scoring them, the initial noise drawn per row, and
the checkpointed denoiser call of a rollout step that keeps its graph.

``score`` reads everything per transition from its rows, as tensors: nothing in it reads a value
on the host where that would cost a device synchronisation or break a ``torch.compile`` trace
(see :func:`ddpo.core._checks.values_checkable`).
"""

from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor
from jaxtyping import Float
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ddpo._typing import PerSample
from ddpo.core._checks import values_checkable


def schedule_rows(values: list[Tensor], device: torch.device) -> Float[Tensor, "steps values"]:
    """Stack one ``(K,)`` tensor per column into the ``(K, V)`` float64 rows of a rollout.

    Every value must round-trip exactly through float64 (integers below ``2**53`` and float32
    values do), so that ``score`` rebuilds the tensors sampling used, bit for bit.

    Raises:
        ValueError: if a value does not round-trip (checked where the values are free to read).
    """
    columns = [v.to(device) for v in values]
    rows = torch.stack([c.to(torch.float64) for c in columns], dim=1)
    if not values_checkable(rows):
        return rows
    for index, column in enumerate(columns):
        if not torch.equal(rows[:, index].to(column.dtype), column):
            raise ValueError(
                f"schedule column {index} ({column.dtype}) does not round-trip through float64"
            )
    return rows


def check_schedule(
    schedule: Any, latents: Tensor, columns: tuple[str, ...], family: str
) -> Float[Tensor, "batch values"]:
    """``schedule`` checked to be ``(batch, V)`` floating rows for ``latents`` of ``(batch, ...)``
    (the rows of `PolicyRollout.schedule` of the recorded transitions), moved to ``latents``'
    device.

    Raises:
        TypeError: if it is not a floating-point tensor.
        ValueError: naming ``schedule``, its shape and the columns ``family`` records.
    """
    if not isinstance(schedule, Tensor) or not schedule.is_floating_point():
        raise TypeError(
            "schedule must be a floating-point tensor of PolicyRollout.schedule rows, got "
            f"{type(schedule).__name__}"
            f"{' of dtype ' + str(schedule.dtype) if isinstance(schedule, Tensor) else ''}"
        )
    expected = (int(latents.shape[0]), len(columns))
    if tuple(schedule.shape) != expected:
        raise ValueError(
            f"schedule must be {expected}: one PolicyRollout.schedule row per transition of "
            f"{family}'s columns {columns}, got shape {tuple(schedule.shape)}"
        )
    return schedule.to(latents.device)


def scores_guided(cfg: bool, guidance_scale: PerSample) -> bool:
    """Whether ``score`` runs the unconditional pass of classifier-free guidance for rows
    sampled at ``guidance_scale`` (sampling guides only above 1, as diffusers does).

    ``cfg=False`` never does. With ``cfg`` it does unless every row's scale is at most 1 and
    that is free to read (on the CPU, outside ``torch.compile``); where it is not, the pass runs
    and :func:`keep_unguided_rows` gives rows sampled at or below 1 their conditional
    prediction."""
    if not cfg:
        return False
    if values_checkable(guidance_scale):
        return bool((guidance_scale > 1.0).any())
    return True


def keep_unguided_rows(guided: Tensor, cond: Tensor, guidance_scale: Tensor | float) -> Tensor:
    """``guided`` where a row's ``guidance_scale`` (per sample) is above 1, ``cond`` where it is
    not (that row was sampled without guidance); a number scale leaves ``guided`` as it is."""
    if not isinstance(guidance_scale, Tensor):
        return guided
    above = (guidance_scale > 1.0).to(guided.device)
    return torch.where(above.reshape(-1, *([1] * (guided.ndim - 1))), guided, cond)


def draw_initial_noise(
    generators: Sequence[torch.Generator] | None,
    shape: tuple[int, ...],
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor | None:
    """Initial noise ``x_T`` of ``shape``, row ``i`` drawn with ``generators[i]`` as diffusers'
    ``randn_tensor`` draws it with a list of generators (``DDPOConfig.sample_same_latent``);
    ``None`` without generators (the sampler then draws ``x_T`` with its own generator). A
    rollout passes the conditioning's dtype, in which diffusers draws ``x_T``.

    Raises:
        ValueError: naming ``initial_noise_generators`` unless there is one per row.
    """
    if generators is None:
        return None
    rows = list(generators)
    if len(rows) != shape[0]:
        raise ValueError(
            f"initial_noise_generators must hold one generator per row ({shape[0]}), got "
            f"{len(rows)}"
        )
    noise: Tensor = randn_tensor(shape, generator=rows, device=device, dtype=dtype)
    return noise


def checkpointed(function: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """``function(*args)`` with its activations recomputed in the backward pass
    (``torch.utils.checkpoint.checkpoint``, non-reentrant), for a rollout step that keeps its
    graph."""
    out: Tensor = checkpoint(function, *args, use_reentrant=False)
    return out


__all__ = [
    "check_schedule",
    "checkpointed",
    "draw_initial_noise",
    "keep_unguided_rows",
    "schedule_rows",
    "scores_guided",
]
