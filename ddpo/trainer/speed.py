"""Throughput switches of a run, applied to the policy's denoiser without changing its math.

`apply_speed_options` is what `DDPOTrainer` runs after the policy is prepared and before
accelerate wraps the denoiser; it only needs the denoiser as a ``torch.nn.Module`` and the names
of its repeated blocks, so it works the same for every model family:

- ``channels_last``: the denoiser's 4-D weights (convolutions) in channels-last memory format;
- ``compile_denoiser``: regional compilation: every repeated block (diffusers' ``_repeated_blocks``
  of the model, or the policy's ``compile_regions``) gets its own ``torch.compile``, the rest of
  the network stays eager. One compiled graph serves every block of the same shape, so compile
  time grows with the number of distinct block shapes, not with depth;
- ``sample_cuda_graphs``: the blocks run under ``mode="reduce-overhead"`` (CUDA graphs) when no
  gradient is taken (sampling, and the reference and old-policy passes), and the default mode
  when training; each gradient-free denoiser call starts a new CUDA-graph step. On a CPU there
  is nothing to capture: sampling runs compiled in the default mode.

`HostSyncCounter` counts the host reads of tensor values (each a device synchronisation on a
GPU) inside a block of code; the ablation benchmark reports them per step.
"""

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast, runtime_checkable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ddpo.policy import policy_option


@runtime_checkable
class HasDenoiser(Protocol):
    """What the switches need of a policy (any `ddpo.policy.DiffusionPolicy` has it): the
    denoiser, and optionally ``compile_regions`` (`ddpo.policy.PolicyOptions`)."""

    @property
    def denoiser(self) -> nn.Module: ...


logger = logging.getLogger(__name__)

#: Tensor methods that read values on the host (a device synchronisation on a GPU).
HOST_READS: frozenset[str] = frozenset(
    {"item", "tolist", "__bool__", "__int__", "__float__", "nonzero", "unique"}
)
#: Recompilations allowed per compiled block (torch's default, 8, is below what one run needs:
#: each distinct block shape, batch size, gradient mode and adapter state is one graph).
RECOMPILE_LIMIT = 64


@dataclasses.dataclass(frozen=True)
class SpeedOptions:
    """The switches of `DDPOConfig` that `apply_speed_options` applies."""

    compile_denoiser: bool = False
    sample_cuda_graphs: bool = False
    channels_last: bool = False

    @classmethod
    def from_config(cls, config: Any) -> "SpeedOptions":
        return cls(
            compile_denoiser=config.compile_denoiser,
            sample_cuda_graphs=config.sample_cuda_graphs,
            channels_last=config.channels_last,
        )


def compile_region_names(policy: HasDenoiser) -> tuple[str, ...]:
    """Class names of the denoiser's blocks to compile: the policy's ``compile_regions`` when it
    declares them, else the diffusers model's ``_repeated_blocks``.

    Raises:
        ValueError: if neither names a block (the model has no repeated blocks to compile).
    """
    names = policy_option(policy, "compile_regions")
    if names is None:
        names = getattr(policy.denoiser, "_repeated_blocks", None)
    if not names:
        raise ValueError(
            "DDPOConfig.compile_denoiser=True: the denoiser "
            f"{type(policy.denoiser).__name__} declares no repeated blocks to compile (set "
            "`compile_regions` on the policy, or `_repeated_blocks` on the model)"
        )
    return tuple(names)


def apply_speed_options(
    policy: HasDenoiser, options: SpeedOptions, device: torch.device
) -> list[str]:
    """Apply ``options`` to ``policy.denoiser`` in place; return what was done, one line each.

    The same module object stays (parameters, state dict and adapters unchanged), so saving,
    the reference policy and accelerate's wrapping see the model as before.
    """
    denoiser: nn.Module = policy.denoiser
    done: list[str] = []
    if options.channels_last:
        # (``Module.to`` takes ``memory_format``; its type stubs do not say so.)
        cast(Any, denoiser).to(memory_format=torch.channels_last)
        done.append("channels_last: 4-D weights in channels-last format")
    if options.compile_denoiser:
        names = compile_region_names(policy)
        cuda_graphs = options.sample_cuda_graphs and device.type == "cuda"
        if options.sample_cuda_graphs and not cuda_graphs:
            logger.warning(
                "DDPOConfig.sample_cuda_graphs=True needs a CUDA device; this run is on %s, so "
                "sampling runs compiled without CUDA graphs",
                device.type,
            )
        count = compile_regions(denoiser, names, cuda_graphs=cuda_graphs)
        mode = "reduce-overhead (CUDA graphs) without gradients" if cuda_graphs else "default"
        done.append(f"compile_denoiser: {count} blocks of {list(names)} compiled, mode {mode}")
    return done


