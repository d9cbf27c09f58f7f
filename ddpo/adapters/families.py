"""The family table: each model family's folder classes, policy, options and built-in tiny models.

``ddpo train --pretrained_model X`` and ``ddpo sample --model X`` read ``X``'s
``model_index.json`` (following LoRA-only folders to their base) and build the family's policy.
A new family is one folder ``ddpo/adapters/<family>/`` and one `Family` row in `FAMILIES`;
nothing else dispatches on the family. This module sits above the families: it imports each
one (its tiny-model builder at import, its policy lazily), and nothing below imports it.
"""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from ddpo.adapters.common.sources import (
    TINY_SHAPES_FLOW_NAME,
    TINY_SHAPES_NAME,
    read_json_object,
    register_builtin_model,
    resolve_model_source,
)
from ddpo.adapters.flux.tiny import TINY_FLUX_NAME, tiny_flux_path
from ddpo.adapters.qwenimage.tiny import TINY_QWENIMAGE_NAME, tiny_qwenimage_path
from ddpo.adapters.sd.tiny import TINY_MODEL_NAME, tiny_pipeline_path
from ddpo.adapters.sd3.tiny import TINY_SD3_NAME, tiny_sd3_path
from ddpo.adapters.sdxl.tiny import TINY_SDXL_NAME, tiny_sdxl_path
from ddpo.adapters.wan.tiny import TINY_WAN_NAME, tiny_wan_path

FLOW_OPTIONS: tuple[str, ...] = (
    "noise_level",
    "sde_window_size",
    "sde_window_start",
    "sde_window_range",
    "sde_type",
    "post_window_solver",
    "post_window_step_ratio",
    "lora_targets",
)
"""Options of the flow-matching families (Flow-GRPO's sampler and its LoRA layers): `load_policy`
passes them to those families only."""


class Family(NamedTuple):
    """A model family: its name, the diffusers pipeline classes of its folders, its policy class
    (``policy_class()`` imports it), the family-specific options its constructor takes, and its
    built-in models (name -> the function that gives the folder, building it on first use)."""

    name: str
    pipeline_classes: tuple[str, ...]
    policy_class: Callable[[], type]
    options: tuple[str, ...] = ()
    builtin_models: tuple[tuple[str, Callable[[], Path]], ...] = ()

    def load(self, name: str, **options: Any) -> Any:
        """The family's policy for model ``name`` (``policy_class()(name, **options)``)."""
        return self.policy_class()(name, **options)


def _sd() -> type:
    from ddpo.adapters.sd.policy import DefaultDDPOStableDiffusionPipeline

    return DefaultDDPOStableDiffusionPipeline


def _sdxl() -> type:
    from ddpo.adapters.sdxl.policy import DefaultDDPOStableDiffusionXLPipeline

    return DefaultDDPOStableDiffusionXLPipeline


def _sd3() -> type:
    from ddpo.adapters.sd3.policy import DefaultDDPOStableDiffusion3Pipeline

    return DefaultDDPOStableDiffusion3Pipeline


def _flux() -> type:
    from ddpo.adapters.flux.policy import DefaultDDPOFluxPipeline

    return DefaultDDPOFluxPipeline


def _qwenimage() -> type:
    from ddpo.adapters.qwenimage.policy import DefaultDDPOQwenImagePipeline

    return DefaultDDPOQwenImagePipeline


def _wan() -> type:
    from ddpo.adapters.wan.policy import DefaultDDPOWanPipeline

    return DefaultDDPOWanPipeline


