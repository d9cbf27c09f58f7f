"""Objectives: the loss of one algorithm over a micro-batch, composed from `ddpo.core` functions
and the `ddpo.policy.DiffusionPolicy` members. `DDPOTrainer(..., objective=...)` trains any of
them; its default is the objective of ``DDPOConfig.algorithm`` built from the config:
`PolicyGradient` (DDPO's PPO or score function, with the KL penalty), `DiffusionNFT`,
`AdvantageWeightedMatching` or `DiffusionDPO`."""

from ddpo.objectives.awm import AdvantageWeightedMatching
from ddpo.objectives.base import (
    ON_POLICY_KEY,
    Objective,
    ObjectiveContext,
    ObjectiveLoss,
    ObjectiveNeeds,
)
from ddpo.objectives.dpo import DiffusionDPO, OfflineDiffusionDPO
from ddpo.objectives.nft import DiffusionNFT
from ddpo.objectives.policy_gradient import PolicyGradient
from ddpo.objectives.reward_backprop import RewardBackprop
from ddpo.objectives.weights import ShadowWeights

__all__ = [
    "ON_POLICY_KEY",
    "AdvantageWeightedMatching",
    "DiffusionDPO",
    "DiffusionNFT",
    "Objective",
    "ObjectiveContext",
    "ObjectiveLoss",
    "ObjectiveNeeds",
    "OfflineDiffusionDPO",
    "PolicyGradient",
    "RewardBackprop",
    "ShadowWeights",
]
