"""The flow presets through the runner (tiny SD3 and FLUX.1 on CPU, smallest sizes): sampling
against stock diffusers, training against the bare loop, the window benchmark."""

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALLEST = ["--steps", "2", "--batch-size", "1", "--repeats", "1", "--warmup", "0"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["tiny-sd3", "tiny-flux"])
def results(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    out = tmp_path_factory.mktemp(request.param)
    command = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--preset", request.param]
    command += ["--device", "cpu", "--only", "sampling,training,window", "--out", str(out)]
    done = subprocess.run(
        [*command, *SMALLEST], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found: dict[str, Any] = {
        name: json.loads((out / f"{name}.json").read_text())
        for name in ("sampling", "training", "window")
    }
    found["preset"] = request.param
    return found


def test_ode_limit_matches_stock_and_the_sde_records_its_window(results: dict[str, Any]) -> None:
    summary = results["sampling"]["summary"]
    stock = {"tiny-sd3": "StableDiffusion3Pipeline", "tiny-flux": "FluxPipeline"}
    assert summary["stock"] == stock[results["preset"]]
    assert summary["max_abs_image_diff"] <= 1e-4  # our ODE = stock Euler, same generator
    assert summary["sde_vs_stock_max_abs_image_diff"] > 1e-3  # the SDE draws its own noise
    assert summary["sde_transitions_per_rollout"] == 2
    assert {row["contender"] for row in results["sampling"]["rows"]} == {
        "ddpo_ode",
        "ddpo_sde",
        "diffusers",
    }


def test_training_does_the_bare_loops_work(results: dict[str, Any]) -> None:
    rows = {row["contender"]: row for row in results["training"]["rows"]}
    # the same transformer forward/backward and KL reference forward: equal dense FLOPs
    assert math.isclose(
        rows["ddpo"]["gflop_per_step"], rows["bare"]["gflop_per_step"], rel_tol=0.02
    )
    assert results["training"]["summary"]["trainable_parameters"] > 0


def test_window_benchmark_times_one_trainer_per_window(results: dict[str, Any]) -> None:
    rows = results["window"]["rows"]
    assert [row["window"] for row in rows] == ["2 of 2", "1 of 2"]
    assert [row["expected_k_over_t"] for row in rows] == [1.0, 0.5]
    assert all(row["training_s"] > 0 and row["sampling_s"] > 0 for row in rows)
    epochs = results["window"]["epoch_metrics"]
    assert set(epochs) == {"2", "1"} and all(len(rows) == 1 for rows in epochs.values())
