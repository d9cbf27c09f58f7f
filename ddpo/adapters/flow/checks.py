"""The folder checks the flow-matching families share, from JSON only (before weights load):
the pipeline class (another family's is named, with the class to use), the components, the
transformer class and the flow-matching Euler scheduler."""

from pathlib import Path
from typing import Any

from ddpo.adapters.common.hints import family_hint
from ddpo.adapters.common.sources import read_json_object, read_model_index


def folder_config(
    folder: Path, component: str, family: str, name: str = "config.json"
) -> dict[str, Any]:
    """``folder/component/name`` as a JSON object (ValueError naming the missing file)."""
    path = folder / component / name
    if not path.is_file():
        raise ValueError(
            f"{folder} is an incomplete {family} folder: {component}/{name} is missing"
        )
    return read_json_object(path)


def check_flow_pipeline(
    folder: Path,
    *,
    pipeline_class: str,
    components: tuple[str, ...],
    family: str,
    transformer_class: str,
    check_scheduler: bool = True,
) -> dict[str, Any]:
    """The checks every flow family's folder passes first (the scheduler's class only with
    ``check_scheduler``: a family whose folders ship another scheduler, Wan2.1's UniPC, checks
    its own).

    Returns:
        The folder's ``model_index.json``.

    Raises:
        ValueError: another family's folder (its class and the policy to use), missing
            components, another transformer class, or a scheduler that is not flow-matching Euler.
    """
    index_file = folder / "model_index.json"
    index = read_json_object(index_file) if index_file.is_file() else {}
    class_name = index.get("_class_name")
    hint = family_hint(class_name)
    if hint is not None and class_name != pipeline_class:
        raise ValueError(f"{folder} is {hint} ({class_name!r}), not {pipeline_class}")
    index = read_model_index(folder, components, family)
    if index.get("transformer", [None, None])[1] != transformer_class:
        raise ValueError(
            f"{folder}: transformer is {index['transformer'][1]!r}, expected "
            f"{transformer_class!r} ({class_name!r} is not a {family} pipeline)"
        )
    scheduler = folder_config(folder, "scheduler", family, "scheduler_config.json")
    if check_scheduler and scheduler.get("_class_name") != "FlowMatchEulerDiscreteScheduler":
        raise ValueError(
            f"{folder}: scheduler {scheduler.get('_class_name')!r} is not "
            f"'FlowMatchEulerDiscreteScheduler' (the flow-SDE policy needs {family}'s flow "
            "schedule)"
        )
    return index


__all__ = ["check_flow_pipeline", "folder_config"]
