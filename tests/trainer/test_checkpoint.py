"""Checkpoint folders: atomic finalisation, discovery, pruning, resume resolution (fast)."""

import json
from pathlib import Path

import pytest

from ddpo.trainer import checkpoint as ckpt


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
