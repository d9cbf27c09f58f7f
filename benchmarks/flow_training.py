"""The training benchmark's two steps for a flow policy (SD3, FLUX.1): the trainer's pass and a
bare transformer loop, over transitions of a real rollout.

A flow policy re-scores a transition from its schedule row, so the inputs come from one real
rollout of the preset's policy (its noise level and stochastic window): each sample contributes
one transition of the window, with its row and the log-prob recorded when it was sampled.

- ``ddpo``: ``ddpo.trainer.optimisation.train_inner_epoch`` over those transitions (one
  timestep each, so one pass is one optimizer step): ``pipeline.score`` (guided only with
  ``train_cfg``; SD3's true CFG doubles the batch, FLUX uses its guidance embedding), the PPO
  loss, the KL term to the reference policy when ``kl_coef > 0`` (a forward with the LoRA
  adapters off), ``accelerator.backward``, clipping, the finite check and AdamW;
- ``bare``: torch and diffusers only: the transformer on the same batch (for SD3 doubled only
  with ``train_cfg``; for FLUX on packed latents with the guidance value), mean square of its
  output as the loss, and when ``kl_coef > 0`` the same forward without gradients with the
  adapters disabled (diffusers' ``disable_adapters``); backward, clipping, AdamW over the same
  parameters.
"""

from collections.abc import Callable
from typing import Any

import harness
import presets
import torch


