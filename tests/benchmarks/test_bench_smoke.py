"""Smoke test of the model benchmarks: each runs through the runner at the smallest settings.

Checks that the runner writes one JSON per benchmark with the documented fields, finite and
positive. Never asserts a timing.
"""

import math
import statistics
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALLEST = ["--steps", "2", "--batch-size", "1", "--repeats", "1", "--warmup", "0"]


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def results(
    tmp_path_factory: pytest.TempPathFactory, run_benchmarks: Any
) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench")
    found: dict[str, dict[str, Any]] = run_benchmarks(
        out, ["sampling", "training", "memory", "flops"], *SMALLEST, timeout=600
    )
    # The epoch benchmark runs once, with a warm-up epoch and three timed ones, for both of its
    # tests (one run of the runner less).
    epoch_out = tmp_path_factory.mktemp("bench-epoch")
    warmed = [*SMALLEST[:4], "--repeats", "3", "--warmup", "1"]
    found |= run_benchmarks(epoch_out, ["epoch"], *warmed, timeout=600)
    return found


pytestmark = pytest.mark.slow


def test_every_result_names_its_settings_and_machine(results: dict[str, dict[str, Any]]) -> None:
    for name, result in results.items():
        assert result["name"] == name
        assert result["settings"]["preset"] == "tiny"
        assert result["settings"]["num_steps"] == 2
        assert result["environment"]["torch"]
        assert result["rows"], name


def test_sampling_reports_both_contenders(results: dict[str, dict[str, Any]]) -> None:
    rows = {row["contender"]: row for row in results["sampling"]["rows"]}
    assert set(rows) == {"ddpo", "diffusers"}
    for row in rows.values():
        for field in ("median_s", "images_per_s", "peak_mib", "gflop_per_call", "tflop_per_s"):
            assert _positive(row[field]), (field, row)
    assert _positive(results["sampling"]["summary"]["time_ratio_ours_over_stock"])


def test_training_reports_both_contenders(results: dict[str, dict[str, Any]]) -> None:
    rows = {row["contender"]: row for row in results["training"]["rows"]}
    assert set(rows) == {"ddpo", "bare"}
    for row in rows.values():
        for field in ("median_s", "transitions_per_s", "peak_mib", "gflop_per_step"):
            assert _positive(row[field]), (field, row)
    summary = results["training"]["summary"]
    assert _positive(summary["time_ratio_ours_over_bare"])
    assert summary["trainable_parameters"] > 0


def test_epoch_reports_each_phase(results: dict[str, dict[str, Any]]) -> None:
    rows = {row["phase"]: row for row in results["epoch"]["rows"]}
    for phase in ("sampling", "reward", "advantages", "training", "total"):
        assert phase in rows, sorted(rows)
        assert _positive(rows[phase]["seconds"]), rows[phase]
    assert _positive(rows["total"]["peak_mib"])
    summary = results["epoch"]["summary"]
    assert summary["mode"] == "trainer"
    assert _positive(summary["step_call_wall_s"]) and _positive(summary["step_call_cpu_s"])
    assert (
        summary["samples"]
        == results["epoch"]["settings"]["sample_batch_size"]
        * (results["epoch"]["settings"]["sample_num_batches_per_epoch"])
    )


def test_memory_reports_each_phase(results: dict[str, dict[str, Any]]) -> None:
    rows = {row["phase"]: row for row in results["memory"]["rows"]}
    assert set(rows) == {"load", "sampling", "train_step", "train_step_checkpointed"}
    for row in rows.values():
        assert _positive(row["peak_mib"]), row
        assert row["memory_kind"].startswith("cpu_peak_rss")


def test_flops_budget_adds_up(results: dict[str, dict[str, Any]]) -> None:
    values = {row["quantity"]: row["value"] for row in results["flops"]["rows"]}
    for value in values.values():
        assert _positive(value)
    total = values["epoch_sampling_pflop"] + values["epoch_training_pflop"]
    assert math.isclose(values["epoch_total_pflop"], total, rel_tol=1e-9)
    # A backward pass costs more than a forward pass.
    assert (
        values["unet_fwd_bwd_gflop_per_sample_guided"]
        > values["unet_forward_gflop_per_sample_guided"]
    )


def test_epoch_reports_the_trainers_own_phase_times_after_the_warmup(
    results: dict[str, dict[str, Any]],
) -> None:
    result = results["epoch"]
    logged = result["epoch_metrics"]  # DDPOTrainer's metrics.jsonl rows of the timed epochs
    assert [row["epoch"] for row in logged] == [1, 2, 3]  # epoch 0, the warm-up, left out
    assert result["summary"]["timed_epochs"] == len(result["step_call_seconds"]) == 3
    rows = {row["phase"]: row for row in result["rows"]}
    for phase, key in (
        ("sampling", "time_sample_s"),
        ("reward", "time_reward_s"),
        ("advantages", "time_advantages_s"),
        ("training", "time_train_s"),
        ("total", "time_epoch_s"),
    ):
        values = [row[key] for row in logged]
        assert rows[phase]["seconds"] == statistics.median(values), phase
        assert rows[phase]["min_s"] == min(values), phase
