"""Run reports drawn with PIL: annotated image grids, the reward curve, and the epoch table.

- :func:`image_grid`: sampled images in a grid, each captioned with its prompt and reward.
- :class:`ImageGridHook`: a DDPOTrainer ``image_samples_hook`` that writes one grid PNG per epoch,
  logs the images to the tracker (tensorboard or wandb) when there is one, and keeps per-epoch
  summaries of the reward metadata (e.g. alignment accuracy).
- :func:`select_grid_indices`: which samples the grid shows (every prompt of the epoch).
- :func:`reward_curve`: the per-epoch mean reward (with a +/- std band) as a PNG.
- :func:`read_metrics` and :func:`epoch_table`: ``metrics.jsonl`` as a rich table.
- :func:`merge_epoch_means`, :func:`run_curve` and :func:`run_table`: a finished run's
  summary, the reward with the per-epoch means of the reward's own metadata.

The first three are defined in :mod:`ddpo.image_grid` and re-exported here.
"""

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from ddpo.image_grid import (
    _BACKGROUND,
    _FONT,
    _TEXT,
    ImageGridHook,
    _format,
    image_grid,
    select_grid_indices,
)

__all__ = [
    "ImageGridHook",
    "epoch_table",
    "image_grid",
    "merge_epoch_means",
    "read_metrics",
    "reward_curve",
    "run_curve",
    "run_table",
    "select_grid_indices",
]


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (one JSON object per line), in file order."""
    lines = Path(path).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def reward_curve(
    epochs: Sequence[int],
    means: Sequence[float],
    stds: Sequence[float] | None = None,
    *,
    title: str = "mean reward per epoch",
    extra: tuple[str, Sequence[float]] | None = None,
    size: tuple[int, int] = (640, 400),
) -> Image.Image:
    """A line plot of ``means`` over ``epochs`` (with a +/- ``stds`` band), drawn with PIL.

    Args:
        epochs, means, stds: one value per epoch.
        title: text above the plot.
        extra: an optional second series ``(label, values)`` in [0, 1] (e.g. alignment
            accuracy), drawn against a right-hand axis from 0 to 1.
        size: image size in pixels.

    Raises:
        ValueError: if the series lengths differ or are empty.
    """
    n = len(epochs)
    if n == 0 or len(means) != n or (stds is not None and len(stds) != n):
        raise ValueError(
            f"epochs, means and stds must be non-empty and of one length, got {n}, "
            f"{len(means)}, {None if stds is None else len(stds)}"
        )
    if extra is not None and len(extra[1]) != n:
        raise ValueError(f"extra: expected {n} values, got {len(extra[1])}")
    width, height = size
    left, right, top, bottom = 64, 56 if extra else 20, 30, 44
    image = Image.new("RGB", size, _BACKGROUND)
    draw = ImageDraw.Draw(image)
    lo_band = [m - (s if stds else 0.0) for m, s in zip(means, stds or [0.0] * n, strict=True)]
    hi_band = [m + (s if stds else 0.0) for m, s in zip(means, stds or [0.0] * n, strict=True)]
    y_min, y_max = min(lo_band), max(hi_band)
    if y_max - y_min < 1e-12:
        y_min, y_max = y_min - 0.5, y_max + 0.5
    x_min, x_max = min(epochs), max(epochs)
    x_span = max(x_max - x_min, 1)

    def px(
        epoch: float | int, value: float | int, lo: float = y_min, hi: float = y_max
    ) -> tuple[int, int]:
        x = left + (epoch - x_min) / x_span * (width - left - right)
        y = top + (1 - (value - lo) / (hi - lo)) * (height - top - bottom)
        return round(x), round(y)

    # axes and ticks
    draw.rectangle([left, top, width - right, height - bottom], outline=(120, 120, 120))
    decimals = max(0, 1 - math.floor(math.log10((y_max - y_min) / 4)))
    for k in range(5):
        value = y_min + (y_max - y_min) * k / 4
        _, y = px(x_min, value)
        draw.line([left - 4, y, left, y], fill=(120, 120, 120))
        draw.text((4, y - 6), f"{value:.{decimals}f}", fill=_TEXT, font=_FONT)
    ticks = sorted({round(x_min + x_span * k / min(x_span, 5)) for k in range(min(x_span, 5) + 1)})
    for tick in ticks:
        x, _ = px(tick, y_min)
        draw.line([x, height - bottom, x, height - bottom + 4], fill=(120, 120, 120))
        draw.text((x - 4, height - bottom + 6), str(tick), fill=_TEXT, font=_FONT)
    draw.text((width // 2 - 16, height - 16), "epoch", fill=_TEXT, font=_FONT)
    draw.text((left, 8), title, fill=_TEXT, font=_FONT)

    # +/- std band, then the mean line with markers
    if stds is not None and n > 1:
        band = [px(e, v) for e, v in zip(epochs, hi_band, strict=True)]
        band += [px(e, v) for e, v in reversed(list(zip(epochs, lo_band, strict=True)))]
        draw.polygon(band, fill=(205, 220, 245))
    points = [px(e, m) for e, m in zip(epochs, means, strict=True)]
    if n > 1:
        draw.line(points, fill=(30, 80, 200), width=2)
    for x, y in points:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(30, 80, 200))

    if extra is not None:
        label, values = extra
        for k in range(5):
            _, y = px(x_min, k / 4, 0.0, 1.0)
            draw.text((width - right + 6, y - 6), f"{k / 4:.2f}", fill=(200, 80, 30), font=_FONT)
        extra_points = [px(e, v, 0.0, 1.0) for e, v in zip(epochs, values, strict=True)]
        if n > 1:
            draw.line(extra_points, fill=(200, 80, 30), width=2)
        for x, y in extra_points:
            draw.rectangle([x - 3, y - 3, x + 3, y + 3], fill=(200, 80, 30))
        draw.text((width - right - 8 * len(label) - 40, 8), f"-- {label}", fill=(200, 80, 30))
    return image


def epoch_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], *, title: str) -> Any:
    """A ``rich.table.Table`` with one row per epoch and the given metric columns."""
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(_format(row[c]) if c in row else "-" for c in columns))
    return table


# ---------------------------------------------------------------------------------------------
# A run's summary


def merge_epoch_means(
    metrics: Sequence[dict[str, Any]], epochs: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``metrics`` rows, each with its epoch's reward-metadata means added under their own names.

    Args:
        metrics: ``metrics.jsonl`` records (one per epoch, with ``epoch``).
        epochs: per-epoch summaries as :attr:`ImageGridHook.epochs` keeps them; every
            ``<key>_mean`` but ``reward_mean`` (which ``metrics`` has, over all processes) is
            added to the row of the same epoch.
    """
    by_epoch = {row["epoch"]: row for row in epochs}
    merged = []
    for row in metrics:
        means = by_epoch.get(row["epoch"], {})
        extra = {k: v for k, v in means.items() if k.endswith("_mean") and k != "reward_mean"}
        merged.append({**row, **extra})
    return merged


