"""Epoch image grids drawn with PIL: sampled images captioned with prompt and reward.

- :func:`image_grid`: sampled images in a grid, each captioned with its prompt and reward; a
  video ``(frames, 3, H, W)`` is shown as a horizontal strip of its frames (up to 8, evenly
  spaced: :func:`strip_frame_indices`).
- :class:`ImageGridHook`: a DDPOTrainer ``image_samples_hook`` that writes one grid PNG per epoch
  (for videos also the grid animated, an animated WebP), logs the images to the tracker
  (tensorboard or wandb; videos as an animation too) when there is one, and keeps per-epoch
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
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from ddpo._animation import save_animation
from ddpo.rewards._images import to_uint8_nhwc
from ddpo.trainer.run_folder import drop_epochs_from
from ddpo.trainer.tracking import wrap_tracker

__all__ = [
    "ImageGridHook",
    "fit_video",
    "image_grid",
    "select_grid_indices",
    "strip_frame_indices",
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


_STRIP_GAP = 2
"""Pixels between the frames of a video's strip."""


def strip_frame_indices(num_frames: int, max_frames: int) -> list[int]:
    """The frames a strip shows of a video of ``num_frames``: all of them when there are at most
    ``max_frames``, else ``max_frames`` evenly spaced from the first to the last.

    Raises:
        ValueError: if either count is not positive.
    """
    if num_frames <= 0 or max_frames <= 0:
        raise ValueError(
            f"num_frames and max_frames must be positive, got {num_frames} and {max_frames}"
        )
    if num_frames <= max_frames:
        return list(range(num_frames))
    if max_frames == 1:
        return [0]
    return [round(i * (num_frames - 1) / (max_frames - 1)) for i in range(max_frames)]


def fit_video(video: torch.Tensor, max_side: int) -> torch.Tensor:
    """``video`` (``(..., 3, H, W)`` float) area-downscaled so that its longer side is at most
    ``max_side`` pixels (aspect kept), as float32 on the CPU; a smaller one as it is."""
    video = video.detach().float().cpu()
    height, width = video.shape[-2:]
    if max(height, width) <= max_side:
        return video
    factor = max_side / max(height, width)
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    frames = video.reshape(-1, *video.shape[-3:])
    return F.interpolate(frames, size=size, mode="area").reshape(*video.shape[:-2], *size)


def _strips(videos: torch.Tensor, max_frames: int, max_frame_side: int) -> np.ndarray:
    """Each video ``(frames, 3, H, W)`` of ``videos`` as one uint8 ``(H', W', 3)`` strip of its
    `strip_frame_indices` frames side by side, each frame fitted to ``max_frame_side``."""
    if videos.shape[2] != 3 or 0 in videos.shape:
        raise ValueError(
            f"videos must be (batch, frames, 3, H, W), got shape {tuple(videos.shape)}"
        )
    chosen = strip_frame_indices(videos.shape[1], max_frames)
    frames = fit_video(videos[:, chosen], max_frame_side)
    batch, k, _, height, width = frames.shape
    arrays = to_uint8_nhwc(frames.reshape(batch * k, 3, height, width))
    arrays = arrays.reshape(batch, k, height, width, 3)
    strips = np.full((batch, height, k * width + (k - 1) * _STRIP_GAP, 3), 255, np.uint8)
    for j in range(k):
        left = j * (width + _STRIP_GAP)
        strips[:, :, left : left + width] = arrays[:, j]
    return strips


