"""Shared fixtures of the benchmark tests."""

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RunBenchmarks = Callable[..., dict[str, dict[str, Any]]]


@pytest.fixture(scope="session")
def run_benchmarks() -> RunBenchmarks:
    """``run_benchmarks(out, names, *args, timeout=...)``: ``benchmarks/run.py --preset tiny
    --device cpu --only <names> --out <out> <args>`` in a subprocess; each benchmark's JSON."""

    def run(out: Path, names: list[str], *args: str, timeout: int = 600) -> dict[str, Any]:
        command = [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--only",
            ",".join(names),
            "--out",
            str(out),
            *args,
        ]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        found = {}
        for name in names:
            path = out / f"{name}.json"
            assert path.is_file(), f"{path} missing; runner output:\n{done.stdout[-2000:]}"
            found[name] = json.loads(path.read_text())
        return found

    return run
