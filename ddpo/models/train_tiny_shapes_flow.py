"""Train ``ddpo-tiny-shapes-flow``, a tiny Stable-Diffusion-3-architecture model, on a CPU.

The model is a ``StableDiffusion3Pipeline`` folder: an ``SD3Transformer2DModel`` (MMDiT), two
``CLIPTextModelWithProjection`` encoders and a ``T5EncoderModel`` (all three randomly initialised
and trained jointly with the transformer), the ``AutoencoderKL`` of the packaged
``ddpo-tiny-shapes`` (frozen; its latents are re-normalised with SD3's ``shift_factor`` and
``scaling_factor``) and a ``FlowMatchEulerDiscreteScheduler``.

The objective is rectified flow as SD3 trains it: ``x_sigma = (1 - sigma) x_0 + sigma noise``
and the MSE between the transformer's output and the velocity ``noise - x_0``; ``sigma`` is
drawn logit-normally and then shifted by the scheduler's ``shift``, so that training sees the
noise levels that sampling visits. 10 % of the captions are dropped to ``""`` for
classifier-free guidance, and the saved weights are an exponential moving average. The training
data is :mod:`ddpo.data.shapes` with the same grammar and held-out captions as
``ddpo-tiny-shapes``. The T5 tokenizer pads to 16 tokens (``model_max_length``), which the
DDPO policy reads; with stock diffusers pass ``max_sequence_length=16``::

    python -m ddpo.models.train_tiny_shapes_flow --out /tmp/tiny-shapes-flow --seed 0
"""

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ddpo.adapters.common.tiny import tiny_t5_config, tiny_t5_tokenizer
from ddpo.adapters.common.tokenizer import write_clip_tokenizer
from ddpo.adapters.sd3.text import join_sd3_embeddings
from ddpo.core import ema_decay_at, flow_add_noise, flow_velocity_target
from ddpo.data.shapes import vocabulary
from ddpo.models.train_tiny_shapes import (
    ema_update,
    encode_images,
    log_line,
    lr_factor,
    parse_settings,
    write_training_log,
)


@dataclass(frozen=True)
class FlowTrainSettings:
    """Every knob of a training run (recorded in ``training_log.json``)."""

    seed: int = 0
    threads: int = 1
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    data_size: int = 16384
    # the transformer
    layers: int = 5
    heads: int = 3
    head_dim: int = 32
    patch_size: int = 2
    # the text encoders (each CLIP's width; T5's width is the transformer's joint_attention_dim)
    clip_dim: int = 32
    clip_layers: int = 2
    t5_dim: int = 64
    model_max_length: int = 16
    # the scheduler's shift (SD3's 3.0); sigma = shift u / (1 + (shift - 1) u), u logit-normal
    shift: float = 3.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    cfg_dropout: float = 0.1
    ema_decay: float = 0.995
    log_every: int = 50
    save_every: int = 500
    # the pipeline folder whose VAE is kept frozen ("" = the packaged ddpo-tiny-shapes)
    vae_from: str = ""
    # continue training the transformer and text encoders of this flow folder ("" = from scratch)
    init_from: str = ""


def _clip_config(settings: FlowTrainSettings, tokenizer: Any) -> Any:
    from ddpo.adapters.sd3.tiny import tiny_clip_config

    return tiny_clip_config(
        tokenizer,
        width=settings.clip_dim,
        projection_dim=settings.clip_dim,
        max_positions=settings.model_max_length,
        layers=settings.clip_layers,
        mlp_ratio=4,
    )


