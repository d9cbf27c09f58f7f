"""`ddpo train`, `ddpo sample` and examples/ddpo.py end to end in subprocesses, tiny settings."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--pretrained_model=ddpo-tiny-random",
    "--ddpo_config.num_epochs=1",
    "--ddpo_config.sample_batch_size=2",
    "--ddpo_config.sample_num_batches_per_epoch=1",
    "--ddpo_config.train_batch_size=2",
    "--ddpo_config.train_gradient_accumulation_steps=1",
    "--ddpo_config.sample_num_steps=2",
    "--ddpo_config.train_timestep_fraction=1.0",
]


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        **env,
    }
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environ,
        timeout=600,
    )


def test_train_writes_the_run_folder_then_reports_the_unreachable_hub(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _run(
        [
            "-m",
            "ddpo",
            "train",
            *TINY,
            "--reward=jpeg_compressibility",
            "--prompts=simple_animals",
            f"--ddpo_config.output_dir={out}",
            "--ddpo_config.push_to_hub",
            "--ddpo_config.hub_model_id=someone/tiny-ddpo",
            "--hf_user_access_token=hf_not_a_real_token",
        ],
        tmp_path,
        HF_ENDPOINT="http://127.0.0.1:9",
    )
    # 1. The upload fails, saying so and where the local files are.
    assert result.returncode == 1, result.stderr[-3000:]
    assert "could not upload" in result.stderr and "Hugging Face Hub" in result.stderr
    assert "127.0.0.1:9" in result.stderr
    assert str(out / "final") in result.stderr.replace("\n", "")
    # 2. Everything was saved before the upload.
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0]
    assert metrics[0]["reward_mean"] < 0  # minus a JPEG size
    with Image.open(out / "images" / "epoch_0000.png") as grid:
        assert grid.width > 64 and grid.height > 64
    with Image.open(out / "reward_curve.png") as curve:
        assert curve.size == (640, 400)
    assert (out / "final" / "model_index.json").is_file()
    assert (out / "final" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert list((out / "logs").rglob("events.out.tfevents.*")), "no tensorboard event file"
    assert "reward_mean" in result.stdout  # the closing table

    # 3. `ddpo sample` draws from the fine-tuned folder.
    samples = tmp_path / "samples"
    result = _run(
        [
            "-m",
            "ddpo",
            "sample",
            "--model",
            str(out / "final"),
            "--prompt",
            "a cat",
            "a dog",
            "--num-images",
            "2",
            "--num_inference_steps=2",
            "--out",
            str(samples),
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    pngs = sorted(samples.glob("*.png"))
    assert [p.name for p in pngs] == [
        "00_a-cat_000.png",
        "00_a-cat_001.png",
        "01_a-dog_000.png",
        "01_a-dog_001.png",
    ]
    with Image.open(pngs[0]) as image:
        assert image.mode == "RGB"


def test_example_script_runs(tmp_path: Path) -> None:
    out = tmp_path / "example"
    result = _run(
        [
            str(ROOT / "examples" / "ddpo.py"),
            *TINY,
            "--reward=brightness",
            "--prompts=nouns_activities",
            "--use_lora",
            f"--ddpo_config.output_dir={out}",
            "--ddpo_config.log_with=None",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch 0: reward_mean" in result.stdout
    assert (out / "metrics.jsonl").is_file()
    assert list((out / "images").glob("step_*.png"))
    assert (out / "reward_curve.png").is_file()
    assert (out / "final" / "model_index.json").is_file()
    assert (out / "sample_from_final.png").is_file()


def test_sdxl_is_picked_from_model_index_for_train_and_sample(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _run(
        [
            "-m",
            "ddpo",
            "train",
            *TINY,
            "--pretrained_model=ddpo-tiny-sdxl-random",  # overrides TINY's SD model
            "--resolution=32",
            "--reward=brightness",
            "--prompts=simple_animals",
            f"--ddpo_config.output_dir={out}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    index = json.loads((out / "final" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert (out / "final" / "text_encoder_2" / "config.json").is_file()
    with Image.open(out / "images" / "epoch_0000.png") as grid:
        assert grid.width > 32
    samples = tmp_path / "samples"
    result = _run(
        ["-m", "ddpo", "sample", "--model", str(out / "final"), "--prompt", "a cat",
         "--num-images", "1", "--num_inference_steps=2", "--out", str(samples)],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (png,) = samples.glob("*.png")
    with Image.open(png) as image:  # the saved folder's native size: the tiny SDXL's 64 px
        assert image.size == (64, 64)


def test_a_folder_of_another_family_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "kandinsky"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    result = _run(
        ["-m", "ddpo", "train", *TINY, f"--pretrained_model={folder}",
         f"--ddpo_config.output_dir={tmp_path / 'run'}"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "'KandinskyV22Pipeline' model" in result.stderr
    assert "StableDiffusionXLPipeline" in result.stderr


def test_flow_models_train_with_a_window_and_sample(tmp_path: Path) -> None:
    """A flow model through ``ddpo train`` (its SDE flags) and ``ddpo sample`` (the ODE and the
    SDE policy), on SD3. FLUX takes the same command-line path: its family is read from the
    folder like SD3's, and its saved folders load and sample in `test_conformance.py`."""
    model = "ddpo-tiny-sd3-random"
    out = tmp_path / "run"
    result = _run(
        [
            "-m",
            "ddpo",
            "train",
            *TINY,
            f"--pretrained_model={model}",  # overrides TINY's SD model
            "--noise_level=0.8",
            "--sde_window_size=1",
            "--ddpo_config.no_train_cfg",
            "--ddpo_config.kl_coef=0.05",
            "--reward=brightness",
            "--prompts=simple_animals",
            f"--ddpo_config.output_dir={out}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "kl" in metrics[0]
    index = json.loads((out / "final" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    samples = tmp_path / "samples"
    for eta in ("0", "1"):  # the ODE, then the SDE policy
        result = _run(
            ["-m", "ddpo", "sample", "--model", str(out / "final"), "--prompt", "a cat",
             "--num-images", "1", "--num_inference_steps=2", f"--eta={eta}",
             "--out", str(samples / eta)],
            tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(list((samples / eta).glob("*.png"))) == 1


def test_ocr_trains_on_the_text_rendering_prompts(tmp_path: Path) -> None:
    """The README's OCR run, on the tiny model for one tiny epoch."""
    pytest.importorskip("rapidocr")
    out = tmp_path / "run"
    result = _run(
        ["-m", "ddpo", "train", *TINY, "--reward=ocr", "--prompts=text_rendering",
         "--ddpo_config.log_with=None", f"--ddpo_config.output_dir={out}"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert 0.0 <= metrics["reward_mean"] <= 1.0  # 1 - normalised edit distance
    assert (out / "final" / "model_index.json").is_file()
