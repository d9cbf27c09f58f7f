"""``DefaultDDPOQwenImagePipeline``: the Flow-GRPO policy over diffusers' Qwen-Image.

Qwen-Image runs its ``QwenImageTransformer2DModel`` (an MMDiT with 3D rotary positions) on
packed latents (2x2 patches as tokens, as FLUX.1), conditioned on the last hidden states of a
Qwen2.5-VL encoder under an attention mask, with true classifier-free guidance: a second pass
for the negative prompt, combined with the pipeline's norm-preserving rescale
(:func:`ddpo.adapters.qwenimage.text.true_guidance`). Sampling integrates the rectified-flow ODE
with ``FlowMatchEulerDiscreteScheduler``'s resolution-shifted sigmas; as in Flow-GRPO (Liu et
al., 2025, arXiv 2505.05470) the steps of a stochastic window take the SDE step of
:func:`ddpo.core.flow_sde_step_with_logprob` and are the policy's actions.

The trajectory stores unpacked latents ``(batch, C, h, w)`` (the VAE's frame axis dropped); they
are packed around each transformer call only, and decoded by the one-frame video VAE
(:mod:`ddpo.adapters.qwenimage.vae`).
"""

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final, final

import torch
from diffusers import QwenImagePipeline
from jaxtyping import Float
from torch import Tensor, nn

from ddpo._typing import Latents, PerSample
from ddpo.adapters.common.args import Size, check_prompts, check_size, unwrap
from ddpo.adapters.common.denoiser import check_images
from ddpo.adapters.common.sources import resolve_model_source
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
from ddpo.adapters.qwenimage.checks import (
    check_qwenimage_folder,
    check_qwenimage_resolution,
    qwenimage_latent_factor,
    qwenimage_native_side,
    qwenimage_schedule,
)
from ddpo.adapters.qwenimage.text import (
    DEFAULT_TEXT_TOKENS,
    check_max_sequence_length,
    encode_qwenimage_prompts,
    qwenimage_velocity,
)
from ddpo.adapters.qwenimage.vae import (
    qwenimage_decode_images,
    qwenimage_decode_output,
    qwenimage_vae_encode,
)
from ddpo.policy import Conditioning

QWENIMAGE_LORA_TARGET_MODULES: Final[tuple[str, ...]] = (
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "attn.to_k",
    "attn.to_out.0",
    "attn.to_q",
    "attn.to_v",
)
"""The joint-attention projections of both streams (``lora_targets="attention"``, the default),
as the SD3 and FLUX.1 policies adapt theirs (diffusers' Qwen-Image LoRA script adapts the image
stream's four, ``to_q``, ``to_k``, ``to_v`` and ``to_out.0``, unless given ``--lora_layers``)."""

QWENIMAGE_FEED_FORWARD_TARGET_MODULES: Final[tuple[str, ...]] = (
    "img_mlp.net.0.proj",
    "img_mlp.net.2",
    "txt_mlp.net.0.proj",
    "txt_mlp.net.2",
)
"""The image and text streams' feed-forward layers, adapted besides the attention with
``lora_targets="attention_ff"`` (Qwen-Image names them ``img_mlp`` and ``txt_mlp``, where SD3
and FLUX.1 have ``ff`` and ``ff_context``)."""

DISCARDED_TEXT_LAYERS: Final[tuple[str, ...]] = (
    "attn.add_q_proj",
    "attn.norm_added_q",
    "attn.to_add_out",
    "txt_mlp",
)
"""The last block's layers that only update the text tokens: the transformer discards the text
stream after its last block (only the image tokens reach ``proj_out``), so they cannot learn
(no gradient, or a zero one) and are frozen, LoRA adapters and full fine-tuning alike (DDP needs
a gradient for every trainable parameter)."""

QWENIMAGE_DEFAULT_MAX_SHIFT: Final[float] = 1.15
"""``max_shift`` where the scheduler's config lacks it, as ``QwenImagePipeline`` falls back
(``calculate_shift``'s default)."""


def freeze_discarded_text_layers(transformer: nn.Module) -> None:
    """Freeze the parameters (weights or LoRA adapters) of :data:`DISCARDED_TEXT_LAYERS` in
    ``transformer``'s last block."""
    blocks: Any = unwrap(transformer).transformer_blocks
    last = f"transformer_blocks.{len(blocks) - 1}."
    for name, param in unwrap(transformer).named_parameters():
        layer = name.removeprefix(last)
        if layer != name and layer.startswith(DISCARDED_TEXT_LAYERS):
            param.requires_grad_(False)


