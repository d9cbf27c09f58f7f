"""Shared measuring tools of the benchmarks: timing, peak memory, FLOP counting, model options.

Everything here works on CPU and on CUDA: on CUDA, times come from CUDA events around the timed
region with the device synchronised before and after, memory from
``torch.cuda.max_memory_allocated``; on CPU, times from ``time.perf_counter`` and memory from the
process's peak resident set (``VmHWM``, reset per phase through ``/proc/self/clear_refs``).
"""

import contextlib
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def resolve_device(name: str | None) -> torch.device:
    """``"auto"``/``None`` -> CUDA when available, else CPU; anything else as given."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} asked for CUDA but torch.cuda.is_available() is False")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    """Map ``fp32``/``bf16``/``fp16`` to a torch dtype (ValueError naming the value otherwise)."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def set_threads(device: torch.device, threads: int | None) -> int:
    """Set torch's intra-op threads: ``threads``, or 1 on CPU when None (CUDA: unchanged).

    One thread by default on CPU because on a shared machine OpenMP threads spin-wait for
    siblings that the OS has descheduled: wall and CPU time then measure the neighbours, and two
    contenders that do the same work differ by tens of percent from one run to the next.
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    elif device.type == "cpu":
        torch.set_num_threads(1)
    return torch.get_num_threads()


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    """Mixed-precision context for ``dtype`` (a no-op for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# Timing


def time_call(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """Wall seconds and process CPU seconds of one call of ``fn``, device work included.

    CUDA: the device is synchronised, an event pair brackets the call, and the device is
    synchronised again before the elapsed time is read. CPU: ``time.perf_counter``. The CPU time
    (``time.process_time``, all threads) is the less noisy figure on a shared CPU: time spent
    waiting for a core while other processes run is not counted.
    """
    cpu_start = time.process_time()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return float(start.elapsed_time(end)) / 1000.0, time.process_time() - cpu_start
    start_s = time.perf_counter()
    fn()
    return time.perf_counter() - start_s, time.process_time() - cpu_start


@dataclass
class Timings:
    """Repeated timings (wall and CPU seconds) of several contenders measured interleaved."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    cpu_seconds: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def minimum(self, name: str) -> float:
        return min(self.seconds[name])

    def cpu_median(self, name: str) -> float:
        return statistics.median(self.cpu_seconds[name])

    def spread(self, name: str) -> float:
        """(max - min) / median of one contender's wall times: a noise indicator."""
        values = self.seconds[name]
        return (max(values) - min(values)) / statistics.median(values)

    def ratios(self, ours: str, reference: str) -> dict[str, float]:
        """Time ratios ``ours / reference``: of medians (the figure), of minima, of CPU time."""
        return {
            "median": self.median(ours) / self.median(reference),
            "min": self.minimum(ours) / self.minimum(reference),
            "cpu_median": self.cpu_median(ours) / self.cpu_median(reference),
        }


def time_interleaved(
    contenders: dict[str, Callable[[], Any]],
    device: torch.device,
    *,
    repeats: int,
    warmup: int,
) -> Timings:
    """Time each contender ``repeats`` times, round-robin (A B A B ...), after ``warmup`` rounds.

    Interleaving spreads slow drifts of a shared machine (other processes, clocks) over all
    contenders instead of charging them to whichever ran last. The order alternates each round.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    synchronize(device)
    timings = Timings({name: [] for name in names}, {name: [] for name in names})
    for round_index in range(repeats):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            wall, cpu = time_call(contenders[name], device)
            timings.seconds[name].append(wall)
            timings.cpu_seconds[name].append(cpu)
    return timings


# ------------------------------------------------------------------------------------------------
# Peak memory per phase


def _read_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) of this process; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


@dataclass
class PeakMemory:
    """Peak memory of one phase, in MiB; filled in when the ``measure_peak`` block exits.

    ``kind`` says what was measured: ``cuda_max_allocated`` (bytes handed out by PyTorch's CUDA
    allocator, the figure the targets use), ``cpu_peak_rss`` (the process's peak resident set
    during the phase, reset at its start) or ``cpu_peak_rss_lifetime`` (where the peak cannot be
    reset: the process's lifetime peak, an upper bound).
    """

    kind: str = ""
    peak_mib: float = math.nan
    start_mib: float = math.nan


@contextlib.contextmanager
def measure_peak(device: torch.device) -> Iterator[PeakMemory]:
    """Measure the peak memory of the block: CUDA max allocated, or the CPU peak RSS."""
    result = PeakMemory()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        result.kind = "cuda_max_allocated"
        result.start_mib = torch.cuda.memory_allocated(device) / 2**20
        try:
            yield result
        finally:
            synchronize(device)
            result.peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
        return
    resettable = _reset_peak_rss()
    result.kind = "cpu_peak_rss" if resettable else "cpu_peak_rss_lifetime"
    start = _read_status_kib("VmRSS")
    result.start_mib = start / 1024 if start is not None else math.nan
    try:
        yield result
    finally:
        peak = _read_status_kib("VmHWM")
        if peak is None:  # not Linux: lifetime peak from getrusage (KiB on Linux, bytes on macOS)
            import resource

            raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak = raw // 1024 if sys.platform == "darwin" else raw
            result.kind = "cpu_peak_rss_lifetime"
        result.peak_mib = peak / 1024


# ------------------------------------------------------------------------------------------------
# FLOPs and the matmul peak


def _cpu_attention_formulas() -> dict[Any, Any]:
    """FLOP formulas for the CPU flash-attention kernels, which ``FlopCounterMode`` leaves out.

    PyTorch registers formulas for the CUDA attention kernels (flash, memory-efficient, cuDNN)
    but not for ``_scaled_dot_product_flash_attention_for_cpu`` and its backward, so on CPU the
    attention matmuls would silently count as zero; they do the same two batched products (four
    in the backward) and take the same formulas.
    """
    from torch.utils import flop_counter

    aten = torch.ops.aten

    def forward_flops(query: Any, key: Any, value: Any, *_: Any, **__: Any) -> int:
        return int(flop_counter.sdpa_flop_count(query.shape, key.shape, value.shape))

    def backward_flops(grad_out: Any, query: Any, key: Any, value: Any, *_: Any, **__: Any) -> int:
        return int(
            flop_counter.sdpa_backward_flop_count(
                grad_out.shape, query.shape, key.shape, value.shape
            )
        )

    forward_flops._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode: raw args
    backward_flops._get_raw = True  # type: ignore[attr-defined]
    mapping: dict[Any, Any] = {}
    forward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if forward is not None:
        mapping[forward] = forward_flops
    if backward is not None:
        mapping[backward] = backward_flops
    return mapping


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` as ``torch.utils.flop_counter.FlopCounterMode`` counts them.

    The counter covers matmuls, convolutions and attention (forward and, when ``fn`` runs it,
    backward): the dense work that model FLOP utilisation is defined over.
    """
    counter = FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas())
    with counter:
        fn()
    return int(counter.get_total_flops())


def contender_rows(
    contenders: list[str],
    timings: "Timings",
    memory: dict[str, "PeakMemory"],
    flops: dict[str, int],
    peak_flops: float | None,
    *,
    work: float,
    work_key: str,
    flop_key: str,
    extra: Callable[[float], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One table row per contender: times, ``work / median`` as ``work_key``, memory, FLOP/s, MFU.

    ``extra(seconds)`` adds benchmark-specific columns after ``work_key``.
    """
    rows = []
    for name in contenders:
        seconds = timings.median(name)
        row: dict[str, Any] = {
            "contender": name,
            "median_s": seconds,
            "min_s": timings.minimum(name),
            "cpu_s": timings.cpu_median(name),
            work_key: work / seconds,
            **(extra(seconds) if extra is not None else {}),
            "spread": timings.spread(name),
            "peak_mib": memory[name].peak_mib,
            "memory_kind": memory[name].kind,
        }
        if name in flops:
            row[flop_key] = flops[name] / 1e9
            row["tflop_per_s"] = flops[name] / seconds / 1e12
            if peak_flops is not None:
                row["mfu"] = flops[name] / seconds / peak_flops
        rows.append(row)
    return rows


def matmul_peak_flops(
    device: torch.device,
    dtype: torch.dtype = torch.bfloat16,
    *,
    size: int = 8192,
    repeats: int = 20,
) -> float:
    """Measured dense matmul throughput (FLOP/s) of ``device`` in ``dtype``: the MFU denominator.

    Times ``repeats`` back-to-back ``size x size @ size x size`` products (2 size^3 FLOPs each)
    after a warm-up and takes the best of three such runs.
    """
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)

    def burst() -> None:
        for _ in range(repeats):
            torch.matmul(a, b, out=out)

    burst()
    best = min(time_call(burst, device)[0] for _ in range(3))
    return 2.0 * size**3 * repeats / best


# ------------------------------------------------------------------------------------------------
# Model options


def apply_unet_options(
    unet: torch.nn.Module,
    *,
    channels_last: bool = False,
    gradient_checkpointing: bool = False,
    compile: bool = False,
) -> None:
    """Apply the GPU speed/memory options to a UNet in place (the same module object stays).

    ``compile`` uses ``nn.Module.compile`` (in place), so every holder of the module (our
    pipeline, the stock diffusers pipeline, the bare loop) runs the compiled forward.
    """
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    if gradient_checkpointing:
        enable = getattr(unet, "enable_gradient_checkpointing", None)
        if enable is None:
            raise ValueError(f"gradient_checkpointing: {type(unet).__name__} does not support it")
        enable()
    if compile:
        unet.compile()


def trainable_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters with ``requires_grad`` (LoRA weights when LoRA is on)."""
    return [p for p in module.parameters() if p.requires_grad]


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and machine, for the JSON and RESULTS.md."""
    import diffusers
    import peft
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    with contextlib.suppress(OSError):
        info["load_average_1m"] = os.getloadavg()[0]
    return info


def result(
    name: str,
    *,
    settings: dict[str, Any],
    environment: dict[str, Any],
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """A model benchmark's result in the runner's shape.

    ``title``, ``columns``, ``rows`` and ``notes`` (the summary and the settings, one line each)
    are what ``run.py`` prints; ``name``, ``settings``, ``environment``, ``summary`` and
    ``extra`` (e.g. every repeat's time) go to the JSON too.
    """

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k}: {fmt(v)}" for k, v in value.items()) + "}"
        return str(value)

    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    title = (
        f"{name} ({settings.get('preset')} preset, {settings.get('device')}, "
        f"{settings.get('dtype')}, {settings.get('num_steps')} steps, "
        f"batch {settings.get('sample_batch_size')}/{settings.get('train_batch_size')})"
    )
    notes = [
        "summary: " + "; ".join(f"{k}={fmt(v)}" for k, v in summary.items()),
        "settings: " + ", ".join(f"{k}={fmt(v)}" for k, v in settings.items()),
    ]
    return {
        "name": name,
        "title": title,
        "columns": columns,
        "rows": rows,
        "notes": notes,
        "summary": summary,
        "settings": settings,
        "environment": environment,
        **extra,
    }
