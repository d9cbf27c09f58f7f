"""Resolve a model name (built-in, local folder or hub id) to a local folder, with clear errors.

Built-in names need no network: ``"ddpo-tiny-shapes"`` and ``"ddpo-tiny-shapes-flow"`` (the
trained tiny models shipped with the package, SD and SD3 architectures) and each family's random
tiny model (``"ddpo-tiny-random"``, ``"ddpo-tiny-sdxl-random"``, ``"ddpo-tiny-sd3-random"``,
``"ddpo-tiny-flux-random"``), which the family table registers and which are built on first use
into the cache folder. Everything is checked here, before any weights are loaded.
"""

import functools
import json
import os
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

TINY_SHAPES_NAME = "ddpo-tiny-shapes"
TINY_SHAPES_FLOW_NAME = "ddpo-tiny-shapes-flow"
_TINY_SHAPES_PACKAGE = "ddpo.models"  # holds both packaged folders (package data)

_BUILTIN: dict[str, Callable[[], Path]] = {}
"""Built-in model names and the functions that give their folders (building them on first use):
the trained tiny model shipped with the package here, each family's random tiny model registered
by the family table (`ddpo.adapters.families`) with :func:`register_builtin_model`."""


def register_builtin_model(name: str, folder: Callable[[], Path]) -> None:
    """Make ``name`` a built-in model whose folder is ``folder()`` (the family table calls this
    for each family's tiny model; models below the table never import it)."""
    _BUILTIN[name] = folder


def builtin_models() -> tuple[str, ...]:
    """The names :func:`resolve_pretrained` knows without a folder or a hub."""
    return tuple(_BUILTIN)


LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
"""File name of LoRA weights in diffusers' format (what ``load_lora_weights`` looks for)."""

BASE_MODEL_FILE = "ddpo_base_model.json"
"""Next to LoRA weights: names the base model they apply to."""

SD_COMPONENTS: tuple[str, ...] = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
"""Components a Stable Diffusion folder's ``model_index.json`` must list."""

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?")


def _packaged_model_path(name: str) -> Path:
    # The packaged weights are data of the package ``ddpo.models``: located with importlib's
    # resources, never through a module that trains or evaluates them (those import adapters).
    try:
        folder = Path(str(resources.files(_TINY_SHAPES_PACKAGE) / name))
    except ImportError as err:
        raise FileNotFoundError(
            f"the packaged model {name!r} is missing: the package "
            f"{_TINY_SHAPES_PACKAGE} cannot be imported ({err}); use another built-in model "
            "or a model folder instead"
        ) from err
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"the packaged model {name!r} is missing or incomplete at {folder}")
    return folder


register_builtin_model(TINY_SHAPES_NAME, functools.partial(_packaged_model_path, TINY_SHAPES_NAME))
register_builtin_model(
    TINY_SHAPES_FLOW_NAME, functools.partial(_packaged_model_path, TINY_SHAPES_FLOW_NAME)
)


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - diffusers depends on it
        return True
    return bool(constants.HF_HUB_OFFLINE)


