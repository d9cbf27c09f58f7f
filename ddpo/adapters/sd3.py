"""``DefaultDDPOStableDiffusion3Pipeline``: the Flow-GRPO policy over diffusers' SD3 / SD3.5.

SD3 conditions its MMDiT transformer on both CLIP encoders' penultimate hidden states
(concatenated, padded to the T5 width) followed by the T5 encoder's states, and on the two pooled
CLIP embeddings. Sampling integrates the rectified-flow ODE with ``FlowMatchEulerDiscrete
Scheduler``'s sigmas; as in Flow-GRPO (Liu et al., 2025, arXiv 2505.05470) the steps of a
stochastic window take the SDE step of :func:`ddpo.core.flow_sde_step_with_logprob` instead and
are the policy's actions. The family-independent parts live in
:mod:`ddpo.adapters.flow_sampling`.
"""

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final, final

import torch
from diffusers import StableDiffusion3Pipeline
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
    flow_schedule,
    probe_schedule,
    sample_flow_trajectory,
    score_flow_step,
    setup_trainable_transformer,
    transformer_lora_config,
    write_transformer_lora,
)
from ddpo.adapters.interface import DDPOPipelineOutput
from ddpo.adapters.registry import resolve_model_source
from ddpo.adapters.sampling import OUTPUT_TYPES, Size, _unwrap, check_prompts, check_size
from ddpo.adapters.sd3_checks import check_sd3_folder, check_sd3_resolution, sd3_latent_factor
from ddpo.adapters.sd_weights import check_model_args, fused_unet
from ddpo.core import classifier_free_guidance
from ddpo.policy import Conditioning, PolicyRollout

SD3_LORA_TARGET_MODULES: Final[tuple[str, ...]] = (
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "attn.to_k",
    "attn.to_out.0",
    "attn.to_q",
    "attn.to_v",
)
"""The joint-attention projections diffusers' SD3 LoRA training (and Flow-GRPO) adapts."""


