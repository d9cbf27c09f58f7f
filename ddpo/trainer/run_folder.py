"""The run folder: where a run writes, checked before any model loads.

`check_output_dir` is what `DDPOTrainer` runs first; ``ddpo train`` calls it before it loads the
model, so a taken folder is reported in a second, not after minutes of loading.
"""

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from ddpo.trainer import checkpoint as ckpt
from ddpo.trainer.config import DDPOConfig


def fixed_output_dir(
    config: DDPOConfig, resume: ckpt.CheckpointInfo | None
) -> tuple[str, Path] | None:
    """``(run_name, folder)`` when the config fixes the folder, or None for a new timestamped one.

    The folder is ``output_dir`` if set, else ``<logdir>/<run_name>`` if ``run_name`` is set,
    else the resumed checkpoint's run folder.
    """
    if config.output_dir:
        out = Path(config.output_dir).expanduser()
        return config.run_name or out.name, out.resolve()
    if config.run_name:
        return config.run_name, (Path(config.logdir) / config.run_name).resolve()
    if resume is not None:
        run = resume.path.parent.parent.resolve()
        return run.name, run
    return None


def check_output_dir(config: DDPOConfig) -> None:
    """Raise before any work if the run would write into a folder it must not touch.

    Raises:
        FileExistsError: the folder exists, is not empty, and is not the run being resumed (the
            message says what to do); or resuming inside it would overwrite later checkpoints.
        FileNotFoundError: ``resume_from`` holds no complete checkpoint.
    """
    resume = ckpt.resolve_resume(config.resume_from)[0] if config.resume_from else None
    fixed = fixed_output_dir(config, resume)
    if fixed is None:
        return
    out = fixed[1]
    resume_run = resume.path.parent.parent.resolve() if resume is not None else None
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output folder {out} is a file; choose another output_dir")
    if out.exists() and any(out.iterdir()) and out != resume_run:
        found = ckpt.list_checkpoints(out)
        if found:
            advice = (
                f"it holds a run with checkpoints (newest: {found[-1].path}); to continue it, set "
                f"DDPOConfig.resume_from={str(out)!r} (ddpo train: --ddpo_config.resume_from "
                f"{out}); to start afresh, choose another output_dir or run_name"
            )
        else:
            advice = (
                "it holds no checkpoint (for example a run that stopped before its first "
                f"checkpoint), so there is nothing to resume: delete it (rm -r {out}) or choose "
                "another output_dir or run_name"
            )
        raise FileExistsError(f"output folder {out} exists and is not empty; {advice}")
    if resume is not None and out == resume_run:
        later = [c for c in ckpt.list_checkpoints(out) if c.epoch > resume.epoch]
        if later:
            raise FileExistsError(
                f"resuming {resume.path} inside {out} would overwrite its later checkpoints "
                f"{[str(c.path) for c in later]}; resume from the newest one or set another "
                "output_dir"
            )


def resolve_output_dir(
    config: DDPOConfig, resume: ckpt.CheckpointInfo | None, agree: Callable[[list[str]], list[str]]
) -> tuple[str, Path]:
    """``(run_name, folder)`` of the run: fixed by the config or the resumed run, else a new
    timestamped name that every process takes from the main one (``agree``: accelerate's
    ``broadcast_object_list``)."""
    fixed = fixed_output_dir(config, resume)
    if fixed is not None:
        return fixed
    run_name = agree([timestamped_run_name(config)])[0]
    return run_name, (Path(config.logdir) / run_name).resolve()


def timestamped_run_name(config: DDPOConfig) -> str:
    """``<exp_name>_<UTC time>`` (with ``-N`` if that folder exists under ``logdir``)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    candidate = f"{config.exp_name}_{stamp}"
    suffix = 1
    while (Path(config.logdir) / candidate).exists():
        candidate = f"{config.exp_name}_{stamp}-{suffix}"
        suffix += 1
    return candidate


def drop_epochs_from(path: Path, epoch: int) -> None:
    """Keep the rows of a JSON-lines log (``metrics.jsonl``) whose ``epoch`` is before ``epoch``.

    A resumed run logs again the epochs after its checkpoint; their rows from the interrupted
    run go, the earlier rows stay. The file is replaced atomically.
    """
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            row_epoch = json.loads(line).get("epoch")
        except ValueError:  # a line cut short by the crash
            continue
        if isinstance(row_epoch, int) and row_epoch < epoch:
            kept.append(line)
    if len(kept) == len(lines):
        return
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


def upload_folder(folder: Path, repo: str, *, token: str | None) -> None:
    """Upload ``folder`` to the Hub repository ``repo`` (created if needed).

    Raises:
        RuntimeError: the upload failed; the message says the files are kept in ``folder``.
    """
    from huggingface_hub import HfApi

    try:
        api = HfApi(token=token)
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(folder))
    except Exception as err:
        raise RuntimeError(
            f"push_to_hub to {repo!r} failed ({type(err).__name__}: {err}); the final weights "
            f"are saved locally in {folder}"
        ) from err


__all__ = [
    "check_output_dir",
    "drop_epochs_from",
    "fixed_output_dir",
    "resolve_output_dir",
    "timestamped_run_name",
    "upload_folder",
]
