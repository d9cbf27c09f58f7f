"""Epoch: one full DDPO epoch broken into phases, with time and peak memory per phase.

The epoch is composed from our pipeline and core in the order and sizes of TRL's
``DDPOTrainer.step`` (``mode: composed``): per sampling batch, encode the prompts and sample with
log-probs (``encode_prompts``, ``sampling``: UNet with guidance, DDIM with log-prob, VAE decode),
score the images (``reward``: JPEG compressibility, the reference's cheapest reward), normalise
advantages (``advantages``), then train (``training``): shuffle samples and timesteps, and per
train batch, per timestep, re-score with ``score_transitions`` + ``ppo_clip_loss`` + backward,
stepping the optimizer once per train batch (gradients accumulated over timesteps, as TRL).

Timestep fraction 1, one inner epoch, TRL's defaults; sizes from the preset
(``sample_num_batches_per_epoch`` x ``sample_batch_size`` samples x ``num_steps`` steps).
"""

import argparse
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import bench_training
import harness
import numpy as np
import presets
import torch
from PIL import Image

NAME = "epoch"


def jpeg_compressibility(images: torch.Tensor) -> torch.Tensor:
    """Reward: minus the JPEG size in KiB at quality 95 (ddpo-pytorch's compressibility)."""
    array = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    array_np = array.permute(0, 2, 3, 1).cpu().numpy()
    sizes = []
    for image in array_np:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=95)
        sizes.append(-buffer.tell() / 1024.0)
    return torch.tensor(sizes)


