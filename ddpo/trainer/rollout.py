"""Phase 1 of an epoch: sample trajectories with log-probs, then score them with the reward.

`Rollout.run` samples ``sample_num_batches_per_epoch`` batches with the policy's sampler
(a seed per process, epoch and batch), checks each rollout for non-finite values where they
arise, and scores each batch with the reward function, in a thread pool overlapping the next
batch when ``async_reward_computation``. The epoch's samples come back as `Trajectories`.
"""

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

from ddpo._seeds import derive_seed
from ddpo.objectives import ObjectiveNeeds
from ddpo.policy import DiffusionPolicy, PolicyRollout
from ddpo.rewards.contract import check_rewards
from ddpo.samples import Trajectories
from ddpo.trainer.config import DDPOConfig
from ddpo.trainer.contract import check_prompt
from ddpo.trainer.prompt_cache import PromptEmbeddingCache
from ddpo.trainer.prompt_rng import PromptRNG
from ddpo.trainer.timing import PhaseTimer

SAMPLE_STREAM = 1
TRAIN_STREAM = 2
PROMPT_STREAM = 3
INITIAL_NOISE_STREAM = 4
OBJECTIVE_STREAM = 5
OBJECTIVE_EPOCH_STREAM = 8  # an objective's prepare_epoch and end_epoch


def initial_noise_seed(seed: int, epoch: int, prompt: str) -> int:
    """The seed of ``prompt``'s initial noise ``x_T`` in ``epoch`` (``DDPOConfig.
    sample_same_latent``): mixed from the run's ``seed``, the epoch and the first 8 bytes of the
    prompt's SHA-256 (the same in every process and run, unlike Python's ``hash``), and from
    nothing else: no process index or batch index, so all of the prompt's samples of the epoch
    share it."""
    digest = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big")
    return derive_seed(seed, INITIAL_NOISE_STREAM, epoch, digest)


