"""Checkpoint folders: atomic finalisation, discovery, pruning, resume resolution (fast)."""

import json
import logging
import os
import random
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ddpo.trainer import checkpoint as ckpt
from ddpo.trainer.run_state import policy_settings


def _write(run: Path, epoch: int, *, step: int = 0) -> Path:
    tmp = ckpt.prepare_tmp_dir(run, epoch)
    (tmp / "payload.bin").write_bytes(b"x" * 10)
    return ckpt.finalize_checkpoint(tmp, epoch=epoch, global_step=step)


def test_finalize_renames_and_marks(tmp_path: Path) -> None:
    final = _write(tmp_path, 3, step=12)
    assert final == tmp_path / "checkpoints" / "checkpoint_3"
    assert not ckpt.tmp_checkpoint_dir(tmp_path, 3).exists()
    marker = json.loads((final / ckpt.MARKER_FILENAME).read_text())
    assert marker["epoch"] == 3 and marker["global_step"] == 12
    info = ckpt.read_marker(final)
    assert info is not None and (info.epoch, info.global_step) == (3, 12)


def test_half_written_folders_are_never_taken(tmp_path: Path) -> None:
    _write(tmp_path, 1)
    folder = tmp_path / "checkpoints"
    # a crash while writing checkpoint 2: the temporary folder stays behind
    (folder / ".tmp-checkpoint_2").mkdir()
    (folder / ".tmp-checkpoint_2" / "optimizer.bin").write_bytes(b"partial")
    # a folder with the right name but no marker (e.g. copied by hand, interrupted)
    (folder / "checkpoint_3").mkdir()
    # a marker that is not JSON
    (folder / "checkpoint_4").mkdir()
    (folder / "checkpoint_4" / ckpt.MARKER_FILENAME).write_text("{trunc")
    assert [c.epoch for c in ckpt.list_checkpoints(tmp_path)] == [1]
    info, run = ckpt.resolve_resume(str(tmp_path))
    assert info.epoch == 1 and run == tmp_path
    with pytest.raises(FileNotFoundError, match="incomplete checkpoint"):
        ckpt.resolve_resume(str(folder / "checkpoint_3"))
    # a stale temporary folder is replaced when that checkpoint is written again
    _write(tmp_path, 2)
    assert [c.epoch for c in ckpt.list_checkpoints(tmp_path)] == [1, 2]
    assert not (folder / "checkpoint_2" / "optimizer.bin").exists()


def test_never_overwrites_a_checkpoint(tmp_path: Path) -> None:
    _write(tmp_path, 1)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        ckpt.prepare_tmp_dir(tmp_path, 1)


def test_prune_keeps_newest_complete(tmp_path: Path) -> None:
    for epoch in (1, 2, 10, 3):
        _write(tmp_path, epoch)
    (tmp_path / "checkpoints" / ".tmp-checkpoint_11").mkdir()
    deleted = ckpt.prune_checkpoints(tmp_path, limit=2)
    assert sorted(p.name for p in deleted) == ["checkpoint_1", "checkpoint_2"]
    assert [c.epoch for c in ckpt.list_checkpoints(tmp_path)] == [3, 10]
    assert (tmp_path / "checkpoints" / ".tmp-checkpoint_11").exists()
    assert ckpt.prune_checkpoints(tmp_path, limit=0) == []


def test_resolve_resume_forms_and_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"resume_from=.*no such folder"):
        ckpt.resolve_resume(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint"):
        ckpt.resolve_resume(str(tmp_path))
    _write(tmp_path, 1)
    _write(tmp_path, 2)
    for form in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "checkpoint_2"):
        info, run = ckpt.resolve_resume(str(form))
        assert info.epoch == 2 and run == tmp_path
    info, _ = ckpt.resolve_resume(str(tmp_path / "checkpoints" / "checkpoint_1"))
    assert info.epoch == 1


# ---------------------------------------------------------------------------------------------
# Run settings outside the config, the process count, the hashes


def _write_files(run: Path, epoch: int, files: dict[str, bytes]) -> Path:
    tmp = ckpt.prepare_tmp_dir(run, epoch)
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    return ckpt.finalize_checkpoint(tmp, epoch=epoch, global_step=0)


def _with_settings(run: Path, settings: dict[str, Any]) -> Path:
    return _write_files(run, 1, {ckpt.SETTINGS_FILENAME: json.dumps(settings).encode()})


def test_changed_run_settings_are_listed_and_refused_unless_allowed(tmp_path: Path) -> None:
    saved = {"prompt_pool": 2, "reward": "brightness", "resolution": [32, 32]}
    folder = _with_settings(tmp_path, {"ddpo_train": saved, "policy": {"noise_level": 0.7}})

    def check(current: dict[str, Any], allow: bool = False) -> dict[str, Any]:
        return ckpt.check_resume_settings(
            folder, "ddpo_train", current, allow_changes=allow, what="flags", key_prefix="--"
        )

    assert check(saved | {"resolution": (32, 32)}) == {}  # a tuple is recorded as a list
    changed = saved | {"prompt_pool": 0, "reward": "ocr"}
    with pytest.raises(ckpt.CheckpointError) as caught:
        check(changed)
    message = str(caught.value)
    assert "changed flags: --prompt_pool: 2 -> 0, --reward: 'brightness' -> 'ocr'" in message
    assert "resume_allow_config_changes=True" in message and "resolution" not in message
    assert check(changed, allow=True) == {"prompt_pool": (2, 0), "reward": ("brightness", "ocr")}
    with pytest.raises(ckpt.CheckpointError, match=r"changed pipeline settings: noise_level: "):
        ckpt.check_resume_settings(
            folder, "policy", {"noise_level": 0.5}, allow_changes=False, what="pipeline settings"
        )


