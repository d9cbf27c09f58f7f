"""Stable Diffusion weights on disk: the DDIM scheduler check, LoRA configs and state dicts in
diffusers' and peft's key formats, and dtype casts (used by `DefaultDDPOStableDiffusionPipeline`).
"""

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils.state_dict_utils import (
    convert_state_dict_to_diffusers,
    convert_unet_state_dict_to_peft,
)
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from ddpo.adapters.common.args import unwrap
from ddpo.adapters.common.sources import LORA_WEIGHTS_NAME, read_json_object, write_base_model

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
    """The ``LoraConfig`` of saved UNet LoRA weights (:func:`lora_config_of_file`)."""
    return lora_config_of_file(
        path, _peft_state_from_file(path), component="unet", targets=LORA_TARGET_MODULES
    )


def lora_config_of_file(
    path: Path, state: dict[str, Tensor], *, component: str, targets: tuple[str, ...]
) -> LoraConfig:
    """The ``LoraConfig`` of the ``component`` adapter saved in ``path`` (its peft ``state``):
    rank from the tensors; alpha and target modules from the file's adapter metadata when
    present (else alpha = rank and ``targets``)."""
    ranks = {int(v.shape[0]) for k, v in state.items() if "lora_A" in k}
    if len(ranks) != 1:
        raise ValueError(f"{path}: expected LoRA weights of one rank, found ranks {sorted(ranks)}")
    rank = ranks.pop()
    alpha: Any = rank
    saved_targets = list(targets)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("lora_adapter_metadata"):
        saved = json.loads(metadata["lora_adapter_metadata"])
        alpha = saved.get(f"{component}.lora_alpha", alpha)
        saved_targets = list(saved.get(f"{component}.target_modules") or saved_targets)
    return LoraConfig(
        r=rank,
        lora_alpha=lora_alpha_value(float(alpha)),
        init_lora_weights="gaussian",
        target_modules=saved_targets,
    )


def load_lora_state(unet: nn.Module, path: Path) -> None:
    """Load the LoRA weights of a diffusers ``pytorch_lora_weights.safetensors`` into ``unet``'s
    adapter (ValueError naming the file if they do not match)."""
    load_adapter_state(unet, _peft_state_from_file(path), path, "the UNet")


