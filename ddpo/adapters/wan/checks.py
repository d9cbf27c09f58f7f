"""Wan2.1's model-folder checks (from its JSON files only, before any weights load), its video
size checks, and the flow-matching Euler scheduler the policy samples with.

A DDPO flow policy for Wan2.1 text-to-video needs ``WanPipeline``'s components: a
``WanTransformer3DModel``, the causal video VAE ``AutoencoderKLWan``, the UMT5 encoder with its
T5 tokenizer, and a flow-matching scheduler. Wan 2.2's two-expert folders (``transformer_2``
with a ``boundary_ratio``) and its TI2V folder (``expand_timesteps``) are refused, as are other
families' folders (the class found) and widths that do not fit together.

The stock Wan2.1 folders ship a ``UniPCMultistepScheduler`` on flow sigmas with ``flow_shift``
(3.0 for 480p, 5.0 for 720p). The policy samples instead with Flow-GRPO's sampler, the
flow-matching Euler ODE with its SDE steps in a window, as Flow-GRPO and DanceGRPO train Wan: on
the sigmas of a ``FlowMatchEulerDiscreteScheduler`` whose static ``shift`` is the folder's
``flow_shift`` (:func:`wan_euler_scheduler`). Its deterministic sampler (``noise_level=0``) is
then stock ``WanPipeline`` run with that Euler scheduler, not with UniPC; a folder that ships a
``FlowMatchEulerDiscreteScheduler`` (one saved by the policy, say) is sampled with it as it is.
"""

from pathlib import Path
from typing import Any

from diffusers import FlowMatchEulerDiscreteScheduler

from ddpo.adapters.common.args import Size
from ddpo.adapters.flow.checks import check_flow_pipeline, folder_config

WAN_FAMILY = "Wan2.1"

WAN_COMPONENTS: tuple[str, ...] = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
"""Components a Wan2.1 folder's ``model_index.json`` must list."""

WAN_SCHEDULERS: tuple[str, ...] = ("UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler")
"""The scheduler classes a Wan2.1 folder may ship: the stock UniPC on flow sigmas (its
``flow_shift`` becomes the Euler schedule's shift), or flow-matching Euler itself."""


def _listed(entry: Any) -> bool:
    return isinstance(entry, list) and bool(entry) and entry[0] is not None


def check_wan_folder(folder: Path) -> dict[str, Any]:
    """Check that ``folder`` holds a Wan2.1 text-to-video model whose parts fit together.

    Returns:
        The transformer's ``config.json``.

    Raises:
        ValueError: naming the folder and what is wrong: another family (the class found), a
            Wan 2.2 folder (a second transformer, a ``boundary_ratio`` or
            ``expand_timesteps``), a transformer that is not ``WanTransformer3DModel`` or takes
            an image, a VAE that is not ``AutoencoderKLWan``, a scheduler the policy cannot map
            to its flow-matching Euler schedule (:func:`wan_flow_shift`), or widths of text
            encoder, transformer and VAE that disagree.
    """
    index = check_flow_pipeline(
        folder,
        pipeline_class="WanPipeline",
        components=WAN_COMPONENTS,
        family=WAN_FAMILY,
        transformer_class="WanTransformer3DModel",
        check_scheduler=False,
    )
    two_experts = _listed(index.get("transformer_2")) or index.get("boundary_ratio") is not None
    if two_experts or index.get("expand_timesteps"):
        raise ValueError(
            f"{folder} is a Wan 2.2 model (transformer_2={index.get('transformer_2')!r}, "
            f"boundary_ratio={index.get('boundary_ratio')!r}, expand_timesteps="
            f"{index.get('expand_timesteps')!r}): DefaultDDPOWanPipeline trains Wan2.1 "
            "text-to-video (one transformer, one timestep per video)"
        )
    if index["vae"][1] != "AutoencoderKLWan":
        raise ValueError(
            f"{folder}: vae is {index['vae'][1]!r}, expected 'AutoencoderKLWan' (Wan2.1's causal "
            "video VAE with latents_mean and latents_std)"
        )
    wan_flow_shift(folder_config(folder, "scheduler", WAN_FAMILY, "scheduler_config.json"), folder)
    transformer = folder_config(folder, "transformer", WAN_FAMILY)
    vae = folder_config(folder, "vae", WAN_FAMILY)
    if transformer.get("image_dim") is not None:
        raise ValueError(
            f"{folder}: the transformer takes image embeddings (image_dim="
            f"{transformer.get('image_dim')}): an image-to-video model, not Wan2.1 text-to-video"
        )
    width = folder_config(folder, "text_encoder", WAN_FAMILY).get("d_model")
    if transformer.get("text_dim", 4096) != width:
        raise ValueError(
            f"{folder}: the transformer's text_dim={transformer.get('text_dim', 4096)} is not the "
            f"text encoder's (UMT5) d_model={width}"
        )
    channels = vae.get("z_dim", 16)
    for name in ("in_channels", "out_channels"):
        if transformer.get(name, 16) != channels:
            raise ValueError(
                f"{folder}: the transformer's {name}={transformer.get(name, 16)} is not the "
                f"VAE's z_dim={channels}"
            )
    for name in ("latents_mean", "latents_std"):
        values = vae.get(name)
        if values is not None and (not isinstance(values, list) or len(values) != channels):
            raise ValueError(
                f"{folder}: the VAE's {name} must hold z_dim={channels} numbers, got {values!r}"
            )
    patch = transformer.get("patch_size", [1, 2, 2])
    if not isinstance(patch, list) or len(patch) != 3 or patch[1] != patch[2]:
        raise ValueError(
            f"{folder}: the transformer's patch_size={patch!r} is not (frames, side, side)"
        )
    return transformer


