"""FLOP budget: FLOPs per UNet call and per DDPO epoch of the preset, counted without compute.

The preset's UNet and VAE are built from their configs on the ``meta`` device (shapes only, no
weights, no arithmetic) and counted with ``FlopCounterMode``: one guided UNet call (a doubled
batch: unconditional and conditional; for SDXL with the pooled text embeddings and the six
micro-conditioning time ids) forward alone (a sampling step), and forward + backward with the
base weights frozen (a LoRA training step with ``train_cfg``, TRL's default: gradients flow
through the activations; the LoRA matrices add well under 1 %); and one VAE decode of a final
latent to the image. The epoch budget, every timestep trained once (``train_timestep_fraction``
1, one inner epoch), is then

    sampling FLOPs = samples x (steps x guided forward + VAE decode)
    training FLOPs = samples x steps x guided forward/backward

(the text encoders, a few GFLOP per prompt, are left out) and ``time_at_50pct_of_peak_s`` what
the total implies at half of ``--peak-tflops`` (default: the measured dense matmul peak on CUDA,
else 989 TFLOP/s, the dense bf16 data-sheet figure of the H100 SXM and of the H200, which has
the same tensor cores). Cheap on any machine: seconds even for ``sdxl``. The flow presets
(SD3, FLUX.1, Qwen-Image, Wan2.1: transformer calls, CFG only where the family uses it, the
stochastic window, the KL reference forward, the text encoders and, for Wan2.1, the video's VAE
decode) are counted by :mod:`flow_flops`.
"""

import argparse
import json
from pathlib import Path
from typing import Any

import harness
import presets
import random_models as models
import torch

NAME = "flops"
H100_SXM_DENSE_BF16_TFLOPS = 989.0
PROMPT_TOKENS = 77


def _configs(preset: presets.Preset) -> tuple[dict[str, Any], dict[str, Any]]:
    """The preset's UNet and VAE configs: the full-size architectures' dictionaries, or the
    model folder's ``unet/config.json`` and ``vae/config.json``."""
    if preset.model in models.ARCHITECTURES:
        return models.ARCHITECTURES[preset.model]
    from ddpo.adapters.common.sources import resolve_pretrained

    folder = Path(resolve_pretrained(preset.model))
    unet: dict[str, Any] = json.loads((folder / "unet" / "config.json").read_text())
    vae: dict[str, Any] = json.loads((folder / "vae" / "config.json").read_text())
    return unet, vae


def unet_flops(preset: presets.Preset, batch_size: int) -> dict[str, int]:
    """FLOPs of one guided UNet call on ``batch_size`` samples (forward; forward + backward)
    and of decoding ``batch_size`` final latents with the VAE."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet_config, vae_config = _configs(preset)
    rows = 2 * batch_size  # classifier-free guidance: unconditional and conditional halves
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(vae_config)
        unet.requires_grad_(False)
        side = int(unet.config.sample_size)
        latents = torch.randn(rows, int(unet.config.in_channels), side, side)
        embeds = torch.randn(rows, PROMPT_TOKENS, int(unet.config.cross_attention_dim))
        timesteps = torch.full((rows,), 500)
        extra: dict[str, Any] = {}
        if unet.config.addition_embed_type == "text_time":
            time_ids = 6
            pooled = int(unet.config.projection_class_embeddings_input_dim) - time_ids * int(
                unet.config.addition_time_embed_dim
            )
            extra["added_cond_kwargs"] = {
                "text_embeds": torch.randn(rows, pooled),
                "time_ids": torch.randn(rows, time_ids),
            }
        final = torch.randn(batch_size, int(vae.config.latent_channels), side, side)

    def forward() -> None:
        with torch.no_grad():
            unet(latents, timesteps, encoder_hidden_states=embeds, **extra)

    def forward_backward() -> None:
        inputs = latents.detach().requires_grad_(True)
        out = unet(inputs, timesteps, encoder_hidden_states=embeds, **extra).sample
        out.float().square().mean().backward()

    def decode() -> None:
        with torch.no_grad():
            vae.decode(final)

    return {
        "forward": harness.count_flops(forward),
        "forward_backward": harness.count_flops(forward_backward),
        "vae_decode": harness.count_flops(decode),
    }


def peak(args: argparse.Namespace, device: torch.device) -> tuple[float, str]:
    """The peak to compare with, in TFLOP/s, and where it comes from."""
    peak_tflops = getattr(args, "peak_tflops", None)
    if peak_tflops is not None:
        return float(peak_tflops), "argument"
    if device.type == "cuda":
        return harness.matmul_peak_flops(device, torch.bfloat16) / 1e12, "measured bf16 matmul"
    return H100_SXM_DENSE_BF16_TFLOPS, "H100 SXM / H200 data sheet (dense bf16)"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Count the preset's UNet and VAE FLOPs and the epoch budget they imply (flow presets:
    :mod:`flow_flops`)."""
    preset = presets.resolve(args)
    device = harness.resolve_device(getattr(args, "device", "auto"))
    peak_tflops, peak_source = peak(args, device)
    if presets.is_flow(preset):
        import flow_flops

        result: dict[str, Any] = flow_flops.run(args, preset, peak_tflops, peak_source)
        return result
    per_call = unet_flops(preset, 1)
    samples = preset.sample_num_batches_per_epoch * preset.sample_batch_size
    sampling_unet = samples * preset.num_steps * per_call["forward"]
    decoding = samples * per_call["vae_decode"]
    sampling = sampling_unet + decoding
    training = samples * preset.num_steps * per_call["forward_backward"]
    total = sampling + training
    seconds = total / (0.5 * peak_tflops * 1e12)
    rows = [
        {"quantity": "unet_forward_gflop_per_sample_guided", "value": per_call["forward"] / 1e9},
        {
            "quantity": "unet_fwd_bwd_gflop_per_sample_guided",
            "value": per_call["forward_backward"] / 1e9,
        },
        {"quantity": "vae_decode_gflop_per_sample", "value": per_call["vae_decode"] / 1e9},
        {"quantity": "epoch_sampling_unet_pflop", "value": sampling_unet / 1e15},
        {"quantity": "epoch_vae_decode_pflop", "value": decoding / 1e15},
        {"quantity": "epoch_sampling_pflop", "value": sampling / 1e15},
        {"quantity": "epoch_training_pflop", "value": training / 1e15},
        {"quantity": "epoch_total_pflop", "value": total / 1e15},
        {"quantity": "peak_tflop_per_s", "value": peak_tflops},
        {"quantity": "time_at_50pct_of_peak_s", "value": seconds},
    ]
    return harness.result(
        NAME,
        settings=presets.describe(preset, args, device),
        environment=harness.environment(device),
        rows=rows,
        summary={
            "samples_per_epoch": samples,
            "train_cfg": True,
            "peak_source": peak_source,
            "epoch_total_pflop": total / 1e15,
            "time_at_50pct_of_peak_s": seconds,
        },
    )
