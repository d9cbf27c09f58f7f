"""The DDPO pipeline interface: a Stable Diffusion pipeline that records its denoising trajectory.

``DDPOStableDiffusionPipeline`` has the members of TRL's interface of the same name, so the
trainer accepts any implementation of it. Besides the abstract members it carries working
default implementations of what the trainer calls (:meth:`encode`, :meth:`rollout`,
:meth:`score`, :meth:`reference_policy`), built only from ``unet``, ``scheduler``, ``vae``,
``text_encoder`` and ``tokenizer``, with all step math in :mod:`ddpo.core`; the DDIM policy
members (``eta``, the schedule rows, re-scoring from them) come from
:class:`ddpo.adapters.ddim.policy.DDIMPolicy`.
"""

import abc
import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor
from jaxtyping import Float, Int, Real
from torch import Tensor, nn

from ddpo._typing import Latents, PerSample, PromptEmbeds
from ddpo.adapters.common.args import check_call_size, check_grad_steps, check_prompts, unwrap
from ddpo.adapters.common.denoiser import check_guidance_scale, check_predict_args
from ddpo.adapters.common.output import DDPOPipelineOutput
from ddpo.adapters.common.sampling import draw_initial_noise, keep_unguided_rows, scores_guided
from ddpo.adapters.ddim.denoiser import (
    ddim_timestep_indices,
    decode_images,
)
from ddpo.adapters.ddim.policy import DDIMPolicy, ddim_rows, ddim_schedule_rows, score_ddim_rows
from ddpo.adapters.ddim.sampling import (
    DDIMTrajectory,
    check_eta,
    sample_ddim_trajectory,
    scheduler_step_with_logprob,
)
from ddpo.core import DDIMStepOutput, classifier_free_guidance
from ddpo.policy import Conditioning, PolicyRollout


@dataclass
class DDPOSchedulerOutput:
    """One DDIM step: the next latents ``x_{t-1}`` and their log-density, per sample."""

    latents: Latents
    log_probs: PerSample