def wan_flow_shift(scheduler: dict[str, Any], folder: Path | str = "the folder") -> float:
    """The static shift of the flow-matching Euler schedule of a Wan folder's scheduler config:
    UniPC's ``flow_shift`` (on flow sigmas, ``prediction_type="flow_prediction"``), or flow
    -matching Euler's own ``shift``.

    Raises:
        ValueError: naming the folder and the scheduler for another class, UniPC without flow
            sigmas, or a dynamic shift (which ``WanPipeline`` never sets).
    """
    name = scheduler.get("_class_name")
    if name not in WAN_SCHEDULERS:
        raise ValueError(
            f"{folder}: scheduler {name!r} is not one of {WAN_SCHEDULERS} (the flow-SDE policy "
            "samples Wan2.1 with a flow-matching Euler schedule of the folder's shift)"
        )
    if scheduler.get("use_dynamic_shifting", False):
        raise ValueError(
            f"{folder}: scheduler {name!r} has use_dynamic_shifting=True, which WanPipeline "
            "never sets (it passes no mu); Wan2.1 uses a static shift"
        )
    if name == "FlowMatchEulerDiscreteScheduler":
        return float(scheduler.get("shift", 1.0))
    flow = scheduler.get("use_flow_sigmas", False)
    if not flow or scheduler.get("prediction_type") != "flow_prediction":
        raise ValueError(
            f"{folder}: scheduler 'UniPCMultistepScheduler' must run on flow sigmas "
            "(use_flow_sigmas=True, prediction_type='flow_prediction') as Wan2.1's does, got "
            f"use_flow_sigmas={flow!r}, prediction_type={scheduler.get('prediction_type')!r}"
        )
    return float(scheduler.get("flow_shift", 1.0))


def wan_euler_scheduler(scheduler: Any) -> Any:
    """The flow-matching Euler scheduler the policy samples with, for a Wan pipeline's
    ``scheduler``: itself (a copy) if it is ``FlowMatchEulerDiscreteScheduler``, else one with
    the same ``num_train_timesteps`` and the static shift :func:`wan_flow_shift` (UniPC's
    ``flow_shift``). Stock ``WanPipeline`` with this scheduler samples as the policy's ODE.

    Raises:
        ValueError: as :func:`wan_flow_shift`.
    """
    config = dict(scheduler.config)
    config["_class_name"] = type(scheduler).__name__
    shift = wan_flow_shift(config)
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return FlowMatchEulerDiscreteScheduler.from_config(config)
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=int(config.get("num_train_timesteps", 1000)), shift=shift
    )


def wan_video_factors(folder: Path) -> tuple[int, int, int]:
    """``(spatial, temporal, patch)``: pixels per latent along a side (the VAE's
    ``scale_factor_spatial``, 8), frames per latent frame after the first (its
    ``scale_factor_temporal``, 4), and the transformer's spatial patch (2), as the stock
    pipeline reads them."""
    vae = folder_config(folder, "vae", WAN_FAMILY)
    transformer = folder_config(folder, "transformer", WAN_FAMILY)
    spatial = int(vae.get("scale_factor_spatial") or 8)
    temporal = int(vae.get("scale_factor_temporal") or 4)
    return spatial, temporal, int(transformer.get("patch_size", [1, 2, 2])[1])


def check_wan_resolution(resolution: Size, *, latent_factor: int, patch_size: int) -> Size:
    """``resolution`` checked to be positive multiples of ``latent_factor * patch_size`` per side
    (the transformer's patches; diffusers would silently round the size down).

    Raises:
        ValueError: naming ``resolution``, its value and the multiple needed.
    """
    step = latent_factor * patch_size
    if min(resolution) <= 0 or resolution[0] % step or resolution[1] % step:
        raise ValueError(
            f"resolution must be positive multiples of {step} per side for this Wan2.1 model (the "
            f"VAE's {latent_factor}x times the transformer's patch {patch_size}), got "
            f"resolution={resolution!r}"
        )
    return resolution


def check_num_frames(num_frames: Any, *, temporal_factor: int) -> int:
    """``num_frames`` checked to be ``temporal_factor k + 1`` (``k >= 0``): the VAE keeps the
    first frame and packs every ``temporal_factor`` after it into one latent frame (diffusers
    would silently round another count).

    Raises:
        ValueError: naming ``num_frames``, its value and the counts allowed.
    """
    if (
        isinstance(num_frames, bool)
        or not isinstance(num_frames, int)
        or num_frames < 1
        or (num_frames - 1) % temporal_factor
    ):
        raise ValueError(
            f"num_frames must be an int {temporal_factor} k + 1 (k >= 0: 1, "
            f"{temporal_factor + 1}, {2 * temporal_factor + 1}, ..., 81 as Wan2.1's default), "
            f"got num_frames={num_frames!r}"
        )
    return num_frames


__all__ = [
    "WAN_COMPONENTS",
    "WAN_FAMILY",
    "WAN_SCHEDULERS",
    "check_num_frames",
    "check_wan_folder",
    "check_wan_resolution",
    "wan_euler_scheduler",
    "wan_flow_shift",
    "wan_video_factors",
]
