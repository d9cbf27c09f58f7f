"""Training: transitions/s of the trainer's PPO update against a bare UNet forward/backward.

One optimizer step on ``train_batch_size`` transitions (sample x timestep), with classifier-free
guidance as DDPO trains (the UNet sees a doubled batch: unconditional and conditional):

- ``ddpo``: the trainer's own code, ``ddpo.trainer.optimisation.train_inner_epoch`` over the
  transitions held as `Trajectories` (one timestep each), so one pass is one optimizer step:
  shuffle, ``train_timestep`` (``pipeline.score``, guided, under the accelerator's
  autocast -> ``ppo_clip_loss`` -> ``accelerator.backward``), gradient clipping and
  the finite check, the AdamW step over the trainable (LoRA) parameters and the metrics read;
- ``bare``: the UNet on the same doubled batch (for SDXL with the same pooled embeddings and
  time ids) -> mean square of its output as the loss ->
  backward -> the same clipping and AdamW step over the same parameters (torch only: no ddpo,
  no accelerate).

For a flow preset (SD3, FLUX.1) both steps are :mod:`flow_training`'s: transitions of a real
rollout, re-scored without CFG unless ``train_cfg``, with the KL reference forward when
``kl_coef > 0`` (the bare loop runs the same reference forward).

The gap between them is everything our training step adds around the UNet: the DDIM log-prob,
guidance, the PPO loss, the trainer's bookkeeping and any extra copies. Interleaved repeats after
a warm-up; the figure is the ratio of medians (ours / bare).
"""

import argparse
from collections.abc import Callable
from typing import Any

import harness
import presets
import torch

from ddpo.adapters.ddim.policy import ddim_schedule_rows

NAME = "training"
MAX_GRAD_NORM = 1.0  # TRL's default train_max_grad_norm
LEARNING_RATE = 3e-4  # TRL's default train_learning_rate
CLIP_RANGE = 1e-4  # TRL's default train_clip_range
MIXED_PRECISION = {torch.float32: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}


def training_inputs(
    pipeline: Any,
    batch_size: int,
    num_steps: int,
    device: torch.device,
    *,
    guidance_scale: float = 5.0,
) -> dict[str, Any]:
    """Random transitions shaped as a rollout's: latents, next latents, timesteps, their schedule
    rows, conditioning.

    Throughput does not depend on the values; the timesteps are the scheduler's, the rows are
    those a rollout at ``guidance_scale`` and the policy's ``eta`` records, the conditioning is
    the policy's own ``encode`` of the prompts and the empty negative prompt (text embeddings;
    for SDXL also the pooled embeddings and the micro-conditioning time ids).
    """
    pipeline.scheduler.set_timesteps(num_steps, device=device)
    unet = pipeline.unet
    channels = unet.config.in_channels
    side = unet.config.sample_size
    generator = torch.Generator(device="cpu").manual_seed(0)
    latents = torch.randn(batch_size, channels, side, side, generator=generator)
    next_latents = latents + 0.1 * torch.randn(latents.shape, generator=generator)
    picks = torch.randint(0, num_steps, (batch_size,), generator=generator)
    timesteps = pipeline.scheduler.timesteps.to(device)[picks.to(device)]
    schedule = ddim_schedule_rows(
        pipeline.scheduler, eta=pipeline.eta, guidance_scale=guidance_scale, device=device
    )[picks.to(device)]
    with torch.no_grad():
        conditioning = pipeline.encode(presets.prompts(batch_size), "")
    return {
        # float32 like the trajectories the pipeline returns and the trainer stores
        "latents": latents.to(device),
        "next_latents": next_latents.to(device),
        "timesteps": timesteps,
        "schedule": schedule,
        "conditioning": conditioning,
        "advantages": torch.randn(batch_size, generator=generator).to(device),
    }


def bare_unet_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """The UNet's keyword arguments for one guided call on the transitions: every input doubled
    (unconditional half first), with SDXL's added conditioning when the policy encodes it."""
    conditioning = inputs["conditioning"]
    unet_inputs: dict[str, Any] = {
        "sample": torch.cat([inputs["latents"]] * 2),
        "timestep": torch.cat([inputs["timesteps"]] * 2),
        "encoder_hidden_states": torch.cat(
            [conditioning["negative_prompt_embeds"], conditioning["prompt_embeds"]]
        ),
    }
    if "pooled_prompt_embeds" in conditioning.tensors:
        time_ids = conditioning["add_time_ids"]
        negative_pooled = conditioning["negative_pooled_prompt_embeds"]
        unet_inputs["added_cond_kwargs"] = {
            "text_embeds": torch.cat([negative_pooled, conditioning["pooled_prompt_embeds"]]),
            "time_ids": torch.cat([time_ids, time_ids]),
        }
    return unet_inputs


