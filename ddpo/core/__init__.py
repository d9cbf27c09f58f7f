"""DDPO's math as pure, shape-annotated tensor functions.

- policy: :func:`ddim_step_with_logprob` (``ddim``), Flow-GRPO's SDE step of a rectified-flow
  model :func:`flow_sde_step_with_logprob` and its coefficients-preserving variant
  :func:`flow_cps_step_with_logprob` (``flow``), :func:`classifier_free_guidance` and
  :func:`rescale_guidance` (``guidance``), :func:`gaussian_kl` to a reference policy and
  Flow-GRPO's penalty :func:`flow_grpo_kl` (``kl``);
- losses: :func:`ppo_clip_loss` (DDPO_IS) and :func:`score_function_loss` (DDPO_SF) (``ppo``);
- advantages: :func:`normalize_advantages`, :func:`group_normalize_advantages`,
  :func:`clip_advantages` (``advantages``), and per-prompt statistics with history,
  :func:`init_per_prompt_stats` / :func:`update_per_prompt_stats` or
  :class:`PerPromptStatTracker` (``per_prompt``);
- forward noising and training targets: :func:`vp_add_noise`, :func:`vp_velocity`,
  :func:`vp_training_target`, :func:`vp_predicted_x0` and :func:`alpha_bar_at` (DDPM/DDIM),
  :func:`flow_add_noise`, :func:`flow_velocity_target` and :func:`flow_predicted_x0`
  (rectified flow) (``noising``);
- training steps: :func:`subsample_timesteps` and MixGRPO's :func:`sliding_window_start`
  (``timesteps``);
- weight averages: :func:`ema_decay_at` and :func:`ema_step` (``ema``);
- DiffusionNFT's objective: :func:`nft_optimality`, :func:`nft_loss` (:func:`nft_clean_loss`
  for any parameterisation) and its old policy's :func:`nft_old_policy_decay` (``nft``);
- Diffusion-DPO's preference loss: :func:`diffusion_dpo_loss` (``dpo``);
- Advantage Weighted Matching's surrogate and regulariser: :func:`awm_log_likelihood` and
  :func:`awm_kl_penalty` (``awm``).

Imports only torch, jaxtyping and the standard library (``tests/test_layering.py`` enforces it).
Shapes are checked at run time in the test suite, or for users with ``DDPO_TYPECHECK=1``.
"""

from ddpo.core.advantages import clip_advantages, group_normalize_advantages, normalize_advantages
from ddpo.core.awm import AWMKLWeighting, AWMWeighting, awm_kl_penalty, awm_log_likelihood
from ddpo.core.ddim import DDIMStepOutput, PredictionType, ddim_step_with_logprob
from ddpo.core.dpo import DPOLossOutput, diffusion_dpo_loss
from ddpo.core.ema import ema_decay_at, ema_step
from ddpo.core.flow import (
    CPSLogProbForm,
    FlowCPSStepOutput,
    FlowSDEStepOutput,
    FlowSolverStep,
    flow_cps_step_with_logprob,
    flow_dpm_solver_step,
    flow_sde_step_with_logprob,
)
from ddpo.core.guidance import classifier_free_guidance, rescale_guidance
from ddpo.core.kl import flow_grpo_kl, gaussian_kl
from ddpo.core.nft import (
    NFT_DECAY_TYPES,
    nft_clean_loss,
    nft_loss,
    nft_old_policy_decay,
    nft_optimality,
)
from ddpo.core.noising import (
    alpha_bar_at,
    flow_add_noise,
    flow_predicted_x0,
    flow_velocity_target,
    vp_add_noise,
    vp_predicted_x0,
    vp_training_target,
    vp_velocity,
)
from ddpo.core.per_prompt import (
    PerPromptStatState,
    PerPromptStatTracker,
    init_per_prompt_stats,
    update_per_prompt_stats,
)
from ddpo.core.ppo import PPOLossOutput, ppo_clip_loss, score_function_loss
from ddpo.core.timesteps import (
    SLIDING_WINDOW_STRATEGIES,
    sliding_window_start,
    subsample_timesteps,
)

__all__ = [
    "NFT_DECAY_TYPES",
    "SLIDING_WINDOW_STRATEGIES",
    "AWMKLWeighting",
    "AWMWeighting",
    "CPSLogProbForm",
    "DDIMStepOutput",
    "DPOLossOutput",
    "FlowCPSStepOutput",
    "FlowSDEStepOutput",
    "FlowSolverStep",
    "PPOLossOutput",
    "PerPromptStatState",
    "PerPromptStatTracker",
    "PredictionType",
    "alpha_bar_at",
    "awm_kl_penalty",
    "awm_log_likelihood",
    "classifier_free_guidance",
    "clip_advantages",
    "ddim_step_with_logprob",
    "diffusion_dpo_loss",
    "ema_decay_at",
    "ema_step",
    "flow_add_noise",
    "flow_cps_step_with_logprob",
    "flow_dpm_solver_step",
    "flow_grpo_kl",
    "flow_predicted_x0",
    "flow_sde_step_with_logprob",
    "flow_velocity_target",
    "gaussian_kl",
    "group_normalize_advantages",
    "init_per_prompt_stats",
    "nft_clean_loss",
    "nft_loss",
    "nft_old_policy_decay",
    "nft_optimality",
    "normalize_advantages",
    "ppo_clip_loss",
    "rescale_guidance",
    "score_function_loss",
    "sliding_window_start",
    "subsample_timesteps",
    "update_per_prompt_stats",
    "vp_add_noise",
    "vp_predicted_x0",
    "vp_training_target",
    "vp_velocity",
]
