"""The model families behind the `ddpo.policy.DiffusionPolicy` boundary, one folder each: Stable
Diffusion 1.x/2.x (``sd``), SDXL (``sdxl``), SD3/SD3.5 (``sd3``), FLUX.1 (``flux``), Qwen-Image
(``qwenimage``) and Wan2.1 text-to-video (``wan``), over a DDIM base (``ddim``) and a
flow-matching base (``flow``), with what every family shares in ``common``; the family table
(`FAMILIES`, `load_policy`) sits above them.

Each family's tiny random model is its test fixture and a built-in model name
(`BUILTIN_MODELS`); its builder stays in the family's folder (``ddpo.adapters.<family>.tiny``).
"""

from ddpo.adapters.common.output import DDPOPipelineOutput
from ddpo.adapters.common.sources import resolve_pretrained
from ddpo.adapters.ddim.sampling import check_eta, scheduler_step_with_logprob
from ddpo.adapters.ddim.scheduling import check_ddim_scheduler, ddim_alpha_bars
from ddpo.adapters.families import BUILTIN_MODELS, FAMILIES, Family, load_policy, model_family
from ddpo.adapters.flux.policy import FLUX_LORA_TARGET_MODULES, DefaultDDPOFluxPipeline
from ddpo.adapters.qwenimage.policy import DefaultDDPOQwenImagePipeline
from ddpo.adapters.sd.interface import DDPOSchedulerOutput, DDPOStableDiffusionPipeline
from ddpo.adapters.sd.policy import LORA_TARGET_MODULES, DefaultDDPOStableDiffusionPipeline
from ddpo.adapters.sd3.policy import DefaultDDPOStableDiffusion3Pipeline
from ddpo.adapters.sdxl.policy import DefaultDDPOStableDiffusionXLPipeline
from ddpo.adapters.wan.policy import DefaultDDPOWanPipeline

__all__ = [
    "BUILTIN_MODELS",
    "FAMILIES",
    "FLUX_LORA_TARGET_MODULES",
    "LORA_TARGET_MODULES",
    "DDPOPipelineOutput",
    "DDPOSchedulerOutput",
    "DDPOStableDiffusionPipeline",
    "DefaultDDPOFluxPipeline",
    "DefaultDDPOQwenImagePipeline",
    "DefaultDDPOStableDiffusion3Pipeline",
    "DefaultDDPOStableDiffusionPipeline",
    "DefaultDDPOStableDiffusionXLPipeline",
    "DefaultDDPOWanPipeline",
    "Family",
    "check_ddim_scheduler",
    "check_eta",
    "ddim_alpha_bars",
    "load_policy",
    "model_family",
    "resolve_pretrained",
    "scheduler_step_with_logprob",
]
