"""Image grids, the image hook, the reward curve and the epoch table."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpo.reporting import ImageGridHook, epoch_table, image_grid, read_metrics, reward_curve


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
