"""FLOP budget of a flow-matching (SD3, FLUX.1, Qwen-Image, Wan2.1) epoch, counted on ``meta``.

The preset's transformer, VAE and text encoders are built from their configs on the ``meta``
device (shapes only: no weights, no arithmetic, so a 20 B transformer and the T5-XXL, UMT5-XXL
or Qwen2.5-VL text encoders cost nothing) and counted with ``FlopCounterMode``, per sample,
through the policies' own velocity functions (``flux_velocity``, ``qwenimage_velocity``,
``wan_velocity``):

- ``sample_forward``: one transformer call as a sampling step makes it: SD3, Qwen-Image and
  Wan2.1 with true classifier-free guidance (two rows per sample: SD3's and Qwen-Image's doubled
  batch, Wan2.1's two passes) when the guidance scale is above 1; FLUX.1-dev with its guidance
  embedding (one row);
- ``train_forward_backward``: one trained transition, forward and backward with the base
  weights frozen (LoRA training: gradients flow through the activations only; the LoRA
  matrices add well under 1 %), guided only when ``train_cfg``;
- ``kl_reference_forward``: the reference policy's forward on the same batch, without
  gradients, when ``kl_coef > 0``;
- ``vae_decode``: decoding a final latent (Wan2.1: the whole video); ``text``: the text encoders
  on one prompt (CLIP's 77 tokens each, T5's 256 (SD3) or 512 (FLUX), UMT5's 512 (Wan2.1),
  Qwen2.5-VL's template and a 512-token prompt, :data:`flow_models.QWEN_TEXT_TOKENS`, through
  the whole ``Qwen2_5_VLForConditionalGeneration`` but its vision tower, as the stock pipeline
  calls it).

The transformer's text tokens are the policies': SD3 CLIP's 77 + T5's 256, FLUX T5's 512, Qwen-
Image ``max_sequence_length`` 512 (the policy pads every row to it, masked), Wan2.1 512. The
image tokens: ``(H / 16) (W / 16)`` for the image families, ``frames_latent (H / 16) (W / 16)``
for Wan2.1 (``frames_latent = (num_frames - 1) / 4 + 1``: 21 x 30 x 52 = 32,760 tokens at
480x832 and 81 frames).

With ``S`` samples, ``T`` steps and a stochastic window of ``K`` steps (Flow-GRPO: only the
window's transitions are recorded and trained; the others take the ODE step)::

    sampling = S x (T x sample_forward + vae_decode + text)
    training = S x K x (train_forward_backward + kl_reference_forward)

so the window scales the training cost by ``K / T`` and leaves sampling as it is; the table
repeats the budget for ``K`` = every step, 2 and 1.
"""

import argparse
import inspect
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
TRANSFORMER_TEXT_TOKENS = {"qwenimage": flow_models.QWEN_PROMPT_TOKENS, "wan": 512}
"""Text tokens of a Qwen-Image and a Wan2.1 transformer row: the policies' default
``max_sequence_length`` (Qwen-Image: every row padded to it, masked)."""
FAMILY_OF_PIPELINE = {
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
    "QwenImagePipeline": "qwenimage",
    "WanPipeline": "wan",
}
TEXT_KIND = {
    "T5EncoderModel": "t5",
    "CLIPTextModel": "clip",
    "CLIPTextModelWithProjection": "clip_projection",
    "UMT5EncoderModel": "umt5",
    "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl",
}
CFG_FAMILIES = ("sd3", "qwenimage", "wan")
"""Families whose guidance is true classifier-free guidance: two transformer rows per sample."""
WAN_NATIVE_SIZE = (480, 832)  # WanPipeline's default (height, width) and frame count
WAN_NATIVE_FRAMES = 81


def text_tokens(family: str, kind: str) -> int:
    """Tokens a text encoder of ``kind`` reads per prompt in ``family``'s pipeline."""
    if kind == "t5":
        return T5_TOKENS[family]
    if kind == "umt5":
        return flow_models.WAN_TEXT_TOKENS
    if kind == "qwen2_5_vl":
        return flow_models.QWEN_TEXT_TOKENS
    return CLIP_TOKENS


