"""The sampling and training steps of every model family trace into one graph each: nothing in
them reads values on the host (the `compile_denoiser` switch's premise, `test_speed.py`)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .test_speed import FAMILIES, MODELS

GRAPH_BREAKS_WORKER = Path(__file__).with_name("graph_breaks_worker.py")


@pytest.fixture(scope="module")
def graph_breaks() -> dict[str, Any]:
    """Every family's graph-break report, counted in one fresh interpreter, as a user runs (the
    suite's type-checking wrappers are not traceable)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(GRAPH_BREAKS_WORKER), *MODELS],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.slow
@FAMILIES
def test_sampling_and_training_steps_have_no_graph_breaks(
    model: str, graph_breaks: dict[str, Any]
) -> None:
    """The step's whole computation (denoiser with guidance, DDIM/flow step with log-prob, PPO
    loss and KL) traces into one graph: nothing in it reads values on the host."""
    for name in ("sampling", "training"):
        report = graph_breaks[model][name]
        assert report["breaks"] == 0, (name, report["reasons"])
        assert report["graphs"] == 1, name
