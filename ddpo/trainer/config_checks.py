"""The rules of a valid `DDPOConfig`: field types, ranges, batch arithmetic, choices, extras.

`validate_config` is what `DDPOConfig.validate` runs: in ``__post_init__`` (without the process
count) and again in `DDPOTrainer` (with it). It raises before any model is loaded, naming the
field and the offending value.
"""

import importlib.util
import math
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config imports these rules: only type checkers import it back
    from ddpo.trainer.config import DDPOConfig

LOSS_TYPES: tuple[str, ...] = ("ppo", "score_function")
ADVANTAGE_MODES: tuple[str, ...] = ("auto", "per_prompt", "global", "group", "group_global")
MIXED_PRECISIONS: tuple[str, ...] = ("no", "fp16", "bf16")
LOG_WITH: tuple[str, ...] = ("tensorboard", "wandb")
EVAL_SAMPLERS: tuple[str, ...] = ("deterministic", "policy")
EMA_CONVENTIONS: tuple[str, ...] = ("step", "flow_grpo")
ALGORITHMS: tuple[str, ...] = ("ddpo", "nft", "awm", "dpo", "draft", "draft_lv", "alignprop")
AWM_WEIGHTINGS: tuple[str, ...] = ("uniform", "sigma", "sigma_squared", "ghuber")
AWM_KL_WEIGHTINGS: tuple[str, ...] = ("uniform", "elbo")
DPO_PAIRS: tuple[str, ...] = ("best_worst", "halves", "all")
BACKPROP_ALGORITHMS: tuple[str, ...] = ("draft", "draft_lv", "alignprop")
NFT_DECAY_TYPES: tuple[int, ...] = (0, 1, 2)
# `ddpo.core.SLIDING_WINDOW_STRATEGIES` (checked equal in the tests)
SLIDING_WINDOW_STRATEGIES: tuple[str, ...] = ("progressive", "decay", "exp_decay")
# `ddpo.evaluation.EVAL_PROMPT_SETS` (checked equal in the tests; the config imports no torch)
EVAL_PROMPT_SET_NAMES: tuple[str, ...] = ("shapes_heldout", "text_rendering_heldout")
MAX_SEED = 2**32 - 1
BOOL_FIELDS: tuple[str, ...] = (
    "allow_tf32",
    "train_use_8bit_adam",
    "train_cfg",
    "per_prompt_stat_tracking",
    "async_reward_computation",
    "push_to_hub",
    "gradient_checkpointing",
    "resume_allow_config_changes",
    "compile_denoiser",
    "sample_cuda_graphs",
    "channels_last",
    "sample_same_latent",
    "ema_save_final",
    "ema_sampling",
    "sliding_window_roll_back",
)
STR_FIELDS: tuple[str, ...] = (
    "exp_name",
    "run_name",
    "logdir",
    "output_dir",
    "resume_from",
    "tracker_project_name",
    "negative_prompts",
    "hub_model_id",
    "mixed_precision",
    "eval_prompt_set",
    "eval_sampler",
    "ema_convention",
    "algorithm",
    "awm_weighting",
    "awm_kl_weighting",
    "dpo_pairs",
    "sde_window_schedule",
    "sliding_window_strategy",
)
# Accelerator arguments that come from the config's own fields.
RESERVED_ACCELERATOR_KWARGS: tuple[str, ...] = (
    "log_with",
    "mixed_precision",
    "project_config",
    "project_dir",
    "gradient_accumulation_steps",
)


