"""Stable Diffusion weights on disk: the DDIM scheduler check, LoRA configs and state dicts in
diffusers' and peft's key formats, and dtype casts (used by `DefaultDDPOStableDiffusionPipeline`).
"""

import json
from pathlib import Path
from typing import Any, Final

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils.state_dict_utils import (
    convert_state_dict_to_diffusers,
    convert_unet_state_dict_to_peft,
)
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from ddpo.adapters.registry import LORA_WEIGHTS_NAME, read_json_object, write_base_model
from ddpo.adapters.sampling import _unwrap

LORA_TARGET_MODULES: Final[tuple[str, ...]] = ("to_k", "to_q", "to_v", "to_out.0")
"""UNet attention projections that get LoRA adapters (as in TRL and ddpo-pytorch)."""

_DDIM_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"


def check_ddim_config(folder: Path) -> dict[str, Any]:
    """The folder's scheduler config, checked to be convertible to DDIM (before loading weights)."""
    config_file = folder / "scheduler" / "scheduler_config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} has no scheduler/scheduler_config.json")
    config = read_json_object(config_file)
    name = config.get("_class_name", "?")
    compatible = {"DDIMScheduler", *DDIMScheduler._compatibles}
    if name not in compatible:
        raise ValueError(
            f"scheduler {name!r} of {folder} cannot be turned into a DDIM scheduler (it is not a "
            f"DDPM-family noise schedule; compatible: {sorted(compatible)})"
        )
    if config.get("trained_betas") is None:
        schedule = config.get("beta_schedule", "linear")
        if schedule not in _DDIM_BETA_SCHEDULES:
            raise ValueError(
                f"scheduler {name!r} of {folder} has beta_schedule={schedule!r}, which DDIM does "
                f"not support (supported: {_DDIM_BETA_SCHEDULES})"
            )
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in _PREDICTION_TYPES:
        raise ValueError(
            f"scheduler {name!r} of {folder} has prediction_type={prediction!r}; DDIM supports "
            f"{_PREDICTION_TYPES}"
        )
    if config.get("thresholding", False):
        raise ValueError(f"scheduler {name!r} of {folder} uses thresholding, not supported")
    return config


