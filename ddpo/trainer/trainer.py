"""`DDPOTrainer`: the DDPO loop on accelerate.

One epoch, in the order of the algorithm (Black et al. 2023, Algorithm 1):

1. sample ``sample_num_batches_per_epoch`` batches of trajectories with the DDIM sampler
   (classifier-free guidance, ``sample_eta``, a seed per process, epoch and batch);
2. score the images with the reward function (in a thread pool overlapping the next sampling
   batch when ``async_reward_computation``), checking each batch against the reward contract;
3. gather rewards (and prompts) across processes and turn them into advantages
   (per-prompt / global / group normalisation, then clipping);
4. ``train_num_inner_epochs`` passes over this process's samples: shuffle samples, shuffle each
   sample's timesteps independently and keep ``train_timestep_fraction`` of them, recompute
   log-probabilities through the accelerate-prepared UNet (so gradients are all-reduced across
   processes), PPO-clip or score-function loss (plus the optional KL to the reference policy),
   gradients accumulated over timesteps and micro-batches, grad-norm clipping, optimizer step;
5. log (trackers and ``<output_dir>/metrics.jsonl``), then checkpoint every ``save_freq`` epochs.
"""

import copy
import functools
import json
import logging
import numbers
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, broadcast_object_list, gather_object, set_seed
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ddpo.core import (
    PerPromptStatTracker,
    clip_advantages,
    gaussian_kl,
    group_normalize_advantages,
    normalize_advantages,
    ppo_clip_loss,
    score_function_loss,
    subsample_timesteps,
)
from ddpo.trainer import checkpoint as ckpt
from ddpo.trainer.config import DDPOConfig
from ddpo.trainer.run_folder import check_output_dir, drop_epochs_from, fixed_output_dir
from ddpo.trainer.tracking import wrap_tracker

logger = logging.getLogger(__name__)

RewardFunction = Callable[..., Any]
"""``(images, prompts, prompt_metadata) -> (rewards, reward_metadata)``."""
PromptFunction = Callable[[], Any]
"""``() -> (prompt, prompt_metadata)``."""
ImageSamplesHook = Callable[[list[list[Any]], int, Any], Any]
"""``(image_data, global_step, tracker_or_None) -> None``."""

METRICS_FILENAME = "metrics.jsonl"

_SAMPLE_STREAM = 1
_TRAIN_STREAM = 2
_PROMPT_STREAM = 3


def derive_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys (seed, stream, process, epoch, batch, ...)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def num_train_timesteps(config: DDPOConfig) -> int:
    """Timesteps trained per sample: what `subsample_timesteps` keeps of ``sample_num_steps``."""
    probe = torch.arange(config.sample_num_steps).unsqueeze(0)
    kept = subsample_timesteps(probe, timestep_fraction=config.train_timestep_fraction)
    return int(kept.shape[-1])


