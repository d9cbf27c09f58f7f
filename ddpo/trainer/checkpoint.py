"""Checkpoint folders: atomic writes, discovery of complete checkpoints, pruning.

Layout of a run folder::

    <run>/checkpoints/checkpoint_<N>/      N = epochs completed when it was written
        trainable_weights.safetensors      the UNet parameters that train (LoRA or all)
        per_prompt_stats.json              the per-prompt tracker state (null without one)
        prompt_rng_<i>.json                process i's random stream of the prompt function
        optimizer.bin, random_states_<i>.pkl, scaler.pt, ...   (accelerate's save_state)
        ddpo_checkpoint.json               written last: epoch, global step, format version

A checkpoint is written into ``.tmp-checkpoint_<N>``, every file fsynced, the marker
``ddpo_checkpoint.json`` written last, then the folder renamed with `os.replace`. Only folders
named ``checkpoint_<N>`` holding the marker count as checkpoints, so a crash mid-write leaves
nothing that can be mistaken for a good checkpoint.
"""

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKPOINTS_DIRNAME = "checkpoints"
MARKER_FILENAME = "ddpo_checkpoint.json"
WEIGHTS_FILENAME = "trainable_weights.safetensors"
TRACKER_FILENAME = "per_prompt_stats.json"
PROMPT_RNG_PREFIX = "prompt_rng_"
TMP_PREFIX = ".tmp-"
FORMAT_VERSION = 1

_NAME = re.compile(r"^checkpoint_(\d+)$")


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint folder and what its marker says."""

    path: Path
    epoch: int
    """Epochs completed: training resumes at this epoch index."""
    global_step: int
    """Optimizer steps taken."""


def checkpoint_name(epoch: int) -> str:
    """Folder name of the checkpoint written after ``epoch`` completed epochs."""
    return f"checkpoint_{epoch}"


def read_marker(folder: Path) -> CheckpointInfo | None:
    """The checkpoint in ``folder``, or None if it is not a complete checkpoint."""
    match = _NAME.match(folder.name)
    marker = folder / MARKER_FILENAME
    if match is None or not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
        return CheckpointInfo(folder, int(data["epoch"]), int(data["global_step"]))
    except (ValueError, KeyError, TypeError):
        return None


def list_checkpoints(run_dir: Path) -> list[CheckpointInfo]:
    """Complete checkpoints of a run folder, oldest (fewest epochs) first."""
    folder = run_dir / CHECKPOINTS_DIRNAME
    if not folder.is_dir():
        return []
    found = [read_marker(child) for child in folder.iterdir() if child.is_dir()]
    return sorted((c for c in found if c is not None), key=lambda c: c.epoch)


def resolve_resume(resume_from: str) -> tuple[CheckpointInfo, Path]:
    """The checkpoint to resume from and its run folder.

    Args:
        resume_from: a checkpoint folder, a run's ``checkpoints`` folder, or a run folder
            (its newest complete checkpoint is taken).

    Returns:
        ``(checkpoint, run_dir)``.

    Raises:
        FileNotFoundError: the path does not exist or holds no complete checkpoint.
    """
    path = Path(resume_from).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"DDPOConfig.resume_from={resume_from!r}: no such folder")
    if not path.is_dir():
        raise FileNotFoundError(f"DDPOConfig.resume_from={resume_from!r} is not a folder")
    info = read_marker(path)
    if info is not None:
        return info, path.parent.parent
    if _NAME.match(path.name):
        raise FileNotFoundError(
            f"DDPOConfig.resume_from={resume_from!r} is an incomplete checkpoint "
            f"(no {MARKER_FILENAME}); it was not finished and cannot be resumed"
        )
    run_dir = path.parent if path.name == CHECKPOINTS_DIRNAME else path
    found = list_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(
            f"DDPOConfig.resume_from={resume_from!r} holds no complete checkpoint "
            f"(looked for {CHECKPOINTS_DIRNAME}/checkpoint_<N>/{MARKER_FILENAME})"
        )
    return found[-1], run_dir


def tmp_checkpoint_dir(run_dir: Path, epoch: int) -> Path:
    """The temporary folder a checkpoint is written into before its rename."""
    return run_dir / CHECKPOINTS_DIRNAME / f"{TMP_PREFIX}{checkpoint_name(epoch)}"


def prepare_tmp_dir(run_dir: Path, epoch: int) -> Path:
    """Create an empty temporary checkpoint folder (removing a stale one from a crash).

    Raises:
        FileExistsError: the final checkpoint folder already exists (never overwritten).
    """
    final = run_dir / CHECKPOINTS_DIRNAME / checkpoint_name(epoch)
    if final.exists():
        raise FileExistsError(f"checkpoint {final} already exists; refusing to overwrite it")
    tmp = tmp_checkpoint_dir(run_dir, epoch)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_json(path: Path, data: Any) -> None:
    """Write JSON and fsync it."""
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def finalize_checkpoint(tmp: Path, *, epoch: int, global_step: int) -> Path:
    """Fsync a written temporary folder, add the marker, and rename it into place.

    Returns:
        The final ``checkpoint_<epoch>`` folder.
    """
    # 1. Flush every file the savers wrote.
    for child in tmp.rglob("*"):
        if child.is_file():
            fd = os.open(child, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    # 2. The marker goes last: its presence means everything else is on disk.
    marker = {"epoch": epoch, "global_step": global_step, "format_version": FORMAT_VERSION}
    write_json(tmp / MARKER_FILENAME, marker)
    # 3. Atomic rename, then make the rename itself durable.
    final = tmp.parent / checkpoint_name(epoch)
    os.replace(tmp, final)
    _fsync_dir(tmp.parent)
    return final


def prune_checkpoints(run_dir: Path, *, limit: int) -> list[Path]:
    """Delete the oldest complete checkpoints beyond ``limit`` (0: keep all).

    Returns:
        The deleted folders.
    """
    if limit <= 0:
        return []
    found = list_checkpoints(run_dir)
    doomed = [c.path for c in found[: max(0, len(found) - limit)]]
    for path in doomed:
        # Rename first so that a crash mid-delete leaves a non-checkpoint name behind.
        trash = path.parent / f"{TMP_PREFIX}deleting-{path.name}"
        os.replace(path, trash)
        shutil.rmtree(trash)
    return doomed


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
