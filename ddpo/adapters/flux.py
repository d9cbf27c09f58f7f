"""``DefaultDDPOFluxPipeline``: the Flow-GRPO policy over diffusers' FLUX.1 (dev and schnell).

FLUX.1 runs its ``FluxTransformer2DModel`` on packed latents (2x2 patches as tokens, with
rotary position ids), conditioned on T5's hidden states and CLIP's pooled embedding, and, for
the guidance-distilled FLUX.1-dev, on a guidance embedding of the guidance scale (no true
classifier-free guidance: one transformer call per step). Sampling integrates the rectified-flow
ODE with ``FlowMatchEulerDiscreteScheduler``'s resolution-shifted sigmas; as in Flow-GRPO (Liu
et al., 2025, arXiv 2505.05470) the steps of a stochastic window take the SDE step of
:func:`ddpo.core.flow_sde_step_with_logprob` and are the policy's actions.

The trajectory stores unpacked latents ``(batch, C, h, w)``; they are packed around each
transformer call only. Packing is a permutation of the elements, and the SDE step is
elementwise with a log-density averaged over all elements, so the log-probs equal those of
Flow-GRPO's FLUX code, which steps on the packed tokens.
"""

import contextlib
import copy
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final, final

import torch
from diffusers import FluxPipeline
from diffusers.utils.torch_utils import randn_tensor
from jaxtyping import Int
from torch import Tensor, nn

from ddpo._typing import Latents, PerSample
from ddpo.adapters.flow_sampling import (
    FlowSchedule,
    FlowStepScore,
    Generators,
    check_noise_level,
    check_window,
    check_window_args,
    choose_window,
    decode_flow_latents,
    dynamic_shift_mu,
    sample_flow_trajectory,
    score_flow_step,
    setup_trainable_transformer,
    transformer_lora_config,
    write_transformer_lora,
)
from ddpo.adapters.flux_checks import (
    check_flux_folder,
    check_flux_resolution,
    flux_latent_factor,
    flux_schedule,
)
from ddpo.adapters.flux_text import check_max_sequence_length, encode_flux_prompts, flux_velocity
from ddpo.adapters.interface import DDPOPipelineOutput
from ddpo.adapters.registry import read_json_object, resolve_model_source
from ddpo.adapters.sampling import OUTPUT_TYPES, Size, _unwrap, check_prompts, check_size
from ddpo.adapters.sd_weights import check_model_args, fused_unet
from ddpo.policy import Conditioning, PolicyRollout

FLUX_LORA_TARGET_MODULES: Final[tuple[str, ...]] = (
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "attn.to_k",
    "attn.to_out.0",
    "attn.to_q",
    "attn.to_v",
)
"""The attention projections of FLUX's double- and single-stream blocks that diffusers' FLUX
LoRA training adapts (its default list adds the feed-forward layers) and Flow-GRPO trains."""