def load_adapter_state(module: nn.Module, state: dict[str, Tensor], path: Path, what: str) -> None:
    """Load a peft LoRA ``state`` (read from ``path``) into ``module``'s default adapter.

    Raises:
        ValueError: naming the file and ``what`` if keys are missing or unexpected.
    """
    result = set_peft_model_state_dict(module, state, adapter_name="default")
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    unexpected = list(getattr(result, "unexpected_keys", []))
    if missing or unexpected:
        raise ValueError(
            f"LoRA weights in {path} do not match {what}: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )


def write_lora(
    unet: nn.Module, out: Path, base_name: str, base_revision: str, *, saver: Any = None
) -> None:
    """Write ``unet``'s LoRA adapter as diffusers' ``pytorch_lora_weights.safetensors`` (with its
    full LoRA config as metadata, so diffusers' loader rebuilds the same adapter) and the base
    model's name beside it. ``saver``: the diffusers pipeline class whose ``save_lora_weights``
    writes the file (default ``StableDiffusionPipeline``; SDXL's has the same UNet keys)."""
    config: Any = unet.peft_config
    metadata: dict[str, Any] = config["default"].to_dict()
    (saver or StableDiffusionPipeline).save_lora_weights(
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


_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_model_args(
    *, lora_rank: Any, lora_alpha: Any, torch_dtype: Any, lora_init_seed: Any
) -> None:
    """The checks of a pipeline's constructor arguments, before anything loads.

    Raises:
        TypeError, ValueError: naming the argument and the value.
    """
    if isinstance(lora_init_seed, bool) or not isinstance(lora_init_seed, int):
        raise TypeError(f"lora_init_seed must be an int, got {lora_init_seed!r}")
    if not 0 <= lora_init_seed < 2**63:
        raise ValueError(f"lora_init_seed must be in [0, 2**63), got {lora_init_seed!r}")
    if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank <= 0:
        raise ValueError(f"lora_rank must be a positive integer, got {lora_rank!r}")
    if not lora_alpha > 0:
        raise ValueError(f"lora_alpha must be > 0, got {lora_alpha!r}")
    if torch_dtype is not None and torch_dtype not in _DTYPES:
        raise ValueError(f"torch_dtype must be one of {_DTYPES} or None, got {torch_dtype!r}")


def new_lora_config(lora_rank: int, lora_alpha: float | int, lora_file: Path | None) -> LoraConfig:
    """The adapter config: the saved adapter's own (rank, alpha, targets) when loading
    ``lora_file``, else rank ``lora_rank`` on :data:`LORA_TARGET_MODULES`, Gaussian init."""
    if lora_file is not None:
        return saved_lora_config(lora_file)
    return LoraConfig(
        r=lora_rank,
        lora_alpha=lora_alpha_value(lora_alpha),
        init_lora_weights="gaussian",
        target_modules=list(LORA_TARGET_MODULES),
    )


def setup_trainable_unet(
    unet: nn.Module,
    *,
    use_lora: bool,
    lora_config: LoraConfig,
    lora_file: Path | None,
    lora_init_seed: int,
    load_lora: Callable[[nn.Module, Path], None] | None = None,
) -> nn.Module | None:
    """Make ``unet``'s trainable parameters: LoRA adapters (float32) or the whole UNet (float32).

    New adapters are drawn after ``torch.manual_seed(lora_init_seed)`` inside ``fork_rng`` (peft
    draws them from the global generator), so the same script gives the same adapters in any
    process and the caller's RNG is left as it was. Saved LoRA weights in ``lora_file`` are
    loaded into the adapter, or, for full fine-tuning, fused into the UNet.

    ``load_lora(module, path)`` reads the saved weights (default: UNet keys, `load_lora_state`;
    the flow families pass their transformer loader).

    Returns:
        For full fine-tuning, a frozen copy of the UNet (the KL reference; it doubles the UNet's
        memory); ``None`` with LoRA (the reference is the UNet with adapters disabled).
    """
    unet.requires_grad_(False)
    if not use_lora:
        cast_dtype(unet, torch.float32)
    if use_lora or lora_file is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(lora_init_seed)
            unet.add_adapter(lora_config)  # type: ignore[operator]
        if lora_file is not None:
            (load_lora or load_lora_state)(unet, lora_file)
        lora_parameters_to_float32(unet)
    if use_lora:
        return None
    if lora_file is not None:  # fold the loaded LoRA weights into the full UNet
        unet.fuse_lora()  # type: ignore[operator]
        unet.unload_lora()  # type: ignore[operator]
    unet.requires_grad_(True)
    return copy.deepcopy(unet).requires_grad_(False).eval()


def fused_unet(unet: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``unet`` for saving: with LoRA adapters, a copy with them fused in, in ``dtype``;
    otherwise ``unet`` itself."""
    if not getattr(unet, "_hf_peft_config_loaded", False):
        return unet
    fused = copy.deepcopy(unet)
    fused.fuse_lora()  # type: ignore[operator]
    fused.unload_lora()  # type: ignore[operator]
    return cast_dtype(fused, dtype)


def load_vae(vae: str | os.PathLike[str], torch_dtype: torch.dtype | None) -> Any:
    """A replacement VAE from a folder (its root or its ``vae/``) or a hub id."""
    text = os.fspath(vae)
    path = Path(text).expanduser()
    subfolder = "vae" if (path / "vae" / "config.json").is_file() else None
    if path.is_dir() and subfolder is None and not (path / "config.json").is_file():
        raise ValueError(f"vae={text!r} is a folder without config.json (nor vae/config.json)")
    try:
        return AutoencoderKL.from_pretrained(
            str(path) if path.is_dir() else text, subfolder=subfolder, torch_dtype=torch_dtype
        )
    except Exception as err:
        raise ValueError(f"vae={text!r}: could not load an AutoencoderKL from it ({err})") from err


def find_unet(models: list[Any], target: nn.Module) -> int:
    """Index of ``target`` (else of the first UNet) among accelerate's hook ``models``."""
    unwrapped = [unwrap(m) for m in models]
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
    "check_model_args",
    "find_unet",
    "fused_unet",
    "load_adapter_state",
    "load_lora_state",
    "load_unet_weights",
    "load_vae",
    "lora_alpha_value",
    "lora_config_of_file",
    "lora_parameters_to_float32",
    "new_lora_config",
    "save_unet_weights",
    "saved_lora_config",
    "setup_trainable_unet",
    "write_lora",
]