def validate_config(config: "DDPOConfig", *, num_processes: int | None = None) -> None:
    """Check every field; raise ValueError (or ImportError) naming the field and the value.

    Args:
        config: the config to check.
        num_processes: number of accelerate processes, when known (the trainer passes it);
            needed for the rule that an epoch splits into whole optimizer steps.
    """
    # 1. Types of the integer fields (bool is an int in Python: reject it too).
    int_fields = (
        "seed",
        "num_epochs",
        "save_freq",
        "num_checkpoint_limit",
        "sample_num_steps",
        "sample_batch_size",
        "sample_num_batches_per_epoch",
        "train_batch_size",
        "train_gradient_accumulation_steps",
        "train_num_inner_epochs",
        "per_prompt_stat_tracking_buffer_size",
        "per_prompt_stat_tracking_min_count",
        "max_workers",
        "prompt_embedding_cache_size",
        "eval_freq",
        "eval_num_prompts",
        "eval_images_per_prompt",
        "eval_num_steps",
        "ema_update_every",
        "train_num_timesteps",
        "nft_decay_type",
        "backprop_grad_steps",
        "backprop_lv_samples",
        "sliding_window_shift_interval",
        "sliding_window_stride",
        "sliding_window_min_shift_interval",
        "sliding_window_decay_threshold",
    )
    for name in int_fields:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"DDPOConfig.{name} must be an int, got {value!r}")
    # bool fields take True or False only: "False" is truthy and 0/1 hide a typo.
    for name in BOOL_FIELDS:
        value = getattr(config, name)
        if not isinstance(value, bool):
            raise TypeError(
                f"DDPOConfig.{name} must be True or False, got {value!r} ({type(value).__name__})"
            )
    float_fields = (
        "sample_eta",
        "sample_guidance_scale",
        "train_learning_rate",
        "train_adam_beta1",
        "train_adam_beta2",
        "train_adam_weight_decay",
        "train_adam_epsilon",
        "train_max_grad_norm",
        "train_adv_clip_max",
        "train_clip_range",
        "train_timestep_fraction",
        "kl_coef",
        "ema_decay",
        "nft_beta",
        "awm_ghuber_power",
        "dpo_beta",
        "sliding_window_decay_rate",
        "backprop_base_pull",
    )
    for name in float_fields:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"DDPOConfig.{name} must be a float, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"DDPOConfig.{name} must be finite, got {value!r}")

    # 2. Positive sizes and counts.
    positive = (
        "num_epochs",
        "sample_num_steps",
        "sample_batch_size",
        "sample_num_batches_per_epoch",
        "train_batch_size",
        "train_gradient_accumulation_steps",
        "train_num_inner_epochs",
        "per_prompt_stat_tracking_buffer_size",
        "max_workers",
        "eval_num_prompts",
        "eval_images_per_prompt",
        "ema_update_every",
    )
    for name in positive:
        if getattr(config, name) <= 0:
            raise ValueError(f"DDPOConfig.{name} must be > 0, got {getattr(config, name)!r}")
    for name in (
        "save_freq",
        "num_checkpoint_limit",
        "per_prompt_stat_tracking_min_count",
        "prompt_embedding_cache_size",
        "eval_freq",
        "eval_num_steps",
    ):
        if getattr(config, name) < 0:
            raise ValueError(f"DDPOConfig.{name} must be >= 0, got {getattr(config, name)!r}")
    for name in (
        "train_learning_rate",
        "train_adam_epsilon",
        "train_max_grad_norm",
        "train_adv_clip_max",
        "train_clip_range",
    ):
        if getattr(config, name) <= 0:
            raise ValueError(f"DDPOConfig.{name} must be > 0, got {getattr(config, name)!r}")
    for name in ("train_adam_weight_decay", "kl_coef"):
        if getattr(config, name) < 0:
            raise ValueError(f"DDPOConfig.{name} must be >= 0, got {getattr(config, name)!r}")
    for name, choices in (
        ("algorithm", ALGORITHMS),
        ("awm_weighting", AWM_WEIGHTINGS),
        ("awm_kl_weighting", AWM_KL_WEIGHTINGS),
        ("dpo_pairs", DPO_PAIRS),
        ("nft_decay_type", NFT_DECAY_TYPES),
    ):
        if getattr(config, name) not in choices:
            raise ValueError(
                f"DDPOConfig.{name} must be one of {choices}, got {getattr(config, name)!r}"
            )
    for name in ("nft_beta", "awm_ghuber_power", "dpo_beta"):
        if getattr(config, name) <= 0:
            raise ValueError(f"DDPOConfig.{name} must be > 0, got {getattr(config, name)!r}")
    if config.train_num_timesteps < 0:
        raise ValueError(
            f"DDPOConfig.train_num_timesteps must be >= 0 (0: the algorithm's default), got "
            f"{config.train_num_timesteps!r}"
        )
    if config.algorithm == "awm" and config.train_num_timesteps >= config.sample_num_steps:
        raise ValueError(
            f"DDPOConfig.train_num_timesteps={config.train_num_timesteps} with algorithm='awm' "
            f"must be below sample_num_steps={config.sample_num_steps} (AWM trains at the "
            "sampler's steps after the first)"
        )
    if not 1 <= config.backprop_grad_steps <= config.sample_num_steps:
        raise ValueError(
            f"DDPOConfig.backprop_grad_steps must be in [1, sample_num_steps="
            f"{config.sample_num_steps}], got {config.backprop_grad_steps}"
        )
    if config.algorithm == "awm" and config.sample_num_steps < 2:
        raise ValueError(
            f"DDPOConfig.sample_num_steps={config.sample_num_steps} with algorithm='awm' must be "
            ">= 2 (AWM trains at the sampler's steps after the first)"
        )
    if config.sde_window_schedule not in ("fixed", "sliding"):
        raise ValueError(
            "DDPOConfig.sde_window_schedule must be one of ('fixed', 'sliding'), got "
            f"{config.sde_window_schedule!r}"
        )
    if config.sliding_window_strategy not in SLIDING_WINDOW_STRATEGIES:
        raise ValueError(
            f"DDPOConfig.sliding_window_strategy must be one of {SLIDING_WINDOW_STRATEGIES}, got "
            f"{config.sliding_window_strategy!r}"
        )
    for name, low in (
        ("sliding_window_min_shift_interval", 1),
        ("sliding_window_decay_threshold", 0),
        ("sliding_window_decay_rate", 0),
    ):
        if getattr(config, name) < low:
            raise ValueError(f"DDPOConfig.{name} must be >= {low}, got {getattr(config, name)!r}")
    if config.sliding_window_shift_interval < 1 or config.sliding_window_stride < 0:
        raise ValueError(
            "DDPOConfig.sliding_window_shift_interval must be >= 1 and sliding_window_stride "
            f">= 0, got {config.sliding_window_shift_interval!r} and "
            f"{config.sliding_window_stride!r}"
        )
    if config.backprop_lv_samples < 1:
        raise ValueError(
            f"DDPOConfig.backprop_lv_samples must be >= 1, got {config.backprop_lv_samples!r}"
        )
    if config.backprop_base_pull < 0 or (
        config.backprop_base_pull > 0 and config.algorithm not in BACKPROP_ALGORITHMS
    ):
        raise ValueError(
            f"DDPOConfig.backprop_base_pull={config.backprop_base_pull!r} must be >= 0, and is "
            f"reward backpropagation's ({BACKPROP_ALGORITHMS}); algorithm="
            f"{config.algorithm!r}"
        )
    if config.kl_coef > 0 and config.algorithm in ("dpo", "draft", "draft_lv", "alignprop"):
        raise ValueError(
            f"DDPOConfig.kl_coef={config.kl_coef!r}: algorithm={config.algorithm!r} has no KL "
            "penalty (Diffusion-DPO's pull to the reference is its beta); set kl_coef to 0"
        )
    if config.algorithm != "ddpo":
        for name, default in (("loss_type", "ppo"), ("kl_convention", "exact")):
            if getattr(config, name) != default:
                raise ValueError(
                    f"DDPOConfig.{name}={getattr(config, name)!r} is the policy gradient's "
                    f"(algorithm='ddpo'); algorithm={config.algorithm!r} does not use it: leave "
                    f"it at {default!r}"
                )
    if config.ema_sampling and config.ema_decay == 0:
        raise ValueError(
            "DDPOConfig.ema_sampling=True samples with the EMA weights: it needs ema_decay > 0, "
            "got 0.0"
        )
    if config.ema_sampling and config.algorithm == "nft":
        raise ValueError(
            "DDPOConfig.ema_sampling=True with algorithm='nft': DiffusionNFT samples with its "
            "own old policy; leave ema_sampling False"
        )
    if config.ema_convention not in EMA_CONVENTIONS:
        raise ValueError(
            f"DDPOConfig.ema_convention must be one of {EMA_CONVENTIONS}, got "
            f"{config.ema_convention!r}"
        )
    if not 0.0 <= config.ema_decay < 1.0:
        raise ValueError(
            f"DDPOConfig.ema_decay must be in [0, 1) (0: no EMA), got {config.ema_decay!r}"
        )
    for name in ("train_adam_beta1", "train_adam_beta2"):
        if not 0.0 <= getattr(config, name) < 1.0:
            raise ValueError(f"DDPOConfig.{name} must be in [0, 1), got {getattr(config, name)!r}")

    # 3. Seed, sampler and training-step ranges.
    if not 0 <= config.seed <= MAX_SEED:
        raise ValueError(
            f"DDPOConfig.seed must be in [0, 2**32 - 1] (numpy's and accelerate's seeding "
            f"range), got {config.seed!r}"
        )
    if not 0 < config.sample_eta <= 1:
        raise ValueError(
            "DDPOConfig.sample_eta must be in (0, 1]: DDPO needs a stochastic DDIM sampler "
            "(eta > 0), and above 1 the step's standard deviation exceeds "
            "sqrt(1 - alpha_bar_prev), so the DDIM mean's coefficient "
            f"sqrt(1 - alpha_bar_prev - sigma_t^2) does not exist; got {config.sample_eta!r}"
        )
    if not 0.0 < config.train_timestep_fraction <= 1.0:
        raise ValueError(
            f"DDPOConfig.train_timestep_fraction must be in (0, 1], "
            f"got {config.train_timestep_fraction!r}"
        )
    if config.sample_guidance_scale < 0:
        raise ValueError(
            f"DDPOConfig.sample_guidance_scale must be >= 0, got {config.sample_guidance_scale!r}"
        )

    # 4. Batch rules (TRL's three).
    if config.sample_batch_size < config.train_batch_size:
        raise ValueError(
            f"DDPOConfig.sample_batch_size ({config.sample_batch_size}) must be >= "
            f"train_batch_size ({config.train_batch_size})"
        )
    if config.sample_batch_size % config.train_batch_size != 0:
        raise ValueError(
            f"DDPOConfig.sample_batch_size ({config.sample_batch_size}) must be a multiple of "
            f"train_batch_size ({config.train_batch_size})"
        )
    if num_processes is not None:
        if num_processes <= 0:
            raise ValueError(f"num_processes must be > 0, got {num_processes!r}")
        sampled = config.sample_batch_size * num_processes * config.sample_num_batches_per_epoch
        per_step = (
            config.train_batch_size * num_processes * config.train_gradient_accumulation_steps
        )
        if sampled % per_step != 0:
            raise ValueError(
                "DDPOConfig: samples per epoch (sample_batch_size "
                f"{config.sample_batch_size} x num_processes {num_processes} x "
                f"sample_num_batches_per_epoch {config.sample_num_batches_per_epoch} = "
                f"{sampled}) must be a multiple of samples per optimizer step "
                f"(train_batch_size {config.train_batch_size} x num_processes {num_processes}"
                f" x train_gradient_accumulation_steps "
                f"{config.train_gradient_accumulation_steps} = {per_step})"
            )

    # 5. Choices.
    if config.mixed_precision not in MIXED_PRECISIONS:
        raise ValueError(
            f"DDPOConfig.mixed_precision must be one of {MIXED_PRECISIONS}, "
            f"got {config.mixed_precision!r}"
        )
    if config.log_with is not None and config.log_with not in LOG_WITH:
        raise ValueError(
            f"DDPOConfig.log_with must be None or one of {LOG_WITH}, got {config.log_with!r}"
        )
    if config.loss_type not in LOSS_TYPES:
        raise ValueError(
            f"DDPOConfig.loss_type must be one of {LOSS_TYPES}, got {config.loss_type!r}"
        )
    if config.eval_sampler not in EVAL_SAMPLERS:
        raise ValueError(
            f"DDPOConfig.eval_sampler must be one of {EVAL_SAMPLERS}, got {config.eval_sampler!r}"
        )
    if config.eval_prompt_set not in EVAL_PROMPT_SET_NAMES:
        raise ValueError(
            f"DDPOConfig.eval_prompt_set must be one of {EVAL_PROMPT_SET_NAMES}, "
            f"got {config.eval_prompt_set!r}"
        )
    if config.advantage_mode not in ADVANTAGE_MODES:
        raise ValueError(
            f"DDPOConfig.advantage_mode must be one of {ADVANTAGE_MODES}, "
            f"got {config.advantage_mode!r}"
        )
    if config.per_prompt_stat_tracking and config.advantage_mode not in ("auto", "per_prompt"):
        raise ValueError(
            f"DDPOConfig.per_prompt_stat_tracking=True contradicts "
            f"advantage_mode={config.advantage_mode!r}; set advantage_mode to 'per_prompt' "
            "or 'auto', or per_prompt_stat_tracking to False"
        )
    if (
        config.resolved_advantage_mode == "per_prompt"
        and config.per_prompt_stat_tracking_min_count > config.per_prompt_stat_tracking_buffer_size
    ):
        raise ValueError(
            "DDPOConfig.per_prompt_stat_tracking_min_count "
            f"({config.per_prompt_stat_tracking_min_count}) must be <= "
            "per_prompt_stat_tracking_buffer_size "
            f"({config.per_prompt_stat_tracking_buffer_size}) (a larger one would never use "
            "the buffer)"
        )
    if config.sample_cuda_graphs and not config.compile_denoiser:
        raise ValueError(
            "DDPOConfig.sample_cuda_graphs=True needs compile_denoiser=True (the CUDA graphs "
            "are those of the compiled blocks), got compile_denoiser=False"
        )
    for name in ("tracker_kwargs", "accelerator_kwargs", "project_kwargs"):
        if not isinstance(getattr(config, name), dict):
            raise TypeError(f"DDPOConfig.{name} must be a dict, got {getattr(config, name)!r}")
    for name in STR_FIELDS:
        if not isinstance(getattr(config, name), str):
            raise TypeError(f"DDPOConfig.{name} must be a str, got {getattr(config, name)!r}")
    if not config.tracker_project_name:
        raise ValueError(
            "DDPOConfig.tracker_project_name must be a non-empty str (the trackers' project "
            f"name), got {config.tracker_project_name!r}"
        )
    if config.run_name and (os.sep in config.run_name or config.run_name in (".", "..")):
        raise ValueError(
            f"DDPOConfig.run_name must be a plain folder name, got {config.run_name!r}"
        )
    clash = sorted(set(config.accelerator_kwargs) & set(RESERVED_ACCELERATOR_KWARGS))
    if clash:
        raise ValueError(
            f"DDPOConfig.accelerator_kwargs must not set {clash} (they come from the config's "
            f"own fields), got {config.accelerator_kwargs!r}"
        )
    if "project_dir" in config.project_kwargs:
        raise ValueError(
            "DDPOConfig.project_kwargs must not set 'project_dir' (it is the run's "
            f"output folder; set output_dir instead), got {config.project_kwargs!r}"
        )

    if config.on_policy_tolerance is not None:
        value = config.on_policy_tolerance
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(
                f"DDPOConfig.on_policy_tolerance must be a float or None, got {value!r}"
            )
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(
                f"DDPOConfig.on_policy_tolerance must be a finite float >= 0, got {value!r}"
            )

    # Flow-GRPO's conventions (their own block).
    check_flow_grpo_options(config)

    # 6. Optional dependencies.
    if config.train_use_8bit_adam and importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            "DDPOConfig.train_use_8bit_adam=True needs bitsandbytes, which is not installed "
            "(pip install bitsandbytes), or set train_use_8bit_adam=False"
        )
    if config.log_with == "wandb" and importlib.util.find_spec("wandb") is None:
        raise ImportError(
            "DDPOConfig.log_with='wandb' needs wandb, which is not installed "
            "(pip install wandb), or use log_with='tensorboard'"
        )


