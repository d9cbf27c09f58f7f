"""Objectives: the loss of one algorithm over a micro-batch, composed from `ddpo.core` functions
and the `ddpo.policy.DiffusionPolicy` members. `DDPOTrainer(..., objective=...)` trains any of
them; its default is `PolicyGradient` built from the config (DDPO's PPO or score function, with
the KL penalty)."""

from ddpo.objectives.base import (
    ON_POLICY_KEY,
    Objective,
    ObjectiveContext,
    ObjectiveLoss,
    ObjectiveNeeds,
)
from ddpo.objectives.policy_gradient import PolicyGradient

__all__ = [
    "ON_POLICY_KEY",
    "Objective",
    "ObjectiveContext",
    "ObjectiveLoss",
    "ObjectiveNeeds",
    "PolicyGradient",
]
