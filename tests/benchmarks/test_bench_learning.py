"""The learning benchmark's summary, table and plot, on recorded points (its runs are the
benchmark itself: `benchmarks/bench_learning.py`, results in `benchmarks/RESULTS.md`)."""

import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_learning  # noqa: E402


def _point(epoch: int, reward: float, accuracy: float, half: float) -> dict[str, Any]:
    point: dict[str, Any] = {"epoch": epoch, "samples": 128 * epoch, "train_s": 10.0 * epoch}
    for name, value in (("eval/reward", reward), ("eval/reward/accuracy", accuracy)):
        point |= {name: value, f"{name}_low": value - half, f"{name}_high": value + half}
    return point


def _run(seed: int, rewards: list[float], accuracies: list[float]) -> dict[str, Any]:
    pairs = enumerate(zip(rewards, accuracies, strict=True))
    points = [_point(3 * i, r, a, 0.01) for i, (r, a) in pairs]
    return {"seed": seed, "points": points}


def test_the_change_is_judged_per_seed_and_across_seeds() -> None:
    runs = [
        _run(0, [0.60, 0.62, 0.65], [0.40, 0.45, 0.50]),
        _run(1, [0.55, 0.56, 0.59], [0.30, 0.30, 0.31]),
        _run(2, [0.70, 0.71, 0.74], [0.50, 0.49, 0.52]),
    ]
    summary = bench_learning.summarize(runs)
    first = summary["per_seed"][0]["eval/reward"]
    assert first == {
        "before": 0.60, "after": 0.65, "change": pytest.approx(0.05), "after_half_width":
        pytest.approx(0.01), "beyond_interval": True,
    }  # fmt: skip
    assert not summary["per_seed"][1]["eval/reward/accuracy"]["beyond_interval"]  # +0.01 only
    # the reward rose by 0.04 to 0.05 in every seed: beyond the seed-to-seed spread
    across = summary["across_seeds"]["eval/reward"]
    assert across["mean_change"] == pytest.approx(0.04333, abs=1e-4) and across["low"] > 0
    assert across["exceeds_seed_spread"]
    # accuracy: +0.10, +0.01, +0.02: the spread over three seeds includes 0
    assert not summary["across_seeds"]["eval/reward/accuracy"]["exceeds_seed_spread"]
    text = bench_learning.table(summary)
    assert "eval/reward | 0 | 0.6000 | 0.6500 | +0.0500 | 0.0100 | True" in text
    assert "exceeds the seed spread: True" in text


def test_one_seed_has_no_spread_to_exceed_and_the_plot_is_written(tmp_path: Path) -> None:
    runs = [_run(4, [0.6, 0.7], [0.4, 0.6])]
    summary = bench_learning.summarize(runs)
    assert not summary["across_seeds"]["eval/reward"]["exceeds_seed_spread"]
    bench_learning.plot(runs, tmp_path / "learning.png")
    with Image.open(tmp_path / "learning.png") as image:
        assert image.size == (1040, 720)
        assert len(image.getcolors(maxcolors=4096) or []) > 2  # axes, lines and labels drawn


def test_a_differentiable_rewards_exact_score_is_summarised_and_plotted(tmp_path: Path) -> None:
    """`draft_tiny`'s evaluations report the exact alignment reward (``eval/reward/exact``)
    beside the differentiable form's: it is judged like the others where every point has it."""
    runs = [_run(0, [0.60, 0.62], [0.4, 0.5]), _run(1, [0.55, 0.57], [0.3, 0.3])]
    assert bench_learning.metrics_of(runs) == bench_learning.METRICS
    for run, exact in zip(runs, ([0.50, 0.58], [0.45, 0.44]), strict=True):
        for point, value in zip(run["points"], exact, strict=True):
            point |= {bench_learning.EXACT: value}
            point |= {f"{bench_learning.EXACT}_low": value - 0.01}
            point |= {f"{bench_learning.EXACT}_high": value + 0.01}
    summary = bench_learning.summarize(runs)
    assert summary["per_seed"][0][bench_learning.EXACT]["change"] == pytest.approx(0.08)
    assert summary["per_seed"][1][bench_learning.EXACT]["change"] == pytest.approx(-0.01)
    assert "eval/reward/exact | mean over seeds | | | +0.0350" in bench_learning.table(summary)
    bench_learning.plot(runs, tmp_path / "learning.png")
    assert (tmp_path / "learning.png").is_file()
