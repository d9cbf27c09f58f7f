"""`ddpo train` and `ddpo sample` do not greet the user with harmless third-party warnings."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

#: Messages that used to be printed at start-up (or at save) and say nothing to the user.
HARMLESS = (
    "requires torchvision",
    "should be kept in float32",
    "disabled the safety checker",
)


def _ddpo(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run(
        [sys.executable, "-m", "ddpo", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def _warning_lines(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "warning" in line.lower() or any(text in line for text in HARMLESS)
    ]


def test_sample_prints_no_warnings(tmp_path: Path) -> None:
    result = _ddpo(
        [
            "sample",
            "--model",
            "ddpo-tiny-shapes",
            "--prompt",
            "a red circle",
            "--num_images",
            "2",
            "--num_inference_steps",
            "5",
            "--out",
            str(tmp_path / "samples"),
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "samples").glob("*.png"))) == 2
    assert _warning_lines(result.stderr) == []


def test_train_prints_no_warnings(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _ddpo(
        [
            "train",
            "--ddpo_config.num_epochs=1",
            "--ddpo_config.sample_batch_size=2",
            "--ddpo_config.sample_num_batches_per_epoch=1",
            "--ddpo_config.train_batch_size=2",
            "--ddpo_config.log_with=None",
            "--prompt_repeats=2",
            f"--ddpo_config.output_dir={out}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "final" / "model_index.json").is_file()
    assert _warning_lines(result.stderr) == []
