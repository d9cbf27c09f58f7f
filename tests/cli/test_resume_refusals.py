"""`ddpo train --ddpo_config.resume_from RUN` refuses what would not continue the run: one line
``ddpo: ...``, exit status 2, before the model loads, and the run folder left byte for byte as
it was.

A flag that changes the run (the model, LoRA, resolution, the flow sampler, the reward and its
models, the prompts) is recorded in each checkpoint and compared as the config is; a damaged
checkpoint file is named, the RNG states included (accelerate's ``load_state`` would skip them
silently); a checkpoint written before the flags were recorded resumes with a warning, and a
prompt setting changed since is named by the prompt function's state.
"""

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ddpo.cli import main
from ddpo.cli_train import RESUMABLE_TRAIN_ARGS, TrainArgs, run_settings

pytestmark = pytest.mark.slow

FLAGS = [
    "--pretrained_model=ddpo-tiny-random",
    "--reward=brightness",
    "--prompts=simple_animals",
    "--prompt_pool=2",
    "--prompt_repeats=2",
    "--ddpo_config.sample_batch_size=2",
    "--ddpo_config.sample_num_batches_per_epoch=1",
    "--ddpo_config.train_batch_size=2",
    "--ddpo_config.sample_num_steps=2",
    "--ddpo_config.save_freq=1",
]
"""A tiny run of the default preset (full UNet, tensorboard logging) with a prompt pool."""

#: One changed value of each flag that changes the run.
RUN_CHANGING: dict[str, list[str]] = {
    "pretrained_model": ["--pretrained_model=ddpo-tiny-shapes"],
    "pretrained_revision": ["--pretrained_revision=v2"],
    "use_lora": ["--use_lora"],
    "lora_rank": ["--use_lora", "--lora_rank=8"],
    "lora_alpha": ["--use_lora", "--lora_alpha=8"],
    "lora_targets": ["--use_lora", "--lora_targets=attention_ff"],
    "resolution": ["--resolution=32"],
    "noise_level": ["--noise_level=0.5"],
    "sde_type": ["--sde_type=cps"],
    "sde_window_size": ["--sde_window_size=2"],
    "sde_window_start": ["--sde_window_start=0"],
    "sde_window_range": ["--sde_window_range", "0", "2"],
    "post_window_solver": ["--post_window_solver=dpmsolver++"],
    "post_window_step_ratio": ["--post_window_step_ratio=0.5"],
    "reward": ["--reward=jpeg_compressibility"],
    "reward_model": ["--reward_model", "clip_score", "someone/clip"],
    "remote_reward_url": ["--remote_reward_url=http://127.0.0.1:9"],
    "prompts": ["--prompts=imagenet_animals"],
    "aesthetic_clip_model": ["--aesthetic_clip_model=someone/clip"],
    "aesthetic_mlp_weights": ["--aesthetic_mlp_weights=someone/mlp"],
    "prompt_repeats": ["--prompt_repeats=3"],
    "prompt_pool": ["--prompt_pool=3"],
    "preference_data": ["--preference_data=prefs.parquet", "--algorithm=dpo"],
    "preference_limit": ["--preference_limit=5"],
}

