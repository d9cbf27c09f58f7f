"""Thin adapters over diffusers, transformers and peft: the DDPO pipelines of each model family
(Stable Diffusion 1.x/2.x, SDXL, SD3, FLUX.1), the family dispatch, and the tiny models."""

from ddpo.adapters.default import LORA_TARGET_MODULES, DefaultDDPOStableDiffusionPipeline
from ddpo.adapters.families import FAMILIES, Family, load_policy, model_family
from ddpo.adapters.flux import FLUX_LORA_TARGET_MODULES, DefaultDDPOFluxPipeline
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
from ddpo.adapters.sd3 import DefaultDDPOStableDiffusion3Pipeline
from ddpo.adapters.sdxl import DefaultDDPOStableDiffusionXLPipeline
from ddpo.adapters.tiny import (
    TINY_MODEL_NAME,
    TinyModelConfig,
    tiny_model_components,
    tiny_pipeline_path,
)
from ddpo.adapters.tiny_flux import (
    TINY_FLUX_NAME,
    TinyFluxConfig,
    save_flux_pipeline,
    tiny_flux_components,
    tiny_flux_path,
)
from ddpo.adapters.tiny_sd3 import (
    TINY_SD3_NAME,
    TinySD3Config,
    save_sd3_pipeline,
    tiny_sd3_components,
    tiny_sd3_path,
)
from ddpo.adapters.tiny_sdxl import (
    TINY_SDXL_NAME,
    TinySDXLConfig,
    save_sdxl_pipeline,
    tiny_sdxl_components,
    tiny_sdxl_path,
)
from ddpo.adapters.tokenizer import write_clip_tokenizer

__all__ = [
    "BUILTIN_MODELS",
    "FAMILIES",
    "FLUX_LORA_TARGET_MODULES",
    "LORA_TARGET_MODULES",
    "TINY_FLUX_NAME",
    "TINY_MODEL_NAME",
    "TINY_SD3_NAME",
    "TINY_SDXL_NAME",
    "DDPOPipelineOutput",
    "DDPOSchedulerOutput",
    "DDPOStableDiffusionPipeline",
    "DefaultDDPOFluxPipeline",
    "DefaultDDPOStableDiffusion3Pipeline",
    "DefaultDDPOStableDiffusionPipeline",
    "DefaultDDPOStableDiffusionXLPipeline",
    "Family",
    "TinyFluxConfig",
    "TinyModelConfig",
    "TinySD3Config",
    "TinySDXLConfig",
    "check_ddim_scheduler",
    "check_eta",
    "check_prompts",
    "ddim_alpha_bars",
    "load_policy",
    "model_family",
    "resolve_pretrained",
    "save_flux_pipeline",
    "save_sd3_pipeline",
    "save_sdxl_pipeline",
    "scheduler_step_with_logprob",
    "tiny_flux_components",
    "tiny_flux_path",
    "tiny_model_components",
    "tiny_pipeline_path",
    "tiny_sd3_components",
    "tiny_sd3_path",
    "tiny_sdxl_components",
    "tiny_sdxl_path",
    "write_clip_tokenizer",
]
