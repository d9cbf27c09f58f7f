"""`ddpo train` and `ddpo sample` do not greet the user with harmless third-party warnings, nor
with the libraries' loading progress bars (unless `--verbose`)."""

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

#: The progress bars of diffusers (loading a pipeline), transformers (loading and saving weights)
#: and huggingface_hub that every model build used to print, several per run.
LIBRARY_BARS = ("Loading pipeline components", "Loading weights", "Writing model shards")


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


def _bars(output: str) -> list[str]:
    return [bar for bar in LIBRARY_BARS if bar in output]


SAMPLE = ["sample", "--model", "ddpo-tiny-shapes", "--prompt", "a red circle", "--num_images", "1"]


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
    assert _bars(result.stderr + result.stdout) == []


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
    assert _bars(result.stderr + result.stdout) == []


def test_verbose_shows_the_bars_and_main_restores_the_settings(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging
    from huggingface_hub.utils.tqdm import are_progress_bars_disabled

    from ddpo.cli import main

    def settings() -> tuple[bool, bool, bool, int, int]:
        return (
            diffusers_logging.is_progress_bar_enabled(),
            transformers_logging.is_progress_bar_enabled(),
            are_progress_bars_disabled(),
            diffusers_logging.get_verbosity(),
            transformers_logging.get_verbosity(),
        )

    before = settings()
    steps = ["--num_inference_steps", "2"]
    assert main([*SAMPLE, *steps, "--out", str(tmp_path / "quiet")]) == 0
    quiet = capfd.readouterr()
    assert _bars(quiet.err + quiet.out) == []
    assert settings() == before  # the Python API's settings are the user's again
    assert main([*SAMPLE, *steps, "--verbose", "--out", str(tmp_path / "verbose")]) == 0
    verbose = capfd.readouterr()
    assert "Loading pipeline components" in verbose.err
    assert settings() == before
