"""An epoch's metrics row, and the wall time per phase kept in one place (``time_<phase>_s``)."""

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class PhaseTimer:
    """Adds up the wall time spent in named phases; a phase may be entered many times.

    ``with timer.phase("sample"): ...`` adds to ``sample``; `metrics` gives
    ``{"time_sample_s": ...}`` for every phase entered.
    """

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block and add it to ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        """``{"time_<phase>_s": seconds}``, in the order the phases were first entered."""
        return {f"time_{name}_s": seconds for name, seconds in self._seconds.items()}


def progress_bar(*, enabled: bool) -> Progress:
    """The transient rich progress bar of an epoch's phases (off on all but the local main
    process)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
        disable=not enabled,
    )


def epoch_metrics(
    epoch: int,
    global_step: int,
    rewards: torch.Tensor,
    step_metrics: list[dict[str, float]],
    *,
    lr: float,
    timer: PhaseTimer,
) -> dict[str, float | int]:
    """One ``metrics.jsonl`` row: reward statistics of every process's samples, the optimizer
    steps' metrics averaged over the epoch (the default objective's ``loss``, ``approx_kl``,
    ``clip_fraction``, ``kl``, then any other objective's diagnostics by name), the learning
    rate and the phase times."""
    metrics: dict[str, float | int] = {"epoch": epoch, "global_step": global_step}
    if rewards.numel():  # an epoch of offline rows has none
        metrics["reward_mean"] = float(rewards.double().mean())
        metrics["reward_std"] = float(rewards.double().std(unbiased=False))
    metrics |= {"num_samples": int(rewards.numel()), "lr": lr}
    known = ("loss", "approx_kl", "clip_fraction", "kl")
    others = sorted({key for m in step_metrics for key in m} - set(known))
    for key in (*known, *others):
        values = [m[key] for m in step_metrics if key in m]
        if values:
            metrics[key] = float(np.mean(values))
    metrics.update(timer.metrics())
    return metrics


__all__ = ["PhaseTimer", "epoch_metrics", "progress_bar"]