class Rollout:
    """Samples and scores an epoch's trajectories on one process.

    Args:
        config: the run's config.
        pipeline: the model, through the `ddpo.policy.DiffusionPolicy` boundary.
        needs: what the objective needs of the rollouts (transitions, final latents, images).
        prompt_function, reward_function: the user's callables (`ddpo.trainer.contract`,
            `ddpo.rewards.contract`).
        device: this process's device; process_index: its index (seeds the streams).
        autocast: the accelerator's autocast context factory.

    Attributes:
        prompt_rng: the prompt function's own random stream (checkpointed by the trainer).
    """

    def __init__(
        self,
        config: DDPOConfig,
        pipeline: DiffusionPolicy,
        prompt_function: Any,
        reward_function: Any,
        *,
        needs: ObjectiveNeeds,
        device: torch.device,
        process_index: int,
        autocast: Any,
        mixed_precision: str,
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.needs = needs
        self.prompt_function = prompt_function
        self.reward_function = reward_function
        self.device = device
        self.process_index = process_index
        self.autocast = autocast
        self.mixed_precision = mixed_precision
        # Python's and numpy's global RNGs are swapped for this stream while prompts are drawn,
        # so that other users of the global RNGs (libraries, runtime type checkers) cannot shift
        # the prompts, and a resume continues the exact sequence (the stream is checkpointed).
        self.prompt_rng = PromptRNG.seeded(derive_seed(config.seed, PROMPT_STREAM, process_index))
        size = config.prompt_embedding_cache_size
        self.encoder: Any = PromptEmbeddingCache(pipeline, size) if size > 0 else pipeline
        self.executor = (
            ThreadPoolExecutor(max_workers=config.max_workers)
            if config.async_reward_computation
            else None
        )

    def run(
        self, epoch: int, unet: torch.nn.Module, timer: PhaseTimer, advance: Any
    ) -> tuple[Trajectories, list[list[Any]]]:
        """Sample and score one epoch.

        Returns:
            The trajectories (rewards on this process's device) and the image hook's data: per
            sampling batch, ``[images, prompts, prompt_metadata, rewards, reward_metadata]``.
        """
        config = self.config
        batches: list[Trajectories] = []
        images: list[Tensor] = []
        metadata: list[tuple[Any, ...]] = []
        pending: list[Future[Any] | Any] = []
        for batch_index in range(config.sample_num_batches_per_epoch):
            with timer.phase("sample"):
                batch, batch_images, prompt_metadata = self._sample_batch(epoch, batch_index, unet)
            batches.append(batch)
            images.append(batch_images)
            metadata.append(prompt_metadata)
            args: tuple[Any, ...] = (batch_images, tuple(batch.prompts), prompt_metadata)
            with timer.phase("reward"):
                if self.executor is not None:
                    pending.append(self.executor.submit(self.reward_function, *args))
                else:
                    pending.append(self.reward_function(*args))
            advance()

        # Collect rewards in batch order and check each batch against the contract.
        image_data: list[list[Any]] = []
        with timer.phase("reward"):
            for index, (batch, result) in enumerate(zip(batches, pending, strict=True)):
                if isinstance(result, Future):
                    result = result.result()
                size = config.sample_batch_size
                rewards, reward_metadata = check_rewards(
                    result, self.reward_function, batch_size=size, offset=index * size
                )
                batch.rewards = rewards.to(self.device)
                image_data.append(
                    [images[index], tuple(batch.prompts), metadata[index], rewards, reward_metadata]
                )
        return Trajectories.cat(batches), image_data

    @torch.no_grad()
    def _sample_batch(
        self, epoch: int, batch_index: int, unet: torch.nn.Module
    ) -> tuple[Trajectories, Tensor, tuple[Any, ...]]:
        config = self.config
        policy = self.pipeline
        batch_size = config.sample_batch_size
        prompts, prompt_metadata = self._draw_prompts(batch_size)
        conditioning = self.encoder.encode(prompts, config.negative_prompts)
        seed = derive_seed(config.seed, SAMPLE_STREAM, self.process_index, epoch, batch_index)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        extra: dict[str, Any] = {}
        if config.sample_same_latent:  # x_T from the prompt's seed; the steps' noise as before
            extra["initial_noise_generators"] = [
                torch.Generator(device=self.device).manual_seed(
                    initial_noise_seed(config.seed, epoch, prompt)
                )
                for prompt in prompts
            ]
        unet.eval()
        with self.autocast():
            out = policy.rollout(
                conditioning,
                num_steps=config.sample_num_steps,
                guidance_scale=config.sample_guidance_scale,
                generator=generator,
                **extra,
            )
        check_transitions(out, policy.transitions_per_rollout(config.sample_num_steps), batch_size)
        check_rollout(
            out.latents,
            out.log_probs,
            out.timesteps,
            config=config,
            dtype=_param_dtype(policy.denoiser),
            mixed_precision=self.mixed_precision,
            epoch=epoch,
            batch_index=batch_index,
        )
        batch = self._trajectories(prompts, conditioning, out)
        return batch, out.images, prompt_metadata

    def _trajectories(
        self, prompts: tuple[str, ...], conditioning: Any, out: PolicyRollout
    ) -> Trajectories:
        """The batch as stored: its transitions (0 steps when the objective needs none), and
        its final latents and images when the objective needs them."""
        batch_size = len(prompts)
        keep = slice(None) if self.needs.transitions else slice(0, 0)
        timesteps = out.timesteps.to(out.latents.device)[keep]
        schedule = out.schedule.to(out.latents.device)[keep]
        final_latents = images = None
        if self.needs.final:
            final_latents, images = final_of(out, self.config.sample_num_steps, self.pipeline)
        return Trajectories(
            prompts=list(prompts),
            conditioning=conditioning,
            timesteps=timesteps.unsqueeze(0).repeat(batch_size, 1),
            latents=out.latents[:, :-1][:, keep],
            next_latents=out.latents[:, 1:][:, keep],
            log_probs=out.log_probs.float()[:, keep],
            schedule=schedule.unsqueeze(0).repeat(batch_size, 1, 1),
            final_latents=final_latents,
            images=images,
        )

    def _draw_prompts(self, batch_size: int) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        prompts: list[str] = []
        metadata: list[Any] = []
        for _ in range(batch_size):
            with self.prompt_rng.active():
                drawn = self.prompt_function()
            prompt, meta = check_prompt(drawn, self.prompt_function)
            prompts.append(prompt)
            metadata.append(meta)
        return tuple(prompts), tuple(metadata)

    def close(self) -> None:
        """Stop the reward pool."""
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None


def final_of(out: PolicyRollout, num_steps: int, policy: DiffusionPolicy) -> tuple[Tensor, Tensor]:
    """A rollout's final latents ``x_0`` and its images: ``out.final_latents``, or, for a
    policy that records every step, the last latents.

    Raises:
        TypeError: if the rollout records a window of the steps and gives no final latents.
    """
    final = out.final_latents
    if final is None:
        if policy.transitions_per_rollout(num_steps) != num_steps:
            raise TypeError(
                f"{type(policy).__name__}.rollout records a window of the steps and returns no "
                "final_latents, which the objective needs (ObjectiveNeeds.final)"
            )
        final = out.latents[:, -1]
    return final, out.images


def _param_dtype(module: Any) -> torch.dtype | None:
    param = next(iter(module.parameters()), None) if hasattr(module, "parameters") else None
    return None if param is None else param.dtype


def check_transitions(out: Any, expected: int, batch_size: int) -> None:
    """TypeError unless a rollout holds the ``expected`` transitions (what the policy's
    ``transitions_per_rollout`` declared) for ``batch_size`` samples."""
    latents, log_probs, timesteps = out.latents, out.log_probs, out.timesteps
    shapes = (tuple(latents.shape[:2]), tuple(log_probs.shape), tuple(timesteps.shape))
    if shapes != ((batch_size, expected + 1), (batch_size, expected), (expected,)):
        raise TypeError(
            f"the policy's rollout must hold {expected} transitions (its "
            f"transitions_per_rollout) for {batch_size} samples: latents (batch, {expected + 1}, "
            f"...), log_probs (batch, {expected}), timesteps ({expected},); got latents "
            f"{tuple(latents.shape)}, log_probs {shapes[1]}, timesteps {shapes[2]}"
        )


def check_rollout(
    latents: Tensor,
    log_probs: Tensor,
    timesteps: Tensor,
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
        f"denoiser dtype={dtype}, mixed_precision={mixed_precision!r}. This is the sampler or the "
        "model, not the reward or the learning rate: check the model's weights (finite, and "
        "in range for their dtype) and its scheduler config, or try mixed_precision='no' with a "
        "float32 model"
    )


__all__ = [
    "OBJECTIVE_STREAM",
    "PromptRNG",
    "Rollout",
    "Trajectories",
    "check_rollout",
    "check_transitions",
    "derive_seed",
    "final_of",
    "initial_noise_seed",
]