def test_run_settings_of_an_older_checkpoint_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    older = _write(tmp_path / "older", 1)  # written before the settings were recorded
    started_elsewhere = _with_settings(tmp_path / "python", {"policy": {}})
    for folder, words in (
        (older, "written before run settings"),
        (started_elsewhere, "holds no record"),
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ddpo.trainer.checkpoint"):
            found = ckpt.check_resume_settings(
                folder, "ddpo_train", {"prompt_pool": 0}, allow_changes=False, what="flags"
            )
        assert found == {}
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
        assert words in caplog.text and "flags cannot be compared" in caplog.text


def test_policy_settings_are_the_pipeline_options_it_has() -> None:
    flow = SimpleNamespace(
        pretrained_model_name="ddpo-tiny-sd3-random",
        use_lora=True,
        lora_rank=4,
        lora_alpha=4.0,
        resolution=(64, 32),
        noise_level=0.7,
        sde_window_size=2,
        sde_window_start=None,
        unrelated=1,
    )
    assert policy_settings(flow) == {
        "pretrained_model_name": "ddpo-tiny-sd3-random",
        "use_lora": True,
        "lora_rank": 4,
        "lora_alpha": 4.0,
        "resolution": [64, 32],
        "noise_level": 0.7,
        "sde_window_size": 2,
        "sde_window_start": None,
    }
    full = SimpleNamespace(use_lora=False, lora_rank=4, resolution=object())
    assert policy_settings(full) == {"use_lora": False}  # no LoRA shape; no non-JSON value
    assert policy_settings(object()) == {}  # one's own pipeline: nothing to record


def test_a_checkpoint_of_more_processes_is_refused(tmp_path: Path) -> None:
    names = [ckpt.WEIGHTS_FILENAME, ckpt.TRACKER_FILENAME]
    names += [f"{prefix}{i}.{ext}" for i in (0, 1) for prefix, ext in _PER_PROCESS]
    folder = _write_files(tmp_path, 1, dict.fromkeys(names, b"{}"))
    ckpt.verify_checkpoint(folder, num_processes=2)
    with pytest.raises(ckpt.CheckpointError, match=r"written by 2 processes .* this run has 1"):
        ckpt.verify_checkpoint(folder, num_processes=1)
    with pytest.raises(ckpt.CheckpointError, match=r"has no random_states_2\.pkl"):
        ckpt.verify_checkpoint(folder, num_processes=3)


_PER_PROCESS = (("random_states_", "pkl"), ("prompt_rng_", "json"))


def test_a_file_changed_after_its_hashes_matched_is_found(tmp_path: Path) -> None:
    names = ["optimizer.bin", ckpt.WEIGHTS_FILENAME, ckpt.TRACKER_FILENAME]
    folder = _write_files(tmp_path, 1, dict.fromkeys(names, b"x" * 64))
    settled = time.time() - 10  # as a checkpoint written before this session
    for path in folder.iterdir():
        os.utime(path, (settled, settled))
    ckpt.verify_checkpoint(folder)
    ckpt.verify_checkpoint(folder)  # unchanged: passes again (without reading it again)
    (folder / "optimizer.bin").write_bytes(b"y" * 64)  # same size
    with pytest.raises(ckpt.CheckpointError, match=r"optimizer\.bin is corrupt"):
        ckpt.verify_checkpoint(folder)


def test_a_damaged_rng_state_file_is_named(tmp_path: Path) -> None:
    import torch

    folder = tmp_path / "checkpoint_1"
    folder.mkdir()
    rng = folder / "random_states_0.pkl"
    torch.save({"random_state": random.getstate()}, rng)  # no torch or numpy states
    with pytest.raises(ckpt.CheckpointError, match=rf"{rng} does not hold .*'numpy_random_seed'"):
        ckpt.check_rng_state(folder, 0)
    rng.write_bytes(b"\x80garbage" * 100)
    with pytest.raises(ckpt.CheckpointError, match=rf"{rng} cannot be read") as caught:
        ckpt.check_rng_state(folder, 0)
    assert "\n" not in str(caught.value)


def test_a_checkpoint_from_before_a_new_config_field_resumes_at_its_default(
    tmp_path: Path,
) -> None:
    """A field added after the checkpoint was written is missing from its config.json: the run
    that wrote it behaved as the default, so the default resumes and another value is a change."""
    from ddpo import DDPOConfig

    saved = DDPOConfig(output_dir="run").to_dict()
    for new_field in ("kl_convention", "on_policy_tolerance", "train_drop_zero_advantages"):
        del saved[new_field]
    (tmp_path / ckpt.CONFIG_FILENAME).write_text(json.dumps(saved))
    assert ckpt.check_resume_config(tmp_path, DDPOConfig(output_dir="run")) == {}
    with pytest.raises(ckpt.CheckpointError, match=r"kl_convention: 'exact' -> 'flow_grpo'"):
        ckpt.check_resume_config(tmp_path, DDPOConfig(output_dir="run", kl_convention="flow_grpo"))
