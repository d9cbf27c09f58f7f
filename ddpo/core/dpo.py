"""Diffusion-DPO's preference loss (Wallace et al., 2023, arXiv 2311.12908).

For a pair of images of one prompt, the preferred ``w`` and the other ``l``, noised with the same
noise to the same timestep, the loss compares how much better the trained model denoises ``w``
than ``l`` with the same difference for the frozen reference:

    x = -beta / 2 * [(||t_w - p_w||^2 - ||t_l - p_l||^2) - (||t_w - r_w||^2 - ||t_l - r_l||^2)]
    L = -log sigmoid(x)

with ``p`` the model's predictions, ``r`` the reference's and ``t`` the training targets (the
noise for epsilon-prediction, the velocity for v-prediction, ``noise - x_0`` for a flow model;
each squared error averaged over the latent's elements). This is Eq. 14 of the paper with the
timestep weighting folded into ``beta``, as the authors' ``train.py`` computes it
(SalesforceAIResearch/DiffusionDPO, read, not copied; ``--beta_dpo`` 5000 for SD 1.5, 2500 for
SDXL). ``x > 0`` means the model prefers ``w`` more than the reference does (its implicit
accuracy).
"""

from typing import NamedTuple

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ddpo._typing import Latents, PerSample, no_type_check

__all__ = ["DPOLossOutput", "diffusion_dpo_loss"]


class DPOLossOutput(NamedTuple):
    """Per pair: the loss ``-log sigmoid(x)``, the logit ``x`` (``x > 0``: the implicit
    preference is right), and the model's and the reference's error differences ``w - l``."""

    loss: PerSample
    logit: PerSample
    model_diff: PerSample
    reference_diff: PerSample


def _squared_error(prediction: Latents, target: Latents) -> Float[Tensor, " batch"]:
    return (prediction - target).pow(2).mean(dim=tuple(range(1, prediction.ndim)))


@no_type_check  # it checks its shapes itself, with a message naming them
def diffusion_dpo_loss(
    prediction_w: Latents,
    prediction_l: Latents,
    reference_w: Latents,
    reference_l: Latents,
    target_w: Latents,
    target_l: Latents,
    *,
    beta: float,
) -> DPOLossOutput:
    """Diffusion-DPO's loss of each pair (see the module docstring for the formula).

    Args:
        prediction_w, prediction_l: the trained model's outputs at the noisy preferred and
            other latents, ``(pairs, channels, height, width)``, with gradients.
        reference_w, reference_l: the frozen reference's outputs at the same points (detached
            here).
        target_w, target_l: the training targets of the two (`ddpo.core.vp_training_target`,
            `ddpo.core.flow_velocity_target`).
        beta: the KL weight, > 0 (the paper's 5000 for SD 1.5, 2500 for SDXL).

    Returns:
        `DPOLossOutput`, each ``(pairs,)``.

    Raises:
        ValueError: for ``beta <= 0`` or predictions of different shapes.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    shapes = {tuple(t.shape) for t in (prediction_w, prediction_l, reference_w, reference_l)}
    shapes |= {tuple(target_w.shape), tuple(target_l.shape)}
    if len(shapes) != 1:
        raise ValueError(f"the predictions and targets must have one shape, got {sorted(shapes)}")
    model_diff = _squared_error(prediction_w, target_w) - _squared_error(prediction_l, target_l)
    reference_diff = _squared_error(reference_w.detach(), target_w) - _squared_error(
        reference_l.detach(), target_l
    )
    logit = -0.5 * beta * (model_diff - reference_diff)
    return DPOLossOutput(-F.logsigmoid(logit), logit, model_diff, reference_diff.detach())
