"""The DDPO loop on accelerate: `DDPOConfig`, `DDPOTrainer` and checkpoints."""

import importlib
from typing import Any

from ddpo.trainer.config import DDPOConfig

# `DDPOTrainer` (and its modules) pull in accelerate and diffusers: resolved on first use.
_LAZY = {"DDPOTrainer": "ddpo.trainer.trainer", "OffPolicyError": "ddpo.trainer.optimisation"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ddpo.trainer' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = ["DDPOConfig", "DDPOTrainer", "OffPolicyError"]
