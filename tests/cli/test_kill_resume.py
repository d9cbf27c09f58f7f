"""`ddpo train` killed with SIGKILL and resumed ends where an uninterrupted run ends.

The run's prompt functions (fresh prompts per group with ``--prompt_pool 0``, each repeated)
keep state that only a checkpoint can carry; before it did, the resumed run trained its next
epoch on other prompts and every UNet tensor differed.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

pytestmark = pytest.mark.slow

FLAGS = [
    "--pretrained_model",
    "ddpo-tiny-random",
    "--prompt_pool",
    "0",
    "--prompt_repeats",
    "2",
    "--reward",
    "brightness",
    "--prompts",
    "simple_animals",
    "--ddpo_config.num_epochs",
    "4",
    "--ddpo_config.sample_batch_size",
    "4",
    "--ddpo_config.sample_num_batches_per_epoch",
    "2",
    "--ddpo_config.train_batch_size",
    "2",
    "--ddpo_config.save_freq",
    "1",
    "--ddpo_config.sample_num_steps",
    "3",
    "--ddpo_config.log_with",
    "None",
]


def _command(output_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ddpo.cli",
        "train",
        *FLAGS,
        "--ddpo_config.output_dir",
        str(output_dir),
        *extra,
    ]


def _env() -> dict[str, str]:
    env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("DDPO_TYPECHECK", None)
    return env


def _unet(run: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(
        str(run / "final" / "unet" / "diffusion_pytorch_model.safetensors")
    )


def test_kill_during_a_checkpoint_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    full = tmp_path / "full"
    subprocess.run(_command(full), check=True, env=_env(), capture_output=True, timeout=900)

    # Killed with SIGKILL as soon as checkpoint 2 is being written (or, if that write is too quick
    # to catch, right after it): checkpoint 1 or 2 is the newest complete one.
    run = tmp_path / "run"
    process = subprocess.Popen(
        _command(run), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoints = run / "checkpoints"
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and process.poll() is None:
            names = {p.name for p in checkpoints.iterdir()} if checkpoints.is_dir() else set()
            if ".tmp-checkpoint_2" in names or "checkpoint_2" in names:
                break
            time.sleep(0.005)
        else:
            pytest.fail("the run ended or stalled before its second checkpoint")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (run / "final").exists()

    resumed = subprocess.run(
        _command(run, "--ddpo_config.resume_from", str(run)),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]  # no row twice after the resume
    assert [r["reward_mean"] for r in rows] == [r["reward_mean"] for r in reference]
    weights, expected = _unet(run), _unet(full)
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