def check_on_policy_guidance(config: "DDPOConfig", guidance: str) -> None:
    """ValueError if the training pass would re-score another policy than the one that sampled.

    With classifier-free guidance (``guidance="classifier_free"``) and a scale above 1, samples
    come from the guided prediction ``uncond + s (cond - uncond)``; ``train_cfg=False`` re-scores
    them under the conditional prediction alone, so every importance ratio is off before the
    first update (and PPO clips them all). A scale at or below 1 guides neither pass. A model
    whose guidance is an input of its one pass (``"embedded"``, FLUX.1-dev) re-scores as it
    sampled either way. Cheap: the policy's class attribute is enough, no model loads.

    Args:
        config: the run's config.
        guidance: the policy's `ddpo.policy.GuidanceKind` (`ddpo.policy.guidance_kind`).
    """
    if guidance == "classifier_free" and not config.train_cfg and config.sample_guidance_scale > 1:
        raise ValueError(
            "DDPOConfig.train_cfg=False with sample_guidance_scale="
            f"{config.sample_guidance_scale!r}: the samples are drawn with classifier-free "
            "guidance but would be re-scored without it, so training would not be on the policy "
            "that sampled (every PPO ratio is off before the first update). Set train_cfg=True "
            "(re-score with the same guidance) or sample_guidance_scale=1.0 (no guidance in "
            "either pass)"
        )


