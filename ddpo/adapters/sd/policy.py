"""``DefaultDDPOStableDiffusionPipeline``: the DDPO interface over diffusers' Stable Diffusion."""

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, final

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from torch import nn

from ddpo._typing import Latents, PromptEmbeds
from ddpo.adapters.common.args import check_resolution, unwrap
from ddpo.adapters.common.output import DDPOPipelineOutput
from ddpo.adapters.common.sources import read_model_index, resolve_model_source
from ddpo.adapters.common.weights import (
    LORA_TARGET_MODULES,
    check_ddim_config,
    check_model_args,
    find_unet,
    fused_unet,
    load_unet_weights,
    new_lora_config,
    save_unet_weights,
    setup_trainable_unet,
    write_lora,
)
from ddpo.adapters.ddim.policy import StockDDIMImages
from ddpo.adapters.ddim.sampling import check_sampling_args, decode_latents
from ddpo.adapters.sd.interface import DDPOStableDiffusionPipeline

OutputType = Literal["pil", "pt", "np", "latent"]


@final
class DefaultDDPOStableDiffusionPipeline(StockDDIMImages, DDPOStableDiffusionPipeline):
    """DDPO over diffusers' ``StableDiffusionPipeline`` (wrapped), with LoRA through peft.

    Loads a built-in name, a local folder or a hub id; swaps the scheduler for DDIM with the
    model's config; disables the safety checker; freezes VAE and text encoder. With
    ``use_lora=True`` only rank-``lora_rank`` adapters on the UNet's attention projections train,
    kept in float32 even when ``torch_dtype`` is half precision; otherwise the whole UNet
    trains in float32 and a frozen copy is kept as the KL reference.

    A folder with ``pytorch_lora_weights.safetensors`` (from :meth:`save_lora_weights` or
    :meth:`save_checkpoint`) loads those LoRA weights on top of its base model, which is the
    folder itself (if it has ``model_index.json``) or the one named in ``ddpo_base_model.json``.

    Args:
        pretrained_model_name: built-in name (``"ddpo-tiny-random"``, ``"ddpo-tiny-shapes"``),
            local folder or hub id.
        pretrained_model_revision: hub revision.
        use_lora: train LoRA adapters (default) instead of the whole UNet.
        lora_rank: adapter rank (ignored when loading LoRA weights, which carry their own).
        lora_alpha: adapter scale numerator (effective scale ``lora_alpha / lora_rank``).
        torch_dtype: dtype of the frozen weights (``None``: as saved, usually float32).
        device: where to put the model (``None``: stay on CPU; the trainer moves it).
        lora_init_seed: seed of the new LoRA adapters' random initialisation (drawn on the CPU
            with a forked generator, so the global RNG neither affects nor is affected by it).
        resolution: the training images' size, one int or ``(height, width)`` (``None``: the
            UNet's sample size times 8, e.g. 512 for SD 1.5); a rollout's ``height`` and
            ``width`` override it per call.
        eta: DDIM's stochasticity in ``(0, 1]`` for :meth:`rollout` (the ``eta`` attribute,
            which the trainer sets from ``DDPOConfig.sample_eta``).

    Raises:
        ValueError: unknown model, non-SD folder, scheduler not convertible to DDIM, or bad
            arguments; all checked before weights are loaded.
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
        device: str | torch.device | None = None,
        lora_init_seed: int = 0,
        resolution: int | tuple[int, int] | None = None,
        eta: float = 1.0,
    ) -> None:
        self.resolution = check_resolution(resolution)
        self.eta = eta
        check_model_args(
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            torch_dtype=torch_dtype,
            lora_init_seed=lora_init_seed,
        )

        # 1. Resolve and check everything before loading weights.
        source = resolve_model_source(pretrained_model_name, pretrained_model_revision)
        folder = source.folder
        class_name = read_model_index(folder).get("_class_name")
        if class_name != "StableDiffusionPipeline":  # SDXL folders list SD's components too
            raise ValueError(
                f"{folder} is a {class_name!r} model, not a Stable Diffusion 1.x/2.x one "
                "('StableDiffusionPipeline'); ddpo.adapters.load_policy picks the policy of "
                "its family"
            )
        ddim_config = check_ddim_config(folder)
        lora_config = new_lora_config(lora_rank, lora_alpha, source.lora_file)

        # 2. Load the wrapped diffusers pipeline, DDIM, no safety checker, frozen VAE/text.
        sd = StableDiffusionPipeline.from_pretrained(
            folder, torch_dtype=torch_dtype, safety_checker=None, requires_safety_checker=False
        )
        sd.scheduler = DDIMScheduler.from_config(ddim_config)
        sd.vae.requires_grad_(False)
        sd.text_encoder.requires_grad_(False)
        sd.vae.eval()
        sd.text_encoder.eval()
        sd.unet.eval()
        self._sd: Any = sd  # diffusers' pipeline (untyped attributes)
        self.use_lora = use_lora
        self.lora_rank = int(lora_config.r)
        self.lora_alpha = float(lora_config.lora_alpha)
        self.lora_layers = sorted(set(lora_config.target_modules or ()))
        self.pretrained_model_name = source.base_name
        self.pretrained_model_revision = source.base_revision

        # 3. Trainable parameters: LoRA adapters (float32) or the full UNet (float32, with a
        #    frozen copy as the KL reference).
        self._frozen_unet: nn.Module | None = setup_trainable_unet(
            sd.unet,
            use_lora=use_lora,
            lora_config=lora_config,
            lora_file=source.lora_file,
            lora_init_seed=lora_init_seed,
        )
        if device is not None:
            self.to(device)

    # ---- plumbing ------------------------------------------------------------------------

    def to(self, device: str | torch.device) -> "DefaultDDPOStableDiffusionPipeline":
        """Move every component (and the frozen reference UNet) to ``device``."""
        self._sd.to(device)
        if self._frozen_unet is not None:
            self._frozen_unet.to(device)
        return self

    @property
    def device(self) -> torch.device:
        """Device of the UNet."""
        return next(self.unet.parameters()).device

    @property
    def pipeline(self) -> StableDiffusionPipeline:
        """The wrapped diffusers pipeline."""
        pipe: StableDiffusionPipeline = self._sd
        return pipe

    @property
    def sd_pipeline(self) -> StableDiffusionPipeline:
        """The wrapped diffusers pipeline under TRL's attribute name."""
        return self.pipeline

    @property
    def unet(self) -> nn.Module:
        unet: nn.Module = self._sd.unet
        return unet

    @property
    def vae(self) -> nn.Module:
        vae: nn.Module = self._sd.vae
        return vae

    @property
    def image_processor(self) -> Any:
        """The wrapped pipeline's image processor (what :meth:`decode` and sampling use)."""
        return self._sd.image_processor

    @property
    def tokenizer(self) -> Any:
        return self._sd.tokenizer

    @property
    def scheduler(self) -> Any:
        return self._sd.scheduler

    @property
    def text_encoder(self) -> nn.Module:
        text_encoder: nn.Module = self._sd.text_encoder
        return text_encoder

    @property
    def autocast(self) -> Callable[[], contextlib.AbstractContextManager[Any]] | None:
        # LoRA handles its own dtypes (float32 adapters over a half-precision base); the full UNet
        # defers to the trainer's (accelerate's) autocast, as TRL's pipeline did.
        return contextlib.nullcontext if self.use_lora else None

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self._sd.set_progress_bar_config(**kwargs)

    def get_trainable_layers(self) -> nn.Module:
        """The UNet; its parameters with ``requires_grad`` are the trainable ones."""
        return self.unet

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Name -> parameter of every trainable parameter (LoRA adapters, or the whole UNet)."""
        return {n: p for n, p in self.unet.named_parameters() if p.requires_grad}

    @contextlib.contextmanager
    def reference_policy(self) -> Iterator[None]:
        """The pre-fine-tuning UNet: adapters disabled (LoRA) or the frozen copy (full UNet)."""
        if self._frozen_unet is None:
            with super().reference_policy():
                yield
            return
        self._reference_unet = self._frozen_unet
        try:
            yield
        finally:
            self._reference_unet = None

    # ---- sampling ------------------------------------------------------------------------

    def __call__(
        self,
        prompt: Any = None,
        *,
        prompt_embeds: PromptEmbeds | None = None,
        negative_prompt: Any = None,
        negative_prompt_embeds: PromptEmbeds | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float | int = 7.5,
        eta: float | int = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: Latents | None = None,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
        num_images_per_prompt: int = 1,
    ) -> DDPOPipelineOutput:
        """Sample images with DDIM, recording every latent and every step's log-probability.

        Behaves like diffusers' ``StableDiffusionPipeline.__call__`` (same noise from the same
        generator, so the same images) and additionally returns the trajectory.

        Args:
            prompt: a prompt or a list of prompts (or give ``prompt_embeds``); anything else
                raises ``TypeError`` (checked here, hence the loose annotation).
            prompt_embeds: precomputed text embeddings ``(batch, tokens, dim)``.
            negative_prompt: prompt(s) to guide away from (default: the empty prompt).
            negative_prompt_embeds: precomputed negative embeddings.
            num_inference_steps: number of DDIM steps ``T``.
            guidance_scale: classifier-free guidance weight (no guidance at ``<= 1``).
            eta: DDIM stochasticity, ``> 0`` (1.0 as in DDPO).
            generator: a torch generator, or one per image, for reproducible sampling.
            latents: initial noise ``x_T`` (otherwise drawn with ``generator``).
            height, width: image size in pixels (default: the UNet's sample size times 8).
            output_type: ``"pil"``, ``"pt"`` (float ``(batch, 3, H, W)`` in [0, 1]), ``"np"`` or
                ``"latent"``.
            num_images_per_prompt: images sampled per prompt.

        Returns:
            :class:`DDPOPipelineOutput` with ``images``, ``latents`` ``(batch, T + 1, C, h, w)``
            and ``log_probs`` ``(batch, T)``; ``self.scheduler.timesteps`` holds the timesteps.
        """
        # 1. Check arguments before any model work.
        plan = check_sampling_args(
            self._sd,
            prompt=prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt=negative_prompt,
            negative_prompt_embeds=negative_prompt_embeds,
            num_inference_steps=num_inference_steps,
            eta=eta,
            generator=generator,
            latents=latents,
            height=height,
            width=width,
            output_type=output_type,
            num_images_per_prompt=num_images_per_prompt,
        )
        prompts, negatives, n_prompts = plan.prompts, plan.negatives, plan.n_prompts
        shape = plan.shape
        do_guidance = guidance_scale > 1.0
        device = self.device

        with torch.no_grad():
            # 2. Prompt embeddings, computed once for the batch.
            if prompts is not None:
                prompt_embeds = self.encode_prompt(prompts)
            assert prompt_embeds is not None
            prompt_embeds = prompt_embeds.to(device).repeat_interleave(num_images_per_prompt, 0)
            if do_guidance and negative_prompt_embeds is None:
                texts = negatives if negatives is not None else [""]
                if len(texts) == 1:
                    texts = texts * n_prompts
                negative_prompt_embeds = self.encode_prompt(texts)
            if do_guidance:
                assert negative_prompt_embeds is not None
                negative_prompt_embeds = negative_prompt_embeds.to(device).repeat_interleave(
                    num_images_per_prompt, 0
                )
            else:
                negative_prompt_embeds = None

            # 3. Timesteps, initial noise x_T (drawn as diffusers draws it, in the text
            #    encoder's dtype, then kept in float32), and the denoising loop keeping every
            #    latent and log-prob.
            trajectory = self._sample_trajectory(
                prompt_embeds,
                negative_prompt_embeds,
                shape=shape,
                num_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                eta=eta,
                generator=generator,
                latents=latents,
                progress=self._sd.progress_bar,
            )

            # 4. Decode.
            images = decode_latents(self._sd, trajectory.latents[:, -1], output_type)
        return DDPOPipelineOutput(images, trajectory.latents, trajectory.log_probs)

    # ---- saving and loading --------------------------------------------------------------

    def save_lora_weights(self, output_dir: str | os.PathLike[str]) -> Path:
        """Write the LoRA adapters as diffusers' ``pytorch_lora_weights.safetensors``.

        Stock diffusers loads it with ``StableDiffusionPipeline.from_pretrained(base)`` and
        ``.load_lora_weights(output_dir)``; ``ddpo_base_model.json`` beside it names the base,
        so ``DefaultDDPOStableDiffusionPipeline(output_dir)`` loads base and adapters.

        Returns:
            The folder.

        Raises:
            ValueError: if the pipeline has no LoRA adapters (``use_lora=False``).
        """
        if not self.use_lora:
            raise ValueError("save_lora_weights needs use_lora=True; use save_pretrained instead")
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_lora(
            unwrap(self.unet), out, self.pretrained_model_name, self.pretrained_model_revision
        )
        return out

    def save_pretrained(self, output_dir: str | os.PathLike[str]) -> None:
        """Write a full diffusers pipeline folder holding the fine-tuned weights.

        LoRA adapters are fused into (a copy of) the UNet, so stock
        ``StableDiffusionPipeline.from_pretrained(output_dir)`` and
        ``DefaultDDPOStableDiffusionPipeline(output_dir)`` both give the fine-tuned images. The
        scheduler saved is the DDIM scheduler. Weights are safetensors.
        """
        out = Path(output_dir)
        unet = fused_unet(unwrap(self.unet), self._sd.vae.dtype)
        components = dict(self._sd.components)
        components["unet"] = unet
        components["requires_safety_checker"] = False  # none was loaded (see __init__)
        pipeline: Any = StableDiffusionPipeline(**components)
        pipeline.save_pretrained(out, safe_serialization=True)

    def save_checkpoint(self, models: list[Any], weights: list[Any], output_dir: str) -> None:
        """TRL's ``accelerate`` ``save_state`` pre-hook (`DDPOTrainer` does not need it): save the
        UNet's trained weights (LoRA: ``pytorch_lora_weights.safetensors``; full UNet:
        ``output_dir/unet``) and pop its entry from ``weights``."""
        index = find_unet(models, unwrap(self.unet))
        base = (self.pretrained_model_name, self.pretrained_model_revision)
        save_unet_weights(unwrap(models[index]), Path(output_dir), lora=self.use_lora, base=base)
        if index < len(weights):
            weights.pop(index)

    def load_checkpoint(self, models: list[Any], input_dir: str) -> None:
        """TRL's ``accelerate`` ``load_state`` pre-hook: load what :meth:`save_checkpoint` wrote
        (no pickle) and pop the UNet from ``models``."""
        index = find_unet(models, unwrap(self.unet))
        load_unet_weights(unwrap(models[index]), Path(input_dir), lora=self.use_lora)
        models.pop(index)


__all__ = ["LORA_TARGET_MODULES", "DefaultDDPOStableDiffusionPipeline", "OutputType"]
