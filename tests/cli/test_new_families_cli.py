"""Qwen-Image and Wan2.1 through ``ddpo train`` and ``ddpo sample`` (in process): the family is
read from the folder, a video model trains on a video reward (an image reward scored per frame
plus ``temporal_consistency``), writes frame strips and animated WebP files, and a resumed run
ends where an uninterrupted one does."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import safetensors.torch
from PIL import Image

from ddpo.cli import main

pytestmark = pytest.mark.slow

TINY = [
    "--ddpo_config.sample_batch_size=2",
    "--ddpo_config.sample_num_batches_per_epoch=1",
    "--ddpo_config.train_batch_size=2",
    "--ddpo_config.train_gradient_accumulation_steps=1",
    "--ddpo_config.sample_num_steps=2",
    "--ddpo_config.train_timestep_fraction=1.0",
    "--ddpo_config.mixed_precision=no",
    "--ddpo_config.log_with=None",
    "--ddpo_config.save_freq=1",
    "--prompts=simple_animals",
    "--prompt_repeats=2",
    "--use_lora",
]


@pytest.fixture(autouse=True)
def _fresh_accelerate_state() -> Iterator[None]:
    yield
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def _train(model: str, reward: str, output: Path, epochs: int, *extra: str) -> None:
    status = main(["train", *TINY, f"--pretrained_model={model}", f"--reward={reward}",
                   f"--ddpo_config.num_epochs={epochs}",
                   f"--ddpo_config.output_dir={output}", *extra])  # fmt: skip
    assert status == 0


def _transformer(run: Path) -> dict[str, object]:
    """The final pipeline's transformer weights (the LoRA merged in)."""
    weights = run / "final" / "transformer" / "diffusion_pytorch_model.safetensors"
    return dict(safetensors.torch.load_file(str(weights)))


def test_wan_trains_on_a_video_reward_resumes_exactly_and_samples_webp(tmp_path: Path) -> None:
    model, reward = "ddpo-tiny-wan-random", "brightness:1,temporal_consistency:0.5"
    _train(model, reward, tmp_path / "full", 2)
    _train(model, reward, tmp_path / "resumed", 1)
    _train(model, reward, tmp_path / "once", 1)  # what the resumed run's second epoch changes
    _train(model, reward, tmp_path / "resumed", 2,
           f"--ddpo_config.resume_from={tmp_path / 'resumed'}")  # fmt: skip
    full, resumed = _transformer(tmp_path / "full"), _transformer(tmp_path / "resumed")
    once = _transformer(tmp_path / "once")
    assert full.keys() == resumed.keys() and full
    assert any(bool((full[k] != once[k]).any()) for k in full)  # type: ignore[attr-defined]
    assert all(bool((full[k] == resumed[k]).all()) for k in full)  # type: ignore[attr-defined]
    with Image.open(tmp_path / "full" / "images" / "epoch_0000.webp") as video:
        assert video.n_frames == 5  # the tiny Wan's frames
    samples = tmp_path / "samples"
    status = main(["sample", "--model", str(tmp_path / "full" / "final"), "--prompt", "a cat",
                   "--num-images", "1", "--num_inference_steps=2",
                   "--out", str(samples)])  # fmt: skip
    assert status == 0
    (webp,) = samples.glob("*.webp")
    with Image.open(webp) as video:
        assert video.n_frames == 5


def test_qwenimage_is_read_from_its_folder_trains_and_samples(tmp_path: Path) -> None:
    _train("ddpo-tiny-qwenimage-random", "brightness", tmp_path / "run", 1,
           "--ddpo_config.sample_guidance_scale=4.0")  # fmt: skip
    assert _transformer(tmp_path / "run")
    samples = tmp_path / "samples"
    status = main(["sample", "--model", str(tmp_path / "run" / "final"), "--prompt", "a cat",
                   "--num-images", "1", "--num_inference_steps=2",
                   "--out", str(samples)])  # fmt: skip
    assert status == 0
    (png,) = samples.glob("*.png")
    with Image.open(png) as image:
        assert image.size == (64, 64)