def make_steps(
    pipeline: Any,
    inputs: dict[str, Any],
    *,
    guidance_scale: float,
    eta: float,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, Callable[[], Any]]:
    """The two training steps over the same inputs, parameters and optimizer settings."""
    from ddpo.samples import Trajectories
    from ddpo.trainer import DDPOConfig
    from ddpo.trainer.optimisation import (
        Optimisation,
        make_optimizer,
        policy_gradient,
        train_inner_epoch,
    )
    from ddpo.trainer.setup import make_accelerator

    unet = pipeline.unet
    unet.train()
    params = harness.trainable_parameters(unet)
    if not params:
        raise RuntimeError("the UNet has no trainable parameters")

    # 1. ours: the trainer's optimisation pass over the transitions, one timestep per sample.
    batch_size = inputs["latents"].shape[0]
    config = DDPOConfig(
        mixed_precision=MIXED_PRECISION[dtype],
        sample_num_steps=1,
        sample_eta=eta,
        sample_guidance_scale=guidance_scale,
        sample_batch_size=batch_size,
        sample_num_batches_per_epoch=1,
        train_batch_size=batch_size,
        train_learning_rate=LEARNING_RATE,
        train_max_grad_norm=MAX_GRAD_NORM,
        train_clip_range=CLIP_RANGE,
        accelerator_kwargs={"cpu": True} if device.type == "cpu" else {},
        # Each repeat re-trains the same transitions after the last one's update: not the
        # policy that drew them, so the on-policy check (still timed) must not stop it.
        on_policy_tolerance=1e30,
    )
    accelerator = make_accelerator(config, accumulation_steps=1)
    optimizer = accelerator.prepare_optimizer(make_optimizer(config, params))
    opt = Optimisation(
        config, accelerator, pipeline, unet, optimizer, params, policy_gradient(config)
    )
    conditioning = inputs["conditioning"]
    with torch.no_grad(), accelerator.autocast():
        old_log_prob = pipeline.score(
            conditioning, inputs["latents"], inputs["next_latents"], inputs["schedule"]
        ).log_prob
    samples = Trajectories(
        prompts=presets.prompts(batch_size),
        conditioning=conditioning,
        timesteps=inputs["timesteps"][:, None],
        latents=inputs["latents"][:, None],
        next_latents=inputs["next_latents"][:, None],
        log_probs=old_log_prob.detach().float()[:, None],
        schedule=inputs["schedule"][:, None],
        advantages=inputs["advantages"],
    )

    def ddpo_step() -> None:
        train_inner_epoch(opt, samples, epoch=0, inner_epoch=0, global_step=0, advance=lambda: None)

    # 2. bare: torch only.
    bare_optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=1e-4)
    doubled = bare_unet_inputs(inputs)

    def bare_step() -> None:
        with harness.autocast(device, dtype):
            output = unet(**doubled).sample
            loss = output.float().square().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        bare_optimizer.step()
        bare_optimizer.zero_grad(set_to_none=True)

    return {"ddpo": ddpo_step, "bare": bare_step}


def steps_for(
    pipeline: Any, preset: presets.Preset, batch_size: int, device: torch.device, dtype: torch.dtype
) -> dict[str, Callable[[], Any]]:
    """The ``ddpo`` and ``bare`` steps of the preset's family on ``batch_size`` transitions."""
    if presets.is_flow(preset):
        import flow_training

        flow_inputs = flow_training.flow_training_inputs(pipeline, preset, batch_size, device)
        return flow_training.make_flow_steps(
            pipeline,
            flow_inputs,
            preset,
            device=device,
            dtype=dtype,
            learning_rate=LEARNING_RATE,
            max_grad_norm=MAX_GRAD_NORM,
            clip_range=CLIP_RANGE,
            mixed_precision=MIXED_PRECISION[dtype],
        )
    inputs = training_inputs(
        pipeline, batch_size, preset.num_steps, device, guidance_scale=preset.guidance_scale
    )
    return make_steps(
        pipeline,
        inputs,
        guidance_scale=preset.guidance_scale,
        eta=preset.eta,
        device=device,
        dtype=dtype,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time both training steps; return settings, one row per contender and the summary."""
    preset, device, dtype, pipeline, compile_unet = presets.prepare(args)
    contenders = steps_for(pipeline, preset, preset.train_batch_size, device, dtype)
    # FLOPs are counted on the eager module (compiling does not change the model's FLOPs, and
    # FlopCounterMode does not see inside compiled graphs); then compile if asked.
    flops: dict[str, int] = {}
    if not getattr(args, "no_mfu", False):
        flops = {name: harness.count_flops(fn) for name, fn in contenders.items()}
    if compile_unet:
        harness.apply_unet_options(pipeline.denoiser, compile=True)
    timings = harness.time_interleaved(
        contenders, device, repeats=preset.repeats, warmup=preset.warmup
    )
    memory = {}
    for name, fn in contenders.items():
        with harness.measure_peak(device) as peak:
            fn()
        memory[name] = peak
    peak_flops = None
    if flops and device.type == "cuda":
        peak_flops = harness.matmul_peak_flops(device, dtype)

    batch = preset.train_batch_size
    rows = harness.contender_rows(
        list(contenders),
        timings,
        memory,
        flops,
        peak_flops,
        work=batch,
        work_key="transitions_per_s",
        flop_key="gflop_per_step",
    )
    ratios = timings.ratios("ddpo", "bare")
    summary: dict[str, Any] = {
        "time_ratio_ours_over_bare": ratios["median"],
        "overhead_pct": 100.0 * (ratios["median"] - 1.0),
        "overhead_pct_min": 100.0 * (ratios["min"] - 1.0),
        "overhead_pct_cpu_time": 100.0 * (ratios["cpu_median"] - 1.0),
        "target_overhead_pct": 15.0,
        "ddpo_transitions_per_s": rows[0]["transitions_per_s"],
        "bare_transitions_per_s": rows[1]["transitions_per_s"],
        "trainable_parameters": sum(
            p.numel() for p in harness.trainable_parameters(pipeline.denoiser)
        ),
    }
    if peak_flops is not None:
        summary["matmul_peak_tflop_per_s"] = peak_flops / 1e12
    return harness.result(
        NAME,
        settings=presets.describe(preset, args, device),
        environment=harness.environment(device),
        timings_s=timings.seconds,
        cpu_timings_s=timings.cpu_seconds,
        rows=rows,
        summary=summary,
    )
