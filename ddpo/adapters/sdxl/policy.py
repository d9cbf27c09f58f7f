"""``DefaultDDPOStableDiffusionXLPipeline``: the DDPO policy over diffusers' Stable Diffusion XL.

SDXL conditions its UNet on both text encoders' penultimate hidden states (concatenated), the
second encoder's pooled embedding, and six micro-conditioning "time ids" (original size, crop
top-left, target size). This adapter encodes prompts as ``StableDiffusionXLPipeline`` does,
samples with DDIM and log-probs, and re-scores transitions; every step's math is
:func:`ddpo.core.ddim_step_with_logprob`, guidance is :func:`ddpo.core.classifier_free_guidance`
(with :func:`ddpo.core.rescale_guidance` when ``guidance_rescale > 0``).
"""

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, final

import torch
from diffusers import DDIMScheduler, StableDiffusionXLPipeline
from diffusers.utils.torch_utils import randn_tensor
from jaxtyping import Float, Int, Real
from torch import Tensor, nn

from ddpo._typing import Latents, PerSample
from ddpo.adapters.common.args import (
    OUTPUT_TYPES,
    Size,
    check_call_size,
    check_grad_steps,
    check_prompts,
    check_resolution,
    check_size,
    unwrap,
)
from ddpo.adapters.common.denoiser import check_guidance_scale, check_predict_args
from ddpo.adapters.common.output import DDPOPipelineOutput
from ddpo.adapters.common.sampling import draw_initial_noise, keep_unguided_rows, scores_guided
from ddpo.adapters.common.sources import resolve_model_source
from ddpo.adapters.common.weights import (
    check_ddim_config,
    check_model_args,
    load_vae,
    new_lora_config,
    setup_trainable_unet,
    write_lora,
)
from ddpo.adapters.common.wrapped import WrappedPipelinePolicy
from ddpo.adapters.ddim.denoiser import (
    ddim_timestep_indices,
    decode_images,
)
from ddpo.adapters.ddim.policy import (
    DDIMPolicy,
    StockDDIMImages,
    ddim_rows,
    ddim_schedule_rows,
    score_ddim_rows,
)
from ddpo.adapters.ddim.sampling import check_eta, decode_latents, sample_ddim_trajectory
from ddpo.adapters.sdxl.checks import check_sdxl_folder
from ddpo.adapters.sdxl.text import encode_sdxl_texts, sdxl_time_ids
from ddpo.core import DDIMStepOutput, classifier_free_guidance, rescale_guidance
from ddpo.policy import Conditioning, PolicyRollout


