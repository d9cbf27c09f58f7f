"""Shared plumbing of the checkpoint-converting rewards (HPS v2.1, ImageReward v1.0).

Finding a weights file (local file, local folder or hub repository), loading a torch state dict
safely, comparing a converted state dict with what a model expects, and the reward's
argument checks.
"""

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import torch

OPENAI_CLIP_MEAN: Final = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: Final = (0.26862954, 0.26130258, 0.27577711)

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "check_batch_size",
    "check_prompts",
    "convert_state_dict",
    "load_torch_state_dict",
    "require",
    "resolve_device",
    "resolve_file",
    "resolve_folder",
]


def resolve_file(source: str, filename: str, *, argument: str, token: str | None) -> Path:
    """The path of ``filename`` given a local file, a folder holding it, or a hub repository id.

    Raises:
        FileNotFoundError: if ``source`` is a local folder without ``filename``.
        OSError: if ``source`` is not local and the hub cannot provide the file.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if not (path / filename).is_file():
            raise FileNotFoundError(f"{argument}={source!r}: the folder holds no {filename!r}")
        return path / filename
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source, filename, token=token))
    except Exception as exc:
        raise OSError(
            f"{argument}={source!r} is not a local file or folder, and {filename!r} could not be "
            f"fetched from the Hugging Face Hub (unreachable, offline, or no such repository): "
            f"{exc}"
        ) from exc


def resolve_folder(
    source: str,
    required: Sequence[str],
    optional: Sequence[str] = (),
    *,
    argument: str,
    token: str | None,
) -> Path:
    """A local folder holding the ``required`` files, or the hub snapshot folder of a repository.

    Transformers 5 builds an empty tokenizer when its files cannot be found, so tokenizer
    sources are resolved here first, with a clear error.

    Raises:
        FileNotFoundError: if the local folder lacks a required file.
        OSError: if ``source`` is not local and the hub cannot provide a required file.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        absent = [name for name in required if not (path / name).is_file()]
        if absent:
            raise FileNotFoundError(f"{argument}={source!r}: the folder holds no {absent}")
        return path
    folder = resolve_file(source, required[0], argument=argument, token=token).parent
    for name in (*required[1:], *optional):
        try:
            resolve_file(source, name, argument=argument, token=token)
        except OSError:
            if name in required:
                raise
    return folder


def load_torch_state_dict(path: Path, *, argument: str) -> dict[str, torch.Tensor]:
    """A state dict from a torch file (``weights_only=True``): bare, or under ``"state_dict"``.

    A ``"module."`` prefix (left by DistributedDataParallel) is removed from every key.

    Raises:
        ValueError: if the file holds no mapping of tensors.
    """
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{argument}: {path} holds a {type(loaded).__name__}, not a state dict")
    state = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f"{argument}: {path} holds no tensors")
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


Source = tuple[str, Callable[[torch.Tensor], torch.Tensor]]
"""Where a model tensor comes from: the checkpoint's key and the transform to apply to it."""


def convert_state_dict(
    checkpoint: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    source: Callable[[str], Source],
    *,
    argument: str,
    ignored: Callable[[str], bool] = lambda key: False,
) -> dict[str, torch.Tensor]:
    """The model's state dict, each tensor taken from the checkpoint through ``source``.

    Args:
        checkpoint: the original state dict (original key names).
        expected: ``model.state_dict()`` of the model to fill.
        source: model key -> (checkpoint key, transform), e.g. a slice or a transpose.
        argument: the user's argument the checkpoint came from, for messages.
        ignored: checkpoint keys the model does not need (e.g. unused heads, buffers).

    Raises:
        ValueError: naming (up to 10 of each) the checkpoint keys that are missing, those left
            unused (unexpected), and the shape mismatches, in the checkpoint's own key names.
    """
    converted: dict[str, torch.Tensor] = {}
    missing: set[str] = set()
    used: set[str] = set()
    shapes: list[str] = []
    for key, target in expected.items():
        original, transform = source(key)
        if original not in checkpoint:
            missing.add(original)
            continue
        used.add(original)
        value = transform(checkpoint[original])
        if value.shape != target.shape:
            shapes.append(f"{original} gives {key} {tuple(value.shape)}, not {tuple(target.shape)}")
            continue
        converted[key] = value.to(target.dtype)
    unexpected = sorted(k for k in checkpoint.keys() - used if not ignored(k))
    problems = [
        f"{label} {items[:10]}{' ...' if len(items) > 10 else ''}"
        for label, items in (
            ("missing keys", sorted(missing)),
            ("unexpected keys", unexpected),
            ("shape mismatches", sorted(shapes)),
        )
        if items
    ]
    if problems:
        raise ValueError(
            f"{argument}: the checkpoint does not fit the model: {'; '.join(problems)}"
        )
    return converted


def require(checkpoint: Mapping[str, torch.Tensor], key: str, *, argument: str) -> torch.Tensor:
    """``checkpoint[key]``, or a ValueError naming the missing key and the argument."""
    if key not in checkpoint:
        raise ValueError(
            f"{argument}: the checkpoint has no key {key!r} (found e.g. {sorted(checkpoint)[:5]})"
        )
    return checkpoint[key]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, or CUDA when available and else CPU when ``None``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` if it is a positive int; else ValueError naming it."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def check_prompts(prompts: Any, batch: int) -> list[str]:
    """The prompts as a list of ``batch`` strings; ValueError naming ``prompts`` otherwise."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ValueError(
            f"prompts must be a sequence of {batch} strings, got {type(prompts).__name__}"
        )
    if len(prompts) != batch or not all(isinstance(p, str) for p in prompts):
        raise ValueError(
            f"prompts must be a sequence of {batch} strings (one per image), got {prompts!r}"
        )
    return list(prompts)
