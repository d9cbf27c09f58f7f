"""Phase 3 of an epoch: passes of the objective's updates over the epoch's samples.

Each inner epoch shuffles the samples, keeps ``train_timestep_fraction`` of each sample's
transitions (a random subset per sample, or the first ones in order with
``train_timestep_order="first"``), asks the objective (`ddpo.objectives`; by default
`PolicyGradient`, which re-scores the stored transitions through the accelerate-prepared
denoiser, so that gradients are all-reduced across processes) for each micro-batch's terms, and
steps the optimizer once per ``train_gradient_accumulation_steps`` micro-batches, gradients
accumulated over the terms too, the norm clipped and checked finite before any step. Until an
epoch's first optimizer step the weights are those that sampled, so every re-scored
log-probability must equal the sampled one (`OnPolicyCheck`, fed by the objective's
`ddpo.objectives.ON_POLICY_KEY` diagnostic: the epoch stops before that step otherwise).
"""

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ddpo.core import subsample_timesteps
from ddpo.objectives import ON_POLICY_KEY, Objective, ObjectiveContext, PolicyGradient
from ddpo.policy import DiffusionPolicy, StepScore
from ddpo.samples import Trajectories
from ddpo.trainer.config import DDPOConfig
from ddpo.trainer.rollout import OBJECTIVE_STREAM, TRAIN_STREAM, derive_seed


@dataclass
class Optimisation:
    """What an optimisation pass needs: the objective, and the trained module as prepared by
    accelerate."""

    config: DDPOConfig
    accelerator: Any
    pipeline: DiffusionPolicy
    unet: torch.nn.Module
    optimizer: torch.optim.Optimizer
    parameters: list[torch.nn.Parameter]
    objective: Objective
    after_micro_batch: Callable[[int, bool], object] | None = None
    """Called after each micro-batch's terms with the global step and whether an optimizer step
    ended it (the trainer's EMA update)."""


def policy_gradient(config: DDPOConfig) -> PolicyGradient:
    """The default objective, from the config: ``loss_type``, `clip_range`, ``kl_coef``,
    ``kl_convention`` and ``train_cfg`` (which matters only above guidance 1: at a scale of 1
    classifier-free guidance is the conditional prediction, so the unconditional pass is
    skipped, the same numbers for half the work where the policy cannot tell from its rows)."""
    return PolicyGradient(
        loss_type=config.loss_type,
        clip_range=clip_range(config),
        kl_coef=config.kl_coef,
        kl_convention=config.kl_convention,
        cfg=config.train_cfg and config.sample_guidance_scale > 1,
    )


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
    """The samples in a fresh order, each with ``train_timestep_fraction`` of its transitions: a
    random subset (``train_timestep_order="random"``) or the first ones in sampling order
    (``"first"``, Flow-GRPO's); seeded by the config's seed, the process, the epoch and the inner
    epoch. The sample order is the same for both orders."""
    generator = torch.Generator().manual_seed(
        derive_seed(config.seed, TRAIN_STREAM, process_index, epoch, inner_epoch)
    )
    num_samples, num_steps = samples.timesteps.shape
    order = torch.randperm(num_samples, generator=generator)
    device = samples.timesteps.device
    if num_steps == 0:  # an objective that trains on no transitions
        return samples.select(order.to(device))
    if config.train_timestep_order == "first":
        time_perms = torch.arange(num_steps).expand(num_samples, num_steps)
    else:
        time_perms = torch.stack(
            [torch.randperm(num_steps, generator=generator) for _ in range(num_samples)]
        )
    kept = subsample_timesteps(time_perms, timestep_fraction=config.train_timestep_fraction)
    return samples.select(order.to(device), kept.to(device))


def micro_batches_per_epoch(config: DDPOConfig) -> int:
    """Training micro-batches per inner epoch on each process:
    ``sample_batch_size * sample_num_batches_per_epoch / train_batch_size`` (fixed, also when
    ``train_drop_zero_advantages`` leaves fewer samples)."""
    return config.sample_batch_size * config.sample_num_batches_per_epoch // config.train_batch_size


