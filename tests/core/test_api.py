"""The public surface of ddpo.core: names, annotations and keyword-only hyper-parameters."""

import inspect
import typing

import pytest

import ddpo.core

FUNCTIONS = [name for name in ddpo.core.__all__ if inspect.isfunction(getattr(ddpo.core, name))]
AGREED = {
    "ddim_step_with_logprob",
    "flow_sde_step_with_logprob",
    "flow_cps_step_with_logprob",
    "flow_dpm_solver_step",
    "classifier_free_guidance",
    "rescale_guidance",
    "ppo_clip_loss",
    "score_function_loss",
    "normalize_advantages",
    "init_per_prompt_stats",
    "update_per_prompt_stats",
    "group_normalize_advantages",
    "clip_advantages",
    "gaussian_kl",
    "flow_grpo_kl",
    "subsample_timesteps",
    "sliding_window_start",
    "alpha_bar_at",
    "vp_add_noise",
    "vp_velocity",
    "vp_training_target",
    "vp_predicted_x0",
    "flow_add_noise",
    "flow_velocity_target",
    "flow_predicted_x0",
    "ema_decay_at",
    "ema_step",
    "nft_loss",
    "nft_clean_loss",
    "nft_old_policy_decay",
    "nft_optimality",
    "diffusion_dpo_loss",
    "awm_log_likelihood",
    "awm_kl_penalty",
}
# Hyper-parameters of the agreed interfaces that must be keyword-only.
KEYWORD_ONLY = {
    "ddim_step_with_logprob": {"eta", "prediction_type", "noise", "prev_sample"},
    "flow_sde_step_with_logprob": {"noise_level", "sigma_max", "noise", "prev_sample"},
    "flow_cps_step_with_logprob": {
        "noise_level",
        "noise",
        "prev_sample",
        "log_prob_form",
    },
    "flow_dpm_solver_step": {"previous_clean", "sigma_previous", "solver_type"},
    "ppo_clip_loss": {"clip_range"},
    "normalize_advantages": {"eps"},
    "init_per_prompt_stats": {"buffer_size", "min_count"},
    "group_normalize_advantages": {"std", "eps"},
    "clip_advantages": {"adv_clip_max"},
    "gaussian_kl": {"reduction"},
    "rescale_guidance": {"guidance_rescale"},
    "subsample_timesteps": {"timestep_fraction"},
    "sliding_window_start": {
        "shift_interval",
        "stride",
        "max_start",
        "roll_back",
        "strategy",
        "min_shift_interval",
        "decay_threshold",
        "decay_rate",
    },
    "vp_training_target": {"prediction_type"},
    "vp_predicted_x0": {"prediction_type"},
    "ema_decay_at": {"decay"},
    "ema_step": {"decay"},
    "nft_loss": {"beta", "eps"},
    "nft_clean_loss": {"beta", "eps"},
    "nft_old_policy_decay": {"decay_type"},
    "nft_optimality": {"adv_clip_max"},
    "diffusion_dpo_loss": {"beta"},
    "awm_log_likelihood": {"weighting", "ghuber_power"},
    "awm_kl_penalty": {"noise_level", "weighting"},
}


def test_agreed_names_are_exported() -> None:
    assert set(FUNCTIONS) == AGREED
    for name in (
        "PerPromptStatTracker",
        "PerPromptStatState",
        "PPOLossOutput",
        "DDIMStepOutput",
        "FlowSDEStepOutput",
    ):
        assert name in ddpo.core.__all__


@pytest.mark.parametrize("name", sorted(AGREED))
def test_every_parameter_and_return_is_annotated(name: str) -> None:
    function = inspect.unwrap(getattr(ddpo.core, name))
    hints = typing.get_type_hints(function)
    params = inspect.signature(function).parameters
    assert set(params) <= set(hints), f"{name}: unannotated {set(params) - set(hints)}"
    assert "return" in hints
    assert function.__doc__ and "Returns:" in function.__doc__


@pytest.mark.parametrize("name", sorted(KEYWORD_ONLY))
def test_hyper_parameters_are_keyword_only(name: str) -> None:
    params = inspect.signature(inspect.unwrap(getattr(ddpo.core, name))).parameters
    for hyper in KEYWORD_ONLY[name]:
        assert params[hyper].kind is inspect.Parameter.KEYWORD_ONLY, (name, hyper)


def test_reference_defaults() -> None:
    def default(name: str, param: str) -> object:
        fn = inspect.unwrap(getattr(ddpo.core, name))
        return inspect.signature(fn).parameters[param].default

    assert default("ppo_clip_loss", "clip_range") == 1e-4
    assert default("clip_advantages", "adv_clip_max") == 5.0
    assert default("normalize_advantages", "eps") == 1e-8
    assert default("init_per_prompt_stats", "buffer_size") == 16
    assert default("init_per_prompt_stats", "min_count") == 16
    assert default("subsample_timesteps", "timestep_fraction") == 1.0
