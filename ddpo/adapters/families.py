"""Model families by the pipeline class a model folder declares: which policy class trains it.

``ddpo train --pretrained_model X`` and ``ddpo sample --model X`` read ``X``'s
``model_index.json`` (following LoRA-only folders to their base) and build the family's policy.
A new family adds one `Family` entry to `FAMILIES`; nothing else dispatches on the family.
"""

import os
from collections.abc import Callable
from typing import Any, NamedTuple

from ddpo.adapters.registry import read_json_object, resolve_model_source


class Family(NamedTuple):
    """A model family: its name, the diffusers pipeline classes of its folders, and how its
    policy is built (``load(name, **options)``)."""

    name: str
    pipeline_classes: tuple[str, ...]
    load: Callable[..., Any]


def _load_sd(name: str, **options: Any) -> Any:
    from ddpo.adapters.default import DefaultDDPOStableDiffusionPipeline

    return DefaultDDPOStableDiffusionPipeline(name, **options)


def _load_sdxl(name: str, **options: Any) -> Any:
    from ddpo.adapters.sdxl import DefaultDDPOStableDiffusionXLPipeline

    return DefaultDDPOStableDiffusionXLPipeline(name, **options)


FAMILIES: tuple[Family, ...] = (
    Family("sd", ("StableDiffusionPipeline",), _load_sd),
    Family("sdxl", ("StableDiffusionXLPipeline",), _load_sdxl),
)
"""Every family ddpo trains: Stable Diffusion 1.x/2.x and SDXL."""


def model_family(name: str | os.PathLike[str], revision: str = "main") -> Family:
    """The family of model ``name`` (built-in name, folder or hub id), from its
    ``model_index.json``.

    Raises:
        ValueError: if the folder has no ``model_index.json`` or declares a pipeline class no
            family trains (naming the class found and the classes known).
    """
    source = resolve_model_source(name, revision)
    index_file = source.folder / "model_index.json"
    if not index_file.is_file():
        raise ValueError(f"{source.folder} is not a diffusers model folder: no model_index.json")
    class_name = read_json_object(index_file).get("_class_name")
    for family in FAMILIES:
        if class_name in family.pipeline_classes:
            return family
    known = [c for family in FAMILIES for c in family.pipeline_classes]
    raise ValueError(
        f"{os.fspath(name)!r} is a {class_name!r} model; ddpo trains the families {known} "
        "(Stable Diffusion 1.x/2.x, Stable Diffusion XL base)"
    )


def load_policy(
    name: str | os.PathLike[str],
    *,
    revision: str = "main",
    resolution: int | None = None,
    **options: Any,
) -> Any:
    """The DDPO policy of model ``name``, of the family its folder declares.

    Args:
        name: built-in name, local folder or hub id.
        revision: hub revision.
        resolution: image side in pixels (``None``: the model's native size).
        options: the pipeline constructor's common keywords (``use_lora``, ``lora_rank``, ...).

    Raises:
        ValueError: as :func:`model_family`, and the family's own checks.
    """
    family = model_family(name, revision)
    if resolution is not None:
        options["resolution"] = resolution
    return family.load(os.fspath(name), pretrained_model_revision=revision, **options)


__all__ = ["FAMILIES", "Family", "load_policy", "model_family"]