def resolve_pretrained(name: str | os.PathLike[str], revision: str = "main") -> Path:
    """The local folder of model ``name``.

    ``name`` is a built-in name (:func:`builtin_models`), an existing local folder, or a hub id
    (``owner/model``) already in the local cache, or, when the hub is reachable and
    ``HF_HUB_OFFLINE`` is not set, downloaded through diffusers.

    Raises:
        ValueError: if ``name`` is none of these (the message names it).
        FileNotFoundError: for ``"ddpo-tiny-shapes"`` when the packaged model is missing.
        TypeError: if ``name`` is not a string or path.
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"pretrained_model_name must be a string or path, got {name!r}")
    text = os.fspath(name)
    if text in _BUILTIN:
        return _BUILTIN[text]()
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise ValueError(f"pretrained_model_name {text!r} is a file, not a model folder")
    if not _HUB_ID.fullmatch(text) or text.startswith((".", "~")):
        raise ValueError(f"pretrained_model_name {text!r}: no such model folder")
    from diffusers import DiffusionPipeline

    offline = _hub_offline()
    try:
        folder = DiffusionPipeline.download(text, revision=revision, local_files_only=offline)
    except Exception as err:
        where = "the local hub cache (offline)" if offline else "the hub"
        raise ValueError(
            f"pretrained_model_name {text!r} (revision {revision!r}) is not a local folder, not a "
            f"built-in model {builtin_models()}, and not found in {where}: {err}"
        ) from err
    return Path(folder)


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in the file ``path`` (a model folder's ``model_index.json``, a config).

    Raises:
        ValueError: if the file is not valid UTF-8 JSON or not a JSON object (naming the file).
    """
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # json.JSONDecodeError, UnicodeDecodeError
        raise ValueError(
            f"{path} is not valid JSON ({err}); the model folder is damaged or incomplete: "
            "restore or re-download it"
        ) from err
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def read_model_index(
    folder: Path,
    components: tuple[str, ...] = SD_COMPONENTS,
    family: str = "Stable Diffusion",
) -> dict[str, Any]:
    """``model_index.json`` of a model folder, checked to list a family's ``components``.

    Raises:
        ValueError: if the file is missing, is not valid JSON or lacks one of ``components``
            (naming the file, or the folder, the class found and the missing components).
    """
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ValueError(
            f"{folder} is not a {family} model folder: it has no model_index.json "
            f"(expected components {components})"
        )
    index = read_json_object(index_file)
    missing = [c for c in components if not index.get(c) or index[c][0] is None]
    if missing:
        found = sorted(k for k in index if not k.startswith("_") and _listed(index[k]))
        raise ValueError(
            f"{folder} is not a {family} architecture ({index.get('_class_name')!r}): "
            f"missing components {missing}, found {found}"
        )
    return index


def _listed(entry: Any) -> bool:
    return isinstance(entry, list) and bool(entry) and entry[0] is not None


class ModelSource(NamedTuple):
    """Where a model's weights are: its base folder, the base's portable name, and LoRA weights
    to load on top (a folder holding ``pytorch_lora_weights.safetensors``)."""

    folder: Path
    base_name: str
    base_revision: str
    lora_file: Path | None


def resolve_model_source(name: str | os.PathLike[str], revision: str = "main") -> ModelSource:
    """The model folder of ``name`` (:func:`resolve_pretrained`), following LoRA-only folders
    (``pytorch_lora_weights.safetensors`` + ``ddpo_base_model.json``) to their base model.

    Hub ids and built-in names are recorded as given (portable), local folders as absolute paths.
    """
    given = os.fspath(name)
    folder = resolve_pretrained(given, revision)
    base_name = str(folder) if Path(given).expanduser().is_dir() else given
    base_revision = revision
    lora_file: Path | None = None
    if (folder / LORA_WEIGHTS_NAME).is_file():
        lora_file = folder / LORA_WEIGHTS_NAME
        if not (folder / "model_index.json").is_file():  # LoRA only: load its base
            base_name, base_revision = read_base_model(folder)
            folder = resolve_pretrained(base_name, base_revision)
    return ModelSource(folder, base_name, base_revision, lora_file)


def read_base_model(folder: Path) -> tuple[str, str]:
    """``(name, revision)`` of the base model recorded next to LoRA-only weights in ``folder``.

    Raises:
        ValueError: if ``folder`` has no :data:`BASE_MODEL_FILE`.
    """
    record = folder / BASE_MODEL_FILE
    if not record.is_file():
        raise ValueError(
            f"{folder} holds LoRA weights ({LORA_WEIGHTS_NAME}) but no model_index.json nor "
            f"{BASE_MODEL_FILE} naming their base model"
        )
    data = read_json_object(record)
    return str(data["pretrained_model_name"]), str(data.get("pretrained_model_revision", "main"))


def write_base_model(folder: Path, name: str, revision: str) -> None:
    """Record the base model of LoRA weights saved in ``folder``."""
    record = {"pretrained_model_name": name, "pretrained_model_revision": revision}
    (folder / BASE_MODEL_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


__all__ = [
    "BASE_MODEL_FILE",
    "LORA_WEIGHTS_NAME",
    "SD_COMPONENTS",
    "TINY_SHAPES_NAME",
    "ModelSource",
    "builtin_models",
    "read_base_model",
    "read_json_object",
    "read_model_index",
    "register_builtin_model",
    "resolve_model_source",
    "resolve_pretrained",
    "write_base_model",
]
