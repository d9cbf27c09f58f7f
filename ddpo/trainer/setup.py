"""What `DDPOTrainer` checks and builds before any model work: pipeline checks, the accelerator,
the tracker config."""

import logging
import os
from typing import Any, cast

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed

from ddpo.core import sliding_window_start
from ddpo.objectives import Objective
from ddpo.objectives.base import has_hook
from ddpo.policy import (
    DiffusionPolicy,
    accepts_initial_noise,
    guidance_kind,
    missing_members,
    policy_option,
)
from ddpo.trainer.config import DDPOConfig
from ddpo.trainer.config_checks import check_on_policy_guidance

logger = logging.getLogger(__name__)


def check_pipeline(sd_pipeline: Any, config: DDPOConfig) -> None:
    """TypeError unless ``sd_pipeline`` implements the `ddpo.policy.DiffusionPolicy` boundary;
    ValueError if its sampler cannot make ``sample_num_steps`` steps, or if it cannot run the
    config as asked (`check_policy_supports`). Cheap: no model work."""
    if isinstance(sd_pipeline, str | os.PathLike):
        raise TypeError(
            f"DDPOTrainer: sd_pipeline must be a pipeline object, got the string {sd_pipeline!r}; "
            f"pass DefaultDDPOStableDiffusionPipeline({str(sd_pipeline)!r}) (from ddpo import "
            "DefaultDDPOStableDiffusionPipeline) or your own DDPOStableDiffusionPipeline"
        )
    missing = missing_members(sd_pipeline)
    if missing:
        raise TypeError(
            f"DDPOTrainer: sd_pipeline must be a DDPOStableDiffusionPipeline (e.g. "
            f"DefaultDDPOStableDiffusionPipeline('ddpo-tiny-shapes')) or implement "
            f"ddpo.policy.DiffusionPolicy; got {type(sd_pipeline).__name__}, which lacks "
            f"{missing}"
        )
    sd_pipeline.check_num_steps(config.sample_num_steps)
    if config.eval_freq > 0 and config.eval_num_steps:
        sd_pipeline.check_num_steps(config.eval_num_steps)
    check_policy_supports(sd_pipeline, config)
    check_sampler_settings(sd_pipeline, config)
    if config.sde_window_schedule == "sliding":
        sliding_window_at(sd_pipeline, config, 0)  # a policy without a window fails here


def sliding_window_at(policy: Any, config: DDPOConfig, epoch: int) -> int:
    """MixGRPO's window start for ``epoch`` (`ddpo.core.sliding_window_start` with
    ``sliding_window_strategy`` over the policy's possible starts, ``sliding_window_stride`` 0
    meaning the window's size: the transitions a rollout records).

    Raises:
        ValueError: where the policy has no window to move.
    """
    starts = policy_option(policy, "window_starts")(config.sample_num_steps)
    size = policy.transitions_per_rollout(config.sample_num_steps)
    offset = sliding_window_start(
        epoch,
        shift_interval=config.sliding_window_shift_interval,
        stride=config.sliding_window_stride or size,
        max_start=len(starts) - 1,
        roll_back=config.sliding_window_roll_back,
        strategy=config.sliding_window_strategy,
        min_shift_interval=config.sliding_window_min_shift_interval,
        decay_threshold=config.sliding_window_decay_threshold,
        decay_rate=config.sliding_window_decay_rate,
    )
    return int(starts[offset])