def _folder_architecture(model: str) -> flow_models.FlowArchitecture:
    """The architecture of a model folder (or built-in name), read from its configs."""
    from ddpo.adapters.common.sources import read_json_object, resolve_pretrained

    folder = Path(resolve_pretrained(model))
    index = read_json_object(folder / "model_index.json")
    family = FAMILY_OF_PIPELINE[index["_class_name"]]

    def config(part: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((folder / part / "config.json").read_text())
        return loaded

    encoders = []
    for part in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        if part not in index or index[part][0] is None:
            continue
        kind = TEXT_KIND.get(index[part][1], "clip_projection")
        sizes = {k: v for k, v in config(part).items() if not k.startswith("_")}
        sizes.pop("architectures", None)
        encoders.append((kind, sizes, text_tokens(family, kind)))
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


def vae_factor(arch: flow_models.FlowArchitecture) -> int:
    """Pixels per latent along a side: SD3's and FLUX's ``AutoencoderKL`` halves the side per
    block after the first; Qwen-Image's and Wan2.1's causal VAEs once per ``temperal_downsample``
    entry (the pipelines' ``vae_scale_factor``, 8)."""
    if arch.family in ("qwenimage", "wan"):
        return int(2 ** len(arch.vae.get("temperal_downsample", [False, True, True])))
    return int(2 ** (len(arch.vae["block_out_channels"]) - 1))


def size(arch: flow_models.FlowArchitecture, preset: presets.Preset) -> tuple[int, int]:
    """``(height, width)``: the preset's, or the model's native size as the policies take it
    (SD3: the transformer's sample size x the VAE factor; FLUX: the VAE's sample size;
    Qwen-Image: the VAE config's native side or 128 x the VAE factor; Wan2.1: the VAE config's
    ``sample_size`` or 480x832).

    Raises:
        ValueError: for sides that are not multiples of 2 x the VAE factor (the transformers'
            2x2 patches or packing).
    """
    factor = vae_factor(arch)
    if isinstance(preset.resolution, int):
        height, width = preset.resolution, preset.resolution
    elif preset.resolution is not None:
        height, width = preset.resolution
    elif arch.family == "sd3":
        height = width = int(arch.transformer["sample_size"]) * factor
    elif arch.family == "qwenimage":
        from ddpo.adapters.qwenimage.checks import NATIVE_SIDE_KEY, QWENIMAGE_DEFAULT_SAMPLE_SIZE

        side = arch.vae.get(NATIVE_SIDE_KEY, QWENIMAGE_DEFAULT_SAMPLE_SIZE * factor)
        height = width = int(side)
    elif arch.family == "wan":
        native = arch.vae.get("sample_size")
        if native is None:
            height, width = WAN_NATIVE_SIZE
        else:
            height, width = (native, native) if isinstance(native, int) else native
    else:
        height = width = int(arch.vae.get("sample_size", 1024))
    if height % (2 * factor) or width % (2 * factor):
        raise ValueError(
            f"resolution must be multiples of {2 * factor} per side (the VAE's {factor}x times "
            f"the 2x2 patches), got {height}x{width}"
        )
    return height, width


def frames(arch: flow_models.FlowArchitecture, preset: presets.Preset) -> int:
    """Frames per sample: 1 for the image families; Wan2.1: the preset's, else the VAE
    config's ``sample_frames``, else 81."""
    if arch.family != "wan":
        return 1
    if preset.num_frames is not None:
        return preset.num_frames
    return int(arch.vae.get("sample_frames", WAN_NATIVE_FRAMES))


def latent_shape(arch: flow_models.FlowArchitecture, preset: presets.Preset) -> tuple[int, ...]:
    """One sample's (unpacked) latents: ``(1, C, h, w)``, Wan2.1's ``(1, C, frames_latent, h,
    w)``, as the policies' ``_latent_shape``."""
    height, width = size(arch, preset)
    factor = vae_factor(arch)
    if arch.family == "wan":
        temporal = int(2 ** sum(bool(x) for x in arch.vae["temperal_downsample"]))
        latent_frames = (frames(arch, preset) - 1) // temporal + 1
        channels = int(arch.vae.get("z_dim", 16))
        return (1, channels, latent_frames, height // factor, width // factor)
    if arch.family == "qwenimage":
        channels = int(arch.vae.get("z_dim", 16))
    else:
        channels = int(arch.vae["latent_channels"])
    return (1, channels, height // factor, width // factor)


def _modules(arch: flow_models.FlowArchitecture) -> tuple[Any, Any]:
    """The transformer (frozen) and the VAE on the ``meta`` device."""
    import diffusers

    transformer_class, vae_class = {
        "sd3": ("SD3Transformer2DModel", "AutoencoderKL"),
        "flux": ("FluxTransformer2DModel", "AutoencoderKL"),
        "qwenimage": ("QwenImageTransformer2DModel", "AutoencoderKLQwenImage"),
        "wan": ("WanTransformer3DModel", "AutoencoderKLWan"),
    }[arch.family]
    vae_type = getattr(diffusers, vae_class)
    taken = inspect.signature(vae_type.__init__).parameters
    # keys diffusers would ignore with a warning: the native video size a Wan folder records
    vae_config = {k: v for k, v in _clean(arch.vae).items() if k in taken}
    with torch.device("meta"):
        transformer = getattr(diffusers, transformer_class).from_config(_clean(arch.transformer))
        transformer.requires_grad_(False)
        vae = vae_type.from_config(vae_config)
    return transformer, vae


def _velocity(
    arch: flow_models.FlowArchitecture,
    transformer: Any,
    shape: tuple[int, ...],
    preset: presets.Preset,
    *,
    guided: bool,
    grad: bool,
) -> torch.Tensor:
    """The transformer's velocity for one sample as the family's policy calls it (``guided``:
    true CFG's two rows), on ``meta`` tensors."""
    from ddpo.adapters.flux.text import flux_velocity
    from ddpo.adapters.qwenimage.text import qwenimage_velocity
    from ddpo.adapters.wan.text import wan_velocity

    config = transformer.config
    with torch.device("meta"):
        rows = 2 if guided and arch.family == "sd3" else 1  # SD3: one doubled batch
        latents = torch.randn(rows, *shape[1:], requires_grad=grad)
        t = torch.full((rows,), 500.0)
        if arch.family == "sd3":
            tokens = CLIP_TOKENS + T5_TOKENS["sd3"]  # CLIP's states (padded to T5's width), T5's
            embeds = torch.randn(rows, tokens, int(config.joint_attention_dim))
            pooled = torch.randn(rows, int(config.pooled_projection_dim))
        elif arch.family == "flux":
            embeds = torch.randn(rows, T5_TOKENS["flux"], int(config.joint_attention_dim))
            pooled = torch.randn(rows, int(config.pooled_projection_dim))
        elif arch.family == "qwenimage":
            tokens = TRANSFORMER_TEXT_TOKENS["qwenimage"]
            embeds = torch.randn(rows, tokens, int(config.joint_attention_dim))
            mask = torch.ones(rows, tokens, dtype=torch.long)
        else:
            embeds = torch.randn(rows, TRANSFORMER_TEXT_TOKENS["wan"], int(config.text_dim))
    out: torch.Tensor
    if arch.family == "sd3":
        out = transformer(
            hidden_states=latents,
            timestep=t,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
    elif arch.family == "flux":
        guidance = preset.guidance_scale if config.guidance_embeds else None
        out = flux_velocity(
            transformer,
            latents,
            t,
            prompt_embeds=embeds,
            pooled_prompt_embeds=pooled,
            guidance_scale=guidance,
            text_ids_dtype=torch.float32,
        )
    elif arch.family == "qwenimage":
        out = qwenimage_velocity(
            transformer,
            latents,
            t,
            prompt_embeds=embeds,
            prompt_embeds_mask=mask,
            negative=(embeds, mask) if guided else None,
            guidance_scale=preset.guidance_scale,
        )
    else:
        out = wan_velocity(
            transformer,
            latents,
            t,
            prompt_embeds=embeds,
            negative_prompt_embeds=embeds if guided else None,
            guidance_scale=preset.guidance_scale,
        )
    return out


def _decode(arch: flow_models.FlowArchitecture, vae: Any, shape: tuple[int, ...]) -> None:
    """Decode one sample's final latents as the family's policy does (no gradients)."""
    from ddpo.adapters.qwenimage.vae import qwenimage_vae_decode
    from ddpo.adapters.wan.vae import wan_vae_decode

    with torch.device("meta"):
        final = torch.randn(*shape)
    with torch.no_grad():
        if arch.family == "qwenimage":
            qwenimage_vae_decode(vae, final)
        elif arch.family == "wan":
            wan_vae_decode(vae, final)
        else:
            vae.decode(final)


def text_flops(arch: flow_models.FlowArchitecture) -> int:
    """FLOPs of ``arch``'s text encoders on one prompt of the tokens each reads, on ``meta``:
    CLIP, T5 and UMT5 on their token ids; Qwen2.5-VL as ``QwenImagePipeline`` calls it (the
    language model and its LM head; the vision tower takes no text), with explicit
    multimodal-rotary position ids (on ``meta`` they cannot be derived from a mask)."""
    with torch.device("meta"):
        encoders = [
            (kind, flow_models.text_encoder(kind, sizes), tokens)
            for kind, sizes, tokens in arch.text_encoders
        ]

    def run() -> None:
        with torch.no_grad():
            for kind, encoder, tokens in encoders:
                ids = torch.zeros(1, tokens, dtype=torch.long, device="meta")
                if kind == "qwen2_5_vl":
                    positions = torch.arange(tokens, device="meta").expand(3, 1, tokens)
                    encoder(input_ids=ids, position_ids=positions, output_hidden_states=True)
                else:
                    encoder(ids)

    return harness.count_flops(run)


def flow_flops(preset: presets.Preset) -> dict[str, int]:
    """FLOPs per sample of each part (module docstring), counted on the ``meta`` device, and
    the sizes counted (``height``, ``width``, ``num_frames``, ``image_tokens`` per row)."""
    arch = architecture(preset)
    shape = latent_shape(arch, preset)
    guided = arch.family in CFG_FAMILIES and preset.guidance_scale > 1.0
    train_guided = guided and preset.train_cfg
    transformer, vae = _modules(arch)

    def forward(with_cfg: bool) -> None:
        with torch.no_grad():
            _velocity(arch, transformer, shape, preset, guided=with_cfg, grad=False)

    def forward_backward() -> None:
        out = _velocity(arch, transformer, shape, preset, guided=train_guided, grad=True)
        out.float().square().mean().backward()

    counts = {
        "sample_forward": harness.count_flops(lambda: forward(guided)),
        "train_forward_backward": harness.count_flops(forward_backward),
        "kl_reference_forward": harness.count_flops(lambda: forward(train_guided)),
        "vae_decode": harness.count_flops(lambda: _decode(arch, vae, shape)),
        "text": text_flops(arch),
    }
    if preset.kl_coef <= 0:
        counts["kl_reference_forward"] = 0
    height, width = size(arch, preset)
    patches = 1
    for side in shape[-2:]:
        patches *= side // 2
    counts.update(
        height=height,
        width=width,
        num_frames=frames(arch, preset),
        image_tokens=patches * (shape[2] if arch.family == "wan" else 1),
        sample_rows=2 if guided else 1,
        train_rows=2 if train_guided else 1,
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
            "resolution": f"{counts['height']}x{counts['width']}",
            "num_frames": counts["num_frames"],
            "image_tokens_per_row": counts["image_tokens"],
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
