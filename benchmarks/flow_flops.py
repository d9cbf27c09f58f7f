"""FLOP budget of a flow-matching (SD3, FLUX.1) epoch, counted on the ``meta`` device.

The preset's transformer, VAE and text encoders are built from their configs on the ``meta``
device (shapes only: no weights, no arithmetic, so SD3.5 Medium's and FLUX.1-dev's T5-XXL
encoder costs nothing) and counted with ``FlopCounterMode``, per sample:

- ``sample_forward``: one transformer call as a sampling step makes it: SD3 with true
  classifier-free guidance (a doubled batch: negative and conditional halves) when the guidance
  scale is above 1; FLUX.1-dev with its guidance embedding (one batch);
- ``train_forward_backward``: one trained transition, forward and backward with the base
  weights frozen (LoRA training: gradients flow through the activations only; the LoRA
  matrices add well under 1 %), guided only when ``train_cfg`` (SD3);
- ``kl_reference_forward``: the reference policy's forward on the same batch, without
  gradients, when ``kl_coef > 0``;
- ``vae_decode``: decoding a final latent; ``text``: the text encoders on one prompt (CLIP's 77
  tokens each and T5's 256 (SD3) or 512 (FLUX) tokens).

With ``S`` samples, ``T`` steps and a stochastic window of ``K`` steps (Flow-GRPO: only the
window's transitions are recorded and trained; the others take the ODE step)::

    sampling = S x (T x sample_forward + vae_decode + text)
    training = S x K x (train_forward_backward + kl_reference_forward)

so the window scales the training cost by ``K / T`` and leaves sampling as it is; the table
repeats the budget for ``K`` = every step, 2 and 1.
"""

import argparse
import json
from pathlib import Path
from typing import Any

import flow_models
import harness
import presets
import torch

NAME = "flops"
CLIP_TOKENS = 77
T5_TOKENS = {"sd3": 256, "flux": 512}  # the policies' (and diffusers') max_sequence_length


