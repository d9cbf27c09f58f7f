"""``DefaultDDPOWanPipeline``: the Flow-GRPO policy over diffusers' Wan2.1 text-to-video.

Wan2.1 runs its ``WanTransformer3DModel`` on video latents ``(batch, C, frames, h, w)`` (3D
patches as tokens with 3D rotary positions), cross-attending to the UMT5 encoder's hidden states,
with true classifier-free guidance: a second pass for the negative prompt. The causal video VAE
``AutoencoderKLWan`` keeps a video's first frame and packs every 4 after it into one latent
frame, so ``num_frames = 4 k + 1`` frames have ``k + 1`` latent frames.

The stock pipeline samples with UniPC on flow sigmas; as Flow-GRPO (Liu et al., 2025, arXiv
2505.05470) and DanceGRPO train Wan, the policy integrates the rectified-flow ODE with the sigmas
of a ``FlowMatchEulerDiscreteScheduler`` whose static shift is the folder's ``flow_shift``
(:func:`ddpo.adapters.wan.checks.wan_euler_scheduler`), and the steps of a stochastic window take
the SDE step of :func:`ddpo.core.flow_sde_step_with_logprob` and are the policy's actions. Its
deterministic sampler (``noise_level=0``) is stock ``WanPipeline`` with that Euler scheduler.
The step math is elementwise with a log-density averaged over every element of the video
latents, as over an image's.
"""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, final

import torch
from diffusers import WanPipeline
from torch import Tensor, nn

from ddpo._typing import Latents, PerSample, Videos
from ddpo.adapters.common.args import Size, check_prompts, check_size, unwrap
from ddpo.adapters.common.denoiser import check_images
from ddpo.adapters.common.sources import read_json_object, resolve_model_source
from ddpo.adapters.common.weights import check_model_args
from ddpo.adapters.flow.policy import FlowPipelinePolicy
from ddpo.adapters.flow.sampling import (
    FlowSchedule,
    LoraTargets,
    PostWindowSolver,
    SDEType,
    flow_schedule,
    setup_trainable_transformer,
    transformer_lora_config,
    write_transformer_lora,
)
from ddpo.adapters.wan.checks import (
    check_num_frames,
    check_wan_folder,
    check_wan_resolution,
    wan_euler_scheduler,
    wan_video_factors,
)
from ddpo.adapters.wan.text import (
    WAN_MAX_SEQUENCE_LENGTH,
    check_max_sequence_length,
    encode_wan_prompts,
    wan_velocity,
)
from ddpo.adapters.wan.vae import wan_decode_output, wan_decode_videos, wan_vae_encode
from ddpo.policy import Conditioning

WAN_LORA_TARGET_MODULES: Final[tuple[str, ...]] = ("to_k", "to_out.0", "to_q", "to_v")
"""The query, key, value and output projections of every block's self-attention (``attn1``) and
cross-attention (``attn2``): the layers diffusers' Wan LoRA training adapts
(``lora_targets="attention"``, the default)."""

WAN_FEED_FORWARD_TARGET_MODULES: Final[tuple[str, ...]] = ("ffn.net.0.proj", "ffn.net.2")
"""The blocks' feed-forward layers, adapted besides the attention with
``lora_targets="attention_ff"`` (Wan names them ``ffn``, where SD3 and FLUX.1 have ``ff``)."""

WAN_DEFAULT_RESOLUTION: Final[Size] = (480, 832)
"""``WanPipeline``'s default ``(height, width)`` (Wan2.1's 480p), where the VAE's config records
no ``sample_size``."""

WAN_DEFAULT_NUM_FRAMES: Final[int] = 81
"""``WanPipeline``'s default frame count, where the VAE's config records no ``sample_frames``."""


