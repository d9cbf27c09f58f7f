"""DDPO's math as pure, shape-annotated tensor functions.

Imports only torch, jaxtyping and the standard library (``tests/test_layering.py`` enforces it).
"""

from ddpo.core.ddim import DDIMStepOutput, PredictionType, ddim_step_with_logprob
from ddpo.core.guidance import classifier_free_guidance

__all__ = [
    "DDIMStepOutput",
    "PredictionType",
    "classifier_free_guidance",
    "ddim_step_with_logprob",
]
