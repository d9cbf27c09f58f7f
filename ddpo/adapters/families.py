"""Model families by the pipeline class a model folder declares: which policy class trains it.

``ddpo train --pretrained_model X`` and ``ddpo sample --model X`` read ``X``'s
``model_index.json`` (following LoRA-only folders to their base) and build the family's policy.
A new family adds one `Family` entry to `FAMILIES`; nothing else dispatches on the family.
"""

import os
from collections.abc import Callable
from typing import Any, NamedTuple

from ddpo.adapters.registry import read_json_object, resolve_model_source

FLOW_OPTIONS: tuple[str, ...] = (
    "noise_level",
    "sde_window_size",
    "sde_window_start",
    "sde_window_range",
    "sde_type",
    "lora_targets",
)
"""Options of the flow-matching families (Flow-GRPO's sampler and its LoRA layers): `load_policy`
passes them to those families only."""


class Family(NamedTuple):
    """A model family: its name, the diffusers pipeline classes of its folders, its policy class
    (``policy_class()`` imports it: diffusers loads only when a family is used), and the
    family-specific options its constructor takes."""

    name: str
    pipeline_classes: tuple[str, ...]
    policy_class: Callable[[], type]
    options: tuple[str, ...] = ()

    def load(self, name: str, **options: Any) -> Any:
        """The family's policy for model ``name`` (``policy_class()(name, **options)``)."""
        return self.policy_class()(name, **options)


def _sd() -> type:
    from ddpo.adapters.default import DefaultDDPOStableDiffusionPipeline

    return DefaultDDPOStableDiffusionPipeline


def _sdxl() -> type:
    from ddpo.adapters.sdxl import DefaultDDPOStableDiffusionXLPipeline

    return DefaultDDPOStableDiffusionXLPipeline


def _sd3() -> type:
    from ddpo.adapters.sd3 import DefaultDDPOStableDiffusion3Pipeline

    return DefaultDDPOStableDiffusion3Pipeline


def _flux() -> type:
    from ddpo.adapters.flux import DefaultDDPOFluxPipeline

    return DefaultDDPOFluxPipeline


FAMILIES: tuple[Family, ...] = (
    Family("sd", ("StableDiffusionPipeline",), _sd),
    Family("sdxl", ("StableDiffusionXLPipeline",), _sdxl),
    Family("sd3", ("StableDiffusion3Pipeline",), _sd3, FLOW_OPTIONS),
    Family("flux", ("FluxPipeline",), _flux, FLOW_OPTIONS),
)
"""Every family ddpo trains: Stable Diffusion 1.x/2.x, SDXL, SD3/SD3.5 and FLUX.1."""


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
        "(Stable Diffusion 1.x/2.x, Stable Diffusion XL base, Stable Diffusion 3/3.5, FLUX.1)"
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
            f"{foreign} apply to the flow-matching families (SD3, FLUX); {os.fspath(name)!r} is "
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
            ``sde_type``, ``sde_window_size``, ``sde_window_start``, ``sde_window_range`` and
            ``lora_targets`` (:data:`FLOW_OPTIONS`); ``None`` values are left at the family's
            defaults.
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
    "FAMILIES",
    "FLOW_OPTIONS",
    "Family",
    "check_family_options",
    "load_policy",
    "model_family",
]
