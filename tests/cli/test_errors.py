"""`ddpo` reports a user's mistake in one line and exit status 2, before any model loads; a crash
while training keeps its traceback."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from ddpo.cli import main


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Make building a pipeline fail loudly, to prove that the error comes first."""
    from ddpo.adapters import DefaultDDPOStableDiffusionPipeline

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(DefaultDDPOStableDiffusionPipeline, "__init__", forbidden)
    capsys.readouterr()  # what importing the adapters printed is not the command's output


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ddpo: "), err
    return lines[0]


def test_taken_output_folder_is_reported_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model_loading: None
) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("an earlier run")
    assert main(["train", "--ddpo_config.output_dir", str(taken)]) == 2
    line = _one_line_error(capsys)
    assert str(taken.resolve()) in line and "exists and is not empty" in line
    assert "choose another output_dir" in line


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--ddpo_config.sample_eta", "-1"], "DDPOConfig.sample_eta must be in (0, 1]"),
        (
            ["--ddpo_config.sample_batch_size=3", "--ddpo_config.train_batch_size=2"],
            "DDPOConfig.sample_batch_size (3) must be a multiple of train_batch_size (2)",
        ),
        (["--prompt_repeats", "0"], "prompt_repeats must be positive, got 0"),
        (["--prompt_pool", "-1"], "prompt_pool must be >= 0, got -1"),
        (["--lora_rank", "0"], "lora_rank must be positive, got 0"),
        # non-finite numbers and weights that train on nothing
        (["--noise_level", "inf"], "noise_level must be >= 0 and finite, got inf"),
        (["--noise_level", "nan"], "noise_level must be >= 0 and finite, got nan"),
        (["--remote_reward_timeout", "inf"], "--remote_reward_timeout must be positive and fin"),
        (["--ddpo_config.sample_guidance_scale", "nan"], "sample_guidance_scale must be finite"),
        (["--reward", "jpeg_compressibility:0"], "a term of weight 0 trains on nothing; drop"),
        (["--reward", "brightness:0,jpeg_compressibility:0.0"], "the weight of 'brightness' is 0"),
        (["--reward", "brightness:nan"], "the weight of 'brightness' must be a finite number"),
        (["--reward", "ocr"], "reward='ocr' reads back the quoted text of each prompt"),
    ],
)
def test_bad_values_are_one_line_and_status_2(
    flags: list[str],
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_model_loading: None,
) -> None:
    status = main(["train", *flags, f"--ddpo_config.output_dir={tmp_path / 'run'}"])
    assert status == 2
    assert expected in _one_line_error(capsys)


def test_bad_model_path_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-model"
    status = main(
        ["train", f"--pretrained_model={missing}", f"--ddpo_config.output_dir={tmp_path / 'run'}"]
    )
    assert status == 2
    assert f"{str(missing)!r}: no such model folder" in _one_line_error(capsys)
    status = main(["sample", "--model", str(missing), "--prompt", "a red circle"])
    assert status == 2
    assert str(missing) in _one_line_error(capsys)


def test_tyro_reports_unknown_flags_without_a_traceback(
    capsys: pytest.CaptureFixture[str], no_model_loading: None
) -> None:
    assert main(["train", "--no_such_flag", "1"]) == 2
    err = capsys.readouterr().err
    assert "--no_such_flag" in err and "Traceback" not in err
    assert main(["sample", "--model", "m", "--prompt", "p", "--num_images", "many"]) == 2
    err = capsys.readouterr().err
    assert "many" in err and "Traceback" not in err
    assert main(["train", "--help"]) == 0
    assert "--ddpo_config.sample_eta" in capsys.readouterr().out


@pytest.mark.parametrize("eta", ["-0.5", "1.5", "nan"])
def test_sample_eta_out_of_range_is_one_line(
    eta: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, no_model_loading: None
) -> None:
    argv = ["sample", "--model", "ddpo-tiny-random", "--prompt", "a red circle", "--eta", eta]
    status = main([*argv, "--out", str(tmp_path)])
    assert status == 2
    assert "eta must be in [0, 1]" in _one_line_error(capsys)


