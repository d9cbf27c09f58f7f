"""Smoke test of the benchmark runner: the core benchmark covers every public core function."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import ddpo.core

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_core_benchmark_tiny_preset_writes_a_row_per_function(tmp_path: Path) -> None:
    cmd = [sys.executable, "benchmarks/run.py", "--preset", "tiny", "--only", "core"]
    subprocess.run([*cmd, "--out", str(tmp_path)], cwd=ROOT, check=True, capture_output=True)
    result = json.loads((tmp_path / "core.json").read_text())
    functions = {row["function"] for row in result["rows"]}
    public = {n for n in ddpo.core.__all__ if n[0].islower() and n != "init_per_prompt_stats"}
    assert functions == public
    assert all(row["µs/call"] > 0 and row["µs/call checked"] > 0 for row in result["rows"])
    assert result["meta"]["preset"] == "tiny"


def test_runner_rejects_unknown_benchmarks() -> None:
    out = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--only", "nonexistent"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "nonexistent" in out.stderr
