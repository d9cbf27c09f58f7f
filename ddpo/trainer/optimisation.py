"""Phase 3 of an epoch: passes of PPO (or score-function) updates over the epoch's samples.

Each inner epoch shuffles the samples, shuffles each sample's timesteps independently and keeps
``train_timestep_fraction`` of them, re-scores the stored transitions through the
accelerate-prepared UNet (so gradients are all-reduced across processes), and steps the optimizer
once per ``train_gradient_accumulation_steps`` micro-batches, gradients accumulated over the kept
timesteps too, the norm clipped and checked finite before any step.
"""

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ddpo.core import gaussian_kl, ppo_clip_loss, score_function_loss, subsample_timesteps
from ddpo.trainer.config import DDPOConfig
from ddpo.trainer.rollout import TRAIN_STREAM, Trajectories, derive_seed


@dataclass
class Optimisation:
    """What an optimisation pass needs: the trained module as prepared by accelerate."""

    config: DDPOConfig
    accelerator: Any
    pipeline: Any
    unet: torch.nn.Module
    optimizer: torch.optim.Optimizer
    parameters: list[torch.nn.Parameter]


def num_train_timesteps(config: DDPOConfig, transitions: int | None = None) -> int:
    """Timesteps trained per sample: what `subsample_timesteps` keeps of a rollout's
    ``transitions`` (default ``sample_num_steps``; fewer for a flow policy's stochastic window)."""
    recorded = config.sample_num_steps if transitions is None else transitions
    probe = torch.arange(recorded).unsqueeze(0)
    kept = subsample_timesteps(probe, timestep_fraction=config.train_timestep_fraction)
    return int(kept.shape[-1])


def shuffle(
    samples: Trajectories, config: DDPOConfig, *, process_index: int, epoch: int, inner_epoch: int
) -> Trajectories:
    """The samples in a fresh order, each with a random ``train_timestep_fraction`` of its
    transitions (seeded by the config's seed, the process, the epoch and the inner epoch)."""
    generator = torch.Generator().manual_seed(
        derive_seed(config.seed, TRAIN_STREAM, process_index, epoch, inner_epoch)
    )
    num_samples, num_steps = samples.timesteps.shape
    order = torch.randperm(num_samples, generator=generator)
    time_perms = torch.stack(
        [torch.randperm(num_steps, generator=generator) for _ in range(num_samples)]
    )
    kept = subsample_timesteps(time_perms, timestep_fraction=config.train_timestep_fraction)
    device = samples.timesteps.device
    return samples.select(order.to(device), kept.to(device))


def train_inner_epoch(
    opt: Optimisation,
    samples: Trajectories,
    *,
    epoch: int,
    inner_epoch: int,
    global_step: int,
    advance: Callable[[], None],
) -> tuple[int, list[dict[str, float]]]:
    """One pass over ``samples``.

    Returns:
        The global step after it and, per optimizer step, the metrics averaged over its
        micro-batches, timesteps and processes.
    """
    config, accelerator = opt.config, opt.accelerator
    shuffled = shuffle(
        samples,
        config,
        process_index=accelerator.process_index,
        epoch=epoch,
        inner_epoch=inner_epoch,
    )
    # The sampling guidance is always passed; `guided` (train_cfg) says whether the re-scoring
    # pass runs classifier-free guidance. A guidance-distilled model (FLUX.1-dev) takes the
    # scale as an input of its one pass either way, so it re-scores the policy it sampled.
    train_cfg = config.train_cfg
    guidance_scale = config.sample_guidance_scale
    opt.unet.train()
    step_metrics: list[dict[str, float]] = []
    window: list[dict[str, torch.Tensor]] = []
    for batch in shuffled.micro_batches(config.train_batch_size):
        for j in range(batch.timesteps.shape[1]):
            with accelerator.accumulate(opt.unet):
                metrics = train_timestep(opt, batch, j, guidance_scale, train_cfg)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(
                        opt.parameters, config.train_max_grad_norm
                    )
                    # One host sync per optimizer step: nothing non-finite is applied.
                    if grad_norm is not None and not torch.isfinite(grad_norm):
                        raise FloatingPointError(
                            f"gradient norm is {float(grad_norm)} at epoch {epoch}, "
                            f"optimizer step {global_step + 1}; refusing to step the "
                            "optimizer (the rollout was finite: check the learning rate, "
                            "mixed_precision and the reward scale)"
                        )
                opt.optimizer.step()
                opt.optimizer.zero_grad()
            window.append(metrics)
            advance()
            if accelerator.sync_gradients:
                global_step += 1
                averaged = reduce_metrics(accelerator, window)
                step_metrics.append(averaged)
                accelerator.log(
                    {f"train/{k}": v for k, v in averaged.items()}
                    | {"epoch": epoch, "inner_epoch": inner_epoch},
                    step=global_step,
                )
                window = []
    return global_step, step_metrics