def check_policy_supports(policy: Any, config: DDPOConfig) -> None:
    """ValueError unless ``policy`` (a policy, or its class: ``ddpo train`` asks before the model
    loads) can run ``config`` as asked, from its optional class members (`ddpo.policy`):

    - its re-scoring pass is the policy that samples (`check_on_policy_guidance`, from
      ``guidance_kind``);
    - it uses ``sample_eta`` if one other than 1.0 is set (``uses_sample_eta``: the flow
      policies' stochasticity is their ``noise_level``);
    - its ``score`` reports what ``kl_convention`` needs (``kl_conventions``);
    - its ``rollout`` takes ``initial_noise_generators`` if ``sample_same_latent`` is set;
    - it has the sampler the held-out evaluation asks for (``eval_sampler``): a
      ``deterministic_images`` member, or a ``rollout`` that takes ``initial_noise_generators``.
    """
    name = policy.__name__ if isinstance(policy, type) else type(policy).__name__
    check_on_policy_guidance(config, guidance_kind(policy))
    if (
        config.sde_window_schedule == "sliding"
        and policy_option(policy, "set_window_start") is None
    ):
        raise ValueError(
            f"DDPOConfig.sde_window_schedule='sliding' moves a stochastic window: {name} has none "
            "(the flow families, SD3 and FLUX.1, with sde_window_size, do)"
        )
    if config.sample_eta != 1.0 and not policy_option(policy, "uses_sample_eta"):
        raise ValueError(
            f"DDPOConfig.sample_eta={config.sample_eta!r}: sample_eta applies to the DDIM "
            f"families (SD 1.x/2.x, SDXL); {name} is a flow-matching policy, whose sampler "
            "ignores it (its stochasticity is Flow-GRPO's noise level: use noise_level)"
        )
    offered = tuple(policy_option(policy, "kl_conventions"))
    if config.kl_convention not in offered:
        raise ValueError(
            f"DDPOConfig.kl_convention={config.kl_convention!r} is not offered by {name} (it "
            f"offers {offered}): Flow-GRPO's KL penalty divides by the flow SDE step's "
            "coefficient std_dev_t, which only the flow-matching policies (SD3, FLUX.1) report; "
            "use kl_convention='exact', the KL with the step's own standard deviation"
        )
    if config.sample_same_latent and not accepts_initial_noise(policy):
        raise ValueError(
            "DDPOConfig.sample_same_latent=True needs a policy whose rollout takes "
            f"initial_noise_generators (every built-in family's does); {name}'s does not (its x_T "
            "is drawn from the batch's generator)"
        )
    evaluates = config.eval_freq > 0
    deterministic = policy_option(policy, "deterministic_images")
    if evaluates and config.eval_sampler == "deterministic" and deterministic is None:
        raise ValueError(
            f"DDPOConfig.eval_sampler='deterministic' (eval_freq={config.eval_freq}): "
            f"{name} has no deterministic sampler (deterministic_images, every built-in "
            "family has one); use eval_sampler='policy'"
        )
    if evaluates and config.eval_sampler == "policy" and not accepts_initial_noise(policy):
        raise ValueError(
            f"DDPOConfig.eval_sampler='policy' (eval_freq={config.eval_freq}) needs a "
            "policy whose rollout takes initial_noise_generators (each evaluation image "
            f"starts from its own seeded noise); {name}'s does not"
        )


def check_objective(
    objective: object, config: DDPOConfig, policy: DiffusionPolicy | None = None
) -> None:
    """TypeError unless ``objective`` implements `ddpo.objectives.Objective`; ValueError if it
    asks for a rollout with gradients through more steps than ``sample_num_steps``; its own
    ``check_policy(policy)`` where it has one."""
    missing = [name for name in ("needs", "terms", "loss") if not hasattr(objective, name)]
    if missing:
        raise TypeError(
            f"DDPOTrainer: objective must implement ddpo.objectives.Objective; "
            f"{type(objective).__name__} lacks {missing}"
        )
    grad_steps = cast(Objective, objective).needs.grad_steps
    if grad_steps > config.sample_num_steps:
        raise ValueError(
            f"{type(objective).__name__} needs a rollout with gradients through its last "
            f"{grad_steps} steps, more than DDPOConfig.sample_num_steps="
            f"{config.sample_num_steps}"
        )
    if policy is not None and has_hook(objective, "check_policy"):
        objective.check_policy(policy)  # type: ignore[attr-defined]
    needs_transitions = cast(Objective, objective).needs.transitions
    if (
        policy is not None
        and needs_transitions
        and policy.transitions_per_rollout(config.sample_num_steps) == 0
    ):
        raise ValueError(
            f"{type(objective).__name__} trains on the sampler's recorded transitions, and "
            f"the policy's sampler records none (a deterministic sampler, e.g. a flow "
            "model's noise_level=0): sample with noise (noise_level > 0), or train with an "
            "algorithm that needs only the final latents (DDPOConfig.algorithm 'nft', 'awm' "
            "or 'dpo')"
        )