def clip_range(config: DDPOConfig) -> float | tuple[float, float]:
    """PPO's clip range: ``train_clip_range``, or the ``(low, high)`` pair when
    ``train_clip_range_low`` or ``train_clip_range_high`` is set (the other one defaulting to
    ``train_clip_range``)."""
    low, high = config.train_clip_range_low, config.train_clip_range_high
    if low is None and high is None:
        return config.train_clip_range
    return (
        config.train_clip_range if low is None else low,
        config.train_clip_range if high is None else high,
    )


def timestep_loss(
    config: DDPOConfig,
    score: StepScore,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    reference: StepScore | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The default objective's loss of one trained transition per sample and its diagnostics
    (no model call): `PolicyGradient.transition_loss` of `policy_gradient` ``(config)``."""
    return policy_gradient(config).transition_loss(score, old_log_prob, advantages, reference)


LOG_RATIO_KEY = ON_POLICY_KEY
"""The diagnostic of the on-policy check: ``max |log_prob - old_log_prob|``."""

DEFAULT_ON_POLICY_TOLERANCE = {"no": 1e-3, "fp16": 5e-2, "bf16": 5e-2}
"""``DDPOConfig.on_policy_tolerance=None`` by the accelerator's mixed precision."""


class OffPolicyError(RuntimeError):
    """Re-scored log-probabilities differ from the sampled ones before any update."""


class OnPolicyCheck:
    """The largest ``|log_prob - old_log_prob|`` over the micro-batches scored before an epoch's
    first optimizer step, where the weights are those that sampled, so every ratio must be 1.

    The running maximum stays on the device; `verify` reads it once (with the other processes'),
    before that step, and raises `OffPolicyError` above ``DDPOConfig.on_policy_tolerance``.
    """

    def __init__(self, accelerator: Any, tolerance: float | None, *, epoch: int) -> None:
        """``tolerance``: ``DDPOConfig.on_policy_tolerance`` (None: by the accelerator's mixed
        precision, `DEFAULT_ON_POLICY_TOLERANCE`)."""
        self.accelerator, self.epoch = accelerator, epoch
        if tolerance is None:
            precision = str(accelerator.mixed_precision)
            tolerance = DEFAULT_ON_POLICY_TOLERANCE.get(
                precision, DEFAULT_ON_POLICY_TOLERANCE["fp16"]
            )
        self.tolerance = float(tolerance)
        self.largest: torch.Tensor | None = None

    def update(self, max_abs_log_ratio: torch.Tensor) -> None:
        """Fold in one micro-batch's ``max |log ratio|`` (a 0-d tensor; no host sync)."""
        value = max_abs_log_ratio.detach().float()
        self.largest = value if self.largest is None else torch.maximum(self.largest, value)

    def verify(self) -> None:
        """OffPolicyError if some process scored a finite log ratio above the tolerance (a
        non-finite one is a numerical failure, which the gradient-norm check then reports)."""
        if self.largest is None:
            return
        largest = float(self.accelerator.gather(self.largest.reshape(1)).max())
        if math.isfinite(largest) and largest > self.tolerance:
            raise OffPolicyError(
                f"epoch {self.epoch}: before the first optimizer step, the re-scored "
                f"log-probabilities differ from the sampled ones by up to {largest:.3g} "
                f"(DDPOConfig.on_policy_tolerance: {self.tolerance:g}), so the policy that "
                "re-scores the samples is not the one that drew them and the PPO ratios are "
                "not 1. Causes: the pipeline's score() guides, schedules or conditions "
                "differently from its rollout (e.g. train_cfg=False while sampling with "
                "classifier-free guidance; sample_eta or noise settings changed between the "
                "passes); or kernels that round a micro-batch differently from the sampling "
                "batch under mixed precision (then raise DDPOConfig.on_policy_tolerance). "
                "Nothing was updated."
            )


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
    opt.unet.train()
    step_metrics: list[dict[str, float]] = []
    window: list[dict[str, torch.Tensor]] = []
    # Until the epoch's first optimizer step the weights are those that sampled.
    # (Not with ema_sampling: the EMA sampled, by design not the trained weights.)
    on_policy = (
        OnPolicyCheck(accelerator, config.on_policy_tolerance, epoch=epoch)
        if inner_epoch == 0 and not config.ema_sampling
        else None
    )
    terms = opt.objective.terms(int(shuffled.timesteps.shape[1]))
    count = micro_batches_per_epoch(config)
    if len(shuffled) < count:
        raise ValueError(
            f"{type(opt.objective).__name__} left {len(shuffled)} training rows on process "
            f"{accelerator.process_index} at epoch {epoch}, fewer than the epoch's {count} "
            "training micro-batches (sample_batch_size * sample_num_batches_per_epoch / "
            "train_batch_size): raise train_batch_size or the samples per epoch"
        )
    epoch_keys = (config.seed, OBJECTIVE_STREAM, accelerator.process_index, epoch, inner_epoch)
    parameters = dict(trainable_named_parameters(opt.pipeline))
    for batch_index, batch in enumerate(shuffled.split(count)):
        for term in range(terms):
            with accelerator.accumulate(opt.unet):
                context = ObjectiveContext(
                    policy=opt.pipeline,
                    denoiser=opt.unet,
                    autocast=accelerator.autocast,
                    seed_keys=(*epoch_keys, batch_index, term),
                    epoch=epoch,
                    inner_epoch=inner_epoch,
                    parameters=parameters,
                    micro_batch_size=len(batch),
                    process_index=accelerator.process_index,
                    num_processes=accelerator.num_processes,
                )
                metrics = train_term(opt, context, batch, term)
                log_ratio = metrics.pop(LOG_RATIO_KEY, None)
                if on_policy is not None and log_ratio is not None:
                    on_policy.update(log_ratio)
                if accelerator.sync_gradients:
                    if on_policy is not None:
                        on_policy.verify()
                        on_policy = None
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
        if opt.after_micro_batch is not None:
            opt.after_micro_batch(global_step, accelerator.sync_gradients)
    return global_step, step_metrics


def train_term(
    opt: Optimisation, context: ObjectiveContext, batch: Trajectories, term: int
) -> dict[str, torch.Tensor]:
    """The objective's loss of term ``term`` of ``batch``, backpropagated; its diagnostics
    (with the loss itself as ``loss`` unless the objective reports its own)."""
    loss, metrics = opt.objective.loss(context, batch, term)
    metrics = dict(metrics)
    metrics.setdefault("loss", loss.detach())
    opt.accelerator.backward(loss)
    return metrics


def reduce_metrics(accelerator: Any, window: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Each metric averaged over the window and over processes."""
    keys = sorted(window[0])
    local = torch.stack([torch.stack([m[k].float() for m in window]).mean() for k in keys]).to(
        accelerator.device
    )
    reduced = accelerator.reduce(local, reduction="mean")
    return {k: float(v) for k, v in zip(keys, reduced.tolist(), strict=True)}


def trainable_named_parameters(pipeline: DiffusionPolicy) -> list[tuple[str, torch.nn.Parameter]]:
    """The denoiser's parameters that train: those of ``get_trainable_layers()`` requiring grad."""
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
    "DEFAULT_ON_POLICY_TOLERANCE",
    "LOG_RATIO_KEY",
    "OffPolicyError",
    "OnPolicyCheck",
    "Optimisation",
    "clip_range",
    "make_optimizer",
    "micro_batches_per_epoch",
    "num_train_timesteps",
    "policy_gradient",
    "reduce_metrics",
    "shuffle",
    "timestep_loss",
    "train_inner_epoch",
    "train_term",
    "trainable_named_parameters",
]