def _folder_architecture(model: str) -> flow_models.FlowArchitecture:
    """The architecture of a model folder (or built-in name), read from its configs."""
    from ddpo.adapters.common.sources import read_json_object, resolve_pretrained

    folder = Path(resolve_pretrained(model))
    index = read_json_object(folder / "model_index.json")
    family = "sd3" if index["_class_name"] == "StableDiffusion3Pipeline" else "flux"

    def config(part: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((folder / part / "config.json").read_text())
        return loaded

    encoders = []
    for part in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        if part not in index or index[part][0] is None:
            continue
        class_name = index[part][1]
        kind = {"T5EncoderModel": "t5", "CLIPTextModel": "clip"}.get(class_name, "clip_projection")
        sizes = {k: v for k, v in config(part).items() if not k.startswith("_")}
        sizes.pop("architectures", None)
        encoders.append((kind, sizes, T5_TOKENS[family] if kind == "t5" else CLIP_TOKENS))
    return flow_models.FlowArchitecture(
        family, config("transformer"), config("vae"), tuple(encoders), index["_class_name"]
    )


def architecture(preset: presets.Preset) -> flow_models.FlowArchitecture:
    """The preset's architecture: a full-size one of :mod:`flow_models` or a folder's."""
    if preset.model in flow_models.ARCHITECTURES:
        return flow_models.ARCHITECTURES[preset.model]
    return _folder_architecture(preset.model)


def _clean(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def resolution(arch: flow_models.FlowArchitecture, preset: presets.Preset) -> int:
    """The image side: the preset's, or the model's native size as the policies take it (SD3:
    the transformer's sample size x the VAE factor; FLUX: the VAE's sample size)."""
    if preset.resolution is not None:
        return preset.resolution
    factor = 2 ** (len(arch.vae["block_out_channels"]) - 1)
    if arch.family == "sd3":
        return int(arch.transformer["sample_size"]) * factor
    return int(arch.vae.get("sample_size", 1024))


def flow_flops(preset: presets.Preset) -> dict[str, int]:
    """FLOPs per sample of each part (module docstring), counted on the ``meta`` device."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel

    from ddpo.adapters.flux.text import flux_velocity

    arch = architecture(preset)
    factor = 2 ** (len(arch.vae["block_out_channels"]) - 1)
    side = resolution(arch, preset) // factor
    sd3 = arch.family == "sd3"
    guided = preset.guidance_scale > 1.0
    sample_rows = 2 if sd3 and guided else 1
    train_rows = 2 if sd3 and guided and preset.train_cfg else 1
    with torch.device("meta"):
        model_class = SD3Transformer2DModel if sd3 else FluxTransformer2DModel
        transformer = model_class.from_config(_clean(arch.transformer))
        transformer.requires_grad_(False)
        vae = AutoencoderKL.from_config(_clean(arch.vae))
        encoders = [
            (flow_models.text_encoder(kind, sizes), tokens)
            for kind, sizes, tokens in arch.text_encoders
        ]
        channels = int(vae.config.latent_channels)
        final = torch.randn(1, channels, side, side)
        t5_width = int(transformer.config.joint_attention_dim)
        pooled_width = int(transformer.config.pooled_projection_dim)

    def call(rows: int, *, grad: bool) -> Any:
        with torch.device("meta"):
            latents = torch.randn(rows, channels, side, side, requires_grad=grad)
            t = torch.full((rows,), 500.0)
            pooled = torch.randn(rows, pooled_width)
            # SD3: CLIP's 77 states (padded to T5's width), then T5's; FLUX: T5's alone
            tokens = CLIP_TOKENS + T5_TOKENS["sd3"] if sd3 else T5_TOKENS["flux"]
            embeds = torch.randn(rows, tokens, t5_width)
        if sd3:
            out = transformer(
                hidden_states=latents,
                timestep=t,
                encoder_hidden_states=embeds,
                pooled_projections=pooled,
                return_dict=False,
            )[0]
        else:
            guidance = preset.guidance_scale if transformer.config.guidance_embeds else None
            out = flux_velocity(
                transformer,
                latents,
                t,
                prompt_embeds=embeds,
                pooled_prompt_embeds=pooled,
                guidance_scale=guidance,
                text_ids_dtype=torch.float32,
            )
        return out

    def forward(rows: int) -> None:
        with torch.no_grad():
            call(rows, grad=False)

    def forward_backward() -> None:
        call(train_rows, grad=True).float().square().mean().backward()

    def decode() -> None:
        with torch.no_grad():
            vae.decode(final)

    def text() -> None:
        with torch.no_grad():
            for encoder, tokens in encoders:
                ids = torch.zeros(1, tokens, dtype=torch.long, device="meta")
                encoder(ids)

    counts = {
        "sample_forward": harness.count_flops(lambda: forward(sample_rows)),
        "train_forward_backward": harness.count_flops(forward_backward),
        "kl_reference_forward": harness.count_flops(lambda: forward(train_rows)),
        "vae_decode": harness.count_flops(decode),
        "text": harness.count_flops(text),
    }
    if preset.kl_coef <= 0:
        counts["kl_reference_forward"] = 0
    counts.update(
        resolution=resolution(arch, preset), sample_rows=sample_rows, train_rows=train_rows
    )
    return counts


def epoch_budget(counts: dict[str, int], samples: int, steps: int, window: int) -> dict[str, float]:
    """The epoch's FLOPs (module docstring) with a stochastic window of ``window`` steps."""
    sampling_transformer = samples * steps * counts["sample_forward"]
    decode = samples * counts["vae_decode"]
    text = samples * counts["text"]
    per_transition = counts["train_forward_backward"] + counts["kl_reference_forward"]
    training = samples * window * per_transition
    sampling = sampling_transformer + decode + text
    return {
        "sampling_transformer": float(sampling_transformer),
        "vae_decode": float(decode),
        "text": float(text),
        "sampling": float(sampling),
        "training": float(training),
        "total": float(sampling + training),
    }


def run(args: argparse.Namespace, preset: presets.Preset, peak_tflops: float, source: str) -> Any:
    """The flow preset's FLOP budget and its stochastic-window table."""
    device = harness.resolve_device(getattr(args, "device", "auto"))
    counts = flow_flops(preset)
    samples = preset.sample_num_batches_per_epoch * preset.sample_batch_size
    steps = preset.num_steps
    window = preset.sde_window_size or steps
    rate = 0.5 * peak_tflops * 1e12
    budget = epoch_budget(counts, samples, steps, window)
    rows: list[dict[str, Any]] = [
        {
            "quantity": "transformer_sample_gflop_per_sample",
            "value": counts["sample_forward"] / 1e9,
        },
        {
            "quantity": "transformer_train_fwd_bwd_gflop_per_transition",
            "value": counts["train_forward_backward"] / 1e9,
        },
        {
            "quantity": "kl_reference_forward_gflop_per_transition",
            "value": counts["kl_reference_forward"] / 1e9,
        },
        {"quantity": "vae_decode_gflop_per_sample", "value": counts["vae_decode"] / 1e9},
        {"quantity": "text_encoders_gflop_per_prompt", "value": counts["text"] / 1e9},
        {
            "quantity": "epoch_sampling_transformer_pflop",
            "value": budget["sampling_transformer"] / 1e15,
        },
        {"quantity": "epoch_vae_decode_pflop", "value": budget["vae_decode"] / 1e15},
        {"quantity": "epoch_text_encoders_pflop", "value": budget["text"] / 1e15},
        {"quantity": "epoch_sampling_pflop", "value": budget["sampling"] / 1e15},
        {"quantity": "epoch_training_pflop", "value": budget["training"] / 1e15},
        {"quantity": "epoch_total_pflop", "value": budget["total"] / 1e15},
        {"quantity": "peak_tflop_per_s", "value": peak_tflops},
        {"quantity": "time_at_50pct_of_peak_s", "value": budget["total"] / rate},
    ]
    table = []
    for k in dict.fromkeys((steps, 2, 1)):
        if k > steps:
            continue
        row = epoch_budget(counts, samples, steps, k)
        table.append(
            {
                "window": f"{k} of {steps}",
                "sampling_pflop": row["sampling"] / 1e15,
                "training_pflop": row["training"] / 1e15,
                "total_pflop": row["total"] / 1e15,
                "time_at_50pct_of_peak_s": row["total"] / rate,
            }
        )
        rows.append(
            {"quantity": f"window_{k}_of_{steps}_total_pflop", "value": row["total"] / 1e15}
        )
    return harness.result(
        NAME,
        settings=presets.describe(preset, args, device),
        environment=harness.environment(device),
        rows=rows,
        summary={
            "samples_per_epoch": samples,
            "resolution": counts["resolution"],
            "trained_steps_per_sample": window,
            "transformer_rows_per_sampling_call": counts["sample_rows"],
            "transformer_rows_per_trained_transition": counts["train_rows"],
            "train_cfg": preset.train_cfg,
            "kl_coef": preset.kl_coef,
            "peak_source": source,
            "epoch_total_pflop": budget["total"] / 1e15,
            "time_at_50pct_of_peak_s": budget["total"] / rate,
        },
        window_table=table,
    )
