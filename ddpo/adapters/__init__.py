"""Thin adapters over diffusers, transformers and peft: the DDPO pipeline and the tiny model."""

from ddpo.adapters.default import LORA_TARGET_MODULES, DefaultDDPOStableDiffusionPipeline
from ddpo.adapters.interface import (
    DDPOPipelineOutput,
    DDPOSchedulerOutput,
    DDPOStableDiffusionPipeline,
    check_eta,
    check_prompts,
    scheduler_step_with_logprob,
)
from ddpo.adapters.registry import BUILTIN_MODELS, resolve_pretrained
from ddpo.adapters.scheduling import check_ddim_scheduler, ddim_alpha_bars
from ddpo.adapters.tiny import (
    TINY_MODEL_NAME,
    TinyModelConfig,
    tiny_model_components,
    tiny_pipeline_path,
)
from ddpo.adapters.tokenizer import write_clip_tokenizer

__all__ = [
    "BUILTIN_MODELS",
    "LORA_TARGET_MODULES",
    "TINY_MODEL_NAME",
    "DDPOPipelineOutput",
    "DDPOSchedulerOutput",
    "DDPOStableDiffusionPipeline",
    "DefaultDDPOStableDiffusionPipeline",
    "TinyModelConfig",
    "check_ddim_scheduler",
    "check_eta",
    "check_prompts",
    "ddim_alpha_bars",
    "resolve_pretrained",
    "scheduler_step_with_logprob",
    "tiny_model_components",
    "tiny_pipeline_path",
    "write_clip_tokenizer",
]
