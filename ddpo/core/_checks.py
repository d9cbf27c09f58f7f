"""When reading tensor values to check them costs nothing."""

import torch
from torch import Tensor


def values_checkable(*tensors: Tensor) -> bool:
    """Whether value checks (range, finiteness) may read ``tensors`` on the host.

    True when every tensor is on the CPU and ``torch.compile`` is not tracing. On an accelerator
    each check would synchronise the device once per step, and under tracing a host read is a
    graph break; there the checks are skipped, and a bad value surfaces as a non-finite result
    (which the trainer reports where it arises).
    """
    if torch.compiler.is_compiling():
        return False
    return all(t.device.type == "cpu" for t in tensors)