def compile_regions(denoiser: nn.Module, names: Sequence[str], *, cuda_graphs: bool) -> int:
    """``torch.compile`` each submodule of ``denoiser`` whose class name is in ``names``.

    With ``cuda_graphs``, a block called without gradients runs its ``reduce-overhead``
    compilation (CUDA graphs), and a forward pre-hook on ``denoiser`` marks each gradient-free
    call as a new CUDA-graph step (the outputs of the previous call may then be overwritten:
    the sampling loop has used them by then). Returns the number of compiled blocks.

    Raises:
        ValueError: if no submodule has one of the names.
    """
    blocks = [m for m in denoiser.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(
            f"DDPOConfig.compile_denoiser=True: no block of {list(names)} in "
            f"{type(denoiser).__name__}"
        )
    limit = torch._dynamo.config.recompile_limit
    if limit < RECOMPILE_LIMIT:
        torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT
        logger.info("torch._dynamo recompile_limit raised from %d to %d", limit, RECOMPILE_LIMIT)
    for block in blocks:
        train = torch.compile(block.forward, dynamic=False)
        sample = (
            torch.compile(block.forward, dynamic=False, mode="reduce-overhead")
            if cuda_graphs
            else train
        )
        block.forward = _by_grad_mode(train, sample)
    if cuda_graphs:
        denoiser.register_forward_pre_hook(_mark_cuda_graph_step)
    return len(blocks)


def _by_grad_mode(train: Callable[..., Any], sample: Callable[..., Any]) -> Callable[..., Any]:
    def forward(*args: Any, **kwargs: Any) -> Any:
        return (train if torch.is_grad_enabled() else sample)(*args, **kwargs)

    return forward


def _mark_cuda_graph_step(module: nn.Module, args: Any) -> None:
    if not torch.is_grad_enabled():
        torch.compiler.cudagraph_mark_step_begin()


class HostSyncCounter(TorchFunctionMode):
    """Counts, by method name, the host reads of tensor values (``item``, ``tolist``, ``bool``,
    copies to the host, ...) made inside the ``with`` block: each one is a device
    synchronisation on a GPU. Copies count only from an accelerator. Value reads count on any
    device (a CPU run shows what a GPU run might wait on, plus reads of tensors that stay on the
    host there too, such as the optimizer's step counters), or, with ``accelerator_only``, only
    of tensors on an accelerator: the exact synchronisations of a GPU run."""

    def __init__(self, *, accelerator_only: bool = False) -> None:
        super().__init__()
        self.accelerator_only = accelerator_only
        self.counts: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            source = args[0] if args else None
            on_host = isinstance(source, torch.Tensor) and source.device.type == "cpu"
            if not (self.accelerator_only and on_host):
                self.counts[name] += 1
        elif name in ("to", "cpu") and _to_host(args, kwargs or {}):
            self.counts[f"{name}(host)"] += 1
        return func(*args, **(kwargs or {}))


def _to_host(args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    """Whether a ``to``/``cpu`` call copies a tensor from a device to the host."""
    source = args[0] if args else None
    if not isinstance(source, torch.Tensor) or source.device.type == "cpu":
        return False
    targets = [*args[1:], kwargs.get("device")]
    return not targets or any(
        (isinstance(t, str) and t.startswith("cpu"))
        or (isinstance(t, torch.device) and t.type == "cpu")
        for t in targets
    )


__all__ = [
    "HOST_READS",
    "HasDenoiser",
    "HostSyncCounter",
    "SpeedOptions",
    "apply_speed_options",
    "compile_region_names",
    "compile_regions",
]