KL_CONVENTIONS: tuple[str, ...] = ("exact", "flow_grpo")
TIMESTEP_ORDERS: tuple[str, ...] = ("random", "first")


def check_flow_grpo_options(config: "DDPOConfig") -> None:
    """The fields of Flow-GRPO's training conventions: ``kl_convention``,
    ``train_drop_zero_advantages``, ``train_timestep_order``, ``train_clip_range_low`` and
    ``train_clip_range_high`` (TypeError or ValueError naming the field and the value)."""
    if config.kl_convention not in KL_CONVENTIONS:
        raise ValueError(
            f"DDPOConfig.kl_convention must be one of {KL_CONVENTIONS}, "
            f"got {config.kl_convention!r}"
        )
    if config.train_timestep_order not in TIMESTEP_ORDERS:
        raise ValueError(
            f"DDPOConfig.train_timestep_order must be one of {TIMESTEP_ORDERS}, "
            f"got {config.train_timestep_order!r}"
        )
    if not isinstance(config.train_drop_zero_advantages, bool):
        value = config.train_drop_zero_advantages
        raise TypeError(
            "DDPOConfig.train_drop_zero_advantages must be True or False, "
            f"got {value!r} ({type(value).__name__})"
        )
    for name in ("train_clip_range_low", "train_clip_range_high"):
        value = getattr(config, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"DDPOConfig.{name} must be a float or None, got {value!r}")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"DDPOConfig.{name} must be a finite float > 0 (or None: train_clip_range), "
                f"got {value!r}"
            )
