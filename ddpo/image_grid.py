"""Epoch image grids drawn with PIL: sampled images captioned with prompt and reward.

- :func:`image_grid`: sampled images in a grid, each captioned with its prompt and reward.
- :class:`ImageGridHook`: a DDPOTrainer ``image_samples_hook`` that writes one grid PNG per epoch,
  logs the images to the tracker (tensorboard or wandb) when there is one, and keeps per-epoch
  summaries of the reward metadata (e.g. alignment accuracy).
- :func:`select_grid_indices`: which samples the grid shows (every prompt of the epoch).

The run's curve and tables are in :mod:`ddpo.reporting` (which re-exports these names).
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

__all__ = ["ImageGridHook", "image_grid", "select_grid_indices"]

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
