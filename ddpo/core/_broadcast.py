"""The one helper that broadcasts per-sample scalars against batched tensors."""

import torch
from jaxtyping import Shaped
from torch import Tensor


def per_sample(values: Shaped[Tensor, " batch"], like: Shaped[Tensor, "batch ..."]) -> Tensor:
    """Reshape ``values`` of shape ``(batch,)`` to ``(batch, 1, ..., 1)`` matching ``like``'s rank.

    Raises:
        ValueError: if ``values`` does not hold exactly one entry per sample of ``like``.
    """
    if values.shape[0] != like.shape[0]:
        raise ValueError(
            f"per-sample values have {values.shape[0]} entries but the batch has {like.shape[0]}"
        )
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


def float_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype to compute in: float32 at least, float64 if any input is float64."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype
