"""`DDPOTrainer`: the DDPO loop on accelerate (Black et al. 2023, Algorithm 1).

One epoch, in the order of the algorithm, one module per phase:

1. sample trajectories with log-probs and score them with the reward (`ddpo.trainer.rollout`);
2. gather rewards across processes and turn them into advantages (`ddpo.trainer.advantages`);
3. ``train_num_inner_epochs`` passes of the objective's updates (`ddpo.trainer.optimisation`;
   the objective is `ddpo.objectives.PolicyGradient`, DDPO's PPO, unless another is given);
4. log the epoch (trackers and ``<output_dir>/metrics.jsonl``), then checkpoint every
   ``save_freq`` epochs (`ddpo.trainer.run_state`).
"""

import contextlib
import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from ddpo._typing import no_type_check
from ddpo.core import PerPromptStatTracker
from ddpo.objectives import Objective, ObjectiveContext
from ddpo.objectives.base import end_epoch, epoch_rows, prepare_epoch, sampling_weights
from ddpo.policy import DiffusionPolicy, policy_option
from ddpo.rewards.contract import RewardFunction
from ddpo.samples import Trajectories
from ddpo.trainer import checkpoint as ckpt
from ddpo.trainer import run_state, setup
from ddpo.trainer.advantages import (
    ZERO_ADVANTAGE_STREAM,
    compute_advantages,
    kept_rows,
    num_dropped,
)
from ddpo.trainer.algorithms import objective_from_config
from ddpo.trainer.config import DDPOConfig
from ddpo.trainer.contract import ImageSamplesHook, PromptFunction
from ddpo.trainer.ema import WeightsEMA
from ddpo.trainer.optimisation import (
    Optimisation,
    make_optimizer,
    micro_batches_per_epoch,
    num_train_timesteps,
    train_inner_epoch,
    trainable_named_parameters,
)
from ddpo.trainer.prompt_rng import PromptRNG
from ddpo.trainer.rollout import OBJECTIVE_EPOCH_STREAM, Rollout, derive_seed
from ddpo.trainer.run_folder import (
    check_output_dir,
    drop_epochs_from,
    resolve_output_dir,
    upload_folder,
)
from ddpo.trainer.speed import SpeedOptions, apply_speed_options
from ddpo.trainer.timing import PhaseTimer, epoch_metrics, progress_bar
from ddpo.trainer.tracking import wrap_tracker

logger = logging.getLogger(__name__)

METRICS_FILENAME = "metrics.jsonl"

__all__ = ["METRICS_FILENAME", "DDPOTrainer", "PromptRNG", "derive_seed", "num_train_timesteps"]