#: A changed value of every flag that may change on resume, all at once.
FREE = [
    "--reward_device=cpu",
    "--reward_batch_size=4",
    "--remote_reward_token=secret",
    "--remote_reward_timeout=5",
    "--hf_user_access_token=hf_none",
    "--grid_images=3",
    "--verbose",
    "--ddpo_config.num_epochs=3",
    "--ddpo_config.log_with=None",
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of one epoch with its checkpoint, written by ``ddpo train`` in a subprocess."""
    run = tmp_path_factory.mktemp("finished") / "run"
    env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "ddpo", "train", *FLAGS, "--ddpo_config.num_epochs=1"]
    result = subprocess.run(
        [*command, f"--ddpo_config.output_dir={run}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


@pytest.fixture(autouse=True)
def _fresh_accelerate_state() -> Iterator[None]:
    """`ddpo train` builds its Accelerator before the model loads: a clean slate after."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Make building a pipeline fail loudly, to prove that the refusal comes first."""
    from ddpo.adapters import DefaultDDPOStableDiffusionPipeline

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(DefaultDDPOStableDiffusionPipeline, "__init__", forbidden)
    capsys.readouterr()


def _resume(run: Path, *extra: str) -> int:
    flags = [*FLAGS, "--ddpo_config.num_epochs=2", f"--ddpo_config.output_dir={run}"]
    return main(["train", *flags, f"--ddpo_config.resume_from={run}", *extra])


def _tree(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder``, a file with the SHA-256 of its bytes."""
    return {
        path.relative_to(folder).as_posix(): (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        )
        for path in sorted(folder.rglob("*"))
    }


def _refused(run: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """Resume with ``extra``: exit 2, one line on stderr, the folder unchanged; the line."""
    before = _tree(run)
    assert _resume(run, *extra) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddpo: "), err
    assert "Traceback" not in err
    assert _tree(run) == before
    return lines[0]


def test_every_flag_is_run_changing_or_free() -> None:
    # A new flag is recorded (refused when changed) until it is listed as free: decide which.
    names = {item.name for item in dataclasses.fields(TrainArgs)}
    assert set(run_settings(TrainArgs(use_lora=True))) == set(RUN_CHANGING)
    assert names == set(RUN_CHANGING) | set(RESUMABLE_TRAIN_ARGS)
    no_lora = run_settings(TrainArgs(use_lora=False))
    assert not {"lora_rank", "lora_alpha", "lora_targets"} & set(no_lora)  # no LoRA, no shape


def test_only_path_flags_are_recorded_as_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume from another folder names the same files; a prompt set or reward named like a
    folder of the current one is still its name."""
    monkeypatch.chdir(tmp_path)
    for name in ("shapes", "brightness", "main", "model"):
        (tmp_path / name).mkdir()
    args = TrainArgs(
        pretrained_model="model", reward="brightness", prompts="shapes", pretrained_revision="main"
    )
    settings = run_settings(args)
    assert settings["pretrained_model"] == str(tmp_path / "model")
    assert (settings["reward"], settings["prompts"], settings["pretrained_revision"]) == (
        "brightness",
        "shapes",
        "main",
    )


@pytest.mark.parametrize("name", list(RUN_CHANGING))
def test_a_changed_run_flag_is_refused(
    name: str, run: Path, capsys: pytest.CaptureFixture[str], no_model_loading: None
) -> None:
    line = _refused(run, capsys, *RUN_CHANGING[name])
    if name == "preference_data":  # it needs --algorithm dpo: the changed config is named first
        assert "with a changed config: algorithm: 'ddpo' -> 'dpo'" in line
    else:
        assert "with changed ddpo train flags: " in line and f"--{name}: " in line
    assert "resume_allow_config_changes=True" in line


def test_a_changed_config_field_is_refused(
    run: Path, capsys: pytest.CaptureFixture[str], no_model_loading: None
) -> None:
    line = _refused(run, capsys, "--ddpo_config.train_learning_rate=0.5")
    assert "with a changed config: train_learning_rate: 0.0001 -> 0.5" in line


def test_free_flags_and_allowed_changes_pass(run: Path, no_model_loading: None) -> None:
    # Past every check, the run goes on to load the model (which this test forbids).
    with pytest.raises(AssertionError, match="the model was loaded"):
        _resume(run, *FREE)
    allow = "--ddpo_config.resume_allow_config_changes"
    with pytest.raises(AssertionError, match="the model was loaded"):
        _resume(run, "--reward=jpeg_compressibility", "--resolution=32", allow)


def _checkpoint(run: Path) -> Path:
    return run / "checkpoints" / "checkpoint_1"


def _rehash(folder: Path, name: str) -> None:
    """Record ``name``'s current bytes in the marker, as if it had been written so (a file
    damaged before the checkpoint was finalised, or a marker without a file list)."""
    marker = folder / "ddpo_checkpoint.json"
    data = json.loads(marker.read_text())
    digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    data["files"][name] = {"size": (folder / name).stat().st_size, "sha256": digest}
    marker.write_text(json.dumps(data))


def test_a_damaged_checkpoint_file_is_named(
    run: Path, capsys: pytest.CaptureFixture[str], no_model_loading: None
) -> None:
    weights = _checkpoint(run) / "trainable_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert f"{weights} is truncated or changed" in _refused(run, capsys)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "garbage recorded"])
def test_a_damaged_rng_state_file_is_named(
    damage: str, run: Path, capsys: pytest.CaptureFixture[str], no_model_loading: None
) -> None:
    rng = _checkpoint(run) / "random_states_0.pkl"
    data = rng.read_bytes()
    if damage == "truncated":
        rng.write_bytes(data[: len(data) // 2])
    else:
        rng.write_bytes(bytes(255 - b for b in data))  # same size, every byte changed
    if damage == "garbage recorded":  # the hashes match: only reading the file finds it
        _rehash(_checkpoint(run), rng.name)
    line = _refused(run, capsys)
    assert str(rng) in line and "damaged; resume from an earlier checkpoint" in line


def _as_written_before_the_flags_were_recorded(folder: Path) -> None:
    (folder / "run_settings.json").unlink()
    marker = folder / "ddpo_checkpoint.json"
    data = json.loads(marker.read_text())
    del data["files"]["run_settings.json"]
    marker.write_text(json.dumps(data))


def test_an_older_checkpoint_resumes_with_a_warning_and_names_a_changed_prompt_setting(
    run: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    no_model_loading: None,
) -> None:
    _as_written_before_the_flags_were_recorded(_checkpoint(run))
    with (
        caplog.at_level(logging.WARNING, logger="ddpo.trainer.checkpoint"),
        pytest.raises(AssertionError, match="the model was loaded"),
    ):
        _resume(run)
    assert "written before run settings were recorded" in caplog.text
    # The prompt function's saved state names what changed, before the model loads.
    line = _refused(run, capsys, "--prompt_pool=0")
    assert "the prompt function's state in" in line and "state lacks" not in line
    assert "a fixed pool of 2 prompts (prompt_pool=2), but this function draws fresh" in line
    line = _refused(run, capsys, "--prompts=imagenet_animals")
    assert "(prompts='simple_animals' then, 'imagenet_animals' now)" in line
