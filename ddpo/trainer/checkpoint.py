"""Checkpoint folders: atomic writes, discovery of complete checkpoints, pruning.

Layout of a run folder::

    <run>/checkpoints/checkpoint_<N>/      N = epochs completed when it was written
        trainable_weights.safetensors      the denoiser parameters that train (LoRA or all)
        per_prompt_stats.json              the per-prompt tracker state (null without one)
        prompt_rng_<i>.json                process i's random stream of the prompt function
        config.json                        the `DDPOConfig` (`check_resume_config`)
        run_settings.json                  what else defines the run, by section: the policy's
                                           settings, ddpo train's flags (`check_resume_settings`)
        optimizer.bin, random_states_<i>.pkl, scaler.pt, ...   (accelerate's save_state)
        ddpo_checkpoint.json               written last: epoch, global step, format version

A checkpoint is written into ``.tmp-checkpoint_<N>``, every file fsynced, the marker
``ddpo_checkpoint.json`` written last, then the folder renamed with `os.replace`. Only folders
named ``checkpoint_<N>`` holding the marker count as checkpoints, so a crash mid-write leaves
nothing that can be mistaken for a good checkpoint.
"""

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddpo.trainer.config import DDPOConfig

CHECKPOINTS_DIRNAME = "checkpoints"
MARKER_FILENAME = "ddpo_checkpoint.json"
WEIGHTS_FILENAME = "trainable_weights.safetensors"
EMA_WEIGHTS_FILENAME = "ema_weights.safetensors"
"""The EMA of the trainable weights (``DDPOConfig.ema_decay``), by the same names."""
OBJECTIVE_TENSORS_FILENAME = "objective_tensors.safetensors"
"""An objective's ``tensor_state_dict`` (e.g. DiffusionNFT's old policy), by its names."""
TRACKER_FILENAME = "per_prompt_stats.json"
PROMPT_RNG_PREFIX = "prompt_rng_"
TMP_PREFIX = ".tmp-"
CALLABLE_STATE_PREFIX = "callable_state_"
CONFIG_FILENAME = "config.json"
SETTINGS_FILENAME = "run_settings.json"
RNG_STATE_PREFIX = "random_states_"
"""accelerate's RNG-state files, ``random_states_<process index>.pkl``."""
FORMAT_VERSION = 2
"""2: the marker lists every file with its size and SHA-256 (``files``)."""

_NAME = re.compile(r"^checkpoint_(\d+)$")
_RNG_NAME = re.compile(rf"^{RNG_STATE_PREFIX}(\d+)\.pkl$")

logger = logging.getLogger(__name__)

_SETTLED_NS = 2_000_000_000
_Stats = tuple[tuple[str, int, int, int, int], ...]
_hashed: dict[Path, _Stats] = {}
"""Checkpoint folders whose files matched their recorded SHA-256, with each file's (name, size,
mtime, ctime, inode) then, the marker's included: checking an unchanged folder again
(``ddpo train`` checks before the model loads, the trainer once more) does not re-read it."""


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
        num_processes: when known, also require each process's RNG-state files, and refuse a
            checkpoint written by more processes.
        hashes: compare the SHA-256 of each file (False: presence and size only, for a
            checkpoint whose hashes were checked already; an unchanged folder that matched
            once is not read again).

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
    stats = _stats(folder, [*files, MARKER_FILENAME])
    if hashes and stats is not None and _hashed.get(folder.resolve()) == stats:
        hashes = False  # this very folder was hashed already and has not changed since
    started = time.time_ns()
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
    # Remembered only when every file is older than the clock's coarseness could hide: a later
    # write then shows in its times.
    settled = stats is not None and all(
        max(mtime, ctime) < started - _SETTLED_NS for _, _, mtime, ctime, _ in stats
    )
    if hashes and files and stats is not None and settled:
        _hashed[folder.resolve()] = stats
    required = [WEIGHTS_FILENAME, TRACKER_FILENAME]
    if num_processes is not None:
        for index in range(num_processes):
            required += [f"{RNG_STATE_PREFIX}{index}.pkl", f"{PROMPT_RNG_PREFIX}{index}.json"]
    for name in required:
        if not (folder / name).is_file():
            raise CheckpointError(
                f"checkpoint {folder} has no {name}, which resuming needs (RNG states are one "
                "file per process: resume with the number of processes that wrote it); "
                f"{advice}"
            )
    if num_processes is not None:
        writers = 1 + max(
            (int(m.group(1)) for p in folder.iterdir() if (m := _RNG_NAME.match(p.name))),
            default=-1,
        )
        if writers > num_processes:
            raise CheckpointError(
                f"checkpoint {folder} was written by {writers} processes (one "
                f"{RNG_STATE_PREFIX}<i>.pkl each) and this run has {num_processes}: each process "
                "samples its own share of an epoch, so the run would not continue as the "
                f"checkpointed one; resume with {writers} processes"
            )