@pytest.mark.slow
def test_sample_eta_0_is_deterministic_ddim(tmp_path: Path) -> None:
    def sample(out: Path) -> list[Path]:
        argv = ["sample", "--model", "ddpo-tiny-random", "--prompt", "a red circle"]
        argv += ["--eta", "0", "--num_images", "2", "--num_inference_steps", "3"]
        assert main([*argv, "--out", str(out)]) == 0
        return sorted(out.glob("*.png"))

    first, second = sample(tmp_path / "a"), sample(tmp_path / "b")
    assert [p.name for p in first] == ["00_a-red-circle_000.png", "00_a-red-circle_001.png"]
    assert [p.name for p in second] == [p.name for p in first]
    for a, b in zip(first, second, strict=True):
        with Image.open(a) as image_a, Image.open(b) as image_b:
            assert image_a.mode == "RGB"
            assert image_a.tobytes() == image_b.tobytes()
    with Image.open(first[0]) as one, Image.open(first[1]) as two:
        assert one.tobytes() != two.tobytes()  # two images, not one noise drawn twice


@pytest.mark.slow
def test_a_crash_while_training_keeps_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ddpo.trainer import DDPOTrainer

    def crash(self: object) -> None:
        raise ValueError("boom inside training")

    monkeypatch.setattr(DDPOTrainer, "train", crash)
    with pytest.raises(ValueError, match="boom inside training"):
        main(
            [
                "train",
                "--pretrained_model=ddpo-tiny-random",
                "--reward=brightness",
                "--ddpo_config.log_with=None",
                f"--ddpo_config.output_dir={tmp_path / 'run'}",
            ]
        )


# ---------------------------------------------------------------------------------------------
# The edges: unwritable folders, reward models not available offline, non-finite numbers, zero
# weights, DDIM's eta on a flow model


def _unwritable_folders(tmp_path: Path) -> list[Path]:
    """Folders the user running the tests cannot create: one under a regular file (which fails
    for root too), and, where chmod stops this user's writes, one in a read-only folder."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    folders = [a_file / "run"]
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        (read_only / "probe").mkdir()
    except PermissionError:
        folders.append(read_only / "run")
    else:  # root: chmod does not stop writes, so this folder proves nothing
        (read_only / "probe").rmdir()
    return folders


@pytest.fixture
def unwritable_folders(tmp_path: Path) -> Iterator[list[Path]]:
    folders = _unwritable_folders(tmp_path)
    yield folders
    (tmp_path / "read-only").chmod(0o700)


def test_unwritable_output_folders_are_reported_before_the_model_loads(
    unwritable_folders: list[Path], capsys: pytest.CaptureFixture[str], no_model_loading: None
) -> None:
    for folder in unwritable_folders:
        for flag in ("--ddpo_config.output_dir", "--ddpo_config.logdir"):
            assert main(["train", f"{flag}={folder}"]) == 2
            line = _one_line_error(capsys)
            assert f"{flag}: cannot write the folder {folder}" in line
            assert "Not a directory" in line or "Permission denied" in line
        argv = ["sample", "--model", "ddpo-tiny-shapes", "--prompt", "a red circle"]
        assert main([*argv, "--out", str(folder / "samples")]) == 2
        line = _one_line_error(capsys)
        assert f"--out: cannot write the folder {folder / 'samples'}" in line
        assert not folder.exists()


def test_a_reward_model_not_available_offline_is_named_before_the_model_loads(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_model_loading: None,
) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    out = tmp_path / "run"
    argv = ["train", "--prompts=simple_animals", f"--ddpo_config.output_dir={out}"]
    assert main([*argv, "--reward=brightness,clip_score:0.5"]) == 2
    line = _one_line_error(capsys)
    assert "reward 'clip_score': 'openai/clip-vit-large-patch14' is not a local path" in line
    assert "HF_HUB_OFFLINE" in line
    assert line.endswith("pass a local copy with --reward_model clip_score PATH")
    assert not out.exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1"])
def test_sample_guidance_scale_must_be_finite_and_not_negative(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model_loading: None
) -> None:
    argv = ["sample", "--model", "ddpo-tiny-shapes", "--prompt", "a red circle"]
    assert main([*argv, "--guidance_scale", value, "--out", str(tmp_path / "s")]) == 2
    line = _one_line_error(capsys)
    assert "guidance_scale must be a finite number >= 0 (1: no guidance)" in line
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("family", ["StableDiffusion3Pipeline", "FluxPipeline"])
def test_sample_eta_on_a_flow_model_is_refused_before_loading(
    family: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "flow-model"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": family}))
    argv = ["train", f"--pretrained_model={folder}", "--reward=brightness"]
    argv += ["--prompts=simple_animals", f"--ddpo_config.output_dir={tmp_path / 'run'}"]
    assert main([*argv, "--ddpo_config.sample_eta=0.5"]) == 2
    line = _one_line_error(capsys)
    assert "sample_eta=0.5: sample_eta applies to the DDIM families (SD 1.x/2.x, SDXL)" in line
    assert "use noise_level" in line
    assert not (tmp_path / "run").exists()