@final
class DefaultDDPOFluxPipeline:
    """Flow-GRPO / DDPO over diffusers' ``FluxPipeline`` (wrapped), LoRA via peft.

    Implements :class:`ddpo.policy.DiffusionPolicy`. Loads a built-in name, a local FLUX.1 folder
    or a hub id (or a folder of :meth:`save_lora_weights`, on top of its base); freezes the VAE
    and both text encoders. With ``use_lora=True`` rank-``lora_rank`` adapters on
    :data:`FLUX_LORA_TARGET_MODULES` train (float32); otherwise the whole transformer trains in
    float32 with a frozen copy as the KL reference. The trainer's ``guidance_scale`` goes to the
    guidance embedding of guidance-distilled models (FLUX.1-dev; ignored by FLUX.1-schnell);
    ``guided`` (true CFG, a doubled batch) does not apply, the negative prompt is not used, and
    ``eta`` (DDIM's) is ignored: the sampler is set by ``noise_level`` and the window.

    Args:
        pretrained_model_name: built-in name, local FLUX.1 folder or hub id.
        pretrained_model_revision: hub revision.
        use_lora, lora_rank, lora_alpha: LoRA (default) or full fine-tuning; scale alpha/rank.
        torch_dtype: dtype of the frozen weights (``None``: as saved).
        resolution: image size ``(height, width)`` or one int (default: the VAE's
            ``sample_size``, 1024 for FLUX.1), a multiple of 2 x the VAE factor (packing).
        noise_level: Flow-GRPO's ``a`` in ``std_t = a sqrt(sigma / (1 - sigma))``, > 0.
        sde_window_size: ``None`` (every step is stochastic and trained) or ``k >= 1``
            consecutive stochastic steps; the others take the ODE step and are not trained.
        sde_window_start: the window's first step, or ``None`` to draw it per rollout from the
            rollout's generator, uniformly in ``[0, num_steps - k]`` (Flow-GRPO-Fast).
        max_sequence_length: T5 tokens, 1 to 512 (512 as in diffusers).
        device: where to put the model (``None``: CPU).
        lora_init_seed: seed of the new adapters' initialisation (forked RNG).

    Raises:
        ValueError: unknown model, a folder of another family (the class found), bad arguments;
            all before weights load.
    """

    def __init__(
        self,
        pretrained_model_name: str | os.PathLike[str],
        *,
        pretrained_model_revision: str = "main",
        use_lora: bool = True,
        lora_rank: int = 4,
        lora_alpha: float | int = 4,
        torch_dtype: torch.dtype | None = None,
        resolution: int | Size | None = None,
        noise_level: float | int = 0.7,
        sde_window_size: int | None = None,
        sde_window_start: int | None = None,
        max_sequence_length: int = 512,
        device: str | torch.device | None = None,
        lora_init_seed: int = 0,
    ) -> None:
        # 1. Check the arguments and the folder before loading weights.
        check_model_args(
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            torch_dtype=torch_dtype,
            lora_init_seed=lora_init_seed,
        )
        self.noise_level = check_noise_level(noise_level)
        check_window_args(sde_window_size, sde_window_start)
        self.sde_window_size, self.sde_window_start = sde_window_size, sde_window_start
        self.max_sequence_length = check_max_sequence_length(max_sequence_length)
        size = check_size(resolution, "resolution")
        source = resolve_model_source(pretrained_model_name, pretrained_model_revision)
        transformer_config = check_flux_folder(source.folder)
        factor = flux_latent_factor(source.folder)
        if size is None:  # the VAE's native size (1024 for FLUX.1, as FluxPipeline's default)
            side = read_json_object(source.folder / "vae" / "config.json").get("sample_size")
            side = side if isinstance(side, int) else 1024
            size = (side, side)
        self.resolution: Size = check_flux_resolution(size, latent_factor=factor)
        self.guidance_embeds = bool(transformer_config.get("guidance_embeds", False))
        lora_config = transformer_lora_config(
            lora_rank, lora_alpha, FLUX_LORA_TARGET_MODULES, source.lora_file
        )

        # 2. Load the wrapped diffusers pipeline; freeze the VAE and the text encoders.
        flux = FluxPipeline.from_pretrained(source.folder, torch_dtype=torch_dtype)
        for module in (flux.vae, flux.text_encoder, flux.text_encoder_2):
            module.requires_grad_(False).eval()
        flux.transformer.eval()
        self._flux: Any = flux
        self._weights_dtype = flux.vae.dtype
        self.use_lora = use_lora
        self.lora_rank = int(lora_config.r)
        self.lora_alpha = float(lora_config.lora_alpha)
        self.pretrained_model_name = source.base_name
        self.pretrained_model_revision = source.base_revision
        self._reference: nn.Module | None = None
        self._schedule: FlowSchedule | None = None

        # 3. Trainable parameters: LoRA adapters or the full transformer (frozen reference).
        self._frozen = setup_trainable_transformer(
            flux.transformer,
            use_lora=use_lora,
            lora_config=lora_config,
            lora_file=source.lora_file,
            lora_init_seed=lora_init_seed,
        )
        if device is not None:
            self.to(device)

    # ---- components and plumbing ----------------------------------------------------------

    @property
    def pipeline(self) -> FluxPipeline:
        """The wrapped diffusers pipeline."""
        pipe: FluxPipeline = self._flux
        return pipe

    @property
    def transformer(self) -> nn.Module:
        transformer: nn.Module = self._flux.transformer
        return transformer

    @property
    def denoiser(self) -> nn.Module:
        """The transformer (the network whose parameters train)."""
        return self.transformer

    @property
    def vae(self) -> nn.Module:
        vae: nn.Module = self._flux.vae
        return vae

    @property
    def scheduler(self) -> Any:
        return self._flux.scheduler

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def to(self, device: str | torch.device) -> "DefaultDDPOFluxPipeline":
        """Move every component (and the frozen reference transformer) to ``device``."""
        self._flux.to(device)
        if self._frozen is not None:
            self._frozen.to(device)
        return self

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self._flux.set_progress_bar_config(**kwargs)

    def get_trainable_layers(self) -> nn.Module:
        """The transformer; its parameters with ``requires_grad`` are the trainable ones."""
        return self.transformer

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Name -> parameter of every trainable parameter."""
        return {n: p for n, p in self.transformer.named_parameters() if p.requires_grad}

    def prepare(self, device: torch.device, *, gradient_checkpointing: bool) -> None:
        """Move to ``device`` with the progress bar off; checkpointing of the transformer."""
        self.set_progress_bar_config(disable=True)
        self.to(device)
        if gradient_checkpointing:
            self._flux.transformer.enable_gradient_checkpointing()

    def _latent_size(self) -> tuple[int, int]:
        scale = int(self._flux.vae_scale_factor)
        return self.resolution[0] // scale, self.resolution[1] // scale

    def _mu(self) -> float | None:
        """The schedule's shift at this resolution: linear in the packed tokens (``None``
        unless the scheduler uses dynamic shifting)."""
        height, width = self._latent_size()
        return dynamic_shift_mu(self.scheduler, (height // 2) * (width // 2))

    def check_num_steps(self, num_steps: int) -> None:
        """ValueError naming ``DDPOConfig.sample_num_steps`` (and the window) if the window does
        not fit in ``num_steps`` or the schedule has no sigma below 1 for the SDE."""
        check_window(num_steps, self.sde_window_size, self.sde_window_start)
        probe = flux_schedule(copy.deepcopy(self.scheduler), num_steps, mu=self._mu())
        if probe.sigma_max is None:
            raise ValueError(
                f"DDPOConfig.sample_num_steps={num_steps}: the flow schedule has no sigma in "
                "(0, 1) for the SDE step; use at least 2 steps"
            )

    def transitions_per_rollout(self, num_steps: int) -> int:
        """``K``, the stochastic (recorded, trained) steps of a ``num_steps``-step rollout."""
        check_window(num_steps, self.sde_window_size, self.sde_window_start)
        return num_steps if self.sde_window_size is None else self.sde_window_size

    @contextlib.contextmanager
    def reference_policy(self) -> Iterator[None]:
        """The pre-fine-tuning transformer: adapters disabled (LoRA) or the frozen copy."""
        if self._frozen is not None:
            self._reference = self._frozen
            try:
                yield
            finally:
                self._reference = None
            return
        base: Any = _unwrap(self.transformer)
        base.disable_adapters()
        try:
            yield
        finally:
            base.enable_adapters()

    # ---- conditioning ---------------------------------------------------------------------

    def encode(self, prompts: Sequence[str], negative_prompt: str) -> Conditioning:
        """``prompt_embeds`` (T5) and ``pooled_prompt_embeds`` (CLIP), as diffusers'
        ``FluxPipeline.encode_prompt``. ``negative_prompt`` is not used (no true CFG); the text
        ids are the same for every prompt and are made in the transformer call."""
        texts = check_prompts(list(prompts), name="prompts")
        embeds, pooled = encode_flux_prompts(
            self._flux, texts, max_sequence_length=self.max_sequence_length
        )
        return Conditioning({"prompt_embeds": embeds, "pooled_prompt_embeds": pooled})

    # ---- the policy: velocity, rollout, score ---------------------------------------------

    def _velocity(
        self, transformer: nn.Module, c: Conditioning, x: Latents, t: PerSample, scale: float
    ) -> Latents:
        """The velocity at timesteps ``t`` (guidance embedding of ``scale`` if the model has it)."""
        return flux_velocity(
            transformer,
            x,
            t,
            prompt_embeds=c["prompt_embeds"],
            pooled_prompt_embeds=c["pooled_prompt_embeds"],
            guidance_scale=scale if self.guidance_embeds else None,
            text_ids_dtype=self._flux.text_encoder.dtype,
        )

    def _sample(
        self,
        conditioning: Conditioning,
        *,
        num_steps: int,
        guidance_scale: float,
        noise_level: float,
        generator: Generators,
        latents: Latents | None = None,
        output_type: str = "pt",
    ) -> tuple[DDPOPipelineOutput, range | None]:
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if noise_level > 0:
            self.check_num_steps(num_steps)
        flux, device = self._flux, self.device
        channels = int(flux.transformer.config.in_channels) // 4
        shape = (len(conditioning), channels, *self._latent_size())
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        with torch.no_grad():
            dtype = conditioning["prompt_embeds"].dtype
            if latents is None:  # drawn unpacked in the text embeddings' dtype, as diffusers
                latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            x = latents.to(device=device, dtype=dtype)
            schedule = flux_schedule(self.scheduler, num_steps, device, self._mu())
            window = None
            if noise_level > 0:
                self._schedule = schedule
                size, start = self.sde_window_size, self.sde_window_start
                window = choose_window(num_steps, size, start, generator)

            def predict(x: Latents, t: PerSample) -> Latents:
                return self._velocity(self.transformer, conditioning, x, t, guidance_scale)

            trajectory = sample_flow_trajectory(
                predict, x, schedule, window=window, noise_level=noise_level,
                generator=generator, progress=flux.progress_bar,
            )  # fmt: skip
            images = decode_flow_latents(flux, trajectory.final, output_type)
        return DDPOPipelineOutput(images, trajectory.latents, trajectory.log_probs), window

    def rollout(
        self,
        conditioning: Conditioning,
        *,
        num_steps: int,
        guidance_scale: float,
        eta: float,
        generator: torch.Generator,
    ) -> PolicyRollout:
        """Sample one trajectory per row; record only the window's ``K`` SDE transitions:
        ``latents`` ``(batch, K + 1, C, h, w)`` (unpacked), ``log_probs`` ``(batch, K)``,
        ``timesteps`` the K step indices (int64). ``eta`` is ignored."""
        out, window = self._sample(
            conditioning,
            num_steps=num_steps,
            guidance_scale=guidance_scale,
            noise_level=self.noise_level,
            generator=generator,
        )
        assert window is not None
        steps = torch.arange(window.start, window.stop, dtype=torch.int64, device=self.device)
        return PolicyRollout(out.images, out.latents, out.log_probs, steps)

    def score(
        self,
        conditioning: Conditioning,
        latents: Latents,
        next_latents: Latents,
        timesteps: Int[Tensor, " batch"],
        *,
        guidance_scale: float,
        guided: bool,
        eta: float,
        denoiser: nn.Module | None = None,
    ) -> FlowStepScore:
        """Log-probs of stored SDE transitions at step indices ``timesteps`` of the last
        rollout's schedule, through ``denoiser`` (default the transformer; the reference under
        :meth:`reference_policy`), with the guidance embedding of ``guidance_scale``. ``guided``
        and ``eta`` are ignored (no true CFG for FLUX). ``std_dev`` is the step's
        ``std_t sqrt(sigma - sigma_prev)``."""
        if self._schedule is None:
            raise ValueError("score needs the schedule of a rollout: call rollout first")
        transformer = self._reference
        if transformer is None:
            transformer = denoiser if denoiser is not None else self.transformer
        t = self._schedule.timesteps.to(latents.device)[timesteps.to(latents.device).long()]
        velocity = self._velocity(transformer, conditioning, latents, t, guidance_scale)
        return score_flow_step(
            velocity, latents, next_latents, timesteps, self._schedule, noise_level=self.noise_level
        )

    def __call__(
        self,
        prompt: str | list[str],
        *,
        num_inference_steps: int = 28,
        guidance_scale: float = 3.5,
        noise_level: float | int | None = None,
        generator: Generators = None,
        latents: Latents | None = None,
        output_type: str = "pil",
    ) -> DDPOPipelineOutput:
        """Sample images of ``prompt``. ``noise_level=0``: the ODE everywhere, the same images
        as diffusers' ``FluxPipeline`` for the same generator (every latent is returned,
        unpacked, no log-probs); ``None``: the policy's SDE window and noise level."""
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int):
            raise ValueError(f"num_inference_steps must be an int, got {num_inference_steps!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps!r}")
        level = self.noise_level
        if noise_level is not None:
            level = check_noise_level(noise_level, allow_zero=True)
        conditioning = self.encode(check_prompts(prompt), "")
        out, _ = self._sample(
            conditioning,
            num_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            noise_level=level,
            generator=generator,
            latents=latents,
            output_type=output_type,
        )
        return out

    # ---- saving ---------------------------------------------------------------------------

    def save_lora_weights(self, output_dir: str | os.PathLike[str]) -> Path:
        """Write the adapters as ``pytorch_lora_weights.safetensors`` (loadable by stock
        ``FluxPipeline.load_lora_weights``), with the base model's name beside it.

        Raises:
            ValueError: if the pipeline has no LoRA adapters (``use_lora=False``).
        """
        if not self.use_lora:
            raise ValueError("save_lora_weights needs use_lora=True; use save_pretrained instead")
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        base = (self.pretrained_model_name, self.pretrained_model_revision)
        write_transformer_lora(_unwrap(self.transformer), out, base, saver=FluxPipeline)
        return out

    def save_pretrained(self, output_dir: str | os.PathLike[str]) -> None:
        """Write a full FLUX.1 pipeline folder (LoRA fused into a copy of the transformer, in
        the loaded weights' dtype; safetensors) that stock ``from_pretrained`` loads."""
        components = dict(self._flux.components)
        components["transformer"] = fused_unet(_unwrap(self.transformer), self._weights_dtype)
        pipeline: Any = FluxPipeline(**components)
        pipeline.save_pretrained(Path(output_dir), safe_serialization=True)


__all__ = ["FLUX_LORA_TARGET_MODULES", "DefaultDDPOFluxPipeline"]