@final
class DefaultDDPOStableDiffusion3Pipeline:
    """Flow-GRPO / DDPO over diffusers' ``StableDiffusion3Pipeline`` (wrapped), LoRA via peft.

    Implements :class:`ddpo.policy.DiffusionPolicy`. Loads a built-in name, a local SD3/SD3.5
    folder or a hub id (or a folder of :meth:`save_lora_weights`, on top of its base); freezes
    the VAE and the three text encoders. With ``use_lora=True`` rank-``lora_rank`` adapters on
    :data:`SD3_LORA_TARGET_MODULES` train (float32); otherwise the whole transformer trains in
    float32 with a frozen copy as the KL reference. ``eta`` (DDIM's) is accepted and ignored:
    the sampler is set by ``noise_level`` and the window.

    Args:
        pretrained_model_name: built-in name, local SD3 folder or hub id.
        pretrained_model_revision: hub revision.
        use_lora, lora_rank, lora_alpha: LoRA (default) or full fine-tuning; scale alpha/rank.
        torch_dtype: dtype of the frozen weights (``None``: as saved).
        resolution: image size ``(height, width)`` or one int (default: the transformer's
            sample size times the VAE factor), a multiple of VAE factor x patch size.
        noise_level: Flow-GRPO's ``a`` in ``std_t = a sqrt(sigma / (1 - sigma))``, > 0.
        sde_window_size: ``None`` (every step is stochastic and trained) or ``k >= 1``
            consecutive stochastic steps; the others take the ODE step and are not trained.
        sde_window_start: the window's first step, or ``None`` to draw it per rollout from the
            rollout's generator, uniformly in ``[0, num_steps - k]`` (Flow-GRPO-Fast).
        max_sequence_length: T5 tokens (256 as in diffusers).
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
        max_sequence_length: int = 256,
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
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int):
            raise ValueError(f"max_sequence_length must be an int, got {max_sequence_length!r}")
        if max_sequence_length < 1:
            raise ValueError(f"max_sequence_length must be >= 1, got {max_sequence_length!r}")
        self.max_sequence_length = max_sequence_length
        size = check_size(resolution, "resolution")
        source = resolve_model_source(pretrained_model_name, pretrained_model_revision)
        transformer_config = check_sd3_folder(source.folder)
        factor = sd3_latent_factor(source.folder)
        patch = int(transformer_config.get("patch_size", 2))
        if size is None:
            side = int(transformer_config.get("sample_size", 128)) * factor
            size = (side, side)
        self.resolution: Size = check_sd3_resolution(size, latent_factor=factor, patch_size=patch)
        lora_config = transformer_lora_config(
            lora_rank, lora_alpha, SD3_LORA_TARGET_MODULES, source.lora_file
        )

        # 2. Load the wrapped diffusers pipeline; freeze the VAE and the text encoders.
        sd3 = StableDiffusion3Pipeline.from_pretrained(source.folder, torch_dtype=torch_dtype)
        for module in (sd3.vae, sd3.text_encoder, sd3.text_encoder_2, sd3.text_encoder_3):
            module.requires_grad_(False).eval()
        sd3.transformer.eval()
        self._sd: Any = sd3
        self._weights_dtype = sd3.vae.dtype
        self.use_lora = use_lora
        self.lora_rank = int(lora_config.r)
        self.lora_alpha = float(lora_config.lora_alpha)
        self.pretrained_model_name = source.base_name
        self.pretrained_model_revision = source.base_revision
        self._negative: tuple[str, tuple[Tensor, Tensor]] | None = None
        self._reference: nn.Module | None = None
        self._schedule: FlowSchedule | None = None

        # 3. Trainable parameters: LoRA adapters or the full transformer (frozen reference).
        self._frozen = setup_trainable_transformer(
            sd3.transformer,
            use_lora=use_lora,
            lora_config=lora_config,
            lora_file=source.lora_file,
            lora_init_seed=lora_init_seed,
        )
        if device is not None:
            self.to(device)

    # ---- components and plumbing ----------------------------------------------------------

    @property
    def pipeline(self) -> StableDiffusion3Pipeline:
        """The wrapped diffusers pipeline."""
        pipe: StableDiffusion3Pipeline = self._sd
        return pipe

    @property
    def transformer(self) -> nn.Module:
        transformer: nn.Module = self._sd.transformer
        return transformer

    @property
    def denoiser(self) -> nn.Module:
        """The transformer (the network whose parameters train)."""
        return self.transformer

    @property
    def vae(self) -> nn.Module:
        vae: nn.Module = self._sd.vae
        return vae

    @property
    def scheduler(self) -> Any:
        return self._sd.scheduler

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def to(self, device: str | torch.device) -> "DefaultDDPOStableDiffusion3Pipeline":
        """Move every component (and the frozen reference transformer) to ``device``."""
        self._sd.to(device)
        if self._frozen is not None:
            self._frozen.to(device)
        return self

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self._sd.set_progress_bar_config(**kwargs)

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
            self._sd.transformer.enable_gradient_checkpointing()

    def _mu(self) -> float | None:
        """The dynamic shift of the schedule at this resolution (``None`` unless configured)."""
        scale = int(self._sd.vae_scale_factor) * int(self._sd.patch_size)
        tokens = (self.resolution[0] // scale) * (self.resolution[1] // scale)
        return dynamic_shift_mu(self.scheduler, tokens)

    def check_num_steps(self, num_steps: int) -> None:
        """ValueError naming ``DDPOConfig.sample_num_steps`` (and the window) if the window does
        not fit in ``num_steps`` or the schedule has no sigma below 1 for the SDE."""
        check_window(num_steps, self.sde_window_size, self.sde_window_start)
        if probe_schedule(self.scheduler, num_steps, self._mu()).sigma_max is None:
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

    def _encode_texts(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """``(prompt_embeds, pooled)`` as diffusers' ``encode_prompt``: CLIP penultimate states
        concatenated and padded (or cut) to the T5 width, then T5's states; pooled CLIPs."""
        sd = self._sd
        hidden, pooled = [], []
        encoders = ((sd.tokenizer, sd.text_encoder), (sd.tokenizer_2, sd.text_encoder_2))
        for tokenizer, encoder in encoders:
            ids = tokenizer(
                texts,
                padding="max_length",
                max_length=sd.tokenizer_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            with torch.no_grad():
                out = encoder(ids.to(encoder.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2].to(sd.text_encoder.dtype))
            pooled.append(out[0])
        clip = torch.cat(hidden, dim=-1)
        ids = sd.tokenizer_3(
            texts,
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        ).input_ids
        with torch.no_grad():
            t5 = sd.text_encoder_3(ids.to(sd.text_encoder_3.device))[0]
        t5 = t5.to(dtype=sd.text_encoder_3.dtype, device=clip.device)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1)

    def encode(self, prompts: Sequence[str], negative_prompt: str) -> Conditioning:
        """``prompt_embeds``, ``pooled_prompt_embeds`` and their negatives (the negative prompt
        encoded as diffusers encodes it, ``""`` included), each with the batch first."""
        texts = check_prompts(list(prompts), name="prompts")
        embeds, pooled = self._encode_texts(texts)
        if self._negative is None or self._negative[0] != negative_prompt:
            self._negative = (negative_prompt, self._encode_texts([negative_prompt]))
        negative, negative_pooled = (t.to(embeds.device) for t in self._negative[1])
        batch = len(texts)
        return Conditioning(
            {
                "prompt_embeds": embeds,
                "pooled_prompt_embeds": pooled,
                "negative_prompt_embeds": negative.expand(batch, -1, -1).contiguous(),
                "negative_pooled_prompt_embeds": negative_pooled.expand(batch, -1).contiguous(),
            }
        )

    # ---- the policy: velocity, rollout, score ---------------------------------------------

    def _velocity(
        self,
        transformer: nn.Module,
        conditioning: Conditioning,
        x: Latents,
        t: PerSample,
        guidance_scale: float,
        guided: bool,
    ) -> Latents:
        """The transformer's velocity at timesteps ``t`` (true CFG: one doubled batch)."""
        params = next(_unwrap(transformer).parameters(), None)
        dtype = params.dtype if params is not None else x.dtype
        c = conditioning
        embeds, pooled = c["prompt_embeds"], c["pooled_prompt_embeds"]
        if guided:
            x, t = torch.cat([x, x]), torch.cat([t, t])
            embeds = torch.cat([c["negative_prompt_embeds"], embeds])
            pooled = torch.cat([c["negative_pooled_prompt_embeds"], pooled])
        out = transformer(
            hidden_states=x.to(dtype),
            timestep=t,
            encoder_hidden_states=embeds.to(dtype),
            pooled_projections=pooled.to(dtype),
            return_dict=False,
        )
        velocity: Tensor = out[0]
        if not guided:
            return velocity
        uncond, cond = velocity.chunk(2)
        return classifier_free_guidance(uncond, cond, guidance_scale)

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
        sd, device = self._sd, self.device
        height, width = self.resolution
        scale = int(sd.vae_scale_factor)
        channels = int(sd.transformer.config.in_channels)
        shape = (len(conditioning), channels, height // scale, width // scale)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        guided = guidance_scale > 1.0
        with torch.no_grad():
            dtype = conditioning["prompt_embeds"].dtype
            if latents is None:  # drawn in the text embeddings' dtype, as diffusers does
                latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            x = latents.to(device=device, dtype=dtype)
            schedule = flow_schedule(self.scheduler, num_steps, device, self._mu())
            window = None
            if noise_level > 0:
                self._schedule = schedule
                size, start = self.sde_window_size, self.sde_window_start
                window = choose_window(num_steps, size, start, generator)

            def predict(x: Latents, t: PerSample) -> Latents:
                return self._velocity(self.transformer, conditioning, x, t, guidance_scale, guided)

            trajectory = sample_flow_trajectory(
                predict, x, schedule, window=window, noise_level=noise_level,
                generator=generator, progress=sd.progress_bar,
            )  # fmt: skip
            images = decode_flow_latents(sd, trajectory.final, output_type)
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
        ``latents`` ``(batch, K + 1, ...)``, ``log_probs`` ``(batch, K)``, ``timesteps`` the K
        step indices (int64). ``eta`` is ignored (flow policies use ``noise_level``)."""
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
        :meth:`reference_policy`), guided when ``guided`` and ``guidance_scale > 1``. ``eta`` is
        ignored. ``std_dev`` is the step's ``std_t sqrt(sigma - sigma_prev)``."""
        if self._schedule is None:
            raise ValueError("score needs the schedule of a rollout: call rollout first")
        transformer = self._reference
        if transformer is None:
            transformer = denoiser if denoiser is not None else self.transformer
        t = self._schedule.timesteps.to(latents.device)[timesteps.to(latents.device).long()]
        use_cfg = guided and guidance_scale > 1.0
        velocity = self._velocity(transformer, conditioning, latents, t, guidance_scale, use_cfg)
        return score_flow_step(
            velocity, latents, next_latents, timesteps, self._schedule, noise_level=self.noise_level
        )

    def __call__(
        self,
        prompt: str | list[str],
        *,
        negative_prompt: str = "",
        num_inference_steps: int = 28,
        guidance_scale: float = 7.0,
        noise_level: float | int | None = None,
        generator: Generators = None,
        latents: Latents | None = None,
        output_type: str = "pil",
    ) -> DDPOPipelineOutput:
        """Sample images of ``prompt``. ``noise_level=0``: the ODE everywhere, the same images
        as diffusers' ``StableDiffusion3Pipeline`` for the same generator (every latent is
        returned, no log-probs); ``None``: the policy's SDE window and noise level."""
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int):
            raise ValueError(f"num_inference_steps must be an int, got {num_inference_steps!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps!r}")
        level = self.noise_level
        if noise_level is not None:
            level = check_noise_level(noise_level, allow_zero=True)
        conditioning = self.encode(check_prompts(prompt), negative_prompt)
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
        ``StableDiffusion3Pipeline.load_lora_weights``), with the base model's name beside it.

        Raises:
            ValueError: if the pipeline has no LoRA adapters (``use_lora=False``).
        """
        if not self.use_lora:
            raise ValueError("save_lora_weights needs use_lora=True; use save_pretrained instead")
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        base = (self.pretrained_model_name, self.pretrained_model_revision)
        write_transformer_lora(_unwrap(self.transformer), out, base, saver=StableDiffusion3Pipeline)
        return out

    def save_pretrained(self, output_dir: str | os.PathLike[str]) -> None:
        """Write a full SD3 pipeline folder (LoRA fused into a copy of the transformer, in the
        loaded weights' dtype; safetensors) that stock ``from_pretrained`` loads."""
        components = dict(self._sd.components)
        components["transformer"] = fused_unet(_unwrap(self.transformer), self._weights_dtype)
        pipeline: Any = StableDiffusion3Pipeline(**components)
        pipeline.save_pretrained(Path(output_dir), safe_serialization=True)


__all__ = ["SD3_LORA_TARGET_MODULES", "DefaultDDPOStableDiffusion3Pipeline"]
