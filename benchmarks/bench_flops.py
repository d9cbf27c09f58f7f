"""FLOP budget: FLOPs per UNet call and per DDPO epoch of the preset, counted without compute.

The preset's UNet is built from its config on the ``meta`` device (shapes only, no weights, no
arithmetic) and one guided call (a doubled batch) is counted with ``FlopCounterMode``, forward
alone (a sampling step) and forward + backward with the base weights frozen (a LoRA training
step: gradients flow through the activations; the LoRA matrices add well under 1 %). The
epoch budget is then

    epoch FLOPs = samples x steps x (forward per sample + forward/backward per sample)

and ``time_at_50pct_of_peak_s`` what it implies at half of ``--peak-tflops`` (default: the
measured dense matmul peak on CUDA, else the H100 SXM's dense bf16 figure of 989 TFLOP/s, a
data-sheet number). Cheap on any machine: seconds even for ``sd15``.
"""

import argparse
import json
from pathlib import Path
from typing import Any

import harness
import presets
import torch

NAME = "flops"
H100_SXM_DENSE_BF16_TFLOPS = 989.0


def _unet_config(preset: presets.Preset) -> dict[str, Any]:
    if preset.model == "sd15":
        return {
            "sample_size": 64,
            "block_out_channels": (320, 640, 1280, 1280),
            "layers_per_block": 2,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
        }
    from ddpo.adapters.registry import resolve_pretrained

    folder = Path(resolve_pretrained(preset.model))
    config: dict[str, Any] = json.loads((folder / "unet" / "config.json").read_text())
    return config


def unet_flops(preset: presets.Preset, batch_size: int) -> dict[str, int]:
    """FLOPs of one guided UNet call on ``batch_size`` samples: forward, forward + backward."""
    from diffusers import UNet2DConditionModel

    config = _unet_config(preset)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        unet.requires_grad_(False)
        side = int(unet.config.sample_size)
        channels = int(unet.config.in_channels)
        width = int(unet.config.cross_attention_dim)
        latents = torch.randn(2 * batch_size, channels, side, side)
        embeds = torch.randn(2 * batch_size, 77, width)
        timesteps = torch.full((2 * batch_size,), 500)

    def forward() -> None:
        with torch.no_grad():
            unet(latents, timesteps, encoder_hidden_states=embeds)

    def forward_backward() -> None:
        inputs = latents.detach().requires_grad_(True)
        out = unet(inputs, timesteps, encoder_hidden_states=embeds).sample
        out.float().square().mean().backward()

    return {
        "forward": harness.count_flops(forward),
        "forward_backward": harness.count_flops(forward_backward),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Count the preset's UNet FLOPs and the epoch budget they imply."""
    preset = presets.resolve(args)
    device = harness.resolve_device(getattr(args, "device", "auto"))
    per_call = unet_flops(preset, 1)
    samples = preset.sample_num_batches_per_epoch * preset.sample_batch_size
    sampling = samples * preset.num_steps * per_call["forward"]
    training = samples * preset.num_steps * per_call["forward_backward"]
    peak_tflops = getattr(args, "peak_tflops", None)
    peak_source = "argument"
    if peak_tflops is None and device.type == "cuda":
        peak_tflops = harness.matmul_peak_flops(device, torch.bfloat16) / 1e12
        peak_source = "measured bf16 matmul"
    if peak_tflops is None:
        peak_tflops = H100_SXM_DENSE_BF16_TFLOPS
        peak_source = "H100 SXM data sheet (dense bf16)"
    total = sampling + training
    rows = [
        {"quantity": "unet_forward_gflop_per_sample_guided", "value": per_call["forward"] / 1e9},
        {
            "quantity": "unet_fwd_bwd_gflop_per_sample_guided",
            "value": per_call["forward_backward"] / 1e9,
        },
        {"quantity": "epoch_sampling_pflop", "value": sampling / 1e15},
        {"quantity": "epoch_training_pflop", "value": training / 1e15},
        {"quantity": "epoch_total_pflop", "value": total / 1e15},
        {"quantity": "peak_tflop_per_s", "value": peak_tflops},
        {"quantity": "time_at_50pct_of_peak_s", "value": total / (0.5 * peak_tflops * 1e12)},
    ]
    return harness.result(
        NAME,
        settings=presets.describe(preset, args, device),
        environment=harness.environment(device),
        rows=rows,
        summary={
            "samples_per_epoch": samples,
            "peak_source": peak_source,
            "epoch_total_pflop": total / 1e15,
            "time_at_50pct_of_peak_s": total / (0.5 * peak_tflops * 1e12),
        },
    )
