"""Videos as animations, with PIL only: a video's frames as PIL images, and those frames as an
animated WebP or GIF (a file, or its bytes for a tracker).

A video here is one sample of a video family's output, ``(frames, 3, H, W)`` float in [0, 1] (or
uint8), as a torch tensor or numpy array, or a sequence of PIL images.
"""

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from PIL import Image

__all__ = ["ANIMATION_FORMATS", "encode_animation", "save_animation", "video_frames"]

ANIMATION_FORMATS: Final[dict[str, str]] = {".webp": "WEBP", ".gif": "GIF"}
"""The animation files written, by suffix: PIL's format name."""


def video_frames(video: Any) -> list[Image.Image]:
    """The frames of one video as RGB PIL images, in order.

    Args:
        video: ``(frames, 3, H, W)`` as a tensor or array, float in [0, 1] (scaled by 255,
            rounded and clipped) or uint8; or a sequence of PIL images.

    Raises:
        ValueError: naming the shape, for another layout, no frames, or non-finite values.
    """
    if isinstance(video, Sequence) and all(isinstance(f, Image.Image) for f in video):
        if not video:
            raise ValueError("video has no frames")
        return [frame.convert("RGB") for frame in video]
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu()
        video = video.numpy() if video.dtype == torch.uint8 else video.double().numpy()
    if not isinstance(video, np.ndarray):
        raise ValueError(
            f"video must be a tensor, an array or a list of PIL images, got {type(video).__name__}"
        )
    if video.ndim != 4 or video.shape[1] != 3 or 0 in video.shape:
        raise ValueError(f"video must be (frames, 3, H, W), got shape {video.shape}")
    if video.dtype != np.uint8:
        if not np.isfinite(video).all():
            raise ValueError("video holds NaN or infinite values; it must be in [0, 1]")
        video = np.clip(np.round(video.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    return [Image.fromarray(frame) for frame in video.transpose(0, 2, 3, 1)]


def _check_fps(fps: float) -> float:
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps <= 1000:
        raise ValueError(f"fps must be a number in (0, 1000], got {fps!r}")
    return float(fps)


def _save(frames: Sequence[Image.Image], target: Any, image_format: str, fps: float) -> None:
    if not frames:
        raise ValueError("frames: an animation needs at least one frame")
    duration = max(1, round(1000 / _check_fps(fps)))  # milliseconds per frame
    options: dict[str, Any] = {"quality": 90} if image_format == "WEBP" else {}
    first, *rest = frames
    first.save(
        target,
        format=image_format,
        save_all=True,
        append_images=rest,
        duration=duration,
        loop=0,
        **options,
    )


def encode_animation(frames: Sequence[Image.Image], *, fps: float, image_format: str) -> bytes:
    """``frames`` as the bytes of an endlessly looping animated ``"WEBP"`` or ``"GIF"`` at
    ``fps`` frames per second.

    Raises:
        ValueError: for no frames, an ``fps`` outside (0, 1000] or another format.
    """
    if image_format not in ANIMATION_FORMATS.values():
        raise ValueError(
            f"image_format must be one of {sorted(ANIMATION_FORMATS.values())}, got "
            f"{image_format!r}"
        )
    buffer = io.BytesIO()
    _save(frames, buffer, image_format, fps)
    return buffer.getvalue()


def save_animation(frames: Sequence[Image.Image], path: str | Path, *, fps: float) -> Path:
    """Write ``frames`` to ``path`` as an endlessly looping animation at ``fps`` frames per
    second: animated WebP (lossy, quality 90) for ``.webp``, GIF for ``.gif``.

    Returns:
        ``path``.

    Raises:
        ValueError: for another suffix, no frames, or an ``fps`` outside (0, 1000].
    """
    path = Path(path)
    image_format = ANIMATION_FORMATS.get(path.suffix.lower())
    if image_format is None:
        raise ValueError(
            f"path {str(path)!r}: an animation is written as one of {sorted(ANIMATION_FORMATS)}"
        )
    _save(frames, path, image_format, fps)
    return path