def image_grid(
    images: Any,
    captions: Sequence[str],
    *,
    columns: int | None = None,
    min_cell: int = 128,
    caption_chars: int = 22,
    max_frames: int = 8,
    max_frame_side: int = 256,
) -> Image.Image:
    """Images side by side, ``columns`` per row, each with a (wrapped) caption beneath; each
    video a horizontal strip of its frames, one per row by default.

    Args:
        images: a float tensor ``(batch, 3, H, W)`` in [0, 1] or any layout accepted by
            ``ddpo.rewards._images.to_uint8_nhwc``; or videos, a float tensor
            ``(batch, frames, 3, H, W)`` in [0, 1].
        captions: one text per image or video.
        columns: images (or strips) per row; default 4 images, 1 strip.
        min_cell: small images (a strip's frames) are upscaled (nearest) to at least this many
            pixels wide.
        caption_chars: characters per caption line (per frame of a strip).
        max_frames: the most frames a strip shows (`strip_frame_indices`).
        max_frame_side: a strip's frames are area-downscaled to at most this many pixels on
            their longer side (`fit_video`).

    Raises:
        ValueError: if the number of captions differs from the number of images.
    """
    frames_shown = 1
    if isinstance(images, torch.Tensor) and images.ndim == 5:
        if max_frames <= 0 or max_frame_side <= 0:
            raise ValueError(
                f"max_frames and max_frame_side must be positive, got {max_frames} and "
                f"{max_frame_side}"
            )
        arrays = _strips(images, max_frames, max_frame_side)
        frames_shown = len(strip_frame_indices(images.shape[1], max_frames))
    else:
        arrays = to_uint8_nhwc(images)
    if len(captions) != len(arrays):
        raise ValueError(f"captions: expected {len(arrays)} captions, got {len(captions)}")
    columns = columns if columns is not None else 4 if frames_shown == 1 else 1
    if columns <= 0:
        raise ValueError(f"columns must be positive, got {columns}")
    height, width = arrays.shape[1:3]
    frame_width = (width - (frames_shown - 1) * _STRIP_GAP) // frames_shown
    scale = max(1, math.ceil(min_cell / frame_width))
    cell_w, cell_h = width * scale, height * scale
    wrapped = [textwrap.wrap(c, caption_chars * frames_shown) or [""] for c in captions]
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
    :func:`ddpo.trainer.tracking.wrap_tracker`). Videos ``(batch, frames, 3, H, W)`` are shown
    as strips of up to ``max_frames`` frames (:func:`image_grid`), fitted to ``max_frame_side``
    pixels; the grid of their frames is also written animated, ``<folder>/epoch_<NNNN>.webp`` at
    ``fps`` frames per second, and logged to the tracker as a video
    (:meth:`ddpo.trainer.tracking.ImageTracker.log_videos`). Per epoch it records the local mean
    reward and the mean of every numeric per-sample metadata key in :attr:`epochs` (a list of
    dicts) and appends them to ``<folder>/epochs.jsonl`` (dropping, on its first write, the rows
    of a resumed run's epochs from ``first_epoch`` on, which are logged again).

    Args:
        folder: where the grids go (created on first use); None until known, e.g. set it to
            ``trainer.output_dir / "images"`` after building the trainer.
        max_images: images per grid, covering every prompt of the epoch (see
            :func:`select_grid_indices`).
        first_epoch: index of the first epoch this hook sees (``trainer.first_epoch``).
        max_frames: frames per video strip.
        max_frame_side: the longer side, in pixels, that video frames are downscaled to.
        fps: frames per second of the animated grid (16: Wan2.1's).
    """

    def __init__(
        self,
        folder: str | Path | None = None,
        *,
        max_images: int = 16,
        first_epoch: int = 0,
        max_frames: int = 8,
        max_frame_side: int = 256,
        fps: float = 16.0,
    ) -> None:
        for name, value in (
            ("max_images", max_images),
            ("max_frames", max_frames),
            ("max_frame_side", max_frame_side),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not 0 < fps <= 1000:
            raise ValueError(f"fps must be in (0, 1000], got {fps}")
        self.folder = None if folder is None else Path(folder)
        self.max_images = max_images
        self.max_frames = max_frames
        self.max_frame_side = max_frame_side
        self.fps = fps
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
            image = batches[b].image(i)
            images.append(fit_video(image, self.max_frame_side) if image.ndim == 4 else image)
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
            stacked = torch.stack(images)
            grid = image_grid(stacked, captions, max_frames=self.max_frames)
            grid.save(self.folder / f"epoch_{self.epoch:04d}.png")
            animation = None
            if stacked.ndim == 5:  # videos: the grid of their frames, frame by frame
                animation = [image_grid(stacked[:, t], captions) for t in range(stacked.shape[1])]
                save_animation(
                    animation, self.folder / f"epoch_{self.epoch:04d}.webp", fps=self.fps
                )
            log = self.folder / "epochs.jsonl"
            if not self._log_trimmed:
                drop_epochs_from(log, self.epoch)
                self._log_trimmed = True
            with open(log, "a") as f:
                f.write(json.dumps(summary) + "\n")
            if tracker is not None and hasattr(tracker, "log_images"):
                wrapped = wrap_tracker(tracker)
                wrapped.log_images({"samples": [grid]}, step=global_step)
                if animation is not None:
                    wrapped.log_videos({"videos": animation}, step=global_step, fps=self.fps)
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
        """Sample ``i`` as a float ``(3, H, W)`` CPU tensor in [0, 1] (a video:
        ``(frames, 3, H, W)``)."""
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