def _stats(folder: Path, names: list[str]) -> _Stats | None:
    """(name, size, mtime, ctime, inode) of each named file, or None if one cannot be read."""
    try:
        stats = [(name, (folder / name).stat()) for name in sorted(names)]
    except OSError:
        return None
    return tuple(
        (name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for name, st in stats
    )


def check_rng_state(folder: Path, process_index: int) -> None:
    """Read process ``process_index``'s RNG-state file as accelerate's ``load_state`` will, and
    check that each generator takes its state.

    accelerate's ``load_state`` catches any error while it restores these states and goes on
    with the generators as they are (it only logs "Could not load random states" at info
    level), so a damaged file would silently change the continued run.

    Raises:
        CheckpointError: naming the file and what is wrong with it.
    """
    import random

    import numpy as np
    import torch
    from accelerate.utils import load

    path = folder / f"{RNG_STATE_PREFIX}{process_index}.pkl"
    advice = f"the checkpoint {folder} is damaged; resume from an earlier checkpoint"
    try:
        states = load(path)
    except Exception as err:  # torch.load and pickle raise many types, with pages of advice
        raise CheckpointError(
            f"checkpoint file {path} cannot be read ({type(err).__name__}: it is not a file "
            f"that torch.save wrote, or it is cut short); {advice}"
        ) from err
    try:
        random.Random().setstate(states["random_state"])
        np.random.RandomState().set_state(states["numpy_random_seed"])
        torch.Generator().set_state(states["torch_manual_seed"])
    except Exception as err:  # the generators raise many types
        reason = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"checkpoint file {path} does not hold the random-number-generator states that "
            f"resuming restores ({type(err).__name__}: {reason}); {advice}"
        ) from err


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


def _with_new_fields_at_default(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved flat config with every `DDPOConfig` field it lacks (a field added after the
    checkpoint was written) at that field's default: the run it was written by had the default's
    behaviour, so only a new value is a change."""
    filled = dict(saved)
    for item in dataclasses.fields(DDPOConfig):
        if item.name in saved or any(key.startswith(f"{item.name}/") for key in saved):
            continue
        if item.default is not dataclasses.MISSING:
            filled[item.name] = item.default
        # a dict field (default_factory) absent from the flat record was empty: nothing to add
    return filled


def check_resume_config(folder: Path, config: DDPOConfig) -> dict[str, tuple[Any, Any]]:
    """Compare ``config`` with the one a checkpoint was written with.

    A field that the checkpoint's config lacks (added to `DDPOConfig` after it was written)
    counts as its default.

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
    changed = config_changes(_with_new_fields_at_default(saved), config.to_dict())
    breaking = {k: v for k, v in changed.items() if k.split("/")[0] not in RESUMABLE_CHANGES}
    if breaking and not config.resume_allow_config_changes:
        listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in breaking.items())
        raise CheckpointError(
            f"resuming {folder} with a changed config: {listed}. These change the run, so it "
            "would not continue as the checkpointed one; restore them, or set "
            "DDPOConfig.resume_allow_config_changes=True to continue with the new values"
        )
    return changed


def check_resume_settings(
    folder: Path,
    section: str,
    current: dict[str, Any],
    *,
    allow_changes: bool,
    what: str,
    key_prefix: str = "",
) -> dict[str, tuple[Any, Any]]:
    """Compare run settings outside the config (``current``, JSON data by name) with the
    section ``section`` of the checkpoint's ``run_settings.json``, as `check_resume_config`
    compares the config.

    A checkpoint without ``run_settings.json`` (written before they were recorded), or without
    the section (e.g. a run started from Python resumed by ``ddpo train``), cannot be checked:
    a warning says so and the resume goes on.

    Args:
        folder: the checkpoint folder.
        section: ``"policy"`` (the pipeline's settings) or ``"ddpo_train"`` (the flags).
        current: this run's settings.
        allow_changes: ``DDPOConfig.resume_allow_config_changes``.
        what: what the settings are, for the message (``"ddpo train flags"``).
        key_prefix: put before each name in the message (``"--"`` for flags).

    Returns:
        The changed settings, ``{name: (saved, current)}``.

    Raises:
        CheckpointError: settings changed and ``allow_changes`` is False (listing them), or
            the file cannot be read.
    """
    path = folder / SETTINGS_FILENAME
    if not path.is_file():
        logger.warning(
            "checkpoint %s was written before run settings were recorded (no %s): the %s cannot "
            "be compared with the ones it was written with; make sure they are the same",
            folder,
            SETTINGS_FILENAME,
            what,
        )
        return {}
    saved = read_json(path)
    if not isinstance(saved, dict) or not isinstance(saved.get(section, {}), dict):
        raise CheckpointError(f"checkpoint file {path} is corrupt: not a JSON object of sections")
    if section not in saved:
        logger.warning(
            "checkpoint %s holds no record of its %s (its run was started another way): the %s "
            "cannot be compared with the ones it was written with",
            folder,
            what,
            what,
        )
        return {}
    changed = config_changes(saved[section], json.loads(json.dumps(current)))
    if changed and not allow_changes:
        listed = ", ".join(
            f"{key_prefix}{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items()
        )
        raise CheckpointError(
            f"resuming {folder} with changed {what}: {listed}. These change the run, so it "
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
