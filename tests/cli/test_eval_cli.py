"""``ddpo eval``: a fine-tuned folder against its base on held-out prompts, in process."""

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from ddpo import DefaultDDPOStableDiffusionPipeline
from ddpo.cli import main

pytestmark = pytest.mark.slow

FAST = ["--num_prompts", "4", "--num_inference_steps", "3", "--batch_size", "4"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ddpo-tiny-shapes`` with its LoRA adapters moved, saved as a run's ``final/`` is."""
    torch.manual_seed(0)
    pipeline = DefaultDDPOStableDiffusionPipeline("ddpo-tiny-shapes", use_lora=True)
    with torch.no_grad():
        for name, param in pipeline.denoiser.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    folder = tmp_path_factory.mktemp("run") / "final"
    pipeline.save_pretrained(str(folder))
    return folder


def test_a_fine_tuned_folder_is_compared_with_its_base(
    tuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(tuned), "--base", "ddpo-tiny-shapes", "--out", str(out)]
    assert main([*argv, *FAST, "--grid_images", "4"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["name"] == str(tuned) and report["base"]["name"] == "ddpo-tiny-shapes"
    assert report["model"]["prompts"] == report["base"]["prompts"]
    assert len(report["model"]["prompts"]) == 4
    assert {"alignment", "alignment/accuracy"} <= set(report["model"]["metrics"])
    for name, diff in report["difference"].items():
        model, base = report["model"]["per_prompt"][name], report["base"]["per_prompt"][name]
        assert diff["mean"] == pytest.approx(sum(model) / 4 - sum(base) / 4)
        assert diff["low"] <= diff["mean"] <= diff["high"]
        assert diff["significant"] == (diff["low"] > 0 or diff["high"] < 0)
    assert report["difference"]["alignment"]["mean"] != 0  # the adapters changed the images
    table = capsys.readouterr().out
    assert "4 prompts (shapes_heldout), 1 image(s) each, deterministic sampler" in table
    assert "alignment: " in table and "difference" in table
    with Image.open(out / "grid.png") as grid:
        assert grid.size[0] > 0
    # The same again into the same folder is refused: nothing is overwritten.
    assert main([*argv, *FAST]) == 2
    assert "already holds a report.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--prompts", "nowhere.txt"], "prompts must be one of .* or a text file, got 'nowhere"),
        (["--images_per_prompt", "0"], "images_per_prompt must be a positive int, got 0"),
        (["--num_prompts", "500"], "num_prompts=500 is more than the 168 prompts"),
        (["--guidance_scale", "nan"], "guidance_scale must be a finite number >= 0, got nan"),
        (["--reward", "nope"], "reward must be one of"),
    ],
)
def test_bad_flags_are_one_line_before_any_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    out = tmp_path / "eval"
    assert main(["eval", "--model", "ddpo-tiny-shapes", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ddpo: ")
    assert re.search(message, err[0]), err[0]
    assert not out.exists()
