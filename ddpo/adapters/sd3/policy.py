"""``DefaultDDPOStableDiffusion3Pipeline``: the Flow-GRPO policy over diffusers' SD3 / SD3.5.

SD3 conditions its MMDiT transformer on both CLIP encoders' penultimate hidden states
(concatenated, padded to the T5 width) followed by the T5 encoder's states, and on the two pooled
CLIP embeddings. Sampling integrates the rectified-flow ODE with ``FlowMatchEulerDiscrete
Scheduler``'s sigmas; as in Flow-GRPO (Liu et al., 2025, arXiv 2505.05470) the steps of a
stochastic window take the SDE step of :func:`ddpo.core.flow_sde_step_with_logprob` instead and
are the policy's actions. The family-independent parts live in
:mod:`ddpo.adapters.flow.sampling`.
"""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Final, final

import torch
from diffusers import StableDiffusion3Pipeline
from torch import Tensor, nn

from ddpo._typing import Latents, PerSample
from ddpo.adapters.common.args import Size, check_prompts, check_size, unwrap
from ddpo.adapters.common.sampling import keep_unguided_rows
from ddpo.adapters.common.sources import resolve_model_source
from ddpo.adapters.common.weights import check_model_args
from ddpo.adapters.flow.policy import FlowPipelinePolicy
from ddpo.adapters.flow.sampling import (
    FlowSchedule,
    LoraTargets,
    PostWindowSolver,
    SDEType,
    dynamic_shift_mu,
    flow_schedule,
    lora_target_modules,
    setup_trainable_transformer,
    transformer_lora_config,
    write_transformer_lora,
)
from ddpo.adapters.sd3.checks import check_sd3_folder, check_sd3_resolution, sd3_latent_factor
from ddpo.adapters.sd3.text import (
    SD3_MAX_SEQUENCE_LENGTH,
    join_sd3_embeddings,
    sd3_max_sequence_length,
)
from ddpo.core import classifier_free_guidance
from ddpo.policy import Conditioning

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

SD3_DEFAULT_MAX_SHIFT: Final[float] = 1.16
"""``max_shift`` where the scheduler's config lacks it, as ``StableDiffusion3Pipeline`` falls
back (its dynamic shift; FLUX's pipeline falls back to 1.15)."""