def check_sampler_settings(policy: DiffusionPolicy, config: DDPOConfig) -> None:
    """ValueError if the policy's own DDIM ``eta`` (a constructor setting other than its
    default 1.0) differs from ``DDPOConfig.sample_eta``, which the trainer samples with: one of
    the two would be silently overridden."""
    if not (policy_option(policy, "uses_sample_eta") and hasattr(policy, "eta")):
        return
    eta = float(policy.eta)
    if eta != 1.0 and eta != config.sample_eta:
        raise ValueError(
            f"the pipeline's eta={eta!r} differs from DDPOConfig.sample_eta="
            f"{config.sample_eta!r}; the trainer samples with DDPOConfig.sample_eta: set it to "
            f"{eta!r} (or leave the pipeline's eta at its default)"
        )


def apply_sampler_settings(policy: DiffusionPolicy, config: DDPOConfig) -> None:
    """Set the policy's own sampler settings that the config names: DDIM's ``eta`` from
    ``sample_eta``, for a policy that has one (``uses_sample_eta``; checked first by
    `check_sampler_settings`)."""
    if policy_option(policy, "uses_sample_eta") and hasattr(policy, "eta"):
        policy.eta = config.sample_eta


def effective_mixed_precision(config: DDPOConfig) -> str:
    """``config.mixed_precision``, with fp16 falling back to "no" (and a warning) on a CPU."""
    on_cpu = bool(config.accelerator_kwargs.get("cpu")) or not torch.cuda.is_available()
    if config.mixed_precision == "fp16" and on_cpu:
        logger.warning(
            "DDPOConfig.mixed_precision='fp16' needs a GPU; this run is on CPU, so it runs in "
            "full precision (mixed_precision='no')"
        )
        return "no"
    return config.mixed_precision


def make_accelerator(config: DDPOConfig, *, accumulation_steps: int) -> Accelerator:
    """The run's `Accelerator` from the config; gradients accumulate over trained timesteps and
    micro-batches (``accumulation_steps`` backward passes per optimizer step).

    The run folder is only known once the processes agree on its name; trackers read the logging
    folder when they start, so a provisional one is set here (see `set_project_dir`).
    """
    project_config = ProjectConfiguration(
        **({"logging_dir": config.logdir} | config.project_kwargs),
        automatic_checkpoint_naming=False,
    )
    return Accelerator(
        log_with=config.log_with,
        mixed_precision=effective_mixed_precision(config),
        project_config=project_config,
        gradient_accumulation_steps=accumulation_steps,
        **config.accelerator_kwargs,
    )


def set_project_dir(accelerator: Accelerator, config: DDPOConfig, output_dir: Any) -> None:
    """Point the accelerator's project (and, unless configured, logging) folder at the run."""
    project = accelerator.project_configuration
    project.project_dir = str(output_dir)
    if "logging_dir" not in config.project_kwargs:
        project.logging_dir = str(output_dir / "logs")


def tracker_config(config: DDPOConfig, run_name: str) -> dict[str, Any]:
    """The config as tracker hyper-parameters (scalars; anything else by its repr)."""
    values = config.to_dict() | {"resolved_run_name": run_name}
    return {k: v if isinstance(v, bool | int | float | str) else repr(v) for k, v in values.items()}


__all__ = [
    "check_pipeline",
    "effective_mixed_precision",
    "make_accelerator",
    "set_project_dir",
    "tracker_config",
]


def init_trackers(
    accelerator: Accelerator, config: DDPOConfig, run_name: str, resumed_step: int | None
) -> None:
    """Start ``config.log_with``'s tracker (none when it is None) with the config as its
    hyper-parameters; a tensorboard run resumed after global step ``resumed_step`` drops the
    events logged after the checkpoint (they are logged again)."""
    if config.log_with is None:
        return
    init_kwargs = dict(config.tracker_kwargs)
    if config.log_with == "tensorboard" and resumed_step is not None:
        board = {"purge_step": resumed_step + 1} | init_kwargs.get("tensorboard", {})
        init_kwargs["tensorboard"] = board
    accelerator.init_trackers(
        config.tracker_project_name,
        config=tracker_config(config, run_name),
        init_kwargs=init_kwargs,
    )


def seed_process(config: DDPOConfig) -> None:
    """Seed this process's global RNGs (``seed`` + process index, e.g. for randomness inside
    reward functions) and set TF32 matmuls on CUDA as ``allow_tf32`` says."""
    set_seed(config.seed, device_specific=True)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = config.allow_tf32
        torch.backends.cudnn.allow_tf32 = config.allow_tf32
