"""The opt-in ablation and sweep benchmarks, run once through the runner at the smallest sizes.

Checks the reported structure (every ablation row, in order, with finite positive times; graph
breaks and host syncs; each sweep size and a recommendation among them) and that the runner
leaves both out by default. Never asserts a timing or a speedup.
"""

import itertools
import math
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_sweep  # noqa: E402
import run as bench_run  # noqa: E402

SMALLEST = ["--steps", "2", "--repeats", "1", "--warmup", "1", "--num-batches", "1"]
ROWS = [
    "baseline",
    "+ channels_last",
    "+ prompt_embedding_cache",
    "+ async_reward",
    "+ compile_denoiser",
    "+ sample_cuda_graphs",
]
PHASE_COLUMNS = ("sampling_s", "reward_s", "training_s", "epoch_s", "first_epoch_s", "speedup")

pytestmark = pytest.mark.slow


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def results(
    tmp_path_factory: pytest.TempPathFactory, run_benchmarks: Any
) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench")
    found: dict[str, dict[str, Any]] = run_benchmarks(
        out, ["ablation", "sweep"], *SMALLEST, timeout=900
    )
    return found


def test_ablation_has_every_row_in_order_with_positive_times(
    results: dict[str, dict[str, Any]],
) -> None:
    ablation = results["ablation"]
    assert [row["configuration"] for row in ablation["rows"]] == ROWS
    assert set(PHASE_COLUMNS) <= set(ablation["columns"])
    for row in ablation["rows"]:
        for column in PHASE_COLUMNS:
            assert _positive(row[column]), (column, row)
    # Speedup is the baseline's epoch time over the row's (the baseline's own is 1).
    baseline = ablation["rows"][0]["epoch_s"]
    for row in ablation["rows"]:
        assert row["speedup"] == pytest.approx(baseline / row["epoch_s"])
    assert ablation["summary"]["best"] in ROWS
    assert ablation["settings"]["num_steps"] == 2 and ablation["summary"]["timed_epochs"] == 1


def test_ablation_switches_are_cumulative(results: dict[str, dict[str, Any]]) -> None:
    switches = results["ablation"]["switches"]
    assert list(switches) == ROWS
    assert switches["baseline"] == {}
    for above, below in itertools.pairwise(ROWS):
        assert set(switches[above]) < set(switches[below]), (above, below)
    assert switches["+ sample_cuda_graphs"] == {
        "channels_last": True,
        "prompt_embedding_cache_size": 7,  # PresetPrompts' seven distinct prompts
        "async_reward_computation": True,
        "compile_denoiser": True,
        "sample_cuda_graphs": True,
    }


def test_ablation_reports_the_warmup_epoch_apart(results: dict[str, dict[str, Any]]) -> None:
    ablation = results["ablation"]
    for row in ablation["rows"]:
        epochs = ablation["epoch_metrics"][row["configuration"]]
        assert [e["epoch"] for e in epochs] == [0, 1]  # one warm-up, one timed epoch
        assert row["first_epoch_s"] == epochs[0]["time_epoch_s"]
        assert row["epoch_s"] == epochs[1]["time_epoch_s"]
        assert row["sampling_s"] == epochs[1]["time_sample_s"]


def test_ablation_reports_no_graph_breaks(results: dict[str, dict[str, Any]]) -> None:
    summary = results["ablation"]["summary"]
    for key in ("graph_breaks_sampling_step", "graph_breaks_training_step"):
        assert isinstance(summary[key], int) and not isinstance(summary[key], bool), key
        assert summary[key] == 0, summary["graph_break_reasons"]
    assert summary["graph_break_reasons"] == []


def test_ablation_reports_host_syncs_per_step(results: dict[str, dict[str, Any]]) -> None:
    summary = results["ablation"]["summary"]
    for key in (
        "host_syncs_per_sampling_step",
        "host_syncs_per_training_step",
        "host_syncs_per_epoch",
    ):
        value = summary[key]
        assert isinstance(value, int | float) and math.isfinite(value) and value >= 0, key
    # Per sampling step: the rollout's reads over its 2 steps.
    by_kind = results["ablation"]["host_syncs_by_kind"]
    assert summary["host_syncs_per_sampling_step"] == sum(by_kind["sampling_rollout"].values()) / 2
    assert summary["host_syncs_per_training_step"] == sum(by_kind["training_step"].values())


def test_ablation_mfu_is_a_fraction_of_the_measured_peak(
    results: dict[str, dict[str, Any]],
) -> None:
    summary = results["ablation"]["summary"]
    assert _positive(summary["matmul_peak_tflop_per_s"])
    for row in results["ablation"]["rows"]:
        for column in ("mfu_sampling", "mfu_training"):
            assert _positive(row[column]), (column, row)
        expected = summary["epoch_sampling_tflop"] / row["sampling_s"]
        assert row["mfu_sampling"] == pytest.approx(expected / summary["matmul_peak_tflop_per_s"])


def test_sweep_reports_each_batch_size(results: dict[str, dict[str, Any]]) -> None:
    rows = results["sweep"]["rows"]
    sampling = {row["batch_size"]: row for row in rows if row["phase"] == "sampling"}
    training = {row["batch_size"]: row for row in rows if row["phase"] == "training"}
    assert list(sampling) == [1, 2, 4, 8]  # CPU: no 16
    assert list(training) == [1, 2, 4, 8]
    for size, row in sampling.items():
        assert row["status"] == "ok"
        assert _positive(row["s_per_image"]) and _positive(row["peak_mib"])
        assert row["s_per_image"] == pytest.approx(row["median_s"] / size)
        assert row["images_per_s"] == pytest.approx(size / row["median_s"])
    for size, row in training.items():
        assert _positive(row["s_per_transition"]) and _positive(row["peak_mib"])
        assert row["s_per_transition"] == pytest.approx(row["median_s"] / size)


def test_sweep_recommends_a_measured_size(results: dict[str, dict[str, Any]]) -> None:
    summary = results["sweep"]["summary"]
    rows = results["sweep"]["rows"]
    for phase, unit, key in (
        ("sampling", "s_per_image", "sample"),
        ("training", "s_per_transition", "train"),
    ):
        per_item = {row["batch_size"]: row[unit] for row in rows if row["phase"] == phase}
        best = min(per_item.values())
        assert per_item[summary[f"fastest_{key}_batch"]] == best
        pick = summary[f"recommended_{key}_batch"]
        assert pick in per_item and per_item[pick] <= 1.05 * best
        # No larger size is also within 5 % of the best.
        assert all(per_item[s] > 1.05 * best for s in per_item if s > pick)
        assert f"{key}_batch_size={pick}" in summary["recommendation"]
    assert summary["out_of_memory"] == []


def test_recommend_picks_the_largest_size_within_tolerance() -> None:
    # best 1.00 at 4; 8 is within 5 % (1.04), 16 is not (1.06).
    assert bench_sweep.recommend({1: 2.0, 2: 1.5, 4: 1.0, 8: 1.04, 16: 1.06}) == 8
    assert bench_sweep.recommend({1: 1.0, 2: 1.2}) == 1
    with pytest.raises(ValueError, match="per_item"):
        bench_sweep.recommend({})


def test_runner_leaves_the_opt_in_benchmarks_out_by_default() -> None:
    assert bench_run.OPT_IN == ("ablation", "sweep")
    assert {"ablation", "sweep"} <= set(bench_run.available())
    default = bench_run.parse_args([]).only
    assert set(default) == set(bench_run.available()) - {"ablation", "sweep"}
    assert bench_run.parse_args(["--only", "ablation,sweep"]).only == ["ablation", "sweep"]
