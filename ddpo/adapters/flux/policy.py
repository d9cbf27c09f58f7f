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

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Final, final

import torch
from diffusers import FluxPipeline
from torch import nn

from ddpo._typing import Latents, PerSample
from ddpo.adapters.common.args import Size, check_prompts, check_size, unwrap
from ddpo.adapters.common.sources import read_json_object, resolve_model_source
from ddpo.adapters.common.weights import check_model_args
from ddpo.adapters.flow.policy import FlowPipelinePolicy
from ddpo.adapters.flow.sampling import (
    FlowSchedule,
    LoraTargets,
    PostWindowSolver,
    SDEType,
    dynamic_shift_mu,
    lora_target_modules,
    setup_trainable_transformer,
    transformer_lora_config,
    write_transformer_lora,
)
from ddpo.adapters.flux.checks import (
    check_flux_folder,
    check_flux_resolution,
    flux_latent_factor,
    flux_schedule,
)
from ddpo.adapters.flux.text import check_max_sequence_length, encode_flux_prompts, flux_velocity
from ddpo.policy import Conditioning, GuidanceKind

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
"""The attention projections of FLUX's double- and single-stream blocks (``lora_targets=
"attention"``, the default). Flow-GRPO's FLUX LoRA (rank 64, alpha 128, its
``scripts/train_flux.py``) and diffusers' FLUX LoRA training also adapt the double-stream
blocks' feed-forward layers: ``lora_targets="attention_ff"``
(:data:`ddpo.adapters.flow.sampling.FEED_FORWARD_TARGET_MODULES`)."""

FLUX_DEFAULT_MAX_SHIFT: Final[float] = 1.15
"""``max_shift`` where the scheduler's config lacks it, as ``FluxPipeline`` falls back
(``calculate_shift``'s default; SD3's pipeline falls back to 1.16)."""

FLUX_DEFAULT_SAMPLE_SIZE: Final[int] = 128
"""``FluxPipeline.default_sample_size``: the default image side is this times the VAE factor
(1024 px for FLUX.1) where the VAE's config has no ``sample_size``."""