def _summary_columns(rows: Sequence[dict[str, Any]], summary_keys: Sequence[str]) -> list[str]:
    return [f"{k}_mean" for k in summary_keys if any(f"{k}_mean" in row for row in rows)]


def run_curve(
    rows: Sequence[dict[str, Any]], summary_keys: Sequence[str] = (), *, title: str
) -> Image.Image:
    """:func:`reward_curve` of merged ``rows`` (see :func:`merge_epoch_means`), with the first of
    ``summary_keys`` whose mean every row has (e.g. ``accuracy_mean``) on the right-hand axis."""
    extra = None
    for column in _summary_columns(rows, summary_keys):
        if all(column in row for row in rows):
            extra = (column, [float(row[column]) for row in rows])
            break
    return reward_curve(
        [row["epoch"] for row in rows],
        [row["reward_mean"] for row in rows],
        [row.get("reward_std", 0.0) for row in rows],
        title=title,
        extra=extra,
    )


def run_table(
    rows: Sequence[dict[str, Any]], summary_keys: Sequence[str] = (), *, title: str
) -> Any:
    """:func:`epoch_table` of merged ``rows``: ``epoch``, ``reward_mean``, ``reward_std`` and
    ``<key>_mean`` of each of ``summary_keys`` that the rows have (the other means are in
    ``images/epochs.jsonl`` and the tracker)."""
    columns = ["epoch", "reward_mean", "reward_std", *_summary_columns(rows, summary_keys)]
    return epoch_table(rows, columns, title=title)