class DDPOStableDiffusionPipeline(DDIMPolicy, abc.ABC):
    """A Stable Diffusion pipeline for DDPO: samples with log-probs and re-scores transitions.

    Implement the abstract members (those of TRL's interface) for your own model; the trainer
    then also uses the default :meth:`encode`, :meth:`rollout` (which calls ``__call__``),
    :meth:`score` and :meth:`reference_policy` below, which need only ``unet``, ``scheduler``
    (DDIM), ``vae``, ``text_encoder`` and ``tokenizer``. ``eta`` (1.0 by default) is the
    sampler's, set by the trainer from ``DDPOConfig.sample_eta``.
    """

    use_lora: bool = False
    """Whether only LoRA adapters are trained (the trainer reads it, as TRL's did)."""

    _reference_unet: nn.Module | None = None
    """Set while :meth:`reference_policy` is active to a module that replaces the UNet."""

    @abc.abstractmethod
    def __call__(self, *args: Any, **kwargs: Any) -> DDPOPipelineOutput:
        """Sample images, returning them with every latent and every step's log-prob."""

    def scheduler_step(
        self,
        model_output: Latents,
        timestep: int | Tensor,
        sample: Latents,
        eta: float | int = 1.0,
        use_clipped_model_output: bool = False,
        prev_sample: Latents | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> DDPOSchedulerOutput:
        """One DDIM step with its log-probability (sampling, or scoring ``prev_sample``), via
        :func:`scheduler_step_with_logprob` (TRL's interface had it; the trainer does not call
        it)."""
        if use_clipped_model_output:
            raise ValueError("use_clipped_model_output=True is not supported")
        out = scheduler_step_with_logprob(
            self.scheduler,
            model_output,
            timestep,
            sample,
            eta=eta,
            prev_sample=prev_sample,
            generator=generator,
        )
        return DDPOSchedulerOutput(latents=out.prev_sample, log_probs=out.log_prob)

    @property
    @abc.abstractmethod
    def unet(self) -> nn.Module:
        """The denoising network (its trainable parameters are the policy's)."""

    @property
    @abc.abstractmethod
    def vae(self) -> nn.Module:
        """The image autoencoder."""

    @property
    @abc.abstractmethod
    def tokenizer(self) -> Any:
        """The text tokenizer."""

    @property
    @abc.abstractmethod
    def scheduler(self) -> Any:
        """The DDIM scheduler; after a call its ``timesteps`` hold the T timesteps used."""

    @property
    @abc.abstractmethod
    def text_encoder(self) -> nn.Module:
        """The text encoder."""

    @property
    def autocast(self) -> Callable[[], contextlib.AbstractContextManager[Any]] | None:
        """A context-manager factory for the UNet's forward, or ``None`` (the default) for the
        trainer's own."""
        return None

    @abc.abstractmethod
    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Configure the sampling progress bar (e.g. ``disable=True``)."""

    @abc.abstractmethod
    def save_pretrained(self, output_dir: str) -> None:
        """Save the (fine-tuned) pipeline so that diffusers can load it."""

    @abc.abstractmethod
    def get_trainable_layers(self) -> Any:
        """The module (or parameters) the optimizer trains."""

    def save_checkpoint(self, models: list[Any], weights: list[Any], output_dir: str) -> None:
        """TRL's ``accelerate`` ``save_state`` pre-hook. Optional: `DDPOTrainer` writes its own
        checkpoints (one format, `ddpo.trainer.run_state`) and never calls it."""
        raise NotImplementedError(
            f"{type(self).__name__}.save_checkpoint is not implemented (DDPOTrainer does not "
            "need it: its checkpoints hold the trainable parameters)"
        )

    def load_checkpoint(self, models: list[Any], input_dir: str) -> None:
        """TRL's ``accelerate`` ``load_state`` pre-hook. Optional, as `save_checkpoint`."""
        raise NotImplementedError(
            f"{type(self).__name__}.load_checkpoint is not implemented (DDPOTrainer does not "
            "need it)"
        )

    # ---- the DiffusionPolicy boundary (ddpo.policy), built from TRL's members ------------

    @property
    def denoiser(self) -> nn.Module:
        """The UNet (the network whose parameters train)."""
        return self.unet

    def prepare(self, device: torch.device, *, gradient_checkpointing: bool) -> None:
        """Move to ``device``, freeze the VAE and text encoder, no progress bar, and the UNet's
        gradient checkpointing if asked."""
        self.set_progress_bar_config(disable=True)
        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        move = getattr(self, "to", None)
        if callable(move):
            move(device)
        else:
            for module in (self.unet, self.vae, self.text_encoder):
                module.to(device)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()  # type: ignore[operator]

    def encode(self, prompts: Sequence[str], negative_prompt: str) -> Conditioning:
        """``prompt_embeds`` of ``prompts`` and ``negative_prompt_embeds`` (the negative prompt's,
        repeated per prompt), both ``(batch, tokens, dim)``."""
        cached = getattr(self, "_ddpo_negative", None)
        if cached is None or cached[0] != negative_prompt:
            cached = (negative_prompt, self.encode_prompt([negative_prompt]))
            self._ddpo_negative = cached
        prompt_embeds = self.encode_prompt(list(prompts))
        negative = cached[1].expand(len(prompts), -1, -1).contiguous()
        return Conditioning({"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative})

    def rollout(
        self,
        conditioning: Conditioning,
        *,
        num_steps: int,
        guidance_scale: float,
        generator: torch.Generator,
        height: int | None = None,
        width: int | None = None,
        initial_noise_generators: Sequence[torch.Generator] | None = None,
        grad_steps: int = 0,
    ) -> PolicyRollout:
        """Sample one trajectory per row of ``conditioning`` with DDIM at the policy's ``eta``,
        recording every step; each step's ``schedule`` row is ``[t, t_prev, eta,
        guidance_scale]`` (:func:`ddpo.adapters.ddim.policy.ddim_schedule_rows`).

        Without gradients (``grad_steps=0``) it samples with this pipeline's ``__call__``
        (``output_type="pt"``, TRL's interface). With ``grad_steps > 0`` it samples with the
        interface's own DDIM loop over the same members (:meth:`_sample_trajectory`, what the
        default pipeline's ``__call__`` runs), keeping the graph of the last ``grad_steps``
        steps, and decodes with :meth:`decode`.

        Args:
            height, width: the image size in pixels, positive multiples of the VAE factor
                (``None``: the pipeline's ``resolution`` where it has one, else its
                ``__call__``'s default).
            initial_noise_generators: one generator per row that draws the row's ``x_T``
                (given to ``__call__`` as ``latents``); the steps' noise comes from
                ``generator``.
            grad_steps: the final steps whose graph is kept, in ``[0, num_steps]``.

        Raises:
            ValueError: naming ``grad_steps``, ``height``, ``width`` or
                ``initial_noise_generators``, before any model work.
        """
        check_grad_steps(grad_steps, num_steps)
        size = self._rollout_size(height, width)
        batch = len(conditioning)
        prompt_embeds = conditioning["prompt_embeds"]
        latents = None
        if initial_noise_generators is not None:  # the shape reads the UNet's config: only then
            latents = draw_initial_noise(
                initial_noise_generators,
                self._latent_shape(batch, size),
                device=self._unet_device(),
                dtype=prompt_embeds.dtype,
            )
        if grad_steps == 0:
            extra: dict[str, Any] = {}
            if size is not None:
                extra.update(height=size[0], width=size[1])
            if latents is not None:
                extra["latents"] = latents
            output = self(
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=conditioning["negative_prompt_embeds"],
                num_inference_steps=num_steps,
                guidance_scale=guidance_scale,
                eta=self.eta,
                generator=generator,
                output_type="pt",
                **extra,
            )
            if not isinstance(output.images, Tensor):
                raise TypeError(
                    "sd_pipeline(output_type='pt') must return images as a tensor, got "
                    f"{type(output.images).__name__}"
                )
            images, all_latents, log_probs = output.images, output.latents, output.log_probs
        else:
            device = self._unet_device()
            negative = conditioning["negative_prompt_embeds"] if guidance_scale > 1.0 else None
            with torch.no_grad():
                all_latents, log_probs = self._sample_trajectory(
                    prompt_embeds.to(device),
                    negative.to(device) if negative is not None else None,
                    shape=self._latent_shape(batch, size),
                    num_steps=num_steps,
                    guidance_scale=guidance_scale,
                    eta=self.eta,
                    generator=generator,
                    latents=latents,
                    grad_steps=grad_steps,
                )
                with torch.enable_grad():
                    images = self.decode(all_latents[:, -1])
        timesteps = self.scheduler.timesteps.to(all_latents.device)
        schedule = ddim_schedule_rows(
            self.scheduler, eta=self.eta, guidance_scale=guidance_scale, device=all_latents.device
        )
        return PolicyRollout(images, all_latents, log_probs, timesteps, schedule)

    def score(
        self,
        conditioning: Conditioning,
        latents: Latents,
        next_latents: Latents,
        schedule: Float[Tensor, "batch values"],
        *,
        cfg: bool = True,
        denoiser: nn.Module | None = None,
    ) -> DDIMStepOutput:
        """Log-probs of stored transitions ``x_t -> x_{t-1}`` from their ``schedule`` rows alone
        (``[t, t_prev, eta, guidance_scale]``; the scheduler's inference timesteps are not read),
        through ``denoiser`` (default the UNet; the reference UNet under
        :meth:`reference_policy`).

        With ``cfg`` a row sampled with guidance above 1 is scored with classifier-free
        guidance on ``negative_prompt_embeds`` at its scale, as it was sampled; ``cfg=False``
        (TRL's ``train_cfg=False``) scores the conditional prediction alone. Gradients flow to
        the UNet's trainable parameters.

        Raises:
            TypeError, ValueError: naming ``schedule`` if it is not ``(batch, 4)`` rows.
        """
        rows = ddim_rows(schedule, latents)
        guided = scores_guided(cfg, rows.guidance_scale)
        model = self._reference_unet
        if model is None:
            model = denoiser if denoiser is not None else self.unet
        model_output = self._guided_model_output(
            model,
            latents,
            rows.timesteps,
            conditioning["prompt_embeds"],
            conditioning["negative_prompt_embeds"] if guided else None,
            rows.guidance_scale,
        )
        return score_ddim_rows(self.scheduler, model_output, latents, next_latents, rows)

    # ---- the denoiser as a model (ddpo.adapters.ddim.denoiser), for other objectives -----

    def predict(
        self,
        conditioning: Conditioning,
        latents: Latents,
        timesteps: Real[Tensor, " batch"],
        *,
        guidance_scale: float = 1.0,
        denoiser: nn.Module | None = None,
    ) -> Latents:
        """The UNet's prediction (in `prediction_type`) at noisy ``latents`` and training
        timesteps ``timesteps`` (whole numbers in ``[0, num_train_timesteps)``), with gradients.

        Computed as sampling and scoring compute it (:meth:`_guided_model_output`): through
        ``denoiser`` (default the UNet; the reference UNet under :meth:`reference_policy`),
        with classifier-free guidance on ``negative_prompt_embeds`` when ``guidance_scale > 1``.

        Raises:
            ValueError: on shapes that disagree, timesteps outside the range or a guidance scale
                that is not a finite number; before the UNet runs.
        """
        check_predict_args(conditioning, latents, timesteps)
        scale = check_guidance_scale(guidance_scale)
        t = ddim_timestep_indices(self.scheduler, timesteps)
        model = self._reference_unet
        if model is None:
            model = denoiser if denoiser is not None else self.unet
        negative = conditioning["negative_prompt_embeds"] if scale > 1.0 else None
        return self._guided_model_output(
            model, latents, t, conditioning["prompt_embeds"], negative, scale
        )

    def decode(self, latents: Latents) -> Float[Tensor, "batch 3 image_height image_width"]:
        """Images in ``[0, 1]``, float32, of final latents, differentiable: the VAE as sampling
        decodes (the pipeline's ``image_processor`` if it has one)."""
        return decode_images(self.vae, latents, getattr(self, "image_processor", None))

    # ---- default implementations (override for speed) -----------------------------------

    def _text_device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    def _unet_device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def _vae_scale_factor(self) -> int:
        """Pixels per latent along a side, as diffusers computes it from the VAE's config."""
        config: Any = self.vae.config
        return int(2 ** (len(config.block_out_channels) - 1))

    def _rollout_size(self, height: int | None, width: int | None) -> tuple[int, int] | None:
        """The checked ``(height, width)`` of a rollout: the given sides, the others from the
        pipeline's ``resolution`` (or the UNet's sample size); ``None`` when neither is given
        and the pipeline has no ``resolution`` (``__call__`` then uses its default)."""
        resolution = getattr(self, "resolution", None)
        if height is None and width is None and resolution is None:
            return None
        if resolution is None:
            config: Any = self.unet.config
            side = int(config.sample_size) * self._vae_scale_factor()
            resolution = (side, side)
        factor = self._vae_scale_factor()
        return check_call_size(
            height, width, default=resolution, multiple=factor, why=f"the VAE's factor {factor}"
        )

    def _latent_shape(self, batch: int, size: tuple[int, int] | None) -> tuple[int, int, int, int]:
        """The initial latents' shape for ``batch`` images of ``size`` (``None``: the UNet's
        sample size)."""
        factor = self._vae_scale_factor()
        config: Any = self.unet.config
        channels = int(config.in_channels)
        if size is None:
            return (batch, channels, int(config.sample_size), int(config.sample_size))
        return (batch, channels, size[0] // factor, size[1] // factor)

    def _sample_trajectory(
        self,
        prompt_embeds: PromptEmbeds,
        negative_prompt_embeds: PromptEmbeds | None,
        *,
        shape: tuple[int, int, int, int],
        num_steps: int,
        guidance_scale: float | int,
        eta: float | int,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: Latents | None = None,
        grad_steps: int = 0,
        progress: Callable[[Any], Any] = iter,
    ) -> DDIMTrajectory:
        """The DDIM loop of :meth:`rollout` and of the default pipeline's ``__call__``: the
        scheduler's ``num_steps`` timesteps, ``x_T`` (``latents``, or drawn with ``generator``
        in the embeddings' dtype, as diffusers draws it) times ``init_noise_sigma``, then
        :func:`ddpo.adapters.ddim.sampling.sample_ddim_trajectory` with the UNet's prediction
        (guided on ``negative_prompt_embeds`` when given and the scale is above 1). The caller
        runs it without gradients; the last ``grad_steps`` steps keep their graph."""
        device = self._unet_device()
        self.scheduler.set_timesteps(num_steps, device=device)
        if latents is None:
            latents = randn_tensor(
                shape, generator=generator, device=device, dtype=prompt_embeds.dtype
            )
        x_t = latents.to(device=device, dtype=torch.float32) * self.scheduler.init_noise_sigma

        def predict(x: Latents, t: Tensor) -> Latents:
            return self._guided_model_output(
                self.unet, x, t, prompt_embeds, negative_prompt_embeds, guidance_scale
            )

        return sample_ddim_trajectory(
            self.scheduler,
            predict,
            x_t,
            eta=eta,
            generator=generator,
            progress=progress,
            grad_steps=grad_steps,
        )

    def encode_prompt(self, prompts: Any) -> PromptEmbeds:
        """Text-encoder hidden states of ``prompts`` (a list of strings), padded to max length.

        Returns:
            ``(batch, tokens, dim)`` (no gradient).

        Raises:
            TypeError: if ``prompts`` is not a list of strings.
        """
        texts = check_prompts(prompts, name="prompts")
        ids = self.tokenizer(
            texts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self._text_device())
        with torch.no_grad():
            embeds: Tensor = self.text_encoder(ids)[0]
        return embeds

    def _guided_model_output(
        self,
        unet: nn.Module,
        latents: Latents,
        timesteps: Int[Tensor, " batch"],
        prompt_embeds: PromptEmbeds,
        negative_prompt_embeds: PromptEmbeds | None,
        guidance_scale: float | int | PerSample,
    ) -> Latents:
        """The UNet's prediction, with classifier-free guidance in one batched call if asked
        (negative embeddings given and a scale above 1: sampling guides only then, as diffusers
        does, so re-scoring must too). A per-sample scale (re-scoring's rows) guides whenever
        the negative embeddings are given, and keeps the conditional prediction of rows at or
        below 1 (:func:`ddpo.adapters.common.sampling.keep_unguided_rows`)."""
        params = next(unwrap(unet).parameters(), None)
        dtype = params.dtype if params is not None else latents.dtype
        if isinstance(guidance_scale, Tensor):
            guided = negative_prompt_embeds is not None
        else:
            guided = negative_prompt_embeds is not None and guidance_scale > 1.0
        if guided:
            assert negative_prompt_embeds is not None
            model_input = torch.cat([latents, latents])
            embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
            t = torch.cat([timesteps, timesteps])
        else:
            model_input, embeds, t = latents, prompt_embeds, timesteps
        model_input = self.scheduler.scale_model_input(model_input, t)
        factory = self.autocast
        with factory() if factory is not None else contextlib.nullcontext():
            out = unet(model_input.to(dtype), t, encoder_hidden_states=embeds.to(dtype)).sample
        if not guided:
            return out
        uncond, cond = out.chunk(2)
        combined = classifier_free_guidance(uncond, cond, guidance_scale)
        return keep_unguided_rows(combined, cond, guidance_scale)

    def score_transitions(
        self,
        latents: Latents,
        next_latents: Latents,
        timesteps: Int[Tensor, " batch"],
        prompt_embeds: PromptEmbeds,
        negative_prompt_embeds: PromptEmbeds | None = None,
        *,
        guidance_scale: float | int,
        eta: float | int,
        unet: nn.Module | None = None,
    ) -> DDIMStepOutput:
        """Log-probabilities of stored transitions ``x_t -> x_{t-1}`` under the current weights.

        One batched UNet call (unconditional and conditional together when guided), then
        :func:`ddpo.core.ddim_step_with_logprob` in scoring mode. Gradients flow to the UNet's
        trainable parameters (call it under ``torch.no_grad()`` when none are needed).

        Args:
            latents: ``x_t`` per sample, ``(batch, C, h, w)``.
            next_latents: the stored ``x_{t-1}``, same shape.
            timesteps: each sample's timestep ``t``, ``(batch,)``.
            prompt_embeds: the prompts' text embeddings, ``(batch, tokens, dim)``.
            negative_prompt_embeds: unconditional/negative embeddings for guidance, or ``None``.
            guidance_scale: classifier-free guidance weight (no guidance at or below 1, or without
                negative embeddings).
            eta: the DDIM stochasticity used when sampling, ``> 0``.
            unet: a module to call instead of ``self.unet`` (e.g. the trainer's DDP-wrapped
                UNet, so that gradients are synchronized).

        Returns:
            :class:`ddpo.core.DDIMStepOutput` whose ``log_prob`` is ``(batch,)``.
        """
        check_eta(eta)
        model = self._reference_unet
        if model is None:
            model = unet if unet is not None else self.unet
        model_output = self._guided_model_output(
            model, latents, timesteps, prompt_embeds, negative_prompt_embeds, guidance_scale
        )
        return scheduler_step_with_logprob(
            self.scheduler, model_output, timesteps, latents, eta=eta, prev_sample=next_latents
        )

    @contextlib.contextmanager
    def reference_policy(self) -> Iterator[None]:
        """Context under which the UNet computes the policy before fine-tuning (for a KL term).

        The default handles a UNet with peft LoRA adapters by disabling them; implementations
        that train the full UNet override it (e.g. with a frozen copy).
        """
        base = unwrap(self.unet)
        if not getattr(base, "_hf_peft_config_loaded", False):
            raise NotImplementedError(
                f"{type(self).__name__}.reference_policy: the UNet has no LoRA adapters to "
                "disable; override reference_policy to provide the reference model"
            )
        base.disable_adapters()  # type: ignore[operator]
        try:
            yield
        finally:
            base.enable_adapters()  # type: ignore[operator]


__all__ = [
    "DDPOPipelineOutput",
    "DDPOSchedulerOutput",
    "DDPOStableDiffusionPipeline",
    "check_eta",
    "check_prompts",
    "scheduler_step_with_logprob",
]
