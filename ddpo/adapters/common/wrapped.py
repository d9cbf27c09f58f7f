"""What the policies over a wrapped diffusers pipeline share (SDXL, SD3, FLUX.1).

`WrappedPipelinePolicy` holds the diffusers pipeline (``_sd``) and implements the plumbing of the
`ddpo.policy.DiffusionPolicy` boundary: the components, moving and preparing, the trainable
parameters, the reference policy (LoRA adapters disabled, or a frozen copy for full
fine-tuning), and saving in the family's diffusers formats. `FlowPipelinePolicy` adds what the
flow-matching families share: Flow-GRPO's SDE rollout with its stochastic window, re-scoring, and
the ODE sampler. A family writes its prompt encoding, its model call and its checks.
"""

import abc
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ddpo.adapters.common.args import unwrap
from ddpo.adapters.common.weights import fused_unet


class WrappedPipelinePolicy(abc.ABC):
    """A DDPO policy over a diffusers pipeline whose ``denoiser_name`` component trains.

    Subclasses set ``_sd`` (the pipeline), ``_frozen`` (the frozen reference for full
    fine-tuning, else ``None``), ``use_lora`` and the base model's name and revision in their
    constructor, and implement :meth:`_write_lora` (and, if needed, the save hooks).
    """

    denoiser_name: ClassVar[str]
    """The pipeline component whose parameters train: ``"unet"`` or ``"transformer"``."""
    pipeline_class: ClassVar[Any]
    """The diffusers pipeline class of the family (its folders, its LoRA format)."""

    _sd: Any
    _frozen: nn.Module | None = None
    _reference: nn.Module | None = None
    use_lora: bool
    pretrained_model_name: str
    pretrained_model_revision: str

    @property
    def pipeline(self) -> Any:
        """The wrapped diffusers pipeline."""
        return self._sd

    @property
    def denoiser(self) -> nn.Module:
        """The network whose parameters train (the UNet or the transformer)."""
        module: nn.Module = getattr(self._sd, self.denoiser_name)
        return module

    @property
    def vae(self) -> nn.Module:
        vae: nn.Module = self._sd.vae
        return vae

    @property
    def scheduler(self) -> Any:
        return self._sd.scheduler

    @property
    def device(self) -> torch.device:
        """Device of the denoiser."""
        return next(self.denoiser.parameters()).device

    def to(self, device: str | torch.device) -> Any:
        """Move every component (and the frozen reference) to ``device``."""
        self._sd.to(device)
        if self._frozen is not None:
            self._frozen.to(device)
        return self

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self._sd.set_progress_bar_config(**kwargs)

    def get_trainable_layers(self) -> nn.Module:
        """The denoiser; its parameters with ``requires_grad`` are the trainable ones."""
        return self.denoiser

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Name -> parameter of every trainable parameter (LoRA adapters, or all)."""
        return {n: p for n, p in self.denoiser.named_parameters() if p.requires_grad}

    def prepare(self, device: torch.device, *, gradient_checkpointing: bool) -> None:
        """Move to ``device`` with the progress bar off; the denoiser's gradient checkpointing
        if asked."""
        self.set_progress_bar_config(disable=True)
        self.to(device)
        if gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()  # type: ignore[operator]

    @contextlib.contextmanager
    def reference_policy(self) -> Iterator[None]:
        """The pre-fine-tuning denoiser: adapters disabled (LoRA) or the frozen copy."""
        if self._frozen is not None:
            self._reference = self._frozen
            try:
                yield
            finally:
                self._reference = None
            return
        base: Any = unwrap(self.denoiser)
        base.disable_adapters()
        try:
            yield
        finally:
            base.enable_adapters()

    def _scoring_denoiser(self, denoiser: nn.Module | None) -> nn.Module:
        """The module ``score`` calls: the reference under :meth:`reference_policy`, else
        ``denoiser`` (e.g. the trainer's DDP-wrapped one), else the pipeline's own."""
        if self._reference is not None:
            return self._reference
        return denoiser if denoiser is not None else self.denoiser

    # ---- saving ---------------------------------------------------------------------------

    @abc.abstractmethod
    def _write_lora(self, out: Path) -> None:
        """Write the adapters into ``out`` in the family's diffusers LoRA format."""

    def _save_dtype(self) -> torch.dtype:
        """The dtype a fused copy of the denoiser is saved in (the frozen weights')."""
        dtype: torch.dtype = self._sd.vae.dtype
        return dtype

    def _pipeline_kwargs(self) -> dict[str, Any]:
        """Extra arguments of ``pipeline_class`` when saving (its config flags)."""
        return {}

    def save_lora_weights(self, output_dir: str | os.PathLike[str]) -> Path:
        """Write the adapters as diffusers' ``pytorch_lora_weights.safetensors`` (loadable by
        the stock pipeline's ``load_lora_weights``), with the base model's name beside it.

        Raises:
            ValueError: if the pipeline has no LoRA adapters (``use_lora=False``).
        """
        if not self.use_lora:
            raise ValueError("save_lora_weights needs use_lora=True; use save_pretrained instead")
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._write_lora(out)
        return out

    def save_pretrained(self, output_dir: str | os.PathLike[str]) -> None:
        """Write a full pipeline folder of the family (LoRA fused into a copy of the denoiser;
        safetensors) that the stock pipeline's ``from_pretrained`` loads."""
        components = dict(self._sd.components)
        components[self.denoiser_name] = fused_unet(unwrap(self.denoiser), self._save_dtype())
        pipeline: Any = self.pipeline_class(**components, **self._pipeline_kwargs())
        pipeline.save_pretrained(Path(output_dir), safe_serialization=True)


__all__ = ["WrappedPipelinePolicy"]
