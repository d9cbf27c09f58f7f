"""Image grids, the image hook, the reward curve and the epoch table."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from ddpo.image_grid import fit_video, strip_frame_indices
from ddpo.reporting import (
    ImageGridHook,
    epoch_table,
    image_grid,
    merge_epoch_means,
    read_metrics,
    reward_curve,
    run_curve,
    run_table,
    select_grid_indices,
)


def _images(batch: int, size: int = 16) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_image_grid_places_upscaled_images_and_captions() -> None:
    images = _images(5)
    grid = image_grid(images, [f"prompt {i} | r=0.5" for i in range(5)], columns=2, min_cell=64)
    assert grid.width == 2 * (64 + 4) + 4
    # three rows of 64px images plus captions
    assert grid.height > 3 * 64
    first = np.asarray(grid)[4 : 4 + 64, 4 : 4 + 64]
    expected = np.asarray(
        Image.fromarray((images[0] * 255).round().byte().permute(1, 2, 0).numpy()).resize(
            (64, 64), Image.Resampling.NEAREST
        )
    )
    np.testing.assert_array_equal(first, expected)
    with pytest.raises(ValueError, match="captions"):
        image_grid(images, ["only one"])


def test_hook_writes_a_grid_per_epoch_and_summarises_metadata(tmp_path: Path) -> None:
    hook = ImageGridHook(tmp_path / "images", max_images=3, first_epoch=2)
    batch = [
        _images(2),
        ("a red circle", "a blue square"),
        ({}, {}),
        torch.tensor([0.25, 0.75]),
        {"correct": torch.tensor([0.0, 1.0]), "label": ["x", "y"], "scalar": 3.0},
    ]
    logged: list[tuple[dict[str, np.ndarray], int]] = []
    scalars: list[tuple[dict[str, float], int]] = []

    class Tracker:
        name = "tensorboard"

        def log_images(self, values, step, **kwargs):  # type: ignore[no-untyped-def]
            assert kwargs == {"dataformats": "NHWC"}
            logged.append((values, step))

        def log(self, values, step):  # type: ignore[no-untyped-def]
            scalars.append((values, step))

    hook([batch, batch], 7, Tracker())
    hook([batch], 9, None)
    assert (tmp_path / "images" / "epoch_0002.png").is_file()
    assert (tmp_path / "images" / "epoch_0003.png").is_file()
    assert hook.epochs[0] == {
        "epoch": 2, "global_step": 7, "reward_mean": 0.5, "correct_mean": 0.5,
    }  # fmt: skip
    lines = (tmp_path / "images" / "epochs.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [2, 3]
    assert len(logged) == 1 and logged[0][1] == 7
    assert scalars == [
        ({"reward_metadata/reward_mean": 0.5, "reward_metadata/correct_mean": 0.5}, 7)
    ]
    assert logged[0][0]["samples"].shape[0] == 1 and logged[0][0]["samples"].shape[-1] == 3
    # no folder: summaries only, nothing written
    silent = ImageGridHook(None)
    silent([batch], 0, None)
    assert silent.epochs[0]["reward_mean"] == 0.5


def test_reward_curve_draws_points_where_the_values_are() -> None:
    plot = reward_curve([0, 1, 2], [0.0, 0.5, 1.0], [0.1, 0.1, 0.1], extra=("acc", [0.2, 0.4, 0.9]))
    assert plot.size == (640, 400)
    pixels = np.asarray(plot).astype(int)
    blue = (np.abs(pixels - np.array([30, 80, 200])).sum(-1) < 10).nonzero()
    # the mean line rises: its rightmost points are higher (smaller y) than its leftmost
    left_y = blue[0][blue[1] < blue[1].min() + 5].mean()
    right_y = blue[0][blue[1] > blue[1].max() - 5].mean()
    assert right_y < left_y
    with pytest.raises(ValueError, match="one length"):
        reward_curve([0, 1], [0.0])
    reward_curve([0], [1.0])  # a single epoch still draws


def test_read_metrics_and_table(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0, "reward_mean": 0.1}\n\n{"epoch": 1, "reward_mean": 0.3}\n')
    rows = read_metrics(path)
    assert [r["reward_mean"] for r in rows] == [0.1, 0.3]
    table = epoch_table(rows, ["epoch", "reward_mean", "missing"], title="t")
    assert table.row_count == 2
    assert [c.header for c in table.columns] == ["epoch", "reward_mean", "missing"]


def test_hook_grid_shows_every_prompt_of_the_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the CLI's layout: each batch one prompt repeated (sample_batch_size=16)
    batches = [
        [_images(16), ("a red circle",) * 16, ({},) * 16, torch.full((16,), 0.25), {}],
        [_images(16), ("a blue square",) * 16, ({},) * 16, torch.full((16,), 0.75), {}],
    ]
    drawn: list[list[str]] = []
    real_grid = image_grid

    def spy(images: torch.Tensor, captions: list[str], **kwargs: int) -> Image.Image:
        drawn.append(list(captions))
        return real_grid(images, captions, **kwargs)

    monkeypatch.setattr("ddpo.image_grid.image_grid", spy)
    hook = ImageGridHook(tmp_path, max_images=4)
    hook(batches, 0, None)
    assert [c.split(" | ")[0] for c in drawn[0]] == ["a red circle"] * 2 + ["a blue square"] * 2
    assert hook.epochs[0]["reward_mean"] == 0.5  # statistics still over all 32 samples


def test_select_grid_indices_deals_prompts_round_robin() -> None:
    # two batches, one prompt each: two samples of each prompt, grouped by prompt
    assert select_grid_indices([["a"] * 16, ["b"] * 16], 4) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # uneven counts: the rarer prompt gives what it has, the others fill the grid
    prompts = [["a", "a", "b", "a"], ["c", "a", "a", "a"]]
    assert select_grid_indices(prompts, 5) == [(0, 0), (0, 1), (0, 3), (0, 2), (1, 0)]
    # fewer samples than max_images: all of them
    assert select_grid_indices([["a", "b"]], 16) == [(0, 0), (0, 1)]
    assert select_grid_indices([], 4) == []
    with pytest.raises(ValueError, match="max_images"):
        select_grid_indices([["a"]], 0)


def test_select_grid_indices_spreads_many_prompts_over_the_epoch() -> None:
    # 8 distinct prompts over 4 batches, 4 images: one each of prompts 0, 2, 4, 6
    prompts = [[f"p{2 * b}", f"p{2 * b + 1}"] for b in range(4)]
    assert select_grid_indices(prompts, 4) == [(0, 0), (1, 0), (2, 0), (3, 0)]


def test_run_summary_shows_the_rewards_own_metadata_means() -> None:
    metrics = [
        {"epoch": 0, "reward_mean": 0.5, "reward_std": 0.1},
        {"epoch": 1, "reward_mean": 0.6, "reward_std": 0.1},
    ]
    hook_epochs = [
        {"epoch": 0, "global_step": 0, "reward_mean": 0.4, "accuracy_mean": 0.25, "iou_mean": 0.5},
        {"epoch": 1, "global_step": 1, "reward_mean": 0.7, "accuracy_mean": 0.75, "iou_mean": 0.6},
    ]
    rows = merge_epoch_means(metrics, hook_epochs)
    # every metadata mean under its own name; the reward mean stays the trainer's
    assert rows[1] == {
        "epoch": 1, "reward_mean": 0.6, "reward_std": 0.1, "accuracy_mean": 0.75, "iou_mean": 0.6,
    }  # fmt: skip
    assert metrics[0] == {"epoch": 0, "reward_mean": 0.5, "reward_std": 0.1}  # not modified
    table = run_table(rows, ("accuracy",), title="t")
    assert [c.header for c in table.columns] == [
        "epoch",
        "reward_mean",
        "reward_std",
        "accuracy_mean",
    ]
    plain = run_table(rows, (), title="t")
    assert [c.header for c in plain.columns] == ["epoch", "reward_mean", "reward_std"]
    # a summary key the reward did not report is left out
    assert len(run_table(rows, ("missing",), title="t").columns) == 3

    orange = np.array([200, 80, 30])
    with_extra = np.asarray(run_curve(rows, ("accuracy",), title="t")).astype(int)
    without = np.asarray(run_curve(rows, (), title="t")).astype(int)
    assert (np.abs(with_extra - orange).sum(-1) < 10).sum() > 20
    assert (np.abs(without - orange).sum(-1) < 10).sum() == 0


# ---------------------------------------------------------------------------------------------
# Videos: frame strips and the animated grid


def _videos(batch: int, frames: int, height: int = 16, width: int = 24) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch, frames, 3, height, width, generator=generator)


def test_strip_frame_indices_are_evenly_spaced() -> None:
    assert strip_frame_indices(5, 8) == [0, 1, 2, 3, 4]
    assert strip_frame_indices(20, 8) == [0, 3, 5, 8, 11, 14, 16, 19]
    assert strip_frame_indices(81, 2) == [0, 80]
    assert strip_frame_indices(81, 1) == [0]
    with pytest.raises(ValueError, match="must be positive"):
        strip_frame_indices(0, 8)


def test_image_grid_shows_each_video_as_a_strip_of_its_frames() -> None:
    videos = _videos(2, 12, height=32, width=40)
    grid = image_grid(videos, ["first video", "second video"], max_frames=4, min_cell=1)
    # one strip per row: 4 frames of 40 px with 2 px between them, 4 px of padding around
    strip_width = 4 * 40 + 3 * 2
    assert grid.width == strip_width + 2 * 4
    pixels = np.asarray(grid)
    chosen = strip_frame_indices(12, 4)
    assert chosen == [0, 4, 7, 11]
    for slot, frame in enumerate(chosen):
        for row, video in enumerate(videos):
            x = 4 + slot * (40 + 2)
            y = 4 + row * (grid.height - 4) // 2
            expected = (video[frame] * 255).round().byte().permute(1, 2, 0).numpy()
            np.testing.assert_array_equal(pixels[y : y + 32, x : x + 40], expected)
    # large frames are area-downscaled to max_frame_side, small ones upscaled to min_cell
    big = image_grid(_videos(1, 3, height=64, width=128), ["v"], max_frame_side=32, min_cell=1)
    assert big.width == 3 * 32 + 2 * 2 + 8
    small = image_grid(_videos(1, 3, height=8, width=8), ["v"])  # min_cell 128: 16x per frame
    assert small.width == 3 * 8 * 16 + 2 * 2 * 16 + 8
    assert fit_video(_videos(1, 2, 64, 128)[0], 32).shape == (2, 3, 16, 32)
    with pytest.raises(ValueError, match="captions"):
        image_grid(videos, ["one"])


def test_hook_writes_strips_and_an_animated_grid_for_videos(tmp_path: Path) -> None:
    logged: list[tuple[str, Any, Any]] = []

    class Tracker:
        name = "aim"  # a tracker with its own image and video logging

        def log_images(self, values: Any, step: int | None = None) -> None:
            logged.append(("images", values, step))

        def log_videos(self, values: Any, step: int | None = None, fps: float = 0.0) -> None:
            logged.append(("videos", values, (step, fps)))

        def log(self, values: Any, step: int | None = None) -> None:
            pass

    videos = _videos(2, 6)
    batch = [videos, ("a red circle", "a blue square"), ({}, {}), torch.tensor([0.2, 0.4]), {}]
    hook = ImageGridHook(tmp_path, max_frames=3, fps=8.0)
    hook([batch], 4, Tracker())
    with Image.open(tmp_path / "epoch_0000.png") as grid:
        assert grid.width == 3 * 24 * 6 + 2 * 2 * 6 + 8  # 3 frames of 24 px upscaled 6x
    with Image.open(tmp_path / "epoch_0000.webp") as animation:
        assert animation.is_animated and animation.n_frames == 6
        assert animation.size == image_grid(videos[:, 0], ["a", "b"]).size  # frame t of each
    assert hook.epochs[0]["reward_mean"] == pytest.approx(0.3)
    assert [kind for kind, _, _ in logged] == ["images", "videos"]
    _, frames, (step, fps) = logged[1]
    assert len(frames["videos"]) == 6 and (step, fps) == (4, 8.0)
    # images still write no animation
    images = [_images(2), ("a", "b"), ({}, {}), torch.tensor([0.0, 1.0]), {}]
    hook([images], 5, None)
    assert (tmp_path / "epoch_0001.png").is_file()
    assert not (tmp_path / "epoch_0001.webp").exists()
    with pytest.raises(ValueError, match="max_frames must be positive"):
        ImageGridHook(tmp_path, max_frames=0)
