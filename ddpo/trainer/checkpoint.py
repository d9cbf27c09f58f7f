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

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddpo.trainer.config import DDPOConfig

CHECKPOINTS_DIRNAME = "checkpoints"
MARKER_FILENAME = "ddpo_checkpoint.json"
WEIGHTS_FILENAME = "trainable_weights.safetensors"
TRACKER_FILENAME = "per_prompt_stats.json"
PROMPT_RNG_PREFIX = "prompt_rng_"
TMP_PREFIX = ".tmp-"
CALLABLE_STATE_PREFIX = "callable_state_"
CONFIG_FILENAME = "config.json"
FORMAT_VERSION = 2
"""2: the marker lists every file with its size and SHA-256 (``files``)."""

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


def read_json(path: Path) -> Any:
    """JSON from a checkpoint file.

    Raises:
        CheckpointError: the file is missing or not valid JSON (naming it).
    """
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint file {path} is missing") from err
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint file {path} is corrupt: {err}") from err


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
    # 2. The marker goes last: its presence means everything else is on disk. It lists every
    #    file with its size and hash, so that a truncated or damaged file is found on resume.
    files = {
        child.relative_to(tmp).as_posix(): _file_record(child)
        for child in sorted(tmp.rglob("*"))
        if child.is_file()
    }
    marker = {
        "epoch": epoch,
        "global_step": global_step,
        "format_version": FORMAT_VERSION,
        "files": files,
    }
    write_json(tmp / MARKER_FILENAME, marker)
    # 3. Atomic rename, then make the rename itself durable.
    final = tmp.parent / checkpoint_name(epoch)
    os.replace(tmp, final)
    _fsync_dir(tmp.parent)
    return final


def _file_record(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"size": path.stat().st_size, "sha256": digest}


class CheckpointError(ValueError):
    """A checkpoint is damaged or cannot continue this run; the message names the file/fields."""


def verify_checkpoint(
    folder: Path, *, num_processes: int | None = None, hashes: bool = True
) -> None:
    """Check every file a checkpoint's marker lists: present, full size, same SHA-256.

    Checkpoints of format 1 (no file list) are checked for the files resuming needs.

    Args:
        folder: a complete checkpoint folder.
        num_processes: when known, also require each process's RNG-state files.
        hashes: compare the SHA-256 of each file (False: presence and size only, for a
            checkpoint whose hashes were checked already).

    Raises:
        CheckpointError: naming the missing, truncated or damaged file and what to do.
    """
    marker = folder / MARKER_FILENAME
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint marker {marker} cannot be read ({err})") from err
    advice = f"the checkpoint {folder} is damaged; resume from an earlier checkpoint"
    files: dict[str, Any] = data.get("files") or {}
    for name, record in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} is missing; {advice}")
        size = path.stat().st_size
        if size != record["size"]:
            raise CheckpointError(
                f"checkpoint file {path} is truncated or changed ({size} bytes, written with "
                f"{record['size']}); {advice}"
            )
        if hashes and _file_record(path)["sha256"] != record["sha256"]:
            raise CheckpointError(
                f"checkpoint file {path} is corrupt (its SHA-256 differs from the one recorded "
                f"when it was written); {advice}"
            )
    required = [WEIGHTS_FILENAME, TRACKER_FILENAME]
    if num_processes is not None:
        for index in range(num_processes):
            required += [f"random_states_{index}.pkl", f"{PROMPT_RNG_PREFIX}{index}.json"]
    for name in required:
        if not (folder / name).is_file():
            raise CheckpointError(
                f"checkpoint {folder} has no {name}, which resuming needs (RNG states are one "
                "file per process: resume with the number of processes that wrote it); "
                f"{advice}"
            )


# Fields whose change leaves the continued run identical to an uninterrupted one.
RESUMABLE_CHANGES: tuple[str, ...] = (
    "exp_name",
    "run_name",
    "log_with",
    "tracker_kwargs",
    "project_kwargs",
    "tracker_project_name",
    "logdir",
    "num_epochs",
    "save_freq",
    "num_checkpoint_limit",
    "resume_from",
    "output_dir",
    "async_reward_computation",
    "max_workers",
    "push_to_hub",
    "hub_model_id",
    "gradient_checkpointing",
    "resume_allow_config_changes",
    "compile_denoiser",
    "sample_cuda_graphs",
    "channels_last",
    "prompt_embedding_cache_size",
)


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved, current)}`` for every flat config key (``DDPOConfig.to_dict``) that
    differs; a key missing on one side shows as None there."""
    changed: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if old != new:
            changed[key] = (old, new)
    return changed


def check_resume_config(folder: Path, config: DDPOConfig) -> dict[str, tuple[Any, Any]]:
    """Compare ``config`` with the one a checkpoint was written with.

    Returns:
        The changed flat keys (``{key: (saved, current)}``); changes of `RESUMABLE_CHANGES`
        fields are always allowed.

    Raises:
        CheckpointError: other fields changed and ``config.resume_allow_config_changes`` is
            False; the message lists them.
    """
    path = folder / CONFIG_FILENAME
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint file {path} cannot be read ({err})") from err
    changed = config_changes(saved, config.to_dict())
    breaking = {k: v for k, v in changed.items() if k.split("/")[0] not in RESUMABLE_CHANGES}
    if breaking and not config.resume_allow_config_changes:
        listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in breaking.items())
        raise CheckpointError(
            f"resuming {folder} with a changed config: {listed}. These change the run, so it "
            "would not continue as the checkpointed one; restore them, or set "
            "DDPOConfig.resume_allow_config_changes=True to continue with the new values"
        )
    return changed


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