class DDPOTrainer:
    """Fine-tune a diffusion pipeline with DDPO (TRL-compatible constructor and methods).

    Args:
        config: the run's `DDPOConfig` (validated again here, with the process count).
        reward_function: ``(images, prompts, prompt_metadata) -> (rewards, reward_metadata)``;
            ``images`` is a float tensor ``(batch, 3, H, W)`` in [0, 1], ``rewards`` a 1-D
            tensor, array or list of ``batch`` finite numbers.
        prompt_function: ``() -> (prompt, prompt_metadata)``.
        sd_pipeline: a `DDPOStableDiffusionPipeline`.
        image_samples_hook: optional ``(image_data, global_step, tracker)``, called once per
            epoch on the main process with ``image_data`` a list, per sampling batch, of
            ``[images, prompts, prompt_metadata, rewards, reward_metadata]``; ``tracker`` is the
            accelerate tracker named by ``config.log_with``, or None when there is none.

    Attributes:
        accelerator: the `accelerate.Accelerator`.
        output_dir: the run folder (checkpoints, ``metrics.jsonl``, tracker logs, final weights).
        first_epoch, global_step: where `train` starts (non-zero after a resume).
    """

    def __init__(
        self,
        config: DDPOConfig,
        reward_function: RewardFunction,
        prompt_function: PromptFunction,
        sd_pipeline: Any,
        image_samples_hook: ImageSamplesHook | None = None,
    ) -> None:
        # 1. Checks that need no model work: the config, the callables, the resume path.
        config.validate()
        for name, fn in (
            ("reward_function", reward_function),
            ("prompt_function", prompt_function),
        ):
            if not callable(fn):
                raise TypeError(f"DDPOTrainer: {name} must be callable, got {fn!r}")
        if image_samples_hook is not None and not callable(image_samples_hook):
            raise TypeError(
                "DDPOTrainer: image_samples_hook must be callable or None, got "
                f"{image_samples_hook!r}"
            )
        resume = ckpt.resolve_resume(config.resume_from)[0] if config.resume_from else None
        if resume is not None:
            ckpt.verify_checkpoint(resume.path)
            ckpt.check_resume_config(resume.path, config)
        check_output_dir(config)
        _check_pipeline(sd_pipeline, config)

        self.config = config
        self.reward_function = reward_function
        self.prompt_function = prompt_function
        self.sd_pipeline = sd_pipeline
        self.image_samples_hook = image_samples_hook
        self.num_train_timesteps = num_train_timesteps(config)

        # 2. The accelerator. Gradients accumulate over trained timesteps and micro-batches.
        self.mixed_precision = _effective_mixed_precision(config)
        # The run folder is only known once the processes agree on its name (below); trackers
        # read the logging folder when they start, so a provisional one suffices here.
        project_config = ProjectConfiguration(
            **({"logging_dir": config.logdir} | config.project_kwargs),
            automatic_checkpoint_naming=False,
        )
        self.accelerator = Accelerator(
            log_with=config.log_with,
            mixed_precision=self.mixed_precision,
            project_config=project_config,
            gradient_accumulation_steps=(
                config.train_gradient_accumulation_steps * self.num_train_timesteps
            ),
            **config.accelerator_kwargs,
        )
        config.validate(num_processes=self.accelerator.num_processes)

        # 3. The run folder, the same on every process; never an existing run's silently.
        self.run_name, self.output_dir = self._resolve_output_dir(resume)
        project_config.project_dir = str(self.output_dir)
        if "logging_dir" not in config.project_kwargs:
            project_config.logging_dir = str(self.output_dir / "logs")
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()

        # 4. Seed the global RNGs (per process; e.g. for randomness inside reward functions),
        #    and TF32.
        set_seed(config.seed, device_specific=True)
        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = config.allow_tf32
            torch.backends.cudnn.allow_tf32 = config.allow_tf32

        # 5. The pipeline on this process's device (its dtypes are the pipeline's own choice:
        #    load it with torch_dtype=float16 to halve the frozen weights' memory).
        device = self.accelerator.device
        sd_pipeline.set_progress_bar_config(disable=True)
        sd_pipeline.vae.requires_grad_(False)
        sd_pipeline.text_encoder.requires_grad_(False)
        if callable(getattr(sd_pipeline, "to", None)):
            sd_pipeline.to(device)
        else:
            for module in (sd_pipeline.unet, sd_pipeline.vae, sd_pipeline.text_encoder):
                module.to(device)
        if config.gradient_checkpointing:
            sd_pipeline.unet.enable_gradient_checkpointing()

        # 6. Optimizer over the trainable parameters; prepare the UNet itself (DDP-wrapped
        #    when distributed) so that the training forward pass all-reduces gradients.
        params = [p for _, p in self._trainable_named_parameters()]
        optimizer = self._make_optimizer(params)
        self.unet, self.optimizer = self.accelerator.prepare(sd_pipeline.unet, optimizer)
        self.trainable_parameters = params
        self.accelerator.register_save_state_pre_hook(_skip_model_weights)
        self.accelerator.register_load_state_pre_hook(_skip_model_loading)

        # 7. Advantage state.
        self.advantage_mode = config.resolved_advantage_mode
        self.stat_tracker = (
            PerPromptStatTracker(
                config.per_prompt_stat_tracking_buffer_size,
                config.per_prompt_stat_tracking_min_count,
            )
            if self.advantage_mode == "per_prompt"
            else None
        )

        # 8. Trackers (main process only inside accelerate).
        if config.log_with is not None:
            init_kwargs = dict(config.tracker_kwargs)
            if config.log_with == "tensorboard" and resume is not None:
                # Drop the events logged after the checkpoint (they are logged again).
                board = {"purge_step": resume.global_step + 1} | init_kwargs.get("tensorboard", {})
                init_kwargs["tensorboard"] = board
            self.accelerator.init_trackers(
                config.tracker_project_name,
                config=_tracker_config(config, self.run_name),
                init_kwargs=init_kwargs,
            )

        # 9. The prompt function's own random stream: Python's and numpy's global RNGs are
        #    swapped for it while prompts are drawn, so that other users of the global RNGs
        #    (libraries, runtime type checkers) cannot shift the prompts, and a resume continues
        #    the exact sequence (the stream is checkpointed).
        prompt_seed = derive_seed(config.seed, _PROMPT_STREAM, self.accelerator.process_index)
        self._prompt_rng = PromptRNG.seeded(prompt_seed)

        # 10. Resume, and the reward pool.
        self.first_epoch = 0
        self.global_step = 0
        if resume is not None:
            self.load_checkpoint(resume.path)
        self.executor = (
            ThreadPoolExecutor(max_workers=config.max_workers)
            if config.async_reward_computation
            else None
        )
        self._negative_embeds: torch.Tensor | None = None
        self._last_saved_epoch = self.first_epoch if resume is not None else -1

    # ------------------------------------------------------------------------------------------
    # The loop
    def train(self, epochs: int | None = None) -> int:
        """Train from `first_epoch` up to ``epochs`` (default ``config.num_epochs``) epochs.

        Writes a checkpoint after the last epoch (when ``save_freq > 0``) and the final
        pipeline to ``<output_dir>/final``; pushes it to the Hub when ``config.push_to_hub``.

        Returns:
            The global step (optimizer steps taken so far).
        """
        end = self.config.num_epochs if epochs is None else epochs
        if end < self.first_epoch:
            raise ValueError(
                f"DDPOTrainer.train: epochs={end} is before the first epoch to run "
                f"({self.first_epoch}, resumed from a checkpoint)"
            )
        global_step = self.global_step
        for epoch in range(self.first_epoch, end):
            global_step = self.step(epoch, global_step)
        if self.config.save_freq > 0 and self._last_saved_epoch != end and end > 0:
            self.save_checkpoint(end, global_step)
        self.save_pretrained(str(self.output_dir / "final"))
        if self.config.push_to_hub:
            self.push_to_hub()
        return global_step

    def step(self, epoch: int, global_step: int) -> int:
        """Run one epoch (sample, reward, advantages, train, log, save).

        Args:
            epoch: index of this epoch (seeds sampling and shuffles; 0-based).
            global_step: optimizer steps taken before this epoch.

        Returns:
            The global step after this epoch's optimizer steps.
        """
        config = self.config
        t_epoch = time.perf_counter()
        with self._progress() as progress:
            # 1. Sample trajectories, and rewards (overlapped with sampling when async).
            samples, image_data, timings = self._sample_and_score(epoch, progress)

            # 2. Gather rewards across processes; advantages from the whole epoch's rewards.
            rewards_all = self.accelerator.gather(samples["rewards"]).detach().float().cpu()
            if self.image_samples_hook is not None and self.accelerator.is_main_process:
                self.image_samples_hook(image_data, global_step, self._tracker())
            t_adv = time.perf_counter()
            advantages_all = self._advantages(rewards_all, samples["prompts"])
            per_process = advantages_all.reshape(self.accelerator.num_processes, -1)
            samples["advantages"] = per_process[self.accelerator.process_index].to(
                self.accelerator.device
            )
            timings["time_advantages_s"] = time.perf_counter() - t_adv

            # 3. Inner epochs of optimization.
            t_train = time.perf_counter()
            step_metrics: list[dict[str, float]] = []
            for inner_epoch in range(config.train_num_inner_epochs):
                global_step = self._train_inner_epoch(
                    samples, epoch, inner_epoch, global_step, step_metrics, progress
                )
            timings["time_train_s"] = time.perf_counter() - t_train

        # 4. Log the epoch.
        metrics: dict[str, float | int] = {
            "epoch": epoch,
            "global_step": global_step,
            "reward_mean": float(rewards_all.double().mean()),
            "reward_std": float(rewards_all.double().std(unbiased=False)),
            "num_samples": int(rewards_all.numel()),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
        }
        for key in ("loss", "approx_kl", "clip_fraction", "kl"):
            values = [m[key] for m in step_metrics if key in m]
            if values:
                metrics[key] = float(np.mean(values))
        metrics.update(timings)
        metrics["time_epoch_s"] = time.perf_counter() - t_epoch
        self.accelerator.log(metrics, step=global_step)
        if self.accelerator.is_main_process:
            with open(self.output_dir / METRICS_FILENAME, "a") as f:
                f.write(json.dumps(metrics) + "\n")

        # 5. Checkpoint.
        self.first_epoch, self.global_step = epoch + 1, global_step
        if config.save_freq > 0 and (epoch + 1) % config.save_freq == 0:
            self.save_checkpoint(epoch + 1, global_step)
        return global_step

    # ------------------------------------------------------------------------------------------
    # 1. Sampling and rewards
    def _sample_and_score(
        self, epoch: int, progress: Progress
    ) -> tuple[dict[str, Any], list[list[Any]], dict[str, float]]:
        config = self.config
        batch_size = config.sample_batch_size
        task = progress.add_task(
            f"epoch {epoch}: sampling", total=config.sample_num_batches_per_epoch
        )
        batches: list[dict[str, Any]] = []
        pending: list[Future[Any] | Any] = []
        t_sample = 0.0
        t_reward = 0.0
        for batch_index in range(config.sample_num_batches_per_epoch):
            t0 = time.perf_counter()
            batch, images = self._sample_batch(epoch, batch_index)
            t_sample += time.perf_counter() - t0
            batches.append(batch)
            batch["images"] = images
            args = (images, batch["prompts"], batch["prompt_metadata"])
            t0 = time.perf_counter()
            if self.executor is not None:
                pending.append(self.executor.submit(self.reward_function, *args))
            else:
                pending.append(self.reward_function(*args))
            t_reward += time.perf_counter() - t0
            progress.advance(task)

        # Collect rewards in batch order and check each batch against the contract.
        t0 = time.perf_counter()
        image_data: list[list[Any]] = []
        for batch_index, (batch, result) in enumerate(zip(batches, pending, strict=True)):
            if isinstance(result, Future):
                result = result.result()
            rewards, reward_metadata = self._check_rewards(
                result, batch_size=batch_size, offset=batch_index * batch_size
            )
            batch["rewards"] = rewards.to(self.accelerator.device)
            image_data.append(
                [
                    batch.pop("images"),
                    batch["prompts"],
                    batch["prompt_metadata"],
                    rewards,
                    reward_metadata,
                ]
            )
        t_reward += time.perf_counter() - t0
        progress.remove_task(task)

        samples: dict[str, Any] = {
            key: torch.cat([b[key] for b in batches])
            for key in batches[0]
            if isinstance(batches[0][key], torch.Tensor)
        }
        samples["prompts"] = [p for b in batches for p in b["prompts"]]
        timings = {"time_sample_s": t_sample, "time_reward_s": t_reward}
        return samples, image_data, timings

    @torch.no_grad()
    def _sample_batch(self, epoch: int, batch_index: int) -> tuple[dict[str, Any], torch.Tensor]:
        config = self.config
        pipeline = self.sd_pipeline
        batch_size = config.sample_batch_size
        prompts, prompt_metadata = self._draw_prompts(batch_size)
        prompt_embeds = pipeline.encode_prompt(list(prompts))
        negative_embeds = self._negative_prompt_embeds(batch_size)
        generator = torch.Generator(device=self.accelerator.device).manual_seed(
            derive_seed(
                config.seed, _SAMPLE_STREAM, self.accelerator.process_index, epoch, batch_index
            )
        )
        self.unet.eval()
        with self.accelerator.autocast():
            output = pipeline(
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds,
                num_inference_steps=config.sample_num_steps,
                guidance_scale=config.sample_guidance_scale,
                eta=config.sample_eta,
                generator=generator,
                output_type="pt",
            )
        latents = output.latents
        _check_rollout(
            latents,
            output.log_probs,
            pipeline.scheduler.timesteps,
            config=config,
            dtype=_param_dtype(pipeline.unet),
            mixed_precision=self.mixed_precision,
            epoch=epoch,
            batch_index=batch_index,
        )
        timesteps = pipeline.scheduler.timesteps.to(latents.device)
        batch = {
            "prompts": prompts,
            "prompt_metadata": prompt_metadata,
            "prompt_embeds": prompt_embeds,
            "negative_prompt_embeds": negative_embeds,
            "timesteps": timesteps.unsqueeze(0).repeat(batch_size, 1),
            "latents": latents[:, :-1],
            "next_latents": latents[:, 1:],
            "log_probs": output.log_probs.float(),
        }
        images = output.images
        if not isinstance(images, torch.Tensor):
            raise TypeError(
                "sd_pipeline(output_type='pt') must return images as a tensor, got "
                f"{type(images).__name__}"
            )
        return batch, images

    def _draw_prompts(self, batch_size: int) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        prompts: list[str] = []
        metadata: list[Any] = []
        for _ in range(batch_size):
            with self._prompt_rng.active():
                drawn = self.prompt_function()
            if not (isinstance(drawn, tuple | list) and len(drawn) == 2):
                raise TypeError(
                    f"prompt function {_name(self.prompt_function)} must return "
                    f"(prompt, metadata), got {drawn!r}"
                )
            prompt, meta = drawn
            if not isinstance(prompt, str):
                raise TypeError(
                    f"prompt function {_name(self.prompt_function)} returned a prompt that is "
                    f"not a str: {prompt!r}"
                )
            prompts.append(prompt)
            # Any metadata is passed on as it is, as TRL did (a dict, a string, an object...).
            metadata.append(meta)
        return tuple(prompts), tuple(metadata)

    @torch.no_grad()
    def _negative_prompt_embeds(self, batch_size: int) -> torch.Tensor:
        if self._negative_embeds is None:
            self._negative_embeds = self.sd_pipeline.encode_prompt([self.config.negative_prompts])
        return self._negative_embeds.expand(batch_size, -1, -1).contiguous()

    def _check_rewards(
        self, result: Any, *, batch_size: int, offset: int
    ) -> tuple[torch.Tensor, Any]:
        """Validate one batch's ``(rewards, reward_metadata)`` against the reward contract."""
        name = _name(self.reward_function)
        indices = f"samples {offset}..{offset + batch_size - 1} of this epoch"
        if not (isinstance(result, tuple | list) and len(result) == 2):
            raise TypeError(
                f"reward function {name} must return (rewards, reward_metadata), got "
                f"{type(result).__name__} for {indices}"
            )
        rewards, reward_metadata = result
        values = _rewards_to_tensor(rewards, name=name, offset=offset)
        if values.ndim != 1 or values.shape[0] != batch_size:
            raise ValueError(
                f"reward function {name} returned rewards of shape {tuple(values.shape)} for "
                f"{indices}; expected a 1-D sequence of length {batch_size}"
            )
        bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"reward function {name} returned non-finite rewards "
                f"{[values[i].item() for i in bad]} at sample indices "
                f"{[offset + i for i in bad]} of this epoch"
            )
        return values.float(), reward_metadata

    # ------------------------------------------------------------------------------------------
    # 2. Advantages
    def _advantages(self, rewards_all: torch.Tensor, prompts_local: list[str]) -> torch.Tensor:
        config = self.config
        if self.advantage_mode == "global":
            advantages = normalize_advantages(rewards_all)
        else:
            prompts_all = list(gather_object(prompts_local))
            if self.advantage_mode == "per_prompt":
                assert self.stat_tracker is not None
                advantages = torch.as_tensor(
                    self.stat_tracker.update(prompts_all, rewards_all), dtype=torch.float32
                )
            else:
                advantages = group_normalize_advantages(
                    rewards_all,
                    prompts_all,
                    std="global" if self.advantage_mode == "group_global" else "group",
                )
        return clip_advantages(advantages.float(), adv_clip_max=config.train_adv_clip_max)

    # ------------------------------------------------------------------------------------------
    # 3. Optimization
    def _train_inner_epoch(
        self,
        samples: dict[str, Any],
        epoch: int,
        inner_epoch: int,
        global_step: int,
        step_metrics: list[dict[str, float]],
        progress: Progress,
    ) -> int:
        config = self.config
        generator = torch.Generator().manual_seed(
            derive_seed(
                config.seed, _TRAIN_STREAM, self.accelerator.process_index, epoch, inner_epoch
            )
        )
        # 1. Shuffle samples, then each sample's timesteps independently; keep a fraction.
        num_samples = samples["timesteps"].shape[0]
        num_steps = samples["timesteps"].shape[1]
        order = torch.randperm(num_samples, generator=generator)
        time_perms = torch.stack(
            [torch.randperm(num_steps, generator=generator) for _ in range(num_samples)]
        )
        kept = subsample_timesteps(time_perms, timestep_fraction=config.train_timestep_fraction)
        device = self.accelerator.device
        rows = order.to(device)
        kept = kept.to(device)
        arange = torch.arange(num_samples, device=device).unsqueeze(1)
        shuffled: dict[str, torch.Tensor] = {}
        for key, value in samples.items():
            if not isinstance(value, torch.Tensor):
                continue
            value = value[rows]
            if key in ("timesteps", "latents", "next_latents", "log_probs"):
                value = value[arange, kept]
            shuffled[key] = value

        # 2. Micro-batches x kept timesteps, gradients accumulated over both.
        train_cfg = config.train_cfg
        guidance_scale = config.sample_guidance_scale if train_cfg else 1.0
        num_micro = num_samples // config.train_batch_size
        task = progress.add_task(
            f"epoch {epoch}.{inner_epoch}: training", total=num_micro * kept.shape[1]
        )
        self.unet.train()
        window: list[dict[str, torch.Tensor]] = []
        for start in range(0, num_samples, config.train_batch_size):
            batch = {k: v[start : start + config.train_batch_size] for k, v in shuffled.items()}
            for j in range(kept.shape[1]):
                with self.accelerator.accumulate(self.unet):
                    metrics = self._train_timestep(batch, j, guidance_scale, train_cfg)
                    if self.accelerator.sync_gradients:
                        grad_norm = self.accelerator.clip_grad_norm_(
                            self.trainable_parameters, config.train_max_grad_norm
                        )
                        # One host sync per optimizer step: nothing non-finite is applied.
                        if grad_norm is not None and not torch.isfinite(grad_norm):
                            raise FloatingPointError(
                                f"gradient norm is {float(grad_norm)} at epoch {epoch}, "
                                f"optimizer step {global_step + 1}; refusing to step the "
                                "optimizer (check the learning rate, mixed_precision and the "
                                "reward scale)"
                            )
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                window.append(metrics)
                progress.advance(task)
                if self.accelerator.sync_gradients:
                    global_step += 1
                    averaged = self._reduce_metrics(window)
                    step_metrics.append(averaged)
                    self.accelerator.log(
                        {f"train/{k}": v for k, v in averaged.items()}
                        | {"epoch": epoch, "inner_epoch": inner_epoch},
                        step=global_step,
                    )
                    window = []
        progress.remove_task(task)
        return global_step

    def _train_timestep(
        self, batch: dict[str, torch.Tensor], j: int, guidance_scale: float, train_cfg: bool
    ) -> dict[str, torch.Tensor]:
        config = self.config
        pipeline = self.sd_pipeline
        score = functools.partial(
            pipeline.score_transitions,
            batch["latents"][:, j],
            batch["next_latents"][:, j],
            batch["timesteps"][:, j],
            batch["prompt_embeds"],
            batch["negative_prompt_embeds"] if train_cfg else None,
            guidance_scale=guidance_scale,
            eta=config.sample_eta,
        )
        with self.accelerator.autocast():
            out = score(unet=self.unet)
        log_prob = out.log_prob.float()
        old_log_prob = batch["log_probs"][:, j]
        advantages = batch["advantages"]
        ppo = ppo_clip_loss(log_prob, old_log_prob, advantages, clip_range=config.train_clip_range)
        loss = ppo.loss if config.loss_type == "ppo" else score_function_loss(log_prob, advantages)
        # Diagnostics stay on the device as detached tensors; read once per optimizer step.
        metrics = {"approx_kl": ppo.approx_kl, "clip_fraction": ppo.clip_fraction}
        if config.kl_coef > 0:
            with torch.no_grad(), pipeline.reference_policy(), self.accelerator.autocast():
                ref = score()
            kl = gaussian_kl(out.mean.float(), ref.mean.float(), out.std_dev.float()).mean()
            loss = loss + config.kl_coef * kl
            metrics["kl"] = kl.detach()
        self.accelerator.backward(loss)
        metrics["loss"] = loss.detach()
        return metrics

    def _reduce_metrics(self, window: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        keys = sorted(window[0])
        local = torch.stack([torch.stack([m[k].float() for m in window]).mean() for k in keys]).to(
            self.accelerator.device
        )
        reduced = self.accelerator.reduce(local, reduction="mean")
        return {k: float(v) for k, v in zip(keys, reduced.tolist(), strict=True)}

    # ------------------------------------------------------------------------------------------
    # Parameters and optimizer
    def _trainable_named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        unet = self.sd_pipeline.unet  # the module the DDP wrapper (if any) shares parameters with
        wanted = {id(p) for p in _parameters_of(self.sd_pipeline.get_trainable_layers())}
        named = [(n, p) for n, p in unet.named_parameters() if p.requires_grad and id(p) in wanted]
        if not named:
            raise ValueError(
                "sd_pipeline.get_trainable_layers() has no parameter of the UNet that requires "
                "grad; nothing to train"
            )
        return named

    def _make_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        config = self.config
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
                    "DDPOConfig.train_use_8bit_adam=True needs bitsandbytes (pip install "
                    "bitsandbytes)"
                ) from err
            optimizer: torch.optim.Optimizer = bnb.optim.AdamW8bit(params, **kwargs)
            return optimizer
        return torch.optim.AdamW(params, **kwargs)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained UNet parameters (LoRA or all), detached on CPU, by parameter name."""
        return {
            n: p.detach().to("cpu", copy=True).contiguous()
            for n, p in self._trainable_named_parameters()
        }

    # ------------------------------------------------------------------------------------------
    # Checkpoints
    def save_checkpoint(self, epoch: int, global_step: int) -> Path:
        """Write ``<output_dir>/checkpoints/checkpoint_<epoch>`` atomically; prune old ones.

        Args:
            epoch: epochs completed (training resumes at this epoch index).
            global_step: optimizer steps taken.

        Returns:
            The checkpoint folder.
        """
        accelerator = self.accelerator
        if accelerator.is_main_process:
            ckpt.prepare_tmp_dir(self.output_dir, epoch)
        accelerator.wait_for_everyone()
        tmp = ckpt.tmp_checkpoint_dir(self.output_dir, epoch)
        # Optimizer, grad scaler, RNG states of every process (model weights: below).
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            safetensors.torch.save_file(
                self.trainable_state_dict(), str(tmp / ckpt.WEIGHTS_FILENAME)
            )
            tracker_state = self.stat_tracker.state_dict() if self.stat_tracker else None
            ckpt.write_json(tmp / ckpt.TRACKER_FILENAME, tracker_state)
            ckpt.write_json(tmp / "config.json", self.config.to_dict())
        index = accelerator.process_index
        ckpt.write_json(tmp / f"{ckpt.PROMPT_RNG_PREFIX}{index}.json", self._prompt_rng.to_json())
        ckpt.write_json(tmp / f"{ckpt.CALLABLE_STATE_PREFIX}{index}.json", self._callable_states())
        accelerator.wait_for_everyone()
        final = tmp.parent / ckpt.checkpoint_name(epoch)
        if accelerator.is_main_process:
            final = ckpt.finalize_checkpoint(tmp, epoch=epoch, global_step=global_step)
            deleted = ckpt.prune_checkpoints(
                self.output_dir, limit=self.config.num_checkpoint_limit
            )
            for path in deleted:
                logger.info("deleted old checkpoint %s", path)
        accelerator.wait_for_everyone()
        self._last_saved_epoch = epoch
        return final

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Restore a complete checkpoint: weights, optimizer, scaler, RNG, tracker, counters."""
        info = ckpt.read_marker(Path(path))
        if info is None:
            raise FileNotFoundError(f"{path} is not a complete checkpoint folder")
        ckpt.verify_checkpoint(info.path, num_processes=self.accelerator.num_processes)
        weights_file = info.path / ckpt.WEIGHTS_FILENAME
        try:
            state = safetensors.torch.load_file(str(weights_file))
        except Exception as err:  # safetensors raises its own error type for a damaged header
            raise ckpt.CheckpointError(
                f"checkpoint file {weights_file} cannot be read ({type(err).__name__}: {err}); "
                "resume from an earlier checkpoint"
            ) from err
        named = dict(self._trainable_named_parameters())
        missing = sorted(set(named) - set(state))
        unexpected = sorted(set(state) - set(named))
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {info.path} does not match the pipeline's trainable parameters "
                f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}); was it written with "
                "the same model and LoRA setting?"
            )
        with torch.no_grad():
            for name, param in named.items():
                param.copy_(state[name].to(device=param.device, dtype=param.dtype))
        try:
            self.accelerator.load_state(str(info.path))
        except Exception as err:
            raise ckpt.CheckpointError(
                f"the optimizer, scaler or RNG state files in {info.path} cannot be loaded "
                f"({type(err).__name__}: {err}); resume from an earlier checkpoint"
            ) from err
        index = self.accelerator.process_index
        rng_file = info.path / f"{ckpt.PROMPT_RNG_PREFIX}{index}.json"
        self._prompt_rng = PromptRNG.from_json(ckpt.read_json(rng_file))
        tracker_state = ckpt.read_json(info.path / ckpt.TRACKER_FILENAME)
        if self.stat_tracker is not None and tracker_state is not None:
            self.stat_tracker.load_state_dict(tracker_state)
        states_file = info.path / f"{ckpt.CALLABLE_STATE_PREFIX}{index}.json"
        if states_file.is_file():
            self._load_callable_states(ckpt.read_json(states_file), states_file)
        elif any(_stateful(fn) for fn in (self.prompt_function, self.reward_function)):
            raise ckpt.CheckpointError(
                f"checkpoint {info.path} has no {states_file.name}, but the prompt or reward "
                "function keeps state (state_dict/load_state_dict); it was written by an older "
                "version, so this run cannot resume exactly from it"
            )
        self.first_epoch, self.global_step = info.epoch, info.global_step
        if self.accelerator.is_main_process:
            drop_epochs_from(self.output_dir / METRICS_FILENAME, info.epoch)
        logger.info("resumed from %s (epoch %d, step %d)", info.path, info.epoch, info.global_step)

    def _callable_states(self) -> dict[str, Any]:
        """The prompt and reward functions' own state (None for a stateless function)."""
        return {
            "prompt_function": _state_of(self.prompt_function),
            "reward_function": _state_of(self.reward_function),
        }

    def _load_callable_states(self, states: dict[str, Any], source: Path) -> None:
        functions: tuple[tuple[str, Any], ...] = (
            ("prompt_function", self.prompt_function),
            ("reward_function", self.reward_function),
        )
        for key, fn in functions:
            state = states.get(key)
            if state is None and _stateful(fn):
                raise ckpt.CheckpointError(
                    f"{source} holds no state for the {key.replace('_', ' ')} {_name(fn)}, which "
                    "keeps state (state_dict/load_state_dict): the checkpoint was written with "
                    "another function; resume with the function that wrote it"
                )
            if state is not None:
                if not _stateful(fn):
                    raise ckpt.CheckpointError(
                        f"{source} holds a state for the {key.replace('_', ' ')}, but "
                        f"{_name(fn)} has no load_state_dict: resume with the function that "
                        "wrote the checkpoint"
                    )
                fn.load_state_dict(state)

    # ------------------------------------------------------------------------------------------
    # Final weights
    def save_pretrained(self, save_directory: str) -> None:
        """Save the fine-tuned pipeline (``sd_pipeline.save_pretrained``) on the main process."""
        if self.accelerator.is_main_process:
            self.sd_pipeline.save_pretrained(save_directory)
        self.accelerator.wait_for_everyone()

    def push_to_hub(self, repo_id: str | None = None, *, token: str | None = None) -> str:
        """Upload ``<output_dir>/final`` to the Hub (``repo_id`` default: ``hub_model_id`` or
        the run name); the weights are saved locally first, so a Hub error loses nothing.

        Returns:
            The repository id.
        """
        repo = repo_id or self.config.hub_model_id or self.run_name
        folder = self.output_dir / "final"
        if not folder.is_dir():
            self.save_pretrained(str(folder))
        if self.accelerator.is_main_process:
            from huggingface_hub import HfApi

            try:
                api = HfApi(token=token)
                api.create_repo(repo, exist_ok=True)
                api.upload_folder(repo_id=repo, folder_path=str(folder))
            except Exception as err:
                raise RuntimeError(
                    f"push_to_hub to {repo!r} failed ({type(err).__name__}: {err}); the final "
                    f"weights are saved locally in {folder}"
                ) from err
        return repo

    # ------------------------------------------------------------------------------------------
    # Helpers
    def _resolve_output_dir(self, resume: ckpt.CheckpointInfo | None) -> tuple[str, Path]:
        config = self.config
        fixed = fixed_output_dir(config, resume)
        if fixed is not None:
            return fixed
        # A new timestamped name, agreed on by every process.
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        candidate = f"{config.exp_name}_{stamp}"
        suffix = 1
        while (Path(config.logdir) / candidate).exists():
            candidate = f"{config.exp_name}_{stamp}-{suffix}"
            suffix += 1
        run_name = broadcast_object_list([candidate])[0]
        return run_name, (Path(config.logdir) / run_name).resolve()

    def _tracker(self) -> Any:
        if self.config.log_with is None or not self.accelerator.trackers:
            return None
        # Wrapped so that what TRL's documented hook passes to log_images (lists of PIL images,
        # arrays, tensors) reaches tensorboard and wandb in the form each one takes.
        return wrap_tracker(self.accelerator.get_tracker(self.config.log_with))

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=True,
            disable=not self.accelerator.is_local_main_process,
        )

    def close(self) -> None:
        """Stop the reward pool and the trackers."""
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None
        self.accelerator.end_training()

    def __enter__(self) -> "DDPOTrainer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------
