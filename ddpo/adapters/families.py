"""The family table: each model family's folder classes, policy, options and built-in tiny models.

``ddpo train --pretrained_model X`` and ``ddpo sample --model X`` read ``X``'s
``model_index.json`` (following LoRA-only folders to their base) and build the family's policy.
A new family is one folder ``ddpo/adapters/<family>/`` and one `Family` row in `FAMILIES`;
nothing else dispatches on the family. This module sits above the families: it imports each
one (its tiny-model builder at import, its policy lazily), and nothing below imports it.
"""

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from ddpo.adapters.common.hints import register_family_hint
from ddpo.adapters.common.sources import (
    TINY_SHAPES_FLOW_NAME,
    TINY_SHAPES_NAME,
    read_json_object,
    register_builtin_model,
    resolve_model_source,
)

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
    """A model family, one row of `FAMILIES`: its name, its title in help texts and messages,
    the diffusers pipeline classes of its folders, its policy class and its built-in models
    (each as ``"module:attribute"``, imported on first use), and the family-specific options
    its constructor takes."""

    name: str
    title: str
    pipeline_classes: tuple[str, ...]
    policy: str
    """``"module:Class"`` of the family's policy."""
    options: tuple[str, ...] = ()
    builtin_models: tuple[tuple[str, str], ...] = ()
    """``(name, "module:function")``: the function gives the model's folder, building it on
    first use."""

    def policy_class(self) -> type:
        """The family's policy class (imported now)."""
        policy: type = _attribute(self.policy)
        return policy

    @property
    def policy_name(self) -> str:
        """The policy class's name, without importing it."""
        return self.policy.rpartition(":")[2]

    def load(self, name: str, **options: Any) -> Any:
        """The family's policy for model ``name`` (``policy_class()(name, **options)``)."""
        return self.policy_class()(name, **options)


def _attribute(path: str) -> Any:
    """``module:attribute`` imported."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _lazy_folder(path: str) -> Callable[[], Path]:
    """A function calling ``module:function`` (imported at the first call)."""

    def folder() -> Path:
        result: Path = _attribute(path)()
        return result

    return folder


FAMILIES: tuple[Family, ...] = (
    Family("sd", "Stable Diffusion 1.x/2.x", ("StableDiffusionPipeline",),
           "ddpo.adapters.sd.policy:DefaultDDPOStableDiffusionPipeline", (),
           (("ddpo-tiny-random", "ddpo.adapters.sd.tiny:tiny_pipeline_path"),)),
    Family("sdxl", "SDXL", ("StableDiffusionXLPipeline",),
           "ddpo.adapters.sdxl.policy:DefaultDDPOStableDiffusionXLPipeline", (),
           (("ddpo-tiny-sdxl-random", "ddpo.adapters.sdxl.tiny:tiny_sdxl_path"),)),
    Family("sd3", "SD3/SD3.5", ("StableDiffusion3Pipeline",),
           "ddpo.adapters.sd3.policy:DefaultDDPOStableDiffusion3Pipeline", FLOW_OPTIONS,
           (("ddpo-tiny-sd3-random", "ddpo.adapters.sd3.tiny:tiny_sd3_path"),)),
    Family("flux", "FLUX.1", ("FluxPipeline",),
           "ddpo.adapters.flux.policy:DefaultDDPOFluxPipeline", FLOW_OPTIONS,
           (("ddpo-tiny-flux-random", "ddpo.adapters.flux.tiny:tiny_flux_path"),)),
    Family("qwenimage", "Qwen-Image", ("QwenImagePipeline",),
           "ddpo.adapters.qwenimage.policy:DefaultDDPOQwenImagePipeline", FLOW_OPTIONS,
           (("ddpo-tiny-qwenimage-random", "ddpo.adapters.qwenimage.tiny:tiny_qwenimage_path"),)),
    Family("wan", "Wan2.1 text-to-video", ("WanPipeline",),
           "ddpo.adapters.wan.policy:DefaultDDPOWanPipeline", FLOW_OPTIONS,
           (("ddpo-tiny-wan-random", "ddpo.adapters.wan.tiny:tiny_wan_path"),)),
)  # fmt: skip
"""Every family ddpo trains, one row each: a new family is its folder and its row here."""


def families_text() -> str:
    """The families as help texts name them: ``Title (PipelineClass)``, comma-separated."""
    return ", ".join(f"{f.title} ({', '.join(f.pipeline_classes)})" for f in FAMILIES)


for _family in FAMILIES:
    for _name, _folder in _family.builtin_models:
        register_builtin_model(_name, _lazy_folder(_folder))
    for _class in _family.pipeline_classes:  # what a policy given this folder names
        register_family_hint(_class, f"a {_family.title} model: use {_family.policy_name} for it")

BUILTIN_MODELS: tuple[str, ...] = (
    FAMILIES[0].builtin_models[0][0],
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
        f"({', '.join(family.title for family in FAMILIES)})"
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