@final
class DefaultDDPOFluxPipeline(FlowPipelinePolicy):
    """Flow-GRPO / DDPO over diffusers' ``FluxPipeline`` (wrapped), LoRA via peft.

    Implements :class:`ddpo.policy.DiffusionPolicy`. Loads a built-in name, a local FLUX.1 folder
    or a hub id (or a folder of :meth:`save_lora_weights`, on top of its base); freezes the VAE
    and both text encoders. With ``use_lora=True`` rank-``lora_rank`` adapters on
    :data:`FLUX_LORA_TARGET_MODULES` (the attention projections; with
    ``lora_targets="attention_ff"`` also the double-stream blocks' feed-forward layers, as
    Flow-GRPO's FLUX LoRA) train (float32); otherwise the whole transformer trains in
    float32 with a frozen copy as the KL reference. The trainer's ``guidance_scale`` goes to the
    guidance embedding of guidance-distilled models (FLUX.1-dev; ignored by FLUX.1-schnell);
    ``guided`` (true CFG, a doubled batch) does not apply, the negative prompt is not used, and
    ``eta`` (DDIM's) is ignored: the sampler is set by ``sde_type``, ``noise_level`` and the
    window.

    Args:
        pretrained_model_name: built-in name, local FLUX.1 folder or hub id.
        pretrained_model_revision: hub revision.
        use_lora, lora_rank, lora_alpha: LoRA (default) or full fine-tuning; scale alpha/rank
            (Flow-GRPO's FLUX LoRA: rank 64, alpha 128, ``lora_targets="attention_ff"``).
        lora_targets: new adapters on the ``"attention"`` projections (default) or on those and
            the double-stream blocks' feed-forward layers (``"attention_ff"``); a saved adapter
            keeps its own targets.
        torch_dtype: dtype of the frozen weights (``None``: as saved).
        resolution: image size ``(height, width)`` or one int (default: the VAE's
            ``sample_size``, 1024 for FLUX.1; without one, 128 x the VAE factor as
            ``FluxPipeline``), a multiple of 2 x the VAE factor (packing).
        noise_level: Flow-GRPO's ``noise_level``: ``a`` in ``std_t = a sqrt(sigma / (1 -
            sigma))`` for ``sde_type="sde"``, > 0; the fresh noise's share
            ``sin(a pi / 2)`` of ``sigma_prev`` for ``"cps"``, in ``(0, 1]``; 0: the ODE
            (deterministic), recording no transitions, for the algorithms that train on final
            latents (DiffusionNFT, AWM, Diffusion-DPO).
        sde_type: Flow-GRPO's ``sde_type``: its SDE step (``"sde"``) or the
            coefficients-preserving step (``"cps"``, with Flow-GRPO's log-probability; its last
            step has no noise and is an ODE step).
        sde_window_size: ``None`` (every step is stochastic and trained; for ``"cps"`` all but
            the last) or ``k >= 1`` consecutive stochastic steps; the others take the ODE step
            and are not trained.
        sde_window_start: the window's first step, or ``None`` to draw it per rollout from the
            rollout's generator, uniformly in ``[0, num_steps - k]`` (Flow-GRPO-Fast; ``[0,
            num_steps - 1 - k]`` for ``"cps"``, whose last step is an ODE step).
        sde_window_range: ``(low, high)``: draw the start in ``[low, high - k]`` instead, so the
            window lies in steps ``low..high - 1`` (Flow-GRPO's ``sde_window_range``).
        post_window_solver: the deterministic steps after the window: ``"euler"`` or the
            second-order DPM-Solver++ (``"dpmsolver++"``, MixGRPO-Flash's); needs
            ``sde_window_size``.
        post_window_step_ratio: MixGRPO-Flash's ``dpm_post_compress_ratio`` in ``(0, 1]``: the
            ``r`` steps after the window become ``max(1, int((r + 1) ratio) - 1)`` (0.4 in its
            scripts); needs ``sde_window_size``.
        max_sequence_length: T5 tokens, 1 to 512 (512 as in diffusers).
        device: where to put the model (``None``: CPU).
        lora_init_seed: seed of the new adapters' initialisation (forked RNG).

    Raises:
        ValueError: unknown model, a folder of another family (the class found), bad arguments;
            all before weights load.
    """

    pipeline_class = FluxPipeline
    default_steps = 28
    default_guidance = 3.5
    guidance_kind: ClassVar[GuidanceKind] = "embedded"
    """The guidance scale is an input of the one transformer pass (no true CFG), so training
    without ``train_cfg`` re-scores the policy that sampled."""

    def __init__(
        self,
        pretrained_model_name: str | os.PathLike[str],
        *,
        pretrained_model_revision: str = "main",
        use_lora: bool = True,
        lora_rank: int = 4,
        lora_alpha: float | int = 4,
        lora_targets: LoraTargets = "attention",
        torch_dtype: torch.dtype | None = None,
        resolution: int | Size | None = None,
        noise_level: float | int = 0.7,
        sde_type: SDEType = "sde",
        sde_window_size: int | None = None,
        sde_window_start: int | None = None,
        sde_window_range: tuple[int, int] | None = None,
        post_window_solver: PostWindowSolver = "euler",
        post_window_step_ratio: float | int = 1.0,
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
        self._set_sampler(
            noise_level=noise_level, sde_type=sde_type, sde_window_size=sde_window_size,
            sde_window_start=sde_window_start, sde_window_range=sde_window_range,
            post_window_solver=post_window_solver, post_window_step_ratio=post_window_step_ratio,
        )  # fmt: skip
        targets = lora_target_modules(FLUX_LORA_TARGET_MODULES, lora_targets)
        self.max_sequence_length = check_max_sequence_length(max_sequence_length)
        size = check_size(resolution, "resolution")
        source = resolve_model_source(pretrained_model_name, pretrained_model_revision)
        transformer_config = check_flux_folder(source.folder)
        factor = flux_latent_factor(source.folder)
        if size is None:  # the VAE's native size (1024 for FLUX.1, as FluxPipeline's default)
            side = read_json_object(source.folder / "vae" / "config.json").get("sample_size")
            side = side if isinstance(side, int) else FLUX_DEFAULT_SAMPLE_SIZE * factor
            size = (side, side)
        self.resolution: Size = check_flux_resolution(size, latent_factor=factor)
        self.guidance_embeds = bool(transformer_config.get("guidance_embeds", False))
        lora_config = transformer_lora_config(lora_rank, lora_alpha, targets, source.lora_file)

        # 2. Load the wrapped diffusers pipeline; freeze the VAE and the text encoders.
        flux = FluxPipeline.from_pretrained(source.folder, torch_dtype=torch_dtype)
        for module in (flux.vae, flux.text_encoder, flux.text_encoder_2):
            module.requires_grad_(False).eval()
        flux.transformer.eval()
        self._sd: Any = flux
        self._weights_dtype = flux.vae.dtype
        self.use_lora = use_lora
        self.lora_rank = int(lora_config.r)
        self.lora_alpha = float(lora_config.lora_alpha)
        self.lora_layers = sorted(set(lora_config.target_modules or ()))
        self.pretrained_model_name = source.base_name
        self.pretrained_model_revision = source.base_revision

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

    def _latent_size(self, size: Size | None = None) -> tuple[int, int]:
        height, width = size or self.resolution
        scale = int(self._sd.vae_scale_factor)
        return height // scale, width // scale

    def _mu(self, size: Size | None = None) -> float | None:
        """The schedule's shift for images of ``size`` (``None``: the resolution): linear in
        the packed tokens (``None`` unless the scheduler uses dynamic shifting)."""
        height, width = self._latent_size(size)
        tokens = (height // 2) * (width // 2)
        return dynamic_shift_mu(self.scheduler, tokens, default_max_shift=FLUX_DEFAULT_MAX_SHIFT)

    def _flow_schedule(
        self,
        scheduler: Any,
        num_steps: int,
        device: torch.device | None = None,
        size: Size | None = None,
    ) -> FlowSchedule:
        return flux_schedule(scheduler, num_steps, device, self._mu(size))

    def _latent_shape(self, batch: int, size: Size | None = None) -> tuple[int, int, int, int]:
        channels = int(self._sd.transformer.config.in_channels) // 4  # unpacked: 2x2 patches
        return (batch, channels, *self._latent_size(size))

    def _size_multiple(self) -> tuple[int, str]:
        factor = int(self._sd.vae_scale_factor)
        return 2 * factor, f"the VAE's {factor}x times FLUX's 2x2 latent packing"

    # ---- conditioning ---------------------------------------------------------------------

    def encode(self, prompts: Sequence[str], negative_prompt: str) -> Conditioning:
        """``prompt_embeds`` (T5) and ``pooled_prompt_embeds`` (CLIP), as diffusers'
        ``FluxPipeline.encode_prompt``. ``negative_prompt`` is not used (no true CFG); the text
        ids are the same for every prompt and are made in the transformer call."""
        texts = check_prompts(list(prompts), name="prompts")
        embeds, pooled = encode_flux_prompts(
            self._sd, texts, max_sequence_length=self.max_sequence_length
        )
        return Conditioning({"prompt_embeds": embeds, "pooled_prompt_embeds": pooled})

    # ---- the model call ------------------------------------------------------------------

    def _velocity(
        self,
        transformer: nn.Module,
        c: Conditioning,
        x: Latents,
        t: PerSample,
        scale: float | PerSample,
        guided: bool,
    ) -> Latents:
        """The velocity at timesteps ``t`` (guidance embedding of ``scale`` if the model has it;
        ``guided`` is ignored: FLUX.1 is guidance-distilled, no true CFG)."""
        return flux_velocity(
            transformer,
            x,
            t,
            prompt_embeds=c["prompt_embeds"],
            pooled_prompt_embeds=c["pooled_prompt_embeds"],
            guidance_scale=scale if self.guidance_embeds else None,
            text_ids_dtype=self._sd.text_encoder.dtype,
        )

    # ---- saving ---------------------------------------------------------------------------

    def _write_lora(self, out: Path) -> None:
        base = (self.pretrained_model_name, self.pretrained_model_revision)
        write_transformer_lora(unwrap(self.transformer), out, base, saver=FluxPipeline)

    def _save_dtype(self) -> torch.dtype:
        return self._weights_dtype


__all__ = [
    "FLUX_DEFAULT_MAX_SHIFT",
    "FLUX_DEFAULT_SAMPLE_SIZE",
    "FLUX_LORA_TARGET_MODULES",
    "DefaultDDPOFluxPipeline",
]