@final
class DefaultDDPOStableDiffusionXLPipeline(StockDDIMImages, WrappedPipelinePolicy, DDIMPolicy):
    """DDPO over diffusers' ``StableDiffusionXLPipeline`` (wrapped), with LoRA through peft.

    Implements :class:`ddpo.policy.DiffusionPolicy`, so ``DDPOTrainer`` trains it as it trains
    Stable Diffusion. Loads a built-in name (``"ddpo-tiny-sdxl-random"``), a local SDXL folder or
    a hub id; swaps the scheduler for DDIM with the model's config; freezes the VAE and both text
    encoders. With ``use_lora=True`` only rank-``lora_rank`` adapters on the UNet's attention
    projections train (float32); otherwise the whole UNet trains in float32, with a frozen copy
    as the KL reference. A folder written by :meth:`save_lora_weights` loads its adapters on top
    of the base model it names.

    Args:
        pretrained_model_name: built-in name, local SDXL folder or hub id.
        pretrained_model_revision: hub revision.
        use_lora: train LoRA adapters (default) instead of the whole UNet.
        lora_rank, lora_alpha: adapter rank and scale numerator (scale ``alpha / rank``).
        torch_dtype: dtype of the frozen weights (``None``: as saved).
        vae: a replacement VAE (folder or hub id), e.g. ``"madebyollin/sdxl-vae-fp16-fix"``. A
            float16 VAE whose config sets ``force_upcast`` is kept and run in float32.
        resolution: image size ``(height, width)`` or one int (default: the UNet's sample size
            times 8, 1024 for SDXL base); a rollout's or a call's ``height`` and ``width``
            override it (the time ids of :meth:`encode` stay those of the resolution; those of
            ``__call__`` follow its size, as diffusers').
        original_size, crops_coords_top_left, target_size: the micro-conditioning time ids
            (defaults: the resolution, ``(0, 0)``, the resolution), as in diffusers.
        guidance_rescale: ``phi`` of :func:`ddpo.core.rescale_guidance` (0: none), used when
            sampling and scoring alike.
        device: where to put the model (``None``: CPU; the trainer moves it).
        lora_init_seed: seed of the new adapters' initialisation (forked RNG).
        eta: DDIM's stochasticity in ``(0, 1]`` for :meth:`rollout` (the ``eta`` attribute,
            which the trainer sets from ``DDPOConfig.sample_eta``).

    Raises:
        ValueError: unknown model, a folder that is not SDXL base (the class found is named), a
            refiner, mismatched tokenizers/encoders, a scheduler not convertible to DDIM, bad
            arguments; all before weights load.
    """

    denoiser_name = "unet"
    pipeline_class = StableDiffusionXLPipeline

    def __init__(
        self,
        pretrained_model_name: str | os.PathLike[str],
        *,
        pretrained_model_revision: str = "main",
        use_lora: bool = True,
        lora_rank: int = 4,
        lora_alpha: float | int = 4,
        torch_dtype: torch.dtype | None = None,
        vae: str | os.PathLike[str] | None = None,
        resolution: int | Size | None = None,
        original_size: Size | None = None,
        crops_coords_top_left: Size = (0, 0),
        target_size: Size | None = None,
        guidance_rescale: float = 0.0,
        device: str | torch.device | None = None,
        lora_init_seed: int = 0,
        eta: float = 1.0,
    ) -> None:
        # 1. Check the arguments and the folder before loading weights.
        self.eta = eta
        check_model_args(
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            torch_dtype=torch_dtype,
            lora_init_seed=lora_init_seed,
        )
        resolution = check_resolution(resolution)
        self.original_size = check_size(original_size, "original_size")
        crops = check_size(crops_coords_top_left, "crops_coords_top_left")
        assert crops is not None
        self.crops_coords_top_left: Size = crops
        self.target_size = check_size(target_size, "target_size")
        if not 0.0 <= guidance_rescale <= 1.0:
            raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale!r}")
        self.guidance_rescale = float(guidance_rescale)
        source = resolve_model_source(pretrained_model_name, pretrained_model_revision)
        check_sdxl_folder(source.folder)
        ddim_config = check_ddim_config(source.folder)
        lora_config = new_lora_config(lora_rank, lora_alpha, source.lora_file)

        # 2. Load the wrapped diffusers pipeline (with the replacement VAE), DDIM scheduler.
        extra: dict[str, Any] = {}
        if vae is not None:
            extra["vae"] = load_vae(vae, torch_dtype)
        sdxl = StableDiffusionXLPipeline.from_pretrained(
            source.folder, torch_dtype=torch_dtype, add_watermarker=False, **extra
        )
        in_channels = sdxl.unet.config.in_channels
        if sdxl.vae.config.latent_channels != in_channels:
            raise ValueError(
                f"vae={vae!r} has {sdxl.vae.config.latent_channels} latent channels; the UNet "
                f"takes {in_channels}"
            )
        if sdxl.vae.dtype == torch.float16 and sdxl.vae.config.force_upcast:
            sdxl.vae.to(torch.float32)  # the VAE asks to decode in float32 (it overflows in fp16)
        sdxl.scheduler = DDIMScheduler.from_config(ddim_config)
        for module in (sdxl.vae, sdxl.text_encoder, sdxl.text_encoder_2):
            module.requires_grad_(False).eval()
        sdxl.unet.eval()
        self._sd: Any = sdxl
        default = int(sdxl.unet.config.sample_size) * int(sdxl.vae_scale_factor)
        self.resolution: Size = resolution or (default, default)
        self.use_lora = use_lora
        self.lora_rank = int(lora_config.r)
        self.lora_alpha = float(lora_config.lora_alpha)
        self.lora_layers = sorted(set(lora_config.target_modules or ()))
        self.pretrained_model_name = source.base_name
        self.pretrained_model_revision = source.base_revision
        self._negative: tuple[str, tuple[Tensor, Tensor]] | None = None

        # 3. Trainable parameters: LoRA adapters or the full UNet (with a frozen reference).
        self._frozen = setup_trainable_unet(
            sdxl.unet,
            use_lora=use_lora,
            lora_config=lora_config,
            lora_file=source.lora_file,
            lora_init_seed=lora_init_seed,
        )
        if device is not None:
            self.to(device)

    # ---- components and checks -------------------------------------------------------------

    @property
    def unet(self) -> nn.Module:
        """The UNet (the denoiser)."""
        return self.denoiser

    def _call_size(self, height: int | None, width: int | None) -> Size:
        """A call's checked ``(height, width)`` (``None``: the side of the resolution)."""
        factor = int(self._sd.vae_scale_factor)
        return check_call_size(
            height, width, default=self.resolution, multiple=factor,
            why=f"the VAE's factor {factor}",
        )  # fmt: skip

    def _latent_shape(self, batch: int, size: Size) -> tuple[int, int, int, int]:
        scale = int(self._sd.vae_scale_factor)
        channels = int(self._sd.unet.config.in_channels)
        return (batch, channels, size[0] // scale, size[1] // scale)

    # ---- conditioning ---------------------------------------------------------------------

    def _negative_embeds(
        self, negative_prompt: str, batch: int, like: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """The negative prompt's embeddings, repeated per sample: zeros (shaped ``like`` the
        prompts' one row) for the empty negative prompt when the model sets
        ``force_zeros_for_empty_prompt`` (diffusers' behaviour when no negative prompt is given;
        TRL's default ``negative_prompts=""`` means none), else encoded once and cached."""
        if self._negative is None or self._negative[0] != negative_prompt:
            if negative_prompt == "" and self._sd.config.force_zeros_for_empty_prompt:
                embeds, pooled = torch.zeros_like(like[0][:1]), torch.zeros_like(like[1][:1])
            else:
                embeds, pooled = encode_sdxl_texts(self._sd, [negative_prompt])
            self._negative = (negative_prompt, (embeds, pooled))
        embeds, pooled = self._negative[1]
        return embeds.expand(batch, -1, -1).contiguous(), pooled.expand(batch, -1).contiguous()

    def encode(self, prompts: Sequence[str], negative_prompt: str) -> Conditioning:
        """``prompt_embeds``, ``pooled_prompt_embeds``, their negatives, and ``add_time_ids``
        (from the policy's resolution and micro-conditioning), each with the batch first."""
        return self._encode(prompts, negative_prompt, self.resolution)

    def _encode(self, prompts: Sequence[str], negative_prompt: str, size: Size) -> Conditioning:
        """:meth:`encode` with the time ids of images of ``size`` (where the original and target
        sizes are not set)."""
        texts = check_prompts(list(prompts), name="prompts")
        embeds, pooled = encode_sdxl_texts(self._sd, texts)
        negative, negative_pooled = self._negative_embeds(
            negative_prompt, len(texts), (embeds, pooled)
        )
        height, width = size
        original = self.original_size or (height, width)
        target = self.target_size or (height, width)
        time_ids = sdxl_time_ids(
            self._sd,
            [*original, *self.crops_coords_top_left, *target],
            len(texts),
            dtype=embeds.dtype,
            device=embeds.device,
        )
        return Conditioning(
            {
                "prompt_embeds": embeds,
                "pooled_prompt_embeds": pooled,
                "negative_prompt_embeds": negative.to(embeds.device),
                "negative_pooled_prompt_embeds": negative_pooled.to(embeds.device),
                "add_time_ids": time_ids,
            }
        )

    # ---- the policy: model output, rollout, score -----------------------------------------

    def _model_output(
        self,
        unet: nn.Module,
        conditioning: Conditioning,
        latents: Latents,
        timesteps: Int[Tensor, " batch"],
        guidance_scale: float | PerSample,
        guided: bool,
    ) -> Latents:
        """The UNet's prediction (guided: both halves in one batched call, then CFG and the
        optional rescale; with a per-sample scale, re-scoring's rows, rows at or below 1 keep
        the conditional prediction)."""
        params = next(unwrap(unet).parameters(), None)
        dtype = params.dtype if params is not None else latents.dtype
        c = conditioning
        embeds, pooled, ids = c["prompt_embeds"], c["pooled_prompt_embeds"], c["add_time_ids"]
        t = timesteps
        if guided:
            latents = torch.cat([latents, latents])
            embeds = torch.cat([c["negative_prompt_embeds"], embeds])
            pooled = torch.cat([c["negative_pooled_prompt_embeds"], pooled])
            ids, t = torch.cat([ids, ids]), torch.cat([t, t])
        model_input = self.scheduler.scale_model_input(latents, t).to(dtype)
        added = {"text_embeds": pooled.to(dtype), "time_ids": ids.to(dtype)}
        out = unet(model_input, t, encoder_hidden_states=embeds.to(dtype), added_cond_kwargs=added)
        prediction: Tensor = out.sample
        if not guided:
            return prediction
        uncond, cond = prediction.chunk(2)
        combined = classifier_free_guidance(uncond, cond, guidance_scale)
        rescaled = rescale_guidance(combined, cond, guidance_rescale=self.guidance_rescale)
        return keep_unguided_rows(rescaled, cond, guidance_scale)

    def _sample(
        self,
        conditioning: Conditioning,
        *,
        num_steps: int,
        guidance_scale: float,
        eta: float,
        generator: torch.Generator | list[torch.Generator] | None,
        size: Size,
        latents: Latents | None = None,
        output_type: str = "pt",
        grad_steps: int = 0,
    ) -> DDPOPipelineOutput:
        """DDIM sampling of images of ``size``, every latent and log-prob recorded; the last
        ``grad_steps`` steps and the decoding keep their graph."""
        check_eta(eta)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        sd, device = self._sd, self.device
        embeds = conditioning["prompt_embeds"]
        shape = self._latent_shape(len(conditioning), size)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        guided = guidance_scale > 1.0
        with torch.no_grad():
            self.scheduler.set_timesteps(num_steps, device=device)
            if latents is None:  # drawn in the text embeddings' dtype, as diffusers does
                latents = randn_tensor(
                    shape, generator=generator, device=device, dtype=embeds.dtype
                )
            x_T = latents.to(device=device, dtype=torch.float32) * self.scheduler.init_noise_sigma

            def predict(x: Latents, t: Tensor) -> Latents:
                return self._model_output(self.unet, conditioning, x, t, guidance_scale, guided)

            trajectory = sample_ddim_trajectory(
                self.scheduler, predict, x_T, eta=eta, generator=generator,
                progress=sd.progress_bar, grad_steps=grad_steps,
            )  # fmt: skip
            with torch.enable_grad() if grad_steps else contextlib.nullcontext():
                images = decode_latents(sd, trajectory.latents[:, -1], output_type)
        return DDPOPipelineOutput(images, trajectory.latents, trajectory.log_probs)

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

        Args:
            height, width: the image size in pixels, positive multiples of the VAE factor
                (``None``: the policy's resolution). The conditioning's time ids are used as
                they are (:meth:`encode` makes them for the resolution).
            initial_noise_generators: one generator per row that draws the row's ``x_T``; the
                steps' noise comes from ``generator``.
            grad_steps: the final steps whose graph is kept (each UNet call checkpointed), and
                the images decoded with gradients, in ``[0, num_steps]``.

        Raises:
            ValueError: naming ``grad_steps``, ``height``, ``width`` or
                ``initial_noise_generators``, before any model work.
        """
        check_grad_steps(grad_steps, num_steps)
        size = self._call_size(height, width)
        latents = draw_initial_noise(
            initial_noise_generators,
            self._latent_shape(len(conditioning), size),
            device=self.device,
            dtype=conditioning["prompt_embeds"].dtype,
        )
        out = self._sample(
            conditioning,
            num_steps=num_steps,
            guidance_scale=guidance_scale,
            eta=self.eta,
            generator=generator,
            size=size,
            latents=latents,
            grad_steps=grad_steps,
        )
        timesteps = self.scheduler.timesteps.to(out.latents.device)
        schedule = ddim_schedule_rows(
            self.scheduler, eta=self.eta, guidance_scale=guidance_scale, device=out.latents.device
        )
        return PolicyRollout(out.images, out.latents, out.log_probs, timesteps, schedule)

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
        (``[t, t_prev, eta, guidance_scale]``) through ``denoiser`` (default the UNet; the
        reference UNet under :meth:`reference_policy`); with ``cfg``, rows sampled with
        guidance above 1 are scored with it (and the policy's ``guidance_rescale``), as sampled.

        Raises:
            TypeError, ValueError: naming ``schedule`` if it is not ``(batch, 4)`` rows.
        """
        rows = ddim_rows(schedule, latents)
        unet = self._scoring_denoiser(denoiser)
        guided = scores_guided(cfg, rows.guidance_scale)
        model_output = self._model_output(
            unet, conditioning, latents, rows.timesteps, rows.guidance_scale, guided
        )
        return score_ddim_rows(self.scheduler, model_output, latents, next_latents, rows)

    def __call__(
        self,
        prompt: str | list[str],
        *,
        negative_prompt: str = "",
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        eta: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: Latents | None = None,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
    ) -> DDPOPipelineOutput:
        """Sample images of ``prompt`` with DDIM, returning every latent and step log-prob.

        The same images as diffusers' ``StableDiffusionXLPipeline`` with a DDIM scheduler, the
        same generator and arguments (``negative_prompt=""`` is diffusers' ``None``: zeros when
        the model sets ``force_zeros_for_empty_prompt``). ``height`` and ``width`` (``None``:
        the policy's resolution) set the image size and, unless the policy fixes them, the
        original and target sizes of the time ids, as diffusers does.
        """
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, int)
            or num_inference_steps < 1
        ):
            raise ValueError(
                f"num_inference_steps must be a positive int, got {num_inference_steps!r}"
            )
        size = self._call_size(height, width)
        conditioning = self._encode(check_prompts(prompt), negative_prompt, size)
        return self._sample(
            conditioning,
            num_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            eta=eta,
            generator=generator,
            size=size,
            latents=latents,
            output_type=output_type,
        )

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

        Computed as sampling and scoring compute it (:meth:`_model_output`): through
        ``denoiser`` (default the UNet; the reference UNet under :meth:`reference_policy`),
        with classifier-free guidance (and the policy's ``guidance_rescale``) when
        ``guidance_scale > 1``.

        Raises:
            ValueError: on shapes that disagree, timesteps outside the range or a guidance scale
                that is not a finite number; before the UNet runs.
        """
        check_predict_args(conditioning, latents, timesteps)
        scale = check_guidance_scale(guidance_scale)
        t = ddim_timestep_indices(self.scheduler, timesteps)
        unet = self._scoring_denoiser(denoiser)
        return self._model_output(unet, conditioning, latents, t, scale, scale > 1.0)

    def decode(self, latents: Latents) -> Float[Tensor, "batch 3 image_height image_width"]:
        """Images in ``[0, 1]``, float32, of final latents, differentiable: the VAE (with its
        ``latents_mean``/``latents_std`` where its config has them) as sampling decodes."""
        return decode_images(self.vae, latents, self._sd.image_processor)

    # ---- saving ---------------------------------------------------------------------------

    def _write_lora(self, out: Path) -> None:
        name, revision = self.pretrained_model_name, self.pretrained_model_revision
        write_lora(unwrap(self.unet), out, name, revision, saver=StableDiffusionXLPipeline)

    def _save_dtype(self) -> torch.dtype:
        dtype: torch.dtype = self._sd.text_encoder_2.dtype
        return dtype

    def _pipeline_kwargs(self) -> dict[str, Any]:
        force_zeros = self._sd.config.force_zeros_for_empty_prompt
        return {"force_zeros_for_empty_prompt": force_zeros, "add_watermarker": False}


__all__ = ["DefaultDDPOStableDiffusionXLPipeline"]