@final
class DefaultDDPOQwenImagePipeline(FlowPipelinePolicy):
    """Flow-GRPO / DDPO over diffusers' ``QwenImagePipeline`` (wrapped), LoRA via peft.

    Implements :class:`ddpo.policy.DiffusionPolicy`. Loads a built-in name, a local Qwen-Image
    folder or a hub id (or a folder of :meth:`save_lora_weights`, on top of its base); freezes
    the VAE and the text encoder. With ``use_lora=True`` rank-``lora_rank`` adapters on
    :data:`QWENIMAGE_LORA_TARGET_MODULES` (with ``lora_targets="attention_ff"`` also on
    :data:`QWENIMAGE_FEED_FORWARD_TARGET_MODULES`) train (float32); otherwise the whole
    transformer trains in float32 with a frozen copy as the KL reference; in both, the last
    block's text-only layers (:data:`DISCARDED_TEXT_LAYERS`) stay frozen. The trainer's
    ``guidance_scale`` is the stock pipeline's ``true_cfg_scale``: above 1 the negative prompt
    (``""`` included, which the stock pipeline needs passed to guide) is a second pass and the
    two combine with the pipeline's norm-preserving rescale; at or below 1 one conditional pass.
    ``eta`` (DDIM's) is ignored: the sampler is set by ``sde_type``, ``noise_level`` and the
    window.

    Args:
        pretrained_model_name: built-in name, local Qwen-Image folder or hub id.
        pretrained_model_revision: hub revision.
        use_lora, lora_rank, lora_alpha: LoRA (default) or full fine-tuning; scale alpha/rank.
        lora_targets: new adapters on the ``"attention"`` projections (default) or on those and
            both streams' feed-forward layers (``"attention_ff"``); a saved adapter keeps its
            own targets.
        torch_dtype: dtype of the frozen weights (``None``: as saved).
        resolution: image size ``(height, width)`` or one int, a multiple of 2 x the VAE
            factor (packing); default: 128 x the VAE factor, 1024, as ``QwenImagePipeline``, or
            the native side recorded in the VAE config (the tiny model's 64,
            :data:`ddpo.adapters.qwenimage.checks.NATIVE_SIDE_KEY`).
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
        max_sequence_length: text tokens per prompt, 1 to 1024 (512 as ``QwenImagePipeline``):
            longer prompts are cut as the stock pipeline cuts them, and every row is padded with
            masked tokens to this length (so rows encoded apart concatenate; a masked token
            changes no velocity but costs compute: a shorter length suits short prompts).
        device: where to put the model (``None``: CPU).
        lora_init_seed: seed of the new adapters' initialisation (forked RNG).

    Raises:
        ValueError: unknown model, a folder of another family (the class found), bad arguments;
            all before weights load.
    """

    pipeline_class = QwenImagePipeline
    default_steps = 50
    default_guidance = 4.0

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
        max_sequence_length: int = DEFAULT_TEXT_TOKENS,
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
        targets = lora_target_modules(QWENIMAGE_LORA_TARGET_MODULES, lora_targets)
        if lora_targets == "attention_ff":  # Qwen-Image's feed-forward layers, not SD3's names
            targets = QWENIMAGE_LORA_TARGET_MODULES + QWENIMAGE_FEED_FORWARD_TARGET_MODULES
        self.max_sequence_length = check_max_sequence_length(max_sequence_length)
        size = check_size(resolution, "resolution")
        source = resolve_model_source(pretrained_model_name, pretrained_model_revision)
        check_qwenimage_folder(source.folder)
        factor = qwenimage_latent_factor(source.folder)
        if size is None:
            side = qwenimage_native_side(source.folder)
            size = (side, side)
        self.resolution: Size = check_qwenimage_resolution(size, latent_factor=factor)
        lora_config = transformer_lora_config(lora_rank, lora_alpha, targets, source.lora_file)

        # 2. Load the wrapped diffusers pipeline; freeze the VAE and the text encoder.
        qwen = QwenImagePipeline.from_pretrained(source.folder, torch_dtype=torch_dtype)
        for module in (qwen.vae, qwen.text_encoder):
            module.requires_grad_(False).eval()
        qwen.transformer.eval()
        self._sd: Any = qwen
        self._weights_dtype = qwen.vae.dtype
        self.use_lora = use_lora
        self.lora_rank = int(lora_config.r)
        self.lora_alpha = float(lora_config.lora_alpha)
        self.lora_layers = sorted(set(lora_config.target_modules or ()))
        self.pretrained_model_name = source.base_name
        self.pretrained_model_revision = source.base_revision

        # 3. Trainable parameters: LoRA adapters or the full transformer (frozen reference).
        self._frozen = setup_trainable_transformer(
            qwen.transformer,
            use_lora=use_lora,
            lora_config=lora_config,
            lora_file=source.lora_file,
            lora_init_seed=lora_init_seed,
        )
        freeze_discarded_text_layers(qwen.transformer)
        if device is not None:
            self.to(device)

    # ---- the schedule and the latents ------------------------------------------------------

    def _latent_size(self, size: Size | None = None) -> tuple[int, int]:
        height, width = size or self.resolution
        scale = int(self._sd.vae_scale_factor)
        return height // scale, width // scale

    def _mu(self, size: Size | None = None) -> float | None:
        """The schedule's shift for images of ``size`` (``None``: the resolution): linear in
        the packed tokens (``None`` unless the scheduler uses dynamic shifting)."""
        height, width = self._latent_size(size)
        tokens = (height // 2) * (width // 2)
        return dynamic_shift_mu(
            self.scheduler, tokens, default_max_shift=QWENIMAGE_DEFAULT_MAX_SHIFT
        )

    def _flow_schedule(
        self,
        scheduler: Any,
        num_steps: int,
        device: torch.device | None = None,
        size: Size | None = None,
    ) -> FlowSchedule:
        return qwenimage_schedule(scheduler, num_steps, device, self._mu(size))

    def _latent_shape(self, batch: int, size: Size | None = None) -> tuple[int, int, int, int]:
        channels = int(self._sd.transformer.config.in_channels) // 4  # unpacked: 2x2 patches
        return (batch, channels, *self._latent_size(size))

    def _size_multiple(self) -> tuple[int, str]:
        factor = int(self._sd.vae_scale_factor)
        return 2 * factor, f"the VAE's {factor}x times Qwen-Image's 2x2 latent packing"

    # ---- conditioning ---------------------------------------------------------------------

    def _encode_texts(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        return encode_qwenimage_prompts(
            self._sd, texts, max_sequence_length=self.max_sequence_length
        )

    def encode(self, prompts: Sequence[str], negative_prompt: str) -> Conditioning:
        """``prompt_embeds`` and ``prompt_embeds_mask`` as diffusers' ``QwenImagePipeline.
        encode_prompt`` makes them, and the negative prompt's (``""`` included), each padded
        with masked zeros to ``max_sequence_length`` tokens, with the batch first."""
        texts = check_prompts(list(prompts), name="prompts")
        embeds, mask = self._encode_texts(texts)
        negative, negative_mask = (
            t.to(embeds.device) for t in self._negative_encoding(negative_prompt)
        )
        batch = len(texts)
        return Conditioning(
            {
                "prompt_embeds": embeds,
                "prompt_embeds_mask": mask,
                "negative_prompt_embeds": negative.expand(batch, -1, -1).contiguous(),
                "negative_prompt_embeds_mask": negative_mask.expand(batch, -1).contiguous(),
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
        """The transformer's velocity at timesteps ``t`` (true CFG with the norm-preserving
        rescale when ``guided``: one doubled batch; with a per-sample scale, rows at or below 1
        keep the conditional velocity)."""
        c = conditioning
        negative = None
        if guided:
            negative = (c["negative_prompt_embeds"], c["negative_prompt_embeds_mask"])
        return qwenimage_velocity(
            transformer,
            x,
            t,
            prompt_embeds=c["prompt_embeds"],
            prompt_embeds_mask=c["prompt_embeds_mask"],
            negative=negative,
            guidance_scale=guidance_scale,
        )

    # ---- decoding by the one-frame video VAE ----------------------------------------------

    def _decode_output(self, latents: Latents, output_type: str) -> Any:
        """Final latents decoded into ``output_type`` as ``QwenImagePipeline`` decodes: one frame
        of ``latents std + mean`` through the video VAE (``"latent"``: the latents themselves)."""
        return qwenimage_decode_output(self._sd, latents, output_type)

    def decode(self, latents: Latents) -> Float[Tensor, "batch 3 image_height image_width"]:
        """Images in ``[0, 1]``, float32, of final (unpacked) latents, differentiable: the VAE
        on one frame as sampling decodes (``latents std + mean``, Qwen-Image's
        ``latents_std`` and ``latents_mean``)."""
        return qwenimage_decode_images(self.vae, latents, self._sd.image_processor)

    def encode_images(self, images: Float[Tensor, "batch 3 image_height image_width"]) -> Latents:
        """The final (unpacked) latents that :meth:`decode` turns into ``images`` (float
        ``(batch, 3, H, W)`` in ``[0, 1]``, sides multiples of 2 x the VAE factor): the VAE's
        posterior mean ``z`` on one frame, ``(z - latents_mean) / latents_std``; float32, on the
        VAE's device. What Diffusion-DPO trains on (`ddpo.data.preferences`)."""
        multiple, why = self._size_multiple()
        check_images(images, multiple=multiple, why=why)
        return qwenimage_vae_encode(self.vae, images)

    # ---- training --------------------------------------------------------------------------

    @contextlib.contextmanager
    def reference_policy(self) -> Iterator[None]:
        """The pre-fine-tuning denoiser, as the flow base's; on exit the last block's text-only
        layers are frozen again (peft's ``enable_adapters`` makes every adapter trainable)."""
        try:
            with super().reference_policy():
                yield
        finally:
            freeze_discarded_text_layers(self.transformer)

    # ---- saving ---------------------------------------------------------------------------

    def _write_lora(self, out: Path) -> None:
        base = (self.pretrained_model_name, self.pretrained_model_revision)
        write_transformer_lora(unwrap(self.transformer), out, base, saver=QwenImagePipeline)

    def _save_dtype(self) -> torch.dtype:
        return self._weights_dtype


__all__ = [
    "DISCARDED_TEXT_LAYERS",
    "QWENIMAGE_DEFAULT_MAX_SHIFT",
    "QWENIMAGE_FEED_FORWARD_TARGET_MODULES",
    "QWENIMAGE_LORA_TARGET_MODULES",
    "DefaultDDPOQwenImagePipeline",
    "freeze_discarded_text_layers",
]