def cast_dtype(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module`` with its floating-point tensors in ``dtype``, in place.

    Not ``ModelMixin.to(dtype)``, which warns about modules to keep in float32 even when the
    model lists none (a UNet's list is empty).
    """
    return module._apply(lambda t: t.to(dtype) if t.is_floating_point() else t)


def lora_alpha_value(value: float | int) -> Any:
    """LoRA alpha as peft's config declares it (an int) when it is integral."""
    return int(value) if float(value).is_integer() else float(value)


def lora_parameters_to_float32(unet: nn.Module) -> None:
    for name, param in unet.named_parameters():
        is_lora = "lora_" in name
        param.requires_grad_(is_lora)
        if is_lora:
            param.data = param.data.to(torch.float32)


def _lora_state_dict_diffusers(unet: nn.Module) -> dict[str, Tensor]:
    """The UNet's LoRA weights in diffusers' key format (``unet.`` prefix added by the saver)."""
    peft_state = get_peft_model_state_dict(unet)
    converted: dict[str, Tensor] = convert_state_dict_to_diffusers(peft_state)
    return {k: v.detach().to(torch.float32).contiguous() for k, v in converted.items()}


def _peft_state_from_file(path: Path) -> dict[str, Tensor]:
    """LoRA weights of a diffusers ``pytorch_lora_weights.safetensors`` in peft's key format."""
    raw = load_file(path)
    unet_only = {k.removeprefix("unet."): v for k, v in raw.items() if k.startswith("unet.")}
    if not unet_only:
        raise ValueError(f"{path} holds no UNet LoRA weights (no keys starting with 'unet.')")
    converted: dict[str, Tensor] = convert_unet_state_dict_to_peft(unet_only)
    return converted


def saved_lora_config(path: Path) -> LoraConfig:
    """The ``LoraConfig`` of saved LoRA weights: rank from the tensors; alpha and target modules
    from the file's adapter metadata when present (else alpha = rank, our target modules)."""
    state = _peft_state_from_file(path)
    ranks = {int(v.shape[0]) for k, v in state.items() if "lora_A" in k}
    if len(ranks) != 1:
        raise ValueError(f"{path}: expected LoRA weights of one rank, found ranks {sorted(ranks)}")
    rank = ranks.pop()
    alpha: Any = rank
    targets = list(LORA_TARGET_MODULES)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("lora_adapter_metadata"):
        saved = json.loads(metadata["lora_adapter_metadata"])
        alpha = saved.get("unet.lora_alpha", alpha)
        targets = list(saved.get("unet.target_modules") or targets)
    return LoraConfig(
        r=rank,
        lora_alpha=lora_alpha_value(float(alpha)),
        init_lora_weights="gaussian",
        target_modules=targets,
    )


def load_lora_state(unet: nn.Module, path: Path) -> None:
    """Load the LoRA weights of a diffusers ``pytorch_lora_weights.safetensors`` into ``unet``'s
    adapter (ValueError naming the file if they do not match)."""
    state = _peft_state_from_file(path)
    result = set_peft_model_state_dict(unet, state, adapter_name="default")
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    unexpected = list(getattr(result, "unexpected_keys", []))
    if missing or unexpected:
        raise ValueError(
            f"LoRA weights in {path} do not match the UNet: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )


def write_lora(unet: nn.Module, out: Path, base_name: str, base_revision: str) -> None:
    """Write ``unet``'s LoRA adapter as diffusers' ``pytorch_lora_weights.safetensors`` (with its
    full LoRA config as metadata, so diffusers' loader rebuilds the same adapter) and the base
    model's name beside it."""
    config: Any = unet.peft_config
    metadata: dict[str, Any] = config["default"].to_dict()
    StableDiffusionPipeline.save_lora_weights(
        save_directory=out,
        unet_lora_layers=_lora_state_dict_diffusers(unet),
        weight_name=LORA_WEIGHTS_NAME,
        safe_serialization=True,
        unet_lora_adapter_metadata=metadata,
    )
    write_base_model(out, base_name, base_revision)


def save_unet_weights(unet: nn.Module, out: Path, *, lora: bool, base: tuple[str, str]) -> None:
    """The UNet's trained weights into ``out``: its LoRA adapter (``lora``) or the whole UNet in
    diffusers' format under ``out/unet``; ``base`` is the base model's ``(name, revision)``."""
    out.mkdir(parents=True, exist_ok=True)
    if lora:
        write_lora(unet, out, *base)
    else:
        unet.save_pretrained(out / "unet", safe_serialization=True)  # type: ignore[operator]


def load_unet_weights(unet: nn.Module, folder: Path, *, lora: bool) -> None:
    """Inverse of `save_unet_weights` (ValueError naming a missing file)."""
    if lora:
        load_lora_state(unet, folder / LORA_WEIGHTS_NAME)
        lora_parameters_to_float32(unet)
        return
    weights_file = folder / "unet" / UNET_WEIGHTS
    if not weights_file.is_file():
        raise ValueError(f"no UNet checkpoint at {weights_file}")
    unet.load_state_dict(load_file(weights_file, device=str(next(unet.parameters()).device)))


def find_unet(models: list[Any], target: nn.Module) -> int:
    """Index of ``target`` (else of the first UNet) among accelerate's hook ``models``."""
    unwrapped = [_unwrap(m) for m in models]
    for i, model in enumerate(unwrapped):
        if model is target:
            return i
    for i, model in enumerate(unwrapped):
        if isinstance(model, UNet2DConditionModel):
            return i
    raise ValueError(
        f"no UNet among the {len(models)} models given to the checkpoint hook: "
        f"{[type(m).__name__ for m in models]}"
    )


__all__ = [
    "LORA_TARGET_MODULES",
    "UNET_WEIGHTS",
    "cast_dtype",
    "check_ddim_config",
    "find_unet",
    "load_lora_state",
    "load_unet_weights",
    "lora_alpha_value",
    "lora_parameters_to_float32",
    "save_unet_weights",
    "saved_lora_config",
    "write_lora",
]
