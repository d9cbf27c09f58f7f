"""ddpo: Denoising Diffusion Policy Optimization for text-to-image diffusion models.

Set ``DDPO_TYPECHECK=1`` before importing to check every annotated tensor shape and dtype at run
time (jaxtyping with beartype); it costs a few microseconds per call and is off by default.
"""

import importlib
import os
from typing import Any

if os.environ.get("DDPO_TYPECHECK", "").strip().lower() in ("1", "true", "yes", "on"):
    from jaxtyping import install_import_hook

    # Submodules imported after this point get their annotations checked.
    install_import_hook(["ddpo"], "beartype.beartype")

__version__ = "0.1.0.dev0"

# Public names resolved lazily, so that `import ddpo.core` stays free of diffusers.
_LAZY: dict[str, str] = {
    "DDPOStableDiffusionPipeline": "ddpo.adapters",
    "DefaultDDPOStableDiffusionPipeline": "ddpo.adapters",
    "DefaultDDPOStableDiffusionXLPipeline": "ddpo.adapters",
    "DefaultDDPOStableDiffusion3Pipeline": "ddpo.adapters",
    "DefaultDDPOFluxPipeline": "ddpo.adapters",
    "DefaultDDPOQwenImagePipeline": "ddpo.adapters",
    "DefaultDDPOWanPipeline": "ddpo.adapters",
    "DDPOPipelineOutput": "ddpo.adapters",
    "DDPOSchedulerOutput": "ddpo.adapters",
    "DDPOConfig": "ddpo.trainer.config",
    "DDPOTrainer": "ddpo.trainer.trainer",
    # httpx is imported when a RemoteReward is built (ImportError naming `ddpo[serve]`).
    "RemoteReward": "ddpo.rewards.remote",
    "RemoteRewardError": "ddpo.rewards.remote",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ddpo' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["__version__", *_LAZY]