class PromptRNG:
    """Python and numpy global-RNG states reserved for the prompt function."""

    def __init__(self, python_state: Any, numpy_state: Any) -> None:
        self.python_state = python_state
        self.numpy_state = numpy_state

    @classmethod
    def seeded(cls, seed: int) -> "PromptRNG":
        """Fresh states from a seed."""
        python_state = random.Random(seed).getstate()
        numpy_state = np.random.RandomState(seed % 2**32).get_state()
        return cls(python_state, numpy_state)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Swap these states into ``random`` and ``numpy.random`` for the duration."""
        outer_python, outer_numpy = random.getstate(), np.random.get_state()
        random.setstate(self.python_state)
        np.random.set_state(self.numpy_state)
        try:
            yield
        finally:
            self.python_state, self.numpy_state = random.getstate(), np.random.get_state()
            random.setstate(outer_python)
            np.random.set_state(outer_numpy)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable copy (for checkpoints)."""
        version, internal, gauss = self.python_state
        name, keys, pos, has_gauss, cached = self.numpy_state
        return {
            "python": [version, list(internal), gauss],
            "numpy": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PromptRNG":
        """Inverse of `to_json`."""
        version, internal, gauss = data["python"]
        name, keys, pos, has_gauss, cached = data["numpy"]
        numpy_state = (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
        return cls((version, tuple(internal), gauss), numpy_state)


def _effective_mixed_precision(config: DDPOConfig) -> str:
    on_cpu = bool(config.accelerator_kwargs.get("cpu")) or not torch.cuda.is_available()
    if config.mixed_precision == "fp16" and on_cpu:
        logger.warning(
            "DDPOConfig.mixed_precision='fp16' needs a GPU; this run is on CPU, so it runs in "
            "full precision (mixed_precision='no')"
        )
        return "no"
    return config.mixed_precision


def _tracker_config(config: DDPOConfig, run_name: str) -> dict[str, Any]:
    values = config.to_dict() | {"resolved_run_name": run_name}
    return {k: v if isinstance(v, bool | int | float | str) else repr(v) for k, v in values.items()}


def _skip_model_weights(models: list[Any], weights: list[Any], output_dir: str) -> None:
    # The trainer writes the trainable parameters itself (safetensors, LoRA or full UNet).
    weights.clear()


def _skip_model_loading(models: list[Any], input_dir: str) -> None:
    models.clear()


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


def _name(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return str(name or type(fn).__qualname__)


def _rewards_to_tensor(rewards: Any, *, name: str, offset: int) -> torch.Tensor:
    """Rewards as a float64 tensor; TypeError naming the non-numeric sample indices."""
    if isinstance(rewards, torch.Tensor):
        if rewards.dtype == torch.bool or rewards.is_complex():
            raise TypeError(
                f"reward function {name} returned a {rewards.dtype} tensor for samples starting "
                f"at {offset}; rewards must be real numbers"
            )
        return rewards.detach().to("cpu", torch.float64)
    if isinstance(rewards, np.ndarray):
        if rewards.dtype.kind not in "iuf":
            raise TypeError(
                f"reward function {name} returned an array of dtype {rewards.dtype} for samples "
                f"starting at {offset}; rewards must be real numbers"
            )
        return torch.from_numpy(rewards.astype(np.float64))
    if isinstance(rewards, list | tuple):
        bad = [offset + i for i, r in enumerate(rewards) if not _is_real(r)]
        if bad:
            raise TypeError(
                f"reward function {name} returned non-numeric rewards at sample indices {bad} "
                f"of this epoch: {[rewards[i - offset] for i in bad][:5]!r}"
            )
        return torch.tensor([float(r) for r in rewards], dtype=torch.float64)
    raise TypeError(
        f"reward function {name} returned rewards of type {type(rewards).__name__} for samples "
        f"starting at {offset}; expected a 1-D tensor, array or list of numbers"
    )


def _is_real(value: Any) -> bool:
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.is_complex() and value.dtype != torch.bool
    return isinstance(value, numbers.Real) and not isinstance(value, complex)


_PIPELINE_MEMBERS = (
    "unet",
    "vae",
    "text_encoder",
    "scheduler",
    "encode_prompt",
    "score_transitions",
)


def _check_pipeline(sd_pipeline: Any, config: DDPOConfig) -> None:
    """TypeError unless ``sd_pipeline`` is a pipeline object; ValueError if the config asks more
    DDIM steps than its scheduler has timesteps. Cheap: no model work."""
    if isinstance(sd_pipeline, str | os.PathLike):
        raise TypeError(
            f"DDPOTrainer: sd_pipeline must be a pipeline object, got the string {sd_pipeline!r}; "
            f"pass DefaultDDPOStableDiffusionPipeline({str(sd_pipeline)!r}) (from ddpo import "
            "DefaultDDPOStableDiffusionPipeline) or your own DDPOStableDiffusionPipeline"
        )
    missing = [m for m in _PIPELINE_MEMBERS if not hasattr(sd_pipeline, m)]
    if missing or not callable(sd_pipeline):
        raise TypeError(
            f"DDPOTrainer: sd_pipeline must be a DDPOStableDiffusionPipeline (e.g. "
            f"DefaultDDPOStableDiffusionPipeline('ddpo-tiny-shapes')); got "
            f"{type(sd_pipeline).__name__}, which lacks {missing or ['__call__']}"
        )
    scheduler = sd_pipeline.scheduler
    num_train = getattr(getattr(scheduler, "config", None), "num_train_timesteps", None)
    steps = config.sample_num_steps
    if isinstance(num_train, int) and steps > num_train:
        raise ValueError(
            f"DDPOConfig.sample_num_steps={steps} is more than the pipeline's scheduler allows "
            f"({type(scheduler).__name__} has num_train_timesteps={num_train}); use at most "
            f"{num_train} steps"
        )
    if isinstance(num_train, int) and callable(getattr(scheduler, "set_timesteps", None)):
        # The timesteps the sampler will use, on a copy: some spacings cannot make every count
        # (e.g. "leading" with steps_offset=1 at 1000 steps starts at t = 1000; diffusers'
        # "trailing" yields one timestep too many, ending at t = -1, for 61, 103, 121, ... steps).
        probe = copy.deepcopy(scheduler)
        probe.set_timesteps(steps)
        timesteps = torch.as_tensor(probe.timesteps)
        if len(timesteps) != steps or int(timesteps.min()) < 0 or int(timesteps.max()) >= num_train:
            spacing = getattr(scheduler.config, "timestep_spacing", "?")
            raise ValueError(
                f"DDPOConfig.sample_num_steps={steps}: the pipeline's {type(scheduler).__name__} "
                f"(timestep_spacing={spacing!r}) gives {len(timesteps)} timesteps from "
                f"{int(timesteps.max())} to {int(timesteps.min())} for it, outside [0, "
                f"{num_train}) or not one per step; choose another step count"
            )


def _param_dtype(module: Any) -> torch.dtype | None:
    param = next(iter(module.parameters()), None) if hasattr(module, "parameters") else None
    return None if param is None else param.dtype


def _check_rollout(
    latents: torch.Tensor,
    log_probs: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    config: DDPOConfig,
    dtype: torch.dtype | None,
    mixed_precision: str,
    epoch: int,
    batch_index: int,
) -> None:
    """FloatingPointError naming the first denoising step whose latents or log-probs are not
    finite, and the sampler settings, right where it arises (one host sync per batch).

    Args:
        latents: ``(batch, T + 1, C, h, w)``, ``x_T`` first; log_probs: ``(batch, T)``.
    """
    latents_ok = torch.isfinite(latents).flatten(2).all(dim=2).all(dim=0)  # (T + 1,)
    log_probs_ok = torch.isfinite(log_probs).all(dim=0)  # (T,)
    if bool(latents_ok.all()) and bool(log_probs_ok.all()):
        return
    steps_ok = (latents_ok[1:] & log_probs_ok).tolist()
    step = steps_ok.index(False) if False in steps_ok else -1
    what = []
    if step >= 0 and not bool(latents_ok[step + 1]):
        what.append("the next latents")
    if step >= 0 and not bool(log_probs_ok[step]):
        what.append("the log-probability")
    if not bool(latents_ok[0]):
        step, what = -1, ["the initial noise x_T"]
    timestep = int(timesteps[step]) if 0 <= step < len(timesteps) else None
    where = (
        "before the first step"
        if step < 0
        else f"at denoising step {step} of {config.sample_num_steps} (timestep {timestep})"
    )
    raise FloatingPointError(
        f"sampling produced non-finite values ({' and '.join(what)}) {where}, epoch {epoch}, "
        f"sampling batch {batch_index}; settings: sample_num_steps={config.sample_num_steps}, "
        f"sample_eta={config.sample_eta}, sample_guidance_scale={config.sample_guidance_scale}, "
        f"UNet dtype={dtype}, mixed_precision={mixed_precision!r}. This is the sampler or the "
        "model, not the reward or the learning rate: check the model's weights (finite, and "
        "in range for their dtype) and its scheduler config, or try mixed_precision='no' with a "
        "float32 model"
    )


def _stateful(fn: Any) -> bool:
    """Whether a prompt or reward function keeps checkpointable state."""
    return callable(getattr(fn, "state_dict", None)) and callable(
        getattr(fn, "load_state_dict", None)
    )


def _state_of(fn: Any) -> Any:
    if not _stateful(fn):
        return None
    state = fn.state_dict()
    try:
        json.dumps(state)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{_name(fn)}.state_dict() must return JSON-serialisable data (dicts, lists, str, "
            f"numbers, None) to be checkpointed: {err}"
        ) from err
    return state
