"""Train the tiny text-to-image model ``ddpo-tiny-shapes`` on the synthetic shapes data, on a CPU.

Two phases, both on batches rendered by :mod:`ddpo.data.shapes` from ``--seed``:

1. an ``AutoencoderKL`` (64x64x3 <-> 16x16x4 latents) with a reconstruction (MSE) loss and a
   small KL term; its ``scaling_factor`` is then set to 1 / std of the latents;
2. a ``UNet2DConditionModel`` together with a randomly initialised ``CLIPTextModel`` (trained
   jointly) with diffusers' noise-prediction objective: ``DDPMScheduler.add_noise`` and the MSE
   between the predicted and the true noise, dropping the caption to ``""`` for 10 % of the
   samples so that classifier-free guidance works. The saved UNet weights are an exponential
   moving average.

The result is saved with ``StableDiffusionPipeline.save_pretrained`` (safetensors) together with
``training_log.json`` (settings, losses per logging interval, wall times)::

    python -m ddpo.models.train_tiny_shapes --out /tmp/tiny-shapes --seed 0
"""

import argparse
import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ddpo.adapters.common.tokenizer import write_clip_tokenizer
from ddpo.adapters.sd.tiny import (
    TinyModelConfig,
    save_pipeline,
    sd_v1_ddim_scheduler,
    sd_v1_schedule,
    tiny_text_encoder,
    tiny_unet,
    tiny_vae,
)
from ddpo.core import ema_decay_at
from ddpo.data.shapes import IMAGE_SIZE, batches, vocabulary

CFG_DROPOUT_DEFAULT = 0.1


@dataclass(frozen=True)
class TrainSettings:
    """Every knob of a training run (recorded in ``training_log.json``)."""

    seed: int = 0
    threads: int = 1
    # autoencoder
    vae_steps: int = 2500
    vae_batch_size: int = 16
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-4
    vae_channels: tuple[int, ...] = (16, 32, 32)
    # text encoder + unet
    unet_steps: int = 3000
    unet_batch_size: int = 32
    unet_lr: float = 1e-3
    unet_channels: tuple[int, ...] = (32, 48, 64)
    unet_data_size: int = 8192
    text_hidden_size: int = 32
    text_layers: int = 2
    token_embedding_std: float = 1.0
    model_max_length: int = 16
    cfg_dropout: float = CFG_DROPOUT_DEFAULT
    # "v_prediction" (default) or "epsilon"; with a zero terminal SNR only v works
    prediction_type: str = "v_prediction"
    # rescale the betas so that the last timestep is pure noise (Lin et al. 2023), and sample
    # with "trailing" timesteps that start there
    zero_terminal_snr: bool = True
    ema_decay: float = 0.995
    warmup_steps: int = 100
    log_every: int = 50
    save_every: int = 500
    # continue training the UNet and text encoder of this pipeline folder ("" = from scratch);
    # its VAE (and scaling factor) is kept and the VAE phase skipped
    init_from: str = ""
    # take only the VAE (and its scaling factor) of this pipeline folder, skipping the VAE phase
    vae_from: str = ""