def build_components(settings: FlowTrainSettings, folder: Path, vae: Any) -> dict[str, Any]:
    """Untrained transformer and text encoders (from the global torch RNG, seeded by the
    caller), the tokenizers (written under ``folder``), ``vae`` and the scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel

    words = vocabulary()
    tokenizers = [
        CLIPTokenizer.from_pretrained(
            write_clip_tokenizer(folder / name, words, model_max_length=settings.model_max_length)
        )
        for name in ("tokenizer", "tokenizer_2")
    ]
    tokenizer_3 = tiny_t5_tokenizer(tuple(words), model_max_length=settings.model_max_length)
    latent_side = int(vae.config.sample_size) // 2 ** (len(vae.config.block_out_channels) - 1)
    channels = int(vae.config.latent_channels)
    transformer = SD3Transformer2DModel(
        sample_size=latent_side,
        patch_size=settings.patch_size,
        in_channels=channels,
        out_channels=channels,
        num_layers=settings.layers,
        attention_head_dim=settings.head_dim,
        num_attention_heads=settings.heads,
        joint_attention_dim=settings.t5_dim,
        caption_projection_dim=settings.heads * settings.head_dim,
        pooled_projection_dim=2 * settings.clip_dim,
        pos_embed_max_size=2 * latent_side // settings.patch_size,
        qk_norm="rms_norm",
    )
    text_encoder = CLIPTextModelWithProjection(_clip_config(settings, tokenizers[0]))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(settings, tokenizers[1]))
    text_encoder_3 = T5EncoderModel(tiny_t5_config(len(tokenizer_3), settings.t5_dim))
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "text_encoder_3": text_encoder_3,
        "tokenizer": tokenizers[0],
        "tokenizer_2": tokenizers[1],
        "tokenizer_3": tokenizer_3,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=settings.shift),
    }


def tokenize(components: dict[str, Any], texts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
    """The three tokenizers' ids for ``texts``, padded as ``StableDiffusion3Pipeline`` pads them
    (the T5 ids to ``max_sequence_length`` = the T5 tokenizer's ``model_max_length``)."""
    out = []
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        tokenizer = components[name]
        out.append(
            tokenizer(
                texts,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
        )
    return out[0], out[1], out[2]


def encode(components: dict[str, Any], ids: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """``(prompt_embeds, pooled_prompt_embeds)`` as ``StableDiffusion3Pipeline.encode_prompt``
    computes them, differentiable: both CLIPs' penultimate states concatenated and zero-padded
    to the T5 width, then the T5 states; the two CLIP projections concatenated."""
    hidden, pooled = [], []
    for name, token_ids in (("text_encoder", ids[0]), ("text_encoder_2", ids[1])):
        out = components[name](token_ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled.append(out[0])
    return join_sd3_embeddings(hidden, pooled, components["text_encoder_3"](ids[2])[0])


def shifted_sigmas(u: Tensor, shift: float) -> Tensor:
    """``FlowMatchEulerDiscreteScheduler``'s static shift of the noise levels ``u`` in (0, 1)."""
    return shift * u / (1 + (shift - 1) * u)


def _load_vae(folder: str) -> Any:
    """The frozen VAE of the pipeline ``folder`` ("": the packaged ``ddpo-tiny-shapes``)."""
    from diffusers import AutoencoderKL

    from ddpo.models import tiny_shapes_path

    source = Path(folder) if folder else tiny_shapes_path()
    return AutoencoderKL.from_pretrained(source / "vae").requires_grad_(False).eval()


def _load_trained(components: dict[str, Any], source: Path) -> None:
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    components["transformer"] = SD3Transformer2DModel.from_pretrained(source / "transformer")
    for name in ("text_encoder", "text_encoder_2"):
        components[name] = CLIPTextModelWithProjection.from_pretrained(source / name)
    components["text_encoder_3"] = T5EncoderModel.from_pretrained(source / "text_encoder_3")


def save_flow_pipeline(components: dict[str, Any], folder: Path) -> None:
    """Save the components as a ``StableDiffusion3Pipeline`` folder (safetensors, in files of
    at most 4 MB: diffusers' sharded layout, which stock ``from_pretrained`` reads)."""
    from diffusers import StableDiffusion3Pipeline

    pipeline: Any = StableDiffusion3Pipeline(**components)
    pipeline.save_pretrained(folder, safe_serialization=True, max_shard_size="4MB")


def train_flow(
    components: dict[str, Any], settings: FlowTrainSettings, out: Path | None = None
) -> list[dict[str, int | float]]:
    """The rectified-flow MSE for the transformer and the three text encoders; the EMA weights
    replace the trained ones in ``components``. Returns the logged losses."""
    vae = components["vae"]
    log_line("encoding the training set")
    means, stds, captions = encode_images(vae, settings.data_size, settings.seed * 2 + 2)
    if settings.init_from:
        shift_factor = float(vae.config.shift_factor)
        scaling_factor = float(vae.config.scaling_factor)
    else:
        sample = means + stds * torch.randn_like(stds)
        shift_factor = float(sample.mean())
        scaling_factor = float(1.0 / (sample - shift_factor).std())
        vae.register_to_config(shift_factor=shift_factor, scaling_factor=scaling_factor)
    log_line(
        f"latents {tuple(means.shape)}, shift {shift_factor:.4f}, scaling {scaling_factor:.4f}"
    )
    caption_ids = tokenize(components, [*captions, ""])
    empty_ids = [ids[-1] for ids in caption_ids]
    caption_ids = tuple(ids[:-1] for ids in caption_ids)  # type: ignore[assignment]

    trained = ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
    params = [p for name in trained for p in components[name].parameters()]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(settings.steps, settings.warmup_steps)
    )
    emas = {name: copy.deepcopy(components[name]).requires_grad_(False) for name in trained}
    for name in trained:
        components[name].train()
    generator = torch.Generator().manual_seed(settings.seed * 2 + 3)
    history: list[dict[str, int | float]] = []
    running = 0.0
    n = means.shape[0]
    order = torch.randperm(n, generator=generator)
    cursor = 0
    for step in range(settings.steps):
        if cursor + settings.batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        index = order[cursor : cursor + settings.batch_size]
        cursor += settings.batch_size
        b = index.numel()
        # 1. x_0 ~ q(z | image), normalised as SD3 normalises latents
        eps_vae = torch.randn(means[index].shape, generator=generator)
        latents = (means[index] + stds[index] * eps_vae - shift_factor) * scaling_factor
        # 2. caption dropout for classifier-free guidance
        drop = torch.rand(b, generator=generator) < settings.cfg_dropout
        ids = tuple(
            torch.where(drop[:, None], empty[None, :], full[index])
            for full, empty in zip(caption_ids, empty_ids, strict=True)
        )
        # 3. x_sigma = (1 - sigma) x_0 + sigma noise; the velocity noise - x_0 is the target
        noise = torch.randn(latents.shape, generator=generator)
        u = torch.sigmoid(
            settings.logit_mean + settings.logit_std * torch.randn(b, generator=generator)
        )
        sigma = shifted_sigmas(u, settings.shift)
        noisy = flow_add_noise(latents, noise, sigma)
        embeds, pooled = encode(components, ids)  # type: ignore[arg-type]
        prediction = components["transformer"](
            hidden_states=noisy,
            timestep=sigma * 1000,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        loss = F.mse_loss(prediction, flow_velocity_target(latents, noise))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        ema_update(
            ((components[name], emas[name]) for name in trained),
            ema_decay_at(step, decay=settings.ema_decay),
        )
        running += float(loss.detach())
        if (step + 1) % settings.log_every == 0:
            history.append({"step": step + 1, "mse": running / settings.log_every})
            running = 0.0
            log_line(f"step {step + 1}: mse {history[-1]['mse']:.4f}")
        if out is not None and settings.save_every > 0 and (step + 1) % settings.save_every == 0:
            folder = out / "checkpoints" / f"step-{step + 1}"
            save_flow_pipeline({**components, **emas}, folder)
            log_line(f"saved the EMA pipeline at step {step + 1} to {folder}")
    for name in trained:
        components[name] = emas[name].eval()
    return history


def train(settings: FlowTrainSettings, out: str | Path) -> Path:
    """Train and save the pipeline and ``training_log.json`` into ``out``.

    Raises:
        ValueError: for a non-positive count or size, a ``cfg_dropout`` outside [0, 1), or CLIP
            widths that do not fit in the T5 width; before anything is written.
    """
    for name in ("threads", "steps", "batch_size", "log_every", "data_size", "layers"):
        if getattr(settings, name) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(settings, name)}")
    if not 0.0 <= settings.cfg_dropout < 1.0:
        raise ValueError(f"cfg_dropout must be in [0, 1), got {settings.cfg_dropout}")
    if 2 * settings.clip_dim > settings.t5_dim:
        raise ValueError(
            f"the two CLIP widths (2 x clip_dim = {2 * settings.clip_dim}) must fit in t5_dim "
            f"({settings.t5_dim}): SD3 pads the CLIP states to the T5 width"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(settings.threads)
    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    components = build_components(settings, out, _load_vae(settings.vae_from))
    if settings.init_from:
        source = Path(settings.init_from)
        components["vae"] = _load_vae(settings.init_from)
        _load_trained(components, source)
    counts = {
        name: sum(p.numel() for p in components[name].parameters())
        for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
    }
    log_line(f"parameters: {counts}")
    torch.manual_seed(settings.seed + 1)  # the global RNG draws the latent normalisation sample
    history = train_flow(components, settings, out)
    total_seconds = time.perf_counter() - start
    save_flow_pipeline(components, out)
    log: dict[str, Any] = {
        "settings": asdict(settings),
        "parameters": counts,
        "shift_factor": components["vae"].config.shift_factor,
        "scaling_factor": components["vae"].config.scaling_factor,
        "losses": history,
        "wall_seconds": {"total": total_seconds},
        "torch_version": torch.__version__,
    }
    write_training_log(out, log, settings.init_from, total_seconds)
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m ddpo.models.train_tiny_shapes_flow --out DIR [--seed 0 ...]``."""
    description = __doc__.split("\n")[0] if __doc__ else None
    settings, out = parse_settings(FlowTrainSettings, argv, description)
    train(settings, out)


if __name__ == "__main__":
    main()


__all__ = ["FlowTrainSettings", "encode", "main", "tokenize", "train"]