class _Phases:
    """Accumulates time and the highest peak memory of each named phase."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self.peak_mib: dict[str, float] = {}
        self.memory_kind = ""

    def run(self, name: str, fn: Any) -> Any:
        with harness.measure_peak(self.device) as peak:
            harness.synchronize(self.device)
            start = time.perf_counter()
            result = fn()
            harness.synchronize(self.device)
            elapsed = time.perf_counter() - start
        self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
        self.peak_mib[name] = max(self.peak_mib.get(name, 0.0), peak.peak_mib)
        self.memory_kind = peak.kind
        return result


def composed_epoch(
    pipeline: Any,
    preset: presets.Preset,
    device: torch.device,
    dtype: torch.dtype,
    *,
    seed: int = 0,
) -> _Phases:
    """Run one DDPO epoch from pipeline + core, timing each phase."""
    from ddpo.core import normalize_advantages, ppo_clip_loss

    phases = _Phases(device)
    unet = pipeline.unet
    params = harness.trainable_parameters(unet)
    optimizer = torch.optim.AdamW(params, lr=bench_training.LEARNING_RATE, weight_decay=1e-4)
    generator = torch.Generator(device=device).manual_seed(seed)
    batch = preset.sample_batch_size

    # 1. sampling, batch by batch (prompt embeddings kept for training, as TRL)
    samples: list[dict[str, torch.Tensor]] = []
    all_prompts: list[str] = []
    all_images = []
    unet.eval()
    for index in range(preset.sample_num_batches_per_epoch):
        batch_prompts = presets.prompts(batch * (index + 1))[-batch:]

        def encode(batch_prompts: Sequence[str] = batch_prompts) -> Any:
            with torch.no_grad(), harness.autocast(device, dtype):
                return (
                    pipeline.encode_prompt(list(batch_prompts)),
                    pipeline.encode_prompt([""] * len(batch_prompts)),
                )

        prompt_embeds, negative_embeds = phases.run("encode_prompts", encode)

        def sample(pe: torch.Tensor = prompt_embeds, ne: torch.Tensor = negative_embeds) -> Any:
            with torch.no_grad(), harness.autocast(device, dtype):
                return pipeline(
                    prompt_embeds=pe,
                    negative_prompt_embeds=ne,
                    num_inference_steps=preset.num_steps,
                    guidance_scale=preset.guidance_scale,
                    eta=preset.eta,
                    generator=generator,
                    output_type="pt",
                )

        output = phases.run("sampling", sample)
        timesteps = pipeline.scheduler.timesteps.to(device).repeat(batch, 1)
        samples.append(
            {
                "prompt_embeds": prompt_embeds,
                "negative_prompt_embeds": negative_embeds,
                "latents": output.latents[:, :-1],
                "next_latents": output.latents[:, 1:],
                "log_probs": output.log_probs,
                "timesteps": timesteps,
            }
        )
        all_images.append(output.images)
        all_prompts.extend(batch_prompts)

    # 2. rewards
    rewards = phases.run("reward", lambda: jpeg_compressibility(torch.cat(all_images)))

    # 3. advantages (global normalisation, TRL's default without per-prompt tracking)
    def advantages_phase() -> torch.Tensor:
        return normalize_advantages(rewards.double()).float().to(device)

    advantages = phases.run("advantages", advantages_phase)
    data = {key: torch.cat([s[key] for s in samples]) for key in samples[0]}
    data["advantages"] = advantages

    # 4. training: shuffle samples, shuffle timesteps per sample, accumulate over timesteps
    def train_phase() -> None:
        unet.train()
        total = data["advantages"].shape[0]
        order_gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(total, generator=order_gen).to(device)
        shuffled = {key: value[perm] for key, value in data.items()}
        time_perm = torch.stack(
            [torch.randperm(preset.num_steps, generator=order_gen) for _ in range(total)]
        ).to(device)
        rows = torch.arange(total, device=device)[:, None]
        for key in ("latents", "next_latents", "log_probs", "timesteps"):
            shuffled[key] = shuffled[key][rows, time_perm]
        for start in range(0, total, preset.train_batch_size):
            chunk = {k: v[start : start + preset.train_batch_size] for k, v in shuffled.items()}
            for j in range(preset.num_steps):
                with harness.autocast(device, dtype):
                    out = pipeline.score_transitions(
                        chunk["latents"][:, j],
                        chunk["next_latents"][:, j],
                        chunk["timesteps"][:, j],
                        chunk["prompt_embeds"],
                        chunk["negative_prompt_embeds"],
                        guidance_scale=preset.guidance_scale,
                        eta=preset.eta,
                    )
                    loss = ppo_clip_loss(
                        out.log_prob,
                        chunk["log_probs"][:, j].float(),
                        chunk["advantages"],
                        clip_range=bench_training.CLIP_RANGE,
                    ).loss
                (loss / preset.num_steps).backward()
            torch.nn.utils.clip_grad_norm_(params, bench_training.MAX_GRAD_NORM)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    phases.run("training", train_phase)
    return phases


def trainer_available() -> bool:
    """Whether ``ddpo.trainer.DDPOTrainer`` can be imported here."""
    try:
        from ddpo.trainer import DDPOTrainer  # noqa: F401
    except (ImportError, AttributeError):
        return False
    return True


def trainer_epoch(
    pipeline: Any,
    preset: presets.Preset,
    device: torch.device,
    args: argparse.Namespace,
) -> tuple[dict[str, float], harness.PeakMemory]:
    """Run a warm-up epoch and a timed epoch through ``DDPOTrainer``; read its phase timings.

    The trainer logs ``time_sample_s`` (sampling and, when not overlapped, rewards),
    ``time_reward_s``, ``time_advantages_s``, ``time_train_s`` and ``time_epoch_s`` per epoch to
    ``metrics.jsonl``; memory is the timed epoch's peak as a whole.
    """
    import tempfile

    from ddpo.trainer import DDPOConfig, DDPOTrainer

    animals = ("cat", "dog", "horse", "monkey", "rabbit", "zebra", "spider")
    counter = iter(range(10**9))

    def prompt_fn() -> tuple[str, dict[str, Any]]:
        return f"a photo of a {animals[next(counter) % len(animals)]}", {}

    def reward_fn(images: Any, prompts: Any, metadata: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        return jpeg_compressibility(torch.as_tensor(images)), {}

    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[preset.dtype]
    with tempfile.TemporaryDirectory() as out_dir:
        config = DDPOConfig(
            num_epochs=2,
            save_freq=0,
            output_dir=out_dir,
            mixed_precision=mixed,
            sample_num_steps=preset.num_steps,
            sample_eta=preset.eta,
            sample_guidance_scale=preset.guidance_scale,
            sample_batch_size=preset.sample_batch_size,
            sample_num_batches_per_epoch=preset.sample_num_batches_per_epoch,
            train_batch_size=preset.train_batch_size,
            gradient_checkpointing=presets.options(args)["gradient_checkpointing"],
            accelerator_kwargs={"cpu": True} if device.type == "cpu" else {},
        )
        trainer = DDPOTrainer(config, reward_fn, prompt_fn, pipeline)
        global_step = 0
        if preset.warmup > 0:
            global_step = trainer.step(0, global_step)
        with harness.measure_peak(device) as peak:
            trainer.step(1, global_step)
        lines = (Path(trainer.output_dir) / "metrics.jsonl").read_text().splitlines()
        metrics = json.loads(lines[-1])
    phases = {
        "sampling": metrics["time_sample_s"],
        "reward": metrics["time_reward_s"],
        "advantages": metrics["time_advantages_s"],
        "training": metrics["time_train_s"],
    }
    phases["other"] = max(metrics["time_epoch_s"] - sum(phases.values()), 0.0)
    return phases, peak


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One warm-up epoch (1 sampling batch) and one timed epoch; report the phases.

    ``--epoch-mode trainer`` runs ``DDPOTrainer.step`` (phase times as the trainer logs them,
    one peak for the whole epoch); ``composed`` runs the epoch composed here (time and peak
    memory per phase); ``auto`` (default) is ``trainer`` where it can be imported.
    """
    preset = presets.resolve(args)
    device = harness.resolve_device(getattr(args, "device", "auto"))
    harness.set_threads(device, getattr(args, "threads", None))
    dtype = harness.resolve_dtype(preset.dtype)
    mode = getattr(args, "epoch_mode", "auto") or "auto"
    if mode not in ("auto", "trainer", "composed"):
        raise ValueError(f"epoch_mode must be auto, trainer or composed, got {mode!r}")
    if mode == "auto":
        mode = "trainer" if trainer_available() else "composed"
    pipeline = presets.load_pipeline(preset, device)
    options = presets.options(args)
    if mode == "trainer":
        options["gradient_checkpointing"] = False  # the trainer switches it on from its config
    harness.apply_unet_options(pipeline.unet, **options)

    if mode == "trainer":
        seconds, epoch_peak = trainer_epoch(pipeline, preset, device, args)
        peaks = {name: math.nan for name in seconds}
        memory_kind = epoch_peak.kind
        total_peak = epoch_peak.peak_mib
    else:
        if preset.warmup > 0:
            warm = replace(preset, sample_num_batches_per_epoch=1)
            composed_epoch(pipeline, warm, device, dtype)
        phases = composed_epoch(pipeline, preset, device, dtype)
        seconds, peaks = phases.seconds, phases.peak_mib
        memory_kind = phases.memory_kind
        total_peak = max(peaks.values())

    total = sum(seconds.values())
    samples = preset.sample_num_batches_per_epoch * preset.sample_batch_size
    rows = [
        {"phase": name, "seconds": value, "share": value / total, "peak_mib": peaks[name]}
        for name, value in seconds.items()
    ]
    rows.append({"phase": "total", "seconds": total, "share": 1.0, "peak_mib": total_peak})
    summary = {
        "mode": mode,
        "epoch_seconds": total,
        "samples": samples,
        "transitions": samples * preset.num_steps,
        "samples_per_s": samples / total,
        "memory_kind": memory_kind,
    }
    if preset.name == "sd15":
        summary["target_epoch_seconds_256_samples_h100"] = 150.0
    return harness.result(
        NAME,
        settings=presets.describe(preset, args, device),
        environment=harness.environment(device),
        rows=rows,
        summary=summary,
    )