def _wan_lora_targets(lora_targets: Any) -> tuple[str, ...]:
    """The peft ``target_modules`` of ``lora_targets`` for Wan's layer names.

    Raises:
        ValueError: naming ``lora_targets`` and its value.
    """
    if lora_targets == "attention":
        return WAN_LORA_TARGET_MODULES
    if lora_targets == "attention_ff":
        return WAN_LORA_TARGET_MODULES + WAN_FEED_FORWARD_TARGET_MODULES
    raise ValueError(
        f"lora_targets must be one of ('attention', 'attention_ff'), got "
        f"lora_targets={lora_targets!r}"
    )


@final
class DefaultDDPOWanPipeline(FlowPipelinePolicy):
    """Flow-GRPO / DDPO over diffusers' ``WanPipeline`` (Wan2.1 text-to-video, wrapped), LoRA via
    peft.

    Implements :class:`ddpo.policy.DiffusionPolicy` over videos: latents are ``(batch, C,
    frames, h, w)``, and ``rollout``'s images, ``decode`` and ``deterministic_images`` give
    videos, float ``(batch, frames, 3, H, W)`` in ``[0, 1]`` (what the trainer passes to the
    reward). Loads a built-in name, a local Wan2.1 folder or a hub id (or a folder of
    :meth:`save_lora_weights`, on top of its base); freezes the VAE and the text encoder. With
    ``use_lora=True`` rank-``lora_rank`` adapters on :data:`WAN_LORA_TARGET_MODULES` (with
    ``lora_targets="attention_ff"`` also on :data:`WAN_FEED_FORWARD_TARGET_MODULES`) train
    (float32); otherwise the whole transformer trains in float32 with a frozen copy as the KL
    reference. The trainer's ``guidance_scale`` is the stock pipeline's: above 1 the negative
    prompt (``""`` included) is a second pass, combined by classifier-free guidance. ``eta``
    (DDIM's) is ignored: the sampler is set by ``sde_type``, ``noise_level`` and the window.

    The folder's scheduler (the stock UniPC) is replaced by the flow-matching Euler scheduler of
    its shift, which the policy samples with and :meth:`save_pretrained` saves (so that stock
    ``WanPipeline`` samples a saved folder as the policy does; set its scheduler back to UniPC
    for the stock sampler).

    Args:
        pretrained_model_name: built-in name, local Wan2.1 folder or hub id.
        pretrained_model_revision: hub revision.
        use_lora, lora_rank, lora_alpha: LoRA (default) or full fine-tuning; scale alpha/rank.
        lora_targets: new adapters on the ``"attention"`` projections (default) or on those and
            the blocks' feed-forward layers (``"attention_ff"``); a saved adapter keeps its own
            targets.
        torch_dtype: dtype of the frozen weights (``None``: as saved).
        resolution: frame size ``(height, width)`` or one int (default: the VAE config's
            ``sample_size`` where it has one, as the tiny model's; else ``WanPipeline``'s 480 x
            832), a multiple of the VAE's 8x times the transformer's patch (16).
        num_frames: frames per video, ``4 k + 1`` (default: the VAE config's ``sample_frames``
            where it has one, as the tiny model's 5; else ``WanPipeline``'s 81).
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
        max_sequence_length: UMT5 tokens, 1 to 512 (512 as ``WanPipeline``).
        device: where to put the model (``None``: CPU).
        lora_init_seed: seed of the new adapters' initialisation (forked RNG).

    Raises:
        ValueError: unknown model, a folder of another family (the class found) or of Wan 2.2,
            bad arguments; all before weights load.
    """

    pipeline_class = WanPipeline
    default_steps = 50
    default_guidance = 5.0

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
        num_frames: int | None = None,
        noise_level: float | int = 0.7,
        sde_type: SDEType = "sde",
        sde_window_size: int | None = None,
        sde_window_start: int | None = None,
        sde_window_range: tuple[int, int] | None = None,
        post_window_solver: PostWindowSolver = "euler",
        post_window_step_ratio: float | int = 1.0,
        max_sequence_length: int = WAN_MAX_SEQUENCE_LENGTH,
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
        targets = _wan_lora_targets(lora_targets)
        self.max_sequence_length = check_max_sequence_length(max_sequence_length)
        size = check_size(resolution, "resolution")
        source = resolve_model_source(pretrained_model_name, pretrained_model_revision)
        check_wan_folder(source.folder)
        spatial, temporal, patch = wan_video_factors(source.folder)
        vae_config = read_json_object(source.folder / "vae" / "config.json")
        if size is None:
            side = vae_config.get("sample_size")
            size = check_size(side, "the VAE's sample_size") or WAN_DEFAULT_RESOLUTION
        self.resolution: Size = check_wan_resolution(size, latent_factor=spatial, patch_size=patch)
        if num_frames is None:
            frames = vae_config.get("sample_frames")
            num_frames = frames if isinstance(frames, int) else WAN_DEFAULT_NUM_FRAMES
        self.num_frames: int = check_num_frames(num_frames, temporal_factor=temporal)
        lora_config = transformer_lora_config(lora_rank, lora_alpha, targets, source.lora_file)

        # 2. Load the wrapped diffusers pipeline; freeze the VAE and the text encoder; sample
        #    with the flow-matching Euler scheduler of the folder's shift.
        wan = WanPipeline.from_pretrained(source.folder, torch_dtype=torch_dtype)
        for module in (wan.vae, wan.text_encoder):
            module.requires_grad_(False).eval()
        wan.transformer.eval()
        wan.scheduler = wan_euler_scheduler(wan.scheduler)
        self._sd: Any = wan
        self._weights_dtype = wan.vae.dtype
        self.use_lora = use_lora
        self.lora_rank = int(lora_config.r)
        self.lora_alpha = float(lora_config.lora_alpha)
        self.lora_layers = sorted(set(lora_config.target_modules or ()))
        self.pretrained_model_name = source.base_name
        self.pretrained_model_revision = source.base_revision

        # 3. Trainable parameters: LoRA adapters or the full transformer (frozen reference).
        self._frozen = setup_trainable_transformer(
            wan.transformer,
            use_lora=use_lora,
            lora_config=lora_config,
            lora_file=source.lora_file,
            lora_init_seed=lora_init_seed,
        )
        if device is not None:
            self.to(device)

    # ---- the schedule and the latents ------------------------------------------------------

    def _flow_schedule(
        self,
        scheduler: Any,
        num_steps: int,
        device: torch.device | None = None,
        size: Size | None = None,
    ) -> FlowSchedule:
        """The Euler scheduler's table as ``WanPipeline`` sets it (its static shift: the size
        does not change it)."""
        return flow_schedule(scheduler, num_steps, device)

    def latent_frames(self) -> int:
        """The latent frames of a video of ``num_frames``: ``(num_frames - 1) / 4 + 1`` (the
        VAE's ``scale_factor_temporal``), as ``WanPipeline.prepare_latents``."""
        return (self.num_frames - 1) // int(self._sd.vae_scale_factor_temporal) + 1

    def _latent_shape(self, batch: int, size: Size | None = None) -> tuple[int, int, int, int, int]:
        height, width = size or self.resolution
        scale = int(self._sd.vae_scale_factor_spatial)
        channels = int(self._sd.transformer.config.in_channels)
        return (batch, channels, self.latent_frames(), height // scale, width // scale)

    def _size_multiple(self) -> tuple[int, str]:
        factor = int(self._sd.vae_scale_factor_spatial)
        patch = int(self._sd.transformer.config.patch_size[1])
        return factor * patch, f"the VAE's {factor}x times the transformer's patch {patch}"

    def _noise_dtype(self, conditioning: Conditioning) -> torch.dtype:
        """float32: ``WanPipeline`` draws the initial noise in float32 whatever the weights'
        dtype (the transformer's input is cast to its dtype)."""
        return torch.float32

    # ---- conditioning ---------------------------------------------------------------------

    def _encode_texts(self, texts: list[str]) -> Tensor:
        return encode_wan_prompts(self._sd, texts, max_sequence_length=self.max_sequence_length)

    def encode(self, prompts: Sequence[str], negative_prompt: str) -> Conditioning:
        """``prompt_embeds`` and ``negative_prompt_embeds`` (the negative prompt, ``""``
        included) as diffusers' ``WanPipeline.encode_prompt`` makes them (UMT5 states of the
        cleaned prompts, zero past each prompt's tokens, ``max_sequence_length`` long), with the
        batch first."""
        texts = check_prompts(list(prompts), name="prompts")
        embeds = self._encode_texts(texts)
        negative = self._negative_encoding(negative_prompt).to(embeds.device)
        return Conditioning(
            {
                "prompt_embeds": embeds,
                "negative_prompt_embeds": negative.expand(len(texts), -1, -1).contiguous(),
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
        """The transformer's velocity at timesteps ``t`` (classifier-free guidance when
        ``guided``: a second pass for the negative prompt, as ``WanPipeline``; with a per-sample
        scale, rows at or below 1 keep the conditional velocity)."""
        c = conditioning
        return wan_velocity(
            transformer,
            x,
            t,
            prompt_embeds=c["prompt_embeds"],
            negative_prompt_embeds=c["negative_prompt_embeds"] if guided else None,
            guidance_scale=guidance_scale,
        )

    # ---- decoding by the video VAE --------------------------------------------------------

    def _decode_output(self, latents: Latents, output_type: str) -> Any:
        """Videos of final latents as ``WanPipeline`` decodes them (``"pt"``: float32
        ``(batch, frames, 3, H, W)`` in ``[0, 1]``)."""
        return wan_decode_output(self._sd, latents, output_type)

    def decode(self, latents: Latents) -> Videos:
        """Videos ``(batch, frames, 3, H, W)`` in ``[0, 1]``, float32, of final latents
        ``(batch, C, latent_frames, h, w)``, differentiable: the VAE as sampling decodes
        (``latents std + mean``, Wan's ``latents_std`` and ``latents_mean``)."""
        return wan_decode_videos(self.vae, latents, self._sd.video_processor)

    def encode_images(self, images: Videos) -> Latents:
        """The final latents that :meth:`decode` turns into ``images``, videos: float ``(batch,
        frames, 3, H, W)`` in ``[0, 1]``, ``frames`` the policy's ``num_frames``, sides
        multiples of the family's size multiple; the VAE's posterior mean ``z``, ``(z -
        latents_mean) / latents_std``; float32, on the VAE's device.

        Raises:
            ValueError: naming ``images`` if they are not such videos.
        """
        expected = (self.num_frames, 3)
        if not isinstance(images, Tensor) or images.ndim != 5 or images.shape[1:3] != expected:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(
                f"images must be videos (batch, {self.num_frames}, 3, height, width) (the "
                f"policy's num_frames), got {shape}"
            )
        multiple, why = self._size_multiple()
        check_images(images.flatten(0, 1), multiple=multiple, why=why)
        return wan_vae_encode(self.vae, images)

    # ---- saving ---------------------------------------------------------------------------

    def _write_lora(self, out: Path) -> None:
        base = (self.pretrained_model_name, self.pretrained_model_revision)
        write_transformer_lora(unwrap(self.transformer), out, base, saver=WanPipeline)

    def _save_dtype(self) -> torch.dtype:
        return self._weights_dtype


__all__ = [
    "WAN_DEFAULT_NUM_FRAMES",
    "WAN_DEFAULT_RESOLUTION",
    "WAN_FEED_FORWARD_TARGET_MODULES",
    "WAN_LORA_TARGET_MODULES",
    "DefaultDDPOWanPipeline",
]