def lr_factor(total: int, warmup: int) -> Any:
    """``LambdaLR``'s factor: linear warm-up over ``warmup`` steps, then a cosine from 1 to 0.1."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def model_config(settings: TrainSettings) -> TinyModelConfig:
    """The architecture and noise schedule of ``settings`` for the tiny-model builders.

    Raises:
        ValueError: for a ``prediction_type`` other than ``"epsilon"`` or ``"v_prediction"``,
            or ``zero_terminal_snr`` with ``"epsilon"``.
    """
    return TinyModelConfig(
        image_size=IMAGE_SIZE,
        unet_channels=settings.unet_channels,
        vae_channels=settings.vae_channels,
        text_dim=settings.text_hidden_size,
        text_layers=settings.text_layers,
        text_heads=2,
        text_projection_dim=512,  # transformers' default (a CLIPTextModel does not use it)
        token_embedding_std=settings.token_embedding_std,
        pooled_text_heads=2,
        max_prompt_tokens=settings.model_max_length,
        prediction_type=settings.prediction_type,
        zero_terminal_snr=settings.zero_terminal_snr,
    )


def build_components(settings: TrainSettings, tokenizer_dir: Path) -> dict[str, Any]:
    """Untrained vae, unet, text encoder, tokenizer and schedulers for ``settings``.

    The three models are drawn, in this order, from the global torch RNG (seeded by the caller).
    """
    from diffusers import DDPMScheduler
    from transformers import CLIPTokenizer

    config = model_config(settings)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    vae = tiny_vae(config)
    unet = tiny_unet(config)
    text_encoder = tiny_text_encoder(config, tokenizer)
    prediction, zero_snr = config.prediction_type, config.zero_terminal_snr
    noise_schedule = sd_v1_schedule(prediction_type=prediction, zero_terminal_snr=zero_snr)
    return {
        "vae": vae,
        "unet": unet,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "noise_scheduler": DDPMScheduler(**noise_schedule),
        "scheduler": sd_v1_ddim_scheduler(prediction_type=prediction, zero_terminal_snr=zero_snr),
    }


def log_line(message: str) -> None:
    """Print ``message`` with the time of day (the training scripts' progress lines)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def train_vae(vae: Any, settings: TrainSettings) -> list[dict[str, int | float]]:
    """Phase 1: reconstruction + KL on rendered batches; returns the logged losses."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(settings.vae_steps, settings.warmup_steps)
    )
    data = batches(settings.vae_batch_size, seed=settings.seed * 2 + 1, split="all")
    history: list[dict[str, int | float]] = []
    sums = {"mse": 0.0, "kl": 0.0}
    vae.train()
    for step in range(settings.vae_steps):
        images = next(data)[0] * 2 - 1
        posterior = vae.encode(images).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        mse = F.mse_loss(reconstruction, images)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = mse + settings.vae_kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        sums["mse"] += float(mse.detach())
        sums["kl"] += float(kl.detach())
        if (step + 1) % settings.log_every == 0:
            entry = {"step": step + 1, **{k: v / settings.log_every for k, v in sums.items()}}
            history.append(entry)
            sums = dict.fromkeys(sums, 0.0)
            log_line(f"vae step {step + 1}: mse {entry['mse']:.5f} kl/elem {entry['kl']:.3f}")
    vae.eval()
    return history


@torch.no_grad()
def encode_images(vae: Any, size: int, seed: int) -> tuple[Tensor, Tensor, list[str]]:
    """Render ``size`` training images from ``seed`` (batches of up to 256); their VAE latent
    means, stds and captions."""
    data = batches(min(256, size), seed=seed, split="train")
    means: list[Tensor] = []
    stds: list[Tensor] = []
    captions: list[str] = []
    while sum(len(m) for m in means) < size:
        images, texts, _ = next(data)
        posterior = vae.encode(images * 2 - 1).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
        captions += texts
    return torch.cat(means)[:size], torch.cat(stds)[:size], captions[:size]


def ema_update(pairs: Any, decay: float) -> None:
    """``ema <- decay ema + (1 - decay) model`` for each ``(model, ema)`` module pair."""
    with torch.no_grad():
        for model, ema in pairs:
            for p, q in zip(model.parameters(), ema.parameters(), strict=True):
                q.lerp_(p, 1 - decay)


def write_training_log(
    out: Path, log: dict[str, Any], init_from: str, total_seconds: float
) -> None:
    """Write ``training_log.json``; a run that continues ``init_from`` keeps that run's log
    under ``init_log`` and adds the wall time of both as ``all_phases``."""
    if init_from:
        source_log = Path(init_from) / "training_log.json"
        if source_log.is_file():
            previous = json.loads(source_log.read_text())
            log["init_log"] = previous
            earlier = previous.get("wall_seconds", {})
            log["wall_seconds"]["all_phases"] = total_seconds + earlier.get(
                "all_phases", earlier.get("total", 0.0)
            )
    (out / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    log_line(f"saved to {out} after {total_seconds / 60:.1f} min")


def parse_settings(settings_class: Any, argv: list[str] | None, description: str | None) -> Any:
    """``(settings, out)`` from the command line: ``--out`` and a flag per settings field
    (``--field-name``; tuples take several ints, booleans ``--x``/``--no-x``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True, help="output folder for the pipeline")
    for field, value in asdict(settings_class()).items():
        flag = "--" + field.replace("_", "-")
        if isinstance(value, tuple):
            parser.add_argument(flag, type=int, nargs="+", default=list(value))
        elif isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    return settings_class(**fields), out


def train_unet(
    components: dict[str, Any], settings: TrainSettings, out: Path | None = None
) -> tuple[Any, list[dict[str, int | float]]]:
    """Phase 2: the diffusion MSE for the UNet and the text encoder; EMA UNet returned."""
    vae, unet = components["vae"], components["unet"]
    text_encoder, tokenizer = components["text_encoder"], components["tokenizer"]
    noise_scheduler = components["noise_scheduler"]
    log_line("encoding the UNet training set")
    means, stds, captions = encode_images(vae, settings.unet_data_size, settings.seed * 2 + 2)
    if settings.init_from or settings.vae_from:
        scaling_factor = float(vae.config.scaling_factor)
    else:
        scaling_factor = float(1.0 / (means + stds * torch.randn_like(stds)).std())
        vae.register_to_config(scaling_factor=scaling_factor)
    log_line(f"latents {tuple(means.shape)}, scaling_factor {scaling_factor:.4f}")
    ids = tokenizer(
        [*captions, ""],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    caption_ids, empty_ids = ids[:-1], ids[-1]

    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=settings.unet_lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(settings.unet_steps, settings.warmup_steps)
    )
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    ema_text = copy.deepcopy(text_encoder).requires_grad_(False)
    generator = torch.Generator().manual_seed(settings.seed * 2 + 3)
    history: list[dict[str, int | float]] = []
    running = 0.0
    unet.train()
    text_encoder.train()
    n = means.shape[0]
    order = torch.randperm(n, generator=generator)
    cursor = 0
    for step in range(settings.unet_steps):
        if cursor + settings.unet_batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        index = order[cursor : cursor + settings.unet_batch_size]
        cursor += settings.unet_batch_size
        b = index.numel()
        # 1. latents x_0 ~ q(z | image), scaled as Stable Diffusion scales them
        eps_vae = torch.randn(means[index].shape, generator=generator)
        latents = (means[index] + stds[index] * eps_vae) * scaling_factor
        # 2. caption dropout for classifier-free guidance
        drop = torch.rand(b, generator=generator) < settings.cfg_dropout
        input_ids = torch.where(drop[:, None], empty_ids[None, :], caption_ids[index])
        # 3. x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps; predict eps, or
        #    v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (b,), generator=generator
        )
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        encoder_hidden_states = text_encoder(input_ids)[0]
        prediction = unet(noisy, timesteps, encoder_hidden_states).sample
        if settings.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        loss = F.mse_loss(prediction, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        decay = ema_decay_at(step, decay=settings.ema_decay)
        ema_update(((unet, ema_unet), (text_encoder, ema_text)), decay)
        running += float(loss.detach())
        if (step + 1) % settings.log_every == 0:
            history.append({"step": step + 1, "mse": running / settings.log_every})
            running = 0.0
            log_line(f"unet step {step + 1}: mse {history[-1]['mse']:.4f}")
        if out is not None and settings.save_every > 0 and (step + 1) % settings.save_every == 0:
            folder = out / "checkpoints" / f"step-{step + 1}"
            save_pipeline({**components, "unet": ema_unet, "text_encoder": ema_text}, folder)
            log_line(f"saved the EMA pipeline at step {step + 1} to {folder}")
    components["text_encoder"] = ema_text.eval()
    return ema_unet.eval(), history


def train(settings: TrainSettings, out: str | Path) -> Path:
    """Run both phases and save the pipeline and ``training_log.json`` into ``out``."""
    if settings.threads <= 0:
        raise ValueError(f"threads must be positive, got {settings.threads}")
    for name in ("vae_steps", "unet_steps", "vae_batch_size", "unet_batch_size", "log_every"):
        if getattr(settings, name) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(settings, name)}")
    if not 0.0 <= settings.cfg_dropout < 1.0:
        raise ValueError(f"cfg_dropout must be in [0, 1), got {settings.cfg_dropout}")
    model_config(settings)  # checks the architecture and the noise schedule
    if settings.init_from and settings.vae_from:
        raise ValueError(
            f"give at most one of init_from ({settings.init_from!r}) and vae_from "
            f"({settings.vae_from!r})"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(settings.threads)
    start = time.perf_counter()
    tokenizer_dir = write_clip_tokenizer(
        out / "tokenizer", vocabulary(), model_max_length=settings.model_max_length
    )
    torch.manual_seed(settings.seed)
    components = build_components(settings, tokenizer_dir)
    if settings.init_from:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        source = Path(settings.init_from)
        components["vae"] = AutoencoderKL.from_pretrained(source / "vae")
        components["unet"] = UNet2DConditionModel.from_pretrained(source / "unet")
        components["text_encoder"] = CLIPTextModel.from_pretrained(source / "text_encoder")
    elif settings.vae_from:
        from diffusers import AutoencoderKL

        components["vae"] = AutoencoderKL.from_pretrained(Path(settings.vae_from) / "vae")
    counts = {
        k: sum(p.numel() for p in components[k].parameters())
        for k in ("vae", "unet", "text_encoder")
    }
    log_line(f"parameters: {counts}")
    torch.manual_seed(settings.seed + 1)  # the global RNG draws the VAE's posterior samples
    reuse_vae = bool(settings.init_from or settings.vae_from)
    vae_history = [] if reuse_vae else train_vae(components["vae"], settings)
    vae_seconds = time.perf_counter() - start
    components["vae"].requires_grad_(False)
    components["unet"], unet_history = train_unet(components, settings, out)
    total_seconds = time.perf_counter() - start
    save_pipeline(components, out)
    log = {
        "settings": asdict(settings),
        "parameters": counts,
        "scaling_factor": components["vae"].config.scaling_factor,
        "vae_losses": vae_history,
        "unet_losses": unet_history,
        "wall_seconds": {"vae": vae_seconds, "total": total_seconds},
        "torch_version": torch.__version__,
    }
    write_training_log(out, log, settings.init_from, total_seconds)
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m ddpo.models.train_tiny_shapes --out DIR [--seed 0 ...]``."""
    description = __doc__.split("\n")[0] if __doc__ else None
    settings, out = parse_settings(TrainSettings, argv, description)
    train(settings, out)


if __name__ == "__main__":
    main()