def flow_training_inputs(
    pipeline: Any, preset: presets.Preset, batch_size: int, device: torch.device
) -> dict[str, Any]:
    """One rollout of ``batch_size`` samples; one recorded transition per sample (cycling
    through the window), with its conditioning and old log-prob."""
    prompts = presets.prompts(batch_size)
    with torch.no_grad():
        conditioning = pipeline.encode(prompts, "")
        rollout = pipeline.rollout(
            conditioning,
            num_steps=preset.num_steps,
            guidance_scale=preset.guidance_scale,
            generator=torch.Generator(device=device).manual_seed(0),
        )
    window = rollout.log_probs.shape[1]
    picks = torch.arange(batch_size, device=rollout.latents.device) % window
    rows = torch.arange(batch_size, device=rollout.latents.device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    return {
        "prompts": prompts,
        "conditioning": conditioning,
        "latents": rollout.latents[rows, picks].float(),
        "next_latents": rollout.latents[rows, picks + 1].float(),
        "steps": rollout.timesteps.to(picks.device)[picks],
        "schedule": rollout.schedule.to(picks.device)[picks],
        "log_probs": rollout.log_probs[rows, picks].float(),
        "advantages": torch.randn(batch_size, generator=generator).to(device),
        "window": window,
    }


def _bare_call(pipeline: Any, inputs: dict[str, Any], preset: presets.Preset) -> Callable[[], Any]:
    """The transformer's forward on the transitions as stock diffusers makes it."""
    from diffusers import FluxPipeline

    transformer = pipeline.denoiser
    conditioning = inputs["conditioning"]
    latents = inputs["latents"]
    batch = latents.shape[0]
    dtype = next(transformer.parameters()).dtype
    timestep = torch.full((batch,), 500.0, device=latents.device)
    embeds = conditioning["prompt_embeds"]
    pooled = conditioning["pooled_prompt_embeds"]
    if presets.family(preset.model) == "sd3":
        guided = preset.train_cfg and preset.guidance_scale > 1.0
        if guided:
            latents, timestep = torch.cat([latents] * 2), torch.cat([timestep] * 2)
            embeds = torch.cat([conditioning["negative_prompt_embeds"], embeds])
            pooled = torch.cat([conditioning["negative_pooled_prompt_embeds"], pooled])

        def sd3() -> Any:
            return transformer(
                hidden_states=latents.to(dtype),
                timestep=timestep,
                encoder_hidden_states=embeds.to(dtype),
                pooled_projections=pooled.to(dtype),
                return_dict=False,
            )[0]

        return sd3
    _, channels, height, width = latents.shape
    packed = FluxPipeline._pack_latents(latents, batch, channels, height, width)
    image_ids = FluxPipeline._prepare_latent_image_ids(
        batch, height // 2, width // 2, latents.device, embeds.dtype
    )
    text_ids = torch.zeros(embeds.shape[1], 3, device=latents.device, dtype=embeds.dtype)
    guidance = None
    if transformer.config.guidance_embeds:
        guidance = torch.full((batch,), preset.guidance_scale, device=latents.device)

    def flux() -> Any:
        return transformer(
            hidden_states=packed.to(dtype),
            timestep=timestep / 1000,
            guidance=guidance,
            pooled_projections=pooled.to(dtype),
            encoder_hidden_states=embeds.to(dtype),
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]

    return flux


def make_flow_steps(
    pipeline: Any,
    inputs: dict[str, Any],
    preset: presets.Preset,
    *,
    device: torch.device,
    dtype: torch.dtype,
    learning_rate: float,
    max_grad_norm: float,
    clip_range: float,
    mixed_precision: str,
) -> dict[str, Callable[[], Any]]:
    """The two training steps (module docstring) over the same transitions and parameters."""
    from ddpo.samples import Trajectories
    from ddpo.trainer import DDPOConfig
    from ddpo.trainer.optimisation import (
        Optimisation,
        make_optimizer,
        policy_gradient,
        train_inner_epoch,
    )
    from ddpo.trainer.setup import make_accelerator

    transformer = pipeline.denoiser
    transformer.train()
    params = harness.trainable_parameters(transformer)
    if not params:
        raise RuntimeError("the transformer has no trainable parameters")
    batch_size = inputs["latents"].shape[0]
    config = DDPOConfig(
        mixed_precision=mixed_precision,
        sample_num_steps=preset.num_steps,
        sample_guidance_scale=preset.guidance_scale,
        sample_batch_size=batch_size,
        sample_num_batches_per_epoch=1,
        train_batch_size=batch_size,
        train_learning_rate=learning_rate,
        train_max_grad_norm=max_grad_norm,
        train_clip_range=clip_range,
        train_cfg=preset.train_cfg,
        kl_coef=preset.kl_coef,
        accelerator_kwargs={"cpu": True} if device.type == "cpu" else {},
        # Each repeat re-trains the same transitions after the last one's update: not the
        # policy that drew them, so the on-policy check (still timed) must not stop it.
        on_policy_tolerance=1e30,
    )
    accelerator = make_accelerator(config, accumulation_steps=1)
    optimizer = accelerator.prepare_optimizer(make_optimizer(config, params))
    opt = Optimisation(
        config, accelerator, pipeline, transformer, optimizer, params, policy_gradient(config)
    )
    samples = Trajectories(
        prompts=inputs["prompts"],
        conditioning=inputs["conditioning"],
        timesteps=inputs["steps"][:, None],
        latents=inputs["latents"][:, None],
        next_latents=inputs["next_latents"][:, None],
        log_probs=inputs["log_probs"][:, None],
        schedule=inputs["schedule"][:, None],
        advantages=inputs["advantages"],
    )

    def ddpo_step() -> None:
        train_inner_epoch(opt, samples, epoch=0, inner_epoch=0, global_step=0, advance=lambda: None)

    bare_optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=1e-4)
    forward = _bare_call(pipeline, inputs, preset)
    base: Any = transformer

    def bare_step() -> None:
        with harness.autocast(device, dtype):
            loss = forward().float().square().mean()
            if preset.kl_coef > 0:
                base.disable_adapters()
                try:
                    with torch.no_grad():  # the reference forward the KL term needs
                        forward()
                finally:
                    base.enable_adapters()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        bare_optimizer.step()
        bare_optimizer.zero_grad(set_to_none=True)

    return {"ddpo": ddpo_step, "bare": bare_step}
