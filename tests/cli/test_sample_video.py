"""``ddpo sample`` on a video model: an animated WebP per sample at ``--fps`` (PIL)."""

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from ddpo.cli_sample import SampleArgs, draw_samples, split_samples, write_sample


def _video(frames: int = 5, height: int = 12, width: int = 20) -> torch.Tensor:
    """A smooth video: each frame a horizontal ramp in its own colour."""
    ramp = torch.linspace(0.2, 0.8, width).expand(height, width)
    colours = [torch.tensor([t / frames, 0.5, 1 - t / frames]) for t in range(frames)]
    return torch.stack([colour[:, None, None] * ramp for colour in colours])


def _read(path: Path) -> tuple[int, tuple[int, int], list[np.ndarray]]:
    """Frame count, size and frames of an image file."""
    with Image.open(path) as image:
        frames = []
        for index in range(getattr(image, "n_frames", 1)):
            image.seek(index)
            frames.append(np.asarray(image.convert("RGB")).astype(int))
        return len(frames), image.size, frames


def test_a_video_is_written_as_an_animated_webp(tmp_path: Path) -> None:
    video = _video()
    path = write_sample(video, tmp_path / "clip", fps=10.0)
    assert path == tmp_path / "clip.webp"
    count, size, frames = _read(path)
    assert count == 5 and size == (20, 12)
    with Image.open(path) as image:
        assert image.format == "WEBP" and image.is_animated
        image.load()  # the frame's timing is read with its pixels
        assert image.info["duration"] == 100 and image.info["loop"] == 0
    expected = (video * 255).permute(0, 2, 3, 1).numpy()
    for index, frame in enumerate(frames):  # lossy (quality 90), in order
        errors = np.abs(frame[None] - expected).mean(axis=(1, 2, 3))
        assert errors[index] < 6 and errors.argmin() == index
    # numpy and PIL frames too; an image is a PNG
    as_array = (video.numpy() * 255).astype(np.uint8)
    assert _read(write_sample(as_array, tmp_path / "array"))[0] == 5
    pil_frames = [Image.new("RGB", (8, 6), (i * 50, 0, 0)) for i in range(3)]
    assert _read(write_sample(pil_frames, tmp_path / "pil"))[:2] == (3, (8, 6))
    image_path = write_sample(video[0], tmp_path / "still")
    assert image_path.suffix == ".png" and _read(image_path)[:2] == (1, (20, 12))
    assert write_sample(Image.new("RGB", (4, 4)), tmp_path / "pil_image").suffix == ".png"
    with pytest.raises(ValueError, match="sample must be a PIL image"):
        write_sample(torch.rand(2, 2, 3, 4, 4), tmp_path / "bad")
    with pytest.raises(ValueError, match="fps must be a number"):
        write_sample(video, tmp_path / "bad", fps=0.0)


def test_split_samples_reads_every_output_layout() -> None:
    videos = torch.rand(2, 4, 3, 8, 8)
    assert [v.shape for v in split_samples(videos)] == [(4, 3, 8, 8)] * 2
    as_np = videos.permute(0, 1, 3, 4, 2).numpy()  # diffusers' "np" video output
    torch.testing.assert_close(torch.stack(split_samples(as_np)), videos)
    assert [i.shape for i in split_samples(torch.rand(3, 3, 8, 8))] == [(3, 8, 8)] * 3
    pils = [Image.new("RGB", (4, 4))] * 2
    assert split_samples(pils) == pils
    with pytest.raises(ValueError, match=r"got shape \(2, 8, 8\)"):
        split_samples(torch.rand(2, 8, 8))
    with pytest.raises(ValueError, match=r"got shape \(2, 8, 8, 4\)"):
        split_samples(np.zeros((2, 8, 8, 4)))


def test_draw_samples_writes_a_webp_per_video(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []

    class VideoPolicy:
        def __call__(self, prompt: list[str], **kwargs: Any) -> Any:
            calls.append(kwargs)
            return types.SimpleNamespace(images=torch.rand(len(prompt), 6, 3, 8, 16))

    families = types.ModuleType("ddpo.adapters.families")
    families.model_family = lambda model: types.SimpleNamespace(options=object)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ddpo.adapters.families", families)
    args = SampleArgs(model="wan", prompt=["a cat"], num_images=2, out=str(tmp_path), fps=8.0)
    written = draw_samples(args, VideoPolicy())
    assert [p.name for p in written] == ["00_a-cat_000.webp", "00_a-cat_001.webp"]
    assert all(_read(p)[:2] == (6, (16, 8)) for p in written)
    assert calls[0]["output_type"] == "pil" and calls[0]["num_inference_steps"] == 10
    with pytest.raises(ValueError, match=r"fps must be in \(0, 1000\]"):
        SampleArgs(model="wan", prompt=["a"], fps=0.0)