@final
class DefaultDDPOStableDiffusion3Pipeline(FlowPipelinePolicy):
    """Flow-GRPO / DDPO over diffusers' ``StableDiffusion3Pipeline`` (wrapped), LoRA via peft.

    Implements :class:`ddpo.policy.DiffusionPolicy`. Loads a built-in name, a local SD3/SD3.5
    folder or a hub id (or a folder of :meth:`save_lora_weights`, on top of its base); freezes
    the VAE and the three text encoders. With ``use_lora=True`` rank-``lora_rank`` adapters on
    :data:`SD3_LORA_TARGET_MODULES` (with ``lora_targets="attention_ff"`` also on the joint
    blocks' feed-forward layers) train (float32); otherwise the whole transformer trains in
    float32 with a frozen copy as the KL reference. ``eta`` (DDIM's) is accepted and ignored:
    the sampler is set by ``sde_type``, ``noise_level`` and the window.

    Args:
        pretrained_model_name: built-in name, local SD3 folder or hub id.
        pretrained_model_revision: hub revision.
        use_lora, lora_rank, lora_alpha: LoRA (default) or full fine-tuning; scale alpha/rank.
        lora_targets: new adapters on the ``"attention"`` projections (default) or on those and
            the joint blocks' feed-forward layers (``"attention_ff"``); a saved adapter keeps
            its own targets.
        torch_dtype: dtype of the frozen weights (``None``: as saved).
        resolution: image size ``(height, width)`` or one int (default: the transformer's
            sample size times the VAE factor), a multiple of VAE factor x patch size.
        noise_level: Flow-GRPO's ``noise_level``: ``a`` in ``std_t = a sqrt(sigma / (1 -
            sigma))`` for ``sde_type="sde"``, > 0; the fresh noise's share
            ``sin(a pi / 2)`` of ``sigma_prev`` for ``"cps"``, in ``(0, 1]``; 0: the ODE
            (deterministic), recording no transitions, for the algorithms that train on final
            latents (DiffusionNFT, AWM, Diffusion-DPO).
        sde_type: Flow-GRPO's ``sde_type``: its SDE step (``"sde"``,
            :func:`ddpo.core.flow_sde_step_with_logprob`) or the coefficients-preserving step
            (``"cps"``, :func:`ddpo.core.flow_cps_step_with_logprob`, with Flow-GRPO's
            log-probability; its last step has no noise and is an ODE step).
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
        max_sequence_length: T5 tokens; ``None``: 256 as in diffusers, or fewer where the T5
            tokenizer's ``model_max_length`` is shorter (``ddpo-tiny-shapes-flow`` was trained
            with 16; stock diffusers needs ``max_sequence_length=16`` passed for it).
        device: where to put the model (``None``: CPU).
        lora_init_seed: seed of the new adapters' initialisation (forked RNG).

    Raises:
        ValueError: unknown model, a folder of another family (the class found), bad arguments;
            all before weights load.
    """

    pipeline_class = StableDiffusion3Pipeline
    #: The blocks ``DDPOConfig.compile_denoiser`` compiles (diffusers' SD3 transformer does not
    #: declare its repeated blocks).
    compile_regions: ClassVar[tuple[str, ...]] = ("JointTransformerBlock",)
    default_steps = 28
    default_guidance = 7.0

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
        max_sequence_length: int | None = None,
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
        targets = lora_target_modules(SD3_LORA_TARGET_MODULES, lora_targets)
        if max_sequence_length is not None:
            if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int):
                raise ValueError(f"max_sequence_length must be an int, got {max_sequence_length!r}")
            if max_sequence_length < 1:
                raise ValueError(f"max_sequence_length must be >= 1, got {max_sequence_length!r}")
        size = check_size(resolution, "resolution")
        source = resolve_model_source(pretrained_model_name, pretrained_model_revision)
        transformer_config = check_sd3_folder(source.folder)
        factor = sd3_latent_factor(source.folder)
        patch = int(transformer_config.get("patch_size", 2))
        if size is None:
            side = int(transformer_config.get("sample_size", 128)) * factor
            size = (side, side)
        self.resolution: Size = check_sd3_resolution(size, latent_factor=factor, patch_size=patch)
        lora_config = transformer_lora_config(lora_rank, lora_alpha, targets, source.lora_file)

        # 2. Load the wrapped diffusers pipeline; freeze the VAE and the text encoders.
        sd3 = StableDiffusion3Pipeline.from_pretrained(source.folder, torch_dtype=torch_dtype)
        for module in (sd3.vae, sd3.text_encoder, sd3.text_encoder_2, sd3.text_encoder_3):
            module.requires_grad_(False).eval()
        sd3.transformer.eval()
        self._sd: Any = sd3
        self.max_sequence_length: int = (
            sd3_max_sequence_length(sd3.tokenizer_3)
            if max_sequence_length is None
            else max_sequence_length
        )
        self._weights_dtype = sd3.vae.dtype
        self.use_lora = use_lora
        self.lora_rank = int(lora_config.r)
        self.lora_alpha = float(lora_config.lora_alpha)
        self.lora_layers = sorted(set(lora_config.target_modules or ()))
        self.pretrained_model_name = source.base_name
        self.pretrained_model_revision = source.base_revision

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

    # ---- the schedule and the latents ------------------------------------------------------

    def _mu(self, size: Size | None = None) -> float | None:
        """The dynamic shift of the schedule for images of ``size`` (``None``: the resolution;
        the shift is ``None`` unless configured)."""
        height, width = size or self.resolution
        scale = int(self._sd.vae_scale_factor) * int(self._sd.patch_size)
        tokens = (height // scale) * (width // scale)
        return dynamic_shift_mu(self.scheduler, tokens, default_max_shift=SD3_DEFAULT_MAX_SHIFT)

    def _flow_schedule(
        self,
        scheduler: Any,
        num_steps: int,
        device: torch.device | None = None,
        size: Size | None = None,
    ) -> FlowSchedule:
        return flow_schedule(scheduler, num_steps, device, self._mu(size))

    def _latent_shape(self, batch: int, size: Size | None = None) -> tuple[int, int, int, int]:
        height, width = size or self.resolution
        scale = int(self._sd.vae_scale_factor)
        channels = int(self._sd.transformer.config.in_channels)
        return (batch, channels, height // scale, width // scale)

    def _size_multiple(self) -> tuple[int, str]:
        factor, patch = int(self._sd.vae_scale_factor), int(self._sd.patch_size)
        return factor * patch, f"the VAE's {factor}x times the transformer's patch_size={patch}"

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
        t5 = t5.to(dtype=sd.text_encoder_3.dtype, device=hidden[0].device)
        return join_sd3_embeddings(hidden, pooled, t5)

    def encode(self, prompts: Sequence[str], negative_prompt: str) -> Conditioning:
        """``prompt_embeds``, ``pooled_prompt_embeds`` and their negatives (the negative prompt
        encoded as diffusers encodes it, ``""`` included), each with the batch first."""
        texts = check_prompts(list(prompts), name="prompts")
        embeds, pooled = self._encode_texts(texts)
        negative, negative_pooled = (
            t.to(embeds.device) for t in self._negative_encoding(negative_prompt)
        )
        batch = len(texts)
        return Conditioning(
            {
                "prompt_embeds": embeds,
                "pooled_prompt_embeds": pooled,
                "negative_prompt_embeds": negative.expand(batch, -1, -1).contiguous(),
                "negative_pooled_prompt_embeds": negative_pooled.expand(batch, -1).contiguous(),
            }
        )

    # ---- the model call ------------------------------------------------------------------

    def _velocity(
        self,
        transformer: nn.Module,
        conditioning: Conditioning,
        x: Latents,
        t: PerSample,
        guidance_scale: float | PerSample,
        guided: bool,
    ) -> Latents:
        """The transformer's velocity at timesteps ``t`` (true CFG: one doubled batch; with a
        per-sample scale, rows at or below 1 keep the conditional velocity)."""
        params = next(unwrap(transformer).parameters(), None)
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
        combined = classifier_free_guidance(uncond, cond, guidance_scale)
        return keep_unguided_rows(combined, cond, guidance_scale)

    # ---- saving ---------------------------------------------------------------------------

    def _write_lora(self, out: Path) -> None:
        base = (self.pretrained_model_name, self.pretrained_model_revision)
        write_transformer_lora(unwrap(self.transformer), out, base, saver=StableDiffusion3Pipeline)

    def _save_dtype(self) -> torch.dtype:
        return self._weights_dtype


__all__ = [
    "SD3_DEFAULT_MAX_SHIFT",
    "SD3_LORA_TARGET_MODULES",
    "SD3_MAX_SEQUENCE_LENGTH",
    "DefaultDDPOStableDiffusion3Pipeline",
]
