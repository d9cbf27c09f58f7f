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
"""

import json
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ddpo.rewards._images import to_uint8_nhwc
from ddpo.trainer.run_folder import drop_epochs_from
from ddpo.trainer.tracking import wrap_tracker

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

_BACKGROUND = (255, 255, 255)
_TEXT = (20, 20, 20)
_FONT = ImageFont.load_default()


_LINE_SPACING = 4


def _text_height(lines: int) -> int:
    _, top, _, bottom = _FONT.getbbox("Ag")
    return int(bottom - top + _LINE_SPACING) * lines + 6


def _per_sample(value: Any, batch: int) -> list[Any] | None:
    """``value`` as a list of ``batch`` items when it holds one per sample, else None."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().reshape(-1).tolist() if value.numel() == batch else None
    elif isinstance(value, np.ndarray):
        value = value.reshape(-1).tolist() if value.size == batch else None
    if isinstance(value, list | tuple) and len(value) == batch:
        return list(value)
    return None


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def image_grid(
    images: Any,
    captions: Sequence[str],
    *,
    columns: int = 4,
    min_cell: int = 128,
    caption_chars: int = 22,
) -> Image.Image:
    """Images side by side, ``columns`` per row, each with a (wrapped) caption beneath.

    Args:
        images: a float tensor ``(batch, 3, H, W)`` in [0, 1] or any layout accepted by
            ``ddpo.rewards._images.to_uint8_nhwc``.
        captions: one text per image.
        columns: images per row.
        min_cell: small images are upscaled (nearest) to at least this many pixels wide.
        caption_chars: characters per caption line.

    Raises:
        ValueError: if the number of captions differs from the number of images.
    """
    arrays = to_uint8_nhwc(images)
    if len(captions) != len(arrays):
        raise ValueError(f"captions: expected {len(arrays)} captions, got {len(captions)}")
    if columns <= 0:
        raise ValueError(f"columns must be positive, got {columns}")
    height, width = arrays.shape[1:3]
    scale = max(1, math.ceil(min_cell / width))
    cell_w, cell_h = width * scale, height * scale
    wrapped = [textwrap.wrap(c, caption_chars) or [""] for c in captions]
    caption_h = _text_height(max((len(w) for w in wrapped), default=1))
    columns = min(columns, max(len(arrays), 1))
    rows = max(math.ceil(len(arrays) / columns), 1)
    pad = 4
    grid = Image.new(
        "RGB",
        (columns * (cell_w + pad) + pad, rows * (cell_h + caption_h + pad) + pad),
        _BACKGROUND,
    )
    draw = ImageDraw.Draw(grid)
    for index, (array, lines) in enumerate(zip(arrays, wrapped, strict=True)):
        x = pad + (index % columns) * (cell_w + pad)
        y = pad + (index // columns) * (cell_h + caption_h + pad)
        tile = Image.fromarray(array)
        if scale > 1:
            tile = tile.resize((cell_w, cell_h), Image.Resampling.NEAREST)
        grid.paste(tile, (x, y))
        draw.multiline_text(
            (x, y + cell_h + 2), "\n".join(lines), fill=_TEXT, font=_FONT, spacing=_LINE_SPACING
        )
    return grid


class ImageGridHook:
    """``image_samples_hook`` writing ``<folder>/epoch_<NNNN>.png`` each epoch.

    Each image is captioned with its prompt, its reward and the yes/no reward metadata with one
    value per sample (for instance the alignment reward's per-sample ``correct``). The grid is
    also logged to the tracker when there is one (``tracker.log_images`` through
    :func:`ddpo.trainer.tracking.wrap_tracker`). Per epoch it records the local mean reward and
    the mean of every numeric per-sample metadata key in :attr:`epochs` (a list of dicts) and
    appends them to ``<folder>/epochs.jsonl`` (dropping, on its first write, the rows of a resumed
    run's epochs from ``first_epoch`` on, which are logged again).

    Args:
        folder: where the grids go (created on first use); None until known, e.g. set it to
            ``trainer.output_dir / "images"`` after building the trainer.
        max_images: images per grid, covering every prompt of the epoch (see
            :func:`select_grid_indices`).
        first_epoch: index of the first epoch this hook sees (``trainer.first_epoch``).
    """

    def __init__(
        self, folder: str | Path | None = None, *, max_images: int = 16, first_epoch: int = 0
    ) -> None:
        if max_images <= 0:
            raise ValueError(f"max_images must be positive, got {max_images}")
        self.folder = None if folder is None else Path(folder)
        self.max_images = max_images
        self.epoch = first_epoch
        self.epochs: list[dict[str, Any]] = []
        self._log_trimmed = False

    def __call__(self, image_data: list[list[Any]], global_step: int, tracker: Any) -> None:
        batches: list[_Batch] = []
        rewards_all: list[float] = []
        numeric: dict[str, list[float]] = {}
        for batch_images, prompts, _prompt_metadata, rewards, reward_metadata in image_data:
            batch = len(prompts)
            reward_list = [float(r) for r in _per_sample(rewards, batch) or []]
            rewards_all += reward_list
            per_sample_meta: dict[str, list[Any]] = {}
            for key, value in dict(reward_metadata or {}).items():
                values = _per_sample(value, batch)
                if values is None:
                    continue
                per_sample_meta[key] = values
                if all(isinstance(v, bool | int | float) for v in values):
                    numeric.setdefault(key, []).extend(float(v) for v in values)
            batches.append(_Batch(batch_images, list(prompts), reward_list, per_sample_meta))

        images: list[torch.Tensor] = []
        captions: list[str] = []
        for b, i in select_grid_indices([batch.prompts for batch in batches], self.max_images):
            images.append(batches[b].image(i))
            captions.append(batches[b].caption(i))

        summary: dict[str, Any] = {"epoch": self.epoch, "global_step": global_step}
        if rewards_all:
            summary["reward_mean"] = float(np.mean(rewards_all))
        for key, values in numeric.items():
            finite = [v for v in values if math.isfinite(v)]  # NaN: "not applicable"
            if finite:
                summary[f"{key}_mean"] = float(np.mean(finite))
        self.epochs.append(summary)

        if images and self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            grid = image_grid(torch.stack(images), captions)
            grid.save(self.folder / f"epoch_{self.epoch:04d}.png")
            log = self.folder / "epochs.jsonl"
            if not self._log_trimmed:
                drop_epochs_from(log, self.epoch)
                self._log_trimmed = True
            with open(log, "a") as f:
                f.write(json.dumps(summary) + "\n")
            if tracker is not None and hasattr(tracker, "log_images"):
                wrap_tracker(tracker).log_images({"samples": [grid]}, step=global_step)
        if tracker is not None and hasattr(tracker, "log"):
            means = {f"reward_metadata/{k}": v for k, v in summary.items() if k.endswith("_mean")}
            if means:
                tracker.log(means, step=global_step)
        self.epoch += 1


def select_grid_indices(
    prompts_per_batch: Sequence[Sequence[Any]], max_images: int
) -> list[tuple[int, int]]:
    """The ``(batch, index)`` samples an epoch grid of at most ``max_images`` images shows.

    The grid covers every prompt of the epoch, not only the first batch's: samples are grouped
    by prompt (distinct prompts in first-seen order over all batches). With at most
    ``max_images`` prompts, images are dealt round-robin: one sample of each prompt, then a
    second of each, and so on until ``max_images`` are taken or the samples run out. With more
    prompts than that, ``max_images`` prompts spread evenly over the first-seen order (the
    ``k * n // max_images``-th of ``n``) get one sample each. The pairs come back grouped by
    prompt in first-seen order, each prompt's samples in epoch order.

    Args:
        prompts_per_batch: the prompts of each batch, one per sample.
        max_images: the most samples to pick.

    Raises:
        ValueError: if ``max_images`` is not positive.
    """
    if max_images <= 0:
        raise ValueError(f"max_images must be positive, got {max_images}")
    groups: dict[str, list[tuple[int, int]]] = {}
    for b, prompts in enumerate(prompts_per_batch):
        for i, prompt in enumerate(prompts):
            groups.setdefault(str(prompt), []).append((b, i))
    members = list(groups.values())
    n = len(members)
    if n > max_images:
        return [members[k * n // max_images][0] for k in range(max_images)]
    taken = [0] * n
    total = 0
    for round_ in range(max_images):
        for p in range(n):
            if total < max_images and round_ < len(members[p]):
                taken[p] += 1
                total += 1
    return [pair for p in range(n) for pair in members[p][: taken[p]]]


class _Batch(NamedTuple):
    """One batch of an epoch's ``image_data`` as the grid reads it."""

    images: Any
    prompts: list[Any]
    rewards: list[float]
    metadata: dict[str, list[Any]]

    def image(self, i: int) -> torch.Tensor:
        """Sample ``i`` as a float ``(3, H, W)`` CPU tensor in [0, 1]."""
        if not isinstance(self.images, list):
            return torch.as_tensor(self.images)[i].detach().float().cpu()
        array = to_uint8_nhwc([self.images[i]])[0]
        return torch.from_numpy(array).permute(2, 0, 1).float() / 255

    def caption(self, i: int) -> str:
        """Prompt, reward and the yes/no metadata (e.g. ``correct``) of sample ``i``."""
        extra = " ".join(
            f"{k}={_format(v[i])}" for k, v in self.metadata.items() if isinstance(v[i], bool)
        )
        reward_text = f"r={self.rewards[i]:.3g}" if i < len(self.rewards) else ""
        return f"{self.prompts[i]} | {reward_text} {extra}".strip()


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