class DDPOTrainer:
    """Fine-tune a diffusion model with DDPO or another objective (TRL-compatible constructor and
    methods).

    Args:
        config: the run's `DDPOConfig` (validated again here, with the process count).
        reward_function: a function of the reward contract (`ddpo.rewards.contract`):
            ``(images, prompts, prompt_metadata) -> (rewards, reward_metadata)``.
        prompt_function: ``() -> (prompt, prompt_metadata)``. Either function may keep state for
            exact resumes: ``state_dict()`` (JSON data) and ``load_state_dict(state)``.
        sd_pipeline: the model: any `ddpo.policy.DiffusionPolicy` (TRL's name for it: a
            `DDPOStableDiffusionPipeline`; one ``DefaultDDPO...Pipeline`` per family).
        image_samples_hook: optional ``(image_data, global_step, tracker)``, called once per
            epoch on the main process with ``image_data`` a list, per sampling batch, of
            ``[images, prompts, prompt_metadata, rewards, reward_metadata]``; ``tracker`` is the
            accelerate tracker named by ``config.log_with`` (its ``log_images`` takes PIL images,
            arrays and tensors), or None when there is none.
        accelerator: an `accelerate.Accelerator` to run on (default: one built from the config).
            Its gradient accumulation is set to the run's.
        objective: the loss to train (`ddpo.objectives.Objective`); default the objective of
            ``config.algorithm`` built from the config (`ddpo.trainer.algorithms`; for
            ``"ddpo"``, `ddpo.objectives.PolicyGradient` from ``loss_type``, the clip range,
            ``kl_coef``, ``kl_convention``, ``train_cfg``). A stateful objective
            (``state_dict``/``load_state_dict``, JSON data; ``tensor_state_dict``/
            ``load_tensor_state_dict``, tensors) is checkpointed with the run.

    Attributes:
        accelerator: the `accelerate.Accelerator`.
        output_dir: the run folder (checkpoints, ``metrics.jsonl``, tracker logs, final weights).
        first_epoch, global_step: where `train` starts (non-zero after a resume).
        run_settings: what defines the run besides the config, by section (JSON data):
            ``"policy"``, the pipeline's settings (`ddpo.trainer.run_state.policy_settings`);
            a caller may add a section before training. Each checkpoint records them, and a
            resume refuses a changed section as it refuses a changed config.
    """

    @no_type_check  # it checks the callables, the pipeline and the objective itself
    def __init__(
        self,
        config: DDPOConfig,
        reward_function: RewardFunction,
        prompt_function: PromptFunction,
        sd_pipeline: DiffusionPolicy,
        image_samples_hook: ImageSamplesHook | None = None,
        *,
        accelerator: Accelerator | None = None,
        objective: Objective | None = None,
    ) -> None:
        # 1. Checks that need no model work: config, callables, resume path, run folder, pipeline.
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
        self._hashes_checked = resume.path.resolve() if resume is not None else None
        check_output_dir(config)
        setup.check_pipeline(sd_pipeline, config)
        self.objective: Objective = (
            objective_from_config(config, reward_function) if objective is None else objective
        )
        setup.check_objective(self.objective, config, sd_pipeline)
        # What defines the run besides the config: the policy's settings (`ddpo train` adds its
        # flags); each checkpoint records them, a resume compares them.
        self.run_settings: dict[str, dict[str, Any]] = {
            "policy": run_state.policy_settings(sd_pipeline)
        }
        if resume is not None:
            ckpt.check_resume_settings(
                resume.path,
                "policy",
                self.run_settings["policy"],
                allow_changes=config.resume_allow_config_changes,
                what="pipeline settings",
            )
        self.config = config
        self.reward_function = reward_function
        self.prompt_function = prompt_function
        self.sd_pipeline = sd_pipeline
        self.image_samples_hook = image_samples_hook
        self.transitions_per_rollout = sd_pipeline.transitions_per_rollout(config.sample_num_steps)
        self.num_train_timesteps = (
            num_train_timesteps(config, self.transitions_per_rollout)
            if self.objective.needs.transitions
            else 0
        )
        self.terms = self.objective.terms(self.num_train_timesteps)

        # 2. The accelerator: gradients accumulate over the objective's terms and micro-batches.
        steps = config.train_gradient_accumulation_steps * self.terms
        if accelerator is None:
            accelerator = setup.make_accelerator(config, accumulation_steps=steps)
        else:
            accelerator.gradient_accumulation_steps = steps
        self.accelerator = accelerator
        self.mixed_precision = str(accelerator.mixed_precision)
        config.validate(num_processes=accelerator.num_processes)

        # 3. The run folder, the same on every process; never an existing run's silently.
        #    Nothing is written into it before a resume has loaded (step 8).
        self.run_name, self.output_dir = resolve_output_dir(config, resume, broadcast_object_list)
        setup.set_project_dir(accelerator, config, self.output_dir)

        # 4. Seed the global RNGs (per process, e.g. for randomness inside reward functions).
        setup.seed_process(config)

        # 5. The model on this process's device (its dtypes are the pipeline's own choice), its
        #    sampler set as the config says.
        device = accelerator.device
        setup.apply_sampler_settings(sd_pipeline, config)
        sd_pipeline.prepare(device, gradient_checkpointing=config.gradient_checkpointing)
        for line in apply_speed_options(sd_pipeline, SpeedOptions.from_config(config), device):
            logger.info("%s", line)

        # 6. Optimizer over the trainable parameters; the denoiser itself is prepared
        #    (DDP-wrapped when distributed) so that the training forward pass all-reduces
        #    gradients.
        self.trainable_parameters = [p for _, p in trainable_named_parameters(sd_pipeline)]
        optimizer = make_optimizer(config, self.trainable_parameters)
        self.unet, self.optimizer = accelerator.prepare(sd_pipeline.denoiser, optimizer)
        # FSDP2 replaces the parameters in place (sharded DTensors): clip and save the new ones.
        self.trainable_parameters = [p for _, p in trainable_named_parameters(sd_pipeline)]
        self.ema = (
            WeightsEMA(
                dict(trainable_named_parameters(sd_pipeline)),
                config.ema_decay,
                config.ema_update_every,
                convention=config.ema_convention,
            )
            if config.ema_decay > 0
            else None
        )
        accelerator.register_save_state_pre_hook(run_state.skip_model_weights)
        accelerator.register_load_state_pre_hook(run_state.skip_model_loading)

        # 7. Advantage state and the sampler.
        # "auto" follows the policy's preference where it has one (flow models: GRPO's groups)
        preferred = policy_option(sd_pipeline, "preferred_advantage_mode")
        self.advantage_mode = config.resolve_advantage_mode(preferred)
        self.stat_tracker = (
            PerPromptStatTracker(
                config.per_prompt_stat_tracking_buffer_size,
                config.per_prompt_stat_tracking_min_count,
            )
            if self.advantage_mode == "per_prompt"
            else None
        )
        self.rollout = Rollout(
            config,
            sd_pipeline,
            prompt_function,
            reward_function,
            needs=self.objective.needs,
            device=device,
            process_index=accelerator.process_index,
            autocast=accelerator.autocast,
            mixed_precision=self.mixed_precision,
        )

        # 8. Resume; then the run folder and the trackers (so a refused resume writes nothing).
        self.first_epoch = 0
        self.global_step = 0
        if resume is not None:
            self.load_checkpoint(resume.path)
        self._last_saved_epoch = self.first_epoch if resume is not None else -1
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        setup.init_trackers(
            accelerator, config, self.run_name, None if resume is None else resume.global_step
        )

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
        if self.ema is not None and self.config.ema_save_final:
            with self._ema_weights():
                self.save_pretrained(str(self.output_dir / "final_ema"))
        if self.config.push_to_hub:
            self.push_to_hub()
        return global_step

    def step(self, epoch: int, global_step: int) -> int:
        """Run one epoch: sample, reward, advantages, train, log, save.

        Args:
            epoch: index of this epoch (seeds sampling and shuffles; 0-based).
            global_step: optimizer steps taken before this epoch.

        Returns:
            The global step after this epoch's optimizer steps.
        """
        config, accelerator = self.config, self.accelerator
        timer = PhaseTimer()
        step_metrics: list[dict[str, float]] = []
        with (
            timer.phase("epoch"),
            progress_bar(enabled=accelerator.is_local_main_process) as progress,
        ):
            # 1-2. Sample trajectories, score them, gather the rewards and turn them into
            #      advantages; or, for an objective that brings its own rows (offline data),
            #      take those.
            parameters = dict(trainable_named_parameters(self.sd_pipeline))
            epoch_context = self._epoch_context(epoch, parameters)
            extra: dict[str, float | int] = {}
            if self.objective.needs.rollout:
                samples, rewards_all = self._sampled_epoch(
                    epoch, global_step, parameters, timer, progress, extra
                )
            else:
                with timer.phase("data"):
                    samples = epoch_rows(self.objective, epoch_context)
                rewards_all = torch.zeros(0)

            # 2c. The objective's own preparation, with the weights that sampled (e.g. AWM's
            #     old surrogate, Diffusion-DPO's pairs).
            with timer.phase("prepare"), self._sampling_weights(parameters):
                samples = prepare_epoch(self.objective, epoch_context, samples)

            # 3. Inner epochs of optimisation.
            with timer.phase("train"):
                opt = Optimisation(
                    config,
                    accelerator,
                    self.sd_pipeline,
                    self.unet,
                    self.optimizer,
                    self.trainable_parameters,
                    self.objective,
                    after_micro_batch=None if self.ema is None else self.ema.after_micro_batch,
                )
                for inner_epoch in range(config.train_num_inner_epochs):
                    total = micro_batches_per_epoch(config) * self.terms
                    task = progress.add_task(f"epoch {epoch}.{inner_epoch}: training", total=total)
                    global_step, metrics = train_inner_epoch(
                        opt,
                        samples,
                        epoch=epoch,
                        inner_epoch=inner_epoch,
                        global_step=global_step,
                        advance=functools.partial(progress.advance, task),
                    )
                    step_metrics += metrics
                    progress.remove_task(task)
                end_epoch(self.objective, epoch_context, global_step)

        # 3b. Held-out evaluation, every eval_freq epochs (its own generators: the run trains
        #     exactly as without it).
        if config.eval_freq > 0 and (epoch + 1) % config.eval_freq == 0:
            with timer.phase("eval"):
                extra.update(self.evaluate())

        # 4. Log the epoch.
        self._log_epoch(epoch, global_step, rewards_all, step_metrics, timer, extra)

        # 5. Checkpoint.
        self.first_epoch, self.global_step = epoch + 1, global_step
        if config.save_freq > 0 and (epoch + 1) % config.save_freq == 0:
            self.save_checkpoint(epoch + 1, global_step)
        return global_step

    def _sampled_epoch(
        self,
        epoch: int,
        global_step: int,
        parameters: dict[str, torch.nn.Parameter],
        timer: PhaseTimer,
        progress: Any,
        extra: dict[str, float | int],
    ) -> tuple[Trajectories, torch.Tensor]:
        """Steps 1 to 2b of an epoch: sample and reward (with the objective's sampling weights),
        call the image hook, compute the advantages from every process's rewards, and drop the
        samples of zero advantage when the config says so. Returns this process's samples and
        every process's rewards (CPU)."""
        config, accelerator = self.config, self.accelerator
        # 1. Sample trajectories and score them (overlapped with sampling when async), with
        #    MixGRPO's window placed for this epoch.
        if config.sde_window_schedule == "sliding":
            start = setup.sliding_window_at(self.sd_pipeline, config, epoch)
            policy_option(self.sd_pipeline, "set_window_start")(start)
            extra["sde_window_start"] = start
        task = progress.add_task(
            f"epoch {epoch}: sampling", total=config.sample_num_batches_per_epoch
        )
        with self._sampling_weights(parameters):
            samples, image_data = self.rollout.run(
                epoch, self.unet, timer, lambda: progress.advance(task)
            )
        progress.remove_task(task)

        # 2. Gather rewards across processes; advantages from the whole epoch's rewards.
        assert samples.rewards is not None
        rewards_all = accelerator.gather(samples.rewards).detach().float().cpu()
        if self.image_samples_hook is not None and accelerator.is_main_process:
            self.image_samples_hook(image_data, global_step, self._tracker())
        with timer.phase("advantages"):
            advantages_all = self._advantages(rewards_all, samples.prompts)
            per_process = advantages_all.reshape(accelerator.num_processes, -1)
            samples.advantages = per_process[accelerator.process_index].to(accelerator.device)

        # 2b. Flow-GRPO's filter: samples whose advantage is 0 leave the epoch's training
        #     (the micro-batches shrink, their number stays, so processes stay in step).
        if config.train_drop_zero_advantages:
            num_batches = micro_batches_per_epoch(config)
            seed = derive_seed(config.seed, ZERO_ADVANTAGE_STREAM, accelerator.process_index, epoch)
            generator = torch.Generator().manual_seed(seed)
            rows = kept_rows(samples.advantages, num_batches=num_batches, generator=generator)
            samples = samples.select(rows.to(samples.timesteps.device))
            extra["num_dropped_samples"] = num_dropped(
                advantages_all, num_processes=accelerator.num_processes, num_batches=num_batches
            )
        return samples, rewards_all

    def _sampling_weights(
        self, parameters: dict[str, torch.nn.Parameter]
    ) -> contextlib.AbstractContextManager[Any]:
        """The weights an epoch samples with: the EMA's with ``ema_sampling``, else the
        objective's choice (DiffusionNFT's old policy), else the trained ones."""
        if self.config.ema_sampling and self.ema is not None:
            return self.ema.swapped_in()
        return sampling_weights(self.objective, parameters)

    def _epoch_context(
        self, epoch: int, parameters: dict[str, torch.nn.Parameter]
    ) -> ObjectiveContext:
        """The objective's context outside the inner epochs (``inner_epoch`` -1)."""
        accelerator = self.accelerator
        keys = (self.config.seed, OBJECTIVE_EPOCH_STREAM, accelerator.process_index, epoch)
        return ObjectiveContext(
            policy=self.sd_pipeline,
            denoiser=self.unet,
            autocast=accelerator.autocast,
            seed_keys=keys,
            epoch=epoch,
            inner_epoch=-1,
            parameters=parameters,
            micro_batch_size=self.config.train_batch_size,
            process_index=accelerator.process_index,
            num_processes=accelerator.num_processes,
            rows_per_epoch=self.config.sample_batch_size * self.config.sample_num_batches_per_epoch,
        )

    def evaluate(self) -> dict[str, float]:
        """Evaluate the policy as it is now on the config's held-out prompts
        (``eval_prompt_set``, ``eval_num_prompts``, ...) with the run's reward function
        (`ddpo.evaluation.evaluate`, seeded by ``seed``: the same prompts and initial noise at
        every evaluation). Returns ``eval/<metric>`` means and ``eval/<metric>_low``/``_high``
        95 % interval bounds, as the epoch's row logs them."""
        from ddpo.evaluation import evaluate

        config = self.config
        denoiser = self.sd_pipeline.denoiser
        was_training = denoiser.training
        denoiser.eval()
        try:
            with self.accelerator.autocast(), self._ema_weights():
                result = evaluate(
                    self.sd_pipeline,
                    config.eval_prompt_set,
                    {"reward": self.reward_function},
                    num_prompts=config.eval_num_prompts,
                    images_per_prompt=config.eval_images_per_prompt,
                    num_steps=config.eval_num_steps or config.sample_num_steps,
                    guidance_scale=config.sample_guidance_scale,
                    sampler=config.eval_sampler,
                    negative_prompt=config.negative_prompts,
                    seed=config.seed,
                    batch_size=config.sample_batch_size,
                )
        finally:
            denoiser.train(was_training)
        row: dict[str, float] = {}
        for name, interval in result.report.metrics.items():
            row[f"eval/{name}"] = interval.mean
            row[f"eval/{name}_low"] = interval.low
            row[f"eval/{name}_high"] = interval.high
        return row

    def _ema_weights(self) -> contextlib.AbstractContextManager[None]:
        """The EMA weights in place of the trained ones within the block (nothing without
        ``ema_decay``)."""
        return contextlib.nullcontext() if self.ema is None else self.ema.swapped_in()

    def _advantages(self, rewards_all: torch.Tensor, prompts_local: list[str]) -> torch.Tensor:
        """Advantages of the epoch's rewards (all processes) by ``advantage_mode``, clipped."""
        prompts_all = None if self.advantage_mode == "global" else gather_object(prompts_local)
        return compute_advantages(
            rewards_all,
            None if prompts_all is None else list(prompts_all),
            mode=self.advantage_mode,
            stat_tracker=self.stat_tracker,
            clip=self.config.train_adv_clip_max,
        )

    def _log_epoch(
        self,
        epoch: int,
        global_step: int,
        rewards_all: torch.Tensor,
        step_metrics: list[dict[str, float]],
        timer: PhaseTimer,
        extra: dict[str, float | int] | None = None,
    ) -> None:
        lr = float(self.optimizer.param_groups[0]["lr"])
        metrics = epoch_metrics(epoch, global_step, rewards_all, step_metrics, lr=lr, timer=timer)
        metrics.update(extra or {})  # e.g. num_dropped_samples
        self.accelerator.log(metrics, step=global_step)
        if self.accelerator.is_main_process:
            with open(self.output_dir / METRICS_FILENAME, "a") as f:
                f.write(json.dumps(metrics) + "\n")

    # ------------------------------------------------------------------------------------------
    # Weights and checkpoints
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained denoiser parameters (LoRA or all), detached on CPU, by parameter name (whole
        tensors: under FSDP every process must call this, as it gathers the shards)."""
        return {
            n: run_state.full_tensor(p).to("cpu", copy=True).contiguous()
            for n, p in trainable_named_parameters(self.sd_pipeline)
        }

    def _run_state(self) -> run_state.RunState:
        return run_state.RunState(
            config=self.config,
            accelerator=self.accelerator,
            output_dir=self.output_dir,
            parameters=dict(trainable_named_parameters(self.sd_pipeline)),
            stat_tracker=self.stat_tracker,
            prompt_rng=self.rollout.prompt_rng,
            prompt_function=self.prompt_function,
            reward_function=self.reward_function,
            settings=self.run_settings,
            objective=self.objective,
            ema=self.ema,
        )

    def save_checkpoint(self, epoch: int, global_step: int) -> Path:
        """Write ``<output_dir>/checkpoints/checkpoint_<epoch>`` atomically; prune old ones.

        Args:
            epoch: epochs completed (training resumes at this epoch index).
            global_step: optimizer steps taken.

        Returns:
            The checkpoint folder.
        """
        final = run_state.save(self._run_state(), epoch, global_step)
        self._last_saved_epoch = epoch
        return final

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Restore a complete checkpoint: weights, optimizer, scaler, RNG, tracker, callables'
        states, counters; drop the ``metrics.jsonl`` rows logged after it."""
        checked = Path(path).resolve() == self._hashes_checked  # hashed in __init__ already
        info, self.rollout.prompt_rng = run_state.load(
            self._run_state(), Path(path), hashes_checked=checked
        )
        self.first_epoch, self.global_step = info.epoch, info.global_step
        if self.accelerator.is_main_process:
            drop_epochs_from(self.output_dir / METRICS_FILENAME, info.epoch)
        logger.info("resumed from %s (epoch %d, step %d)", info.path, info.epoch, info.global_step)

    def save_pretrained(self, save_directory: str) -> None:
        """Save the fine-tuned pipeline (``sd_pipeline.save_pretrained``) on the main process."""
        # Under FSDP the denoiser's parameters are shards: gathered whole for the save.
        with run_state.gathered_parameters(self.sd_pipeline.denoiser):
            if self.accelerator.is_main_process:
                self.sd_pipeline.save_pretrained(save_directory)
        self.accelerator.wait_for_everyone()

    def push_to_hub(self, repo_id: str | None = None, *, token: str | None = None) -> str:
        """Upload ``<output_dir>/final`` to the Hub (``repo_id`` default: ``hub_model_id`` or
        the run name) with ``token`` (default: the logged-in one); the weights are saved locally
        first, so a Hub error loses nothing.

        Returns:
            The repository id.
        """
        repo = repo_id or self.config.hub_model_id or self.run_name
        folder = self.output_dir / "final"
        if not folder.is_dir():
            self.save_pretrained(str(folder))
        if self.accelerator.is_main_process:
            upload_folder(folder, repo, token=token)
        return repo

    # ------------------------------------------------------------------------------------------
    # Helpers
    def _tracker(self) -> Any:
        if self.config.log_with is None or not self.accelerator.trackers:
            return None
        # Wrapped so that what TRL's documented hook passes to log_images (lists of PIL images,
        # arrays, tensors) reaches tensorboard and wandb in the form each one takes.
        return wrap_tracker(self.accelerator.get_tracker(self.config.log_with))

    def close(self) -> None:
        """Stop the reward pool and the trackers, and (with several processes) end the process
        group once every process has reached this point: none tears the group down while
        another may still use it."""
        self.rollout.close()
        if self.accelerator.num_processes > 1:
            self.accelerator.wait_for_everyone()
        self.accelerator.end_training()

    def __enter__(self) -> "DDPOTrainer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