FAMILIES: tuple[Family, ...] = (
    Family("sd", ("StableDiffusionPipeline",), _sd, (), ((TINY_MODEL_NAME, tiny_pipeline_path),)),
    Family("sdxl", ("StableDiffusionXLPipeline",), _sdxl, (), ((TINY_SDXL_NAME, tiny_sdxl_path),)),
    Family(
        "sd3", ("StableDiffusion3Pipeline",), _sd3, FLOW_OPTIONS, ((TINY_SD3_NAME, tiny_sd3_path),)
    ),
    Family("flux", ("FluxPipeline",), _flux, FLOW_OPTIONS, ((TINY_FLUX_NAME, tiny_flux_path),)),
    Family(
        "qwenimage",
        ("QwenImagePipeline",),
        _qwenimage,
        FLOW_OPTIONS,
        ((TINY_QWENIMAGE_NAME, tiny_qwenimage_path),),
    ),
    Family("wan", ("WanPipeline",), _wan, FLOW_OPTIONS, ((TINY_WAN_NAME, tiny_wan_path),)),
)
"""Every family ddpo trains: Stable Diffusion 1.x/2.x, SDXL, SD3/SD3.5, FLUX.1, Qwen-Image and
Wan2.1 text-to-video."""

for _family in FAMILIES:
    for _name, _folder in _family.builtin_models:
        register_builtin_model(_name, _folder)

BUILTIN_MODELS: tuple[str, ...] = (
    TINY_MODEL_NAME,
    TINY_SHAPES_NAME,
    TINY_SHAPES_FLOW_NAME,
    *(name for family in FAMILIES[1:] for name, _ in family.builtin_models),
)
"""Names `ddpo.adapters.resolve_pretrained` knows without a folder or a hub: the families' random
tiny models and the trained ``ddpo-tiny-shapes`` and ``ddpo-tiny-shapes-flow`` (an SD and an SD3
model shipped with the package)."""


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
        "(Stable Diffusion 1.x/2.x, Stable Diffusion XL base, Stable Diffusion 3/3.5, FLUX.1, "
        "Qwen-Image, Wan2.1 text-to-video)"
    )


def check_family_options(
    name: str | os.PathLike[str], revision: str, family_options: dict[str, Any] | None
) -> tuple[Family, dict[str, Any]]:
    """The family of ``name`` and the family options given (``None`` values dropped); reads
    only ``model_index.json``. What its policy class supports of a config is
    `ddpo.trainer.setup.check_policy_supports`.

    Raises:
        ValueError: as :func:`model_family`, or for an option the family does not take.
    """
    family = model_family(name, revision)
    given = {k: v for k, v in (family_options or {}).items() if v is not None}
    foreign = sorted(set(given) - set(family.options))
    if foreign:
        hint = (
            " (its sampler is DDIM: its stochasticity is sample_eta)"
            if set(foreign) - {"lora_targets"}
            else " (its LoRA adapters are on the UNet's attention projections)"
        )
        raise ValueError(
            f"{foreign} apply to the flow-matching families (SD3, FLUX, Qwen-Image, Wan2.1); "
            f"{os.fspath(name)!r} is "
            f"a {family.name!r} model{hint}"
        )
    return family, given


def load_policy(
    name: str | os.PathLike[str],
    *,
    revision: str = "main",
    resolution: int | None = None,
    family_options: dict[str, Any] | None = None,
    **options: Any,
) -> Any:
    """The DDPO policy of model ``name``, of the family its folder declares.

    Args:
        name: built-in name, local folder or hub id.
        revision: hub revision.
        resolution: image side in pixels (``None``: the model's native size).
        family_options: family-specific options, e.g. the flow families' ``noise_level``,
            ``sde_type``, ``sde_window_size``, ``sde_window_start``, ``sde_window_range``,
            ``post_window_solver``, ``post_window_step_ratio`` and ``lora_targets``
            (:data:`FLOW_OPTIONS`); ``None`` values are left at the family's defaults.
        options: the pipeline constructor's common keywords (``use_lora``, ``lora_rank``, ...).

    Raises:
        ValueError: as :func:`model_family`; for a family option the model's family does not
            take (naming it and the family); and the family's own checks.
    """
    family, given = check_family_options(name, revision, family_options)
    if resolution is not None:
        options["resolution"] = resolution
    return family.load(os.fspath(name), pretrained_model_revision=revision, **options, **given)


__all__ = [
    "BUILTIN_MODELS",
    "FAMILIES",
    "FLOW_OPTIONS",
    "Family",
    "check_family_options",
    "load_policy",
    "model_family",
]