def train_timestep(
    opt: Optimisation, batch: Trajectories, j: int, guidance_scale: float, train_cfg: bool
) -> dict[str, torch.Tensor]:
    """Loss of the ``j``-th kept transition of each sample in ``batch``, backpropagated."""
    config, pipeline = opt.config, opt.pipeline
    assert batch.advantages is not None
    score = functools.partial(
        pipeline.score,
        batch.conditioning,
        batch.latents[:, j],
        batch.next_latents[:, j],
        batch.timesteps[:, j],
        guidance_scale=guidance_scale,
        guided=train_cfg,
        eta=config.sample_eta,
    )
    with opt.accelerator.autocast():
        out = score(denoiser=opt.unet)
    log_prob = out.log_prob.float()
    old_log_prob = batch.log_probs[:, j]
    advantages = batch.advantages
    ppo = ppo_clip_loss(log_prob, old_log_prob, advantages, clip_range=config.train_clip_range)
    loss = ppo.loss if config.loss_type == "ppo" else score_function_loss(log_prob, advantages)
    # Diagnostics stay on the device as detached tensors; read once per optimizer step.
    metrics = {"approx_kl": ppo.approx_kl, "clip_fraction": ppo.clip_fraction}
    if config.kl_coef > 0:
        with torch.no_grad(), pipeline.reference_policy(), opt.accelerator.autocast():
            ref = score()
        kl = gaussian_kl(out.mean.float(), ref.mean.float(), out.std_dev.float()).mean()
        loss = loss + config.kl_coef * kl
        metrics["kl"] = kl.detach()
    opt.accelerator.backward(loss)
    metrics["loss"] = loss.detach()
    return metrics


def reduce_metrics(accelerator: Any, window: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Each metric averaged over the window and over processes."""
    keys = sorted(window[0])
    local = torch.stack([torch.stack([m[k].float() for m in window]).mean() for k in keys]).to(
        accelerator.device
    )
    reduced = accelerator.reduce(local, reduction="mean")
    return {k: float(v) for k, v in zip(keys, reduced.tolist(), strict=True)}


def trainable_named_parameters(pipeline: Any) -> list[tuple[str, torch.nn.Parameter]]:
    """The UNet's parameters that train: those of ``get_trainable_layers()`` requiring grad."""
    unet = pipeline.denoiser  # the module the DDP wrapper (if any) shares parameters with
    wanted = {id(p) for p in _parameters_of(pipeline.get_trainable_layers())}
    named = [(n, p) for n, p in unet.named_parameters() if p.requires_grad and id(p) in wanted]
    if not named:
        raise ValueError(
            "sd_pipeline.get_trainable_layers() has no parameter of the denoiser that requires "
            "grad; nothing to train"
        )
    return named


def make_optimizer(config: DDPOConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW (bitsandbytes' 8-bit AdamW with ``train_use_8bit_adam``) from the config."""
    kwargs: dict[str, Any] = {
        "lr": config.train_learning_rate,
        "betas": (config.train_adam_beta1, config.train_adam_beta2),
        "weight_decay": config.train_adam_weight_decay,
        "eps": config.train_adam_epsilon,
    }
    if config.train_use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as err:  # pragma: no cover - checked in DDPOConfig.validate
            raise ImportError(
                "DDPOConfig.train_use_8bit_adam=True needs bitsandbytes (pip install bitsandbytes)"
            ) from err
        optimizer: torch.optim.Optimizer = bnb.optim.AdamW8bit(params, **kwargs)
        return optimizer
    return torch.optim.AdamW(params, **kwargs)


def _parameters_of(layers: Any) -> Iterator[torch.nn.Parameter]:
    if isinstance(layers, torch.nn.Module):
        yield from layers.parameters()
    elif isinstance(layers, torch.nn.Parameter):
        yield layers
    elif isinstance(layers, Sequence | set | tuple) or hasattr(layers, "__iter__"):
        for item in layers:
            yield from _parameters_of(item)
    else:
        raise TypeError(
            "sd_pipeline.get_trainable_layers() must return a module or parameters, got "
            f"{type(layers).__name__}"
        )


__all__ = [
    "Optimisation",
    "make_optimizer",
    "num_train_timesteps",
    "reduce_metrics",
    "shuffle",
    "train_inner_epoch",
    "train_timestep",
    "trainable_named_parameters",
]
