"""What `DDPOTrainer` checks and builds before any model work: pipeline checks, the accelerator,
the tracker config."""

import copy
import logging
import os
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from ddpo.trainer.config import DDPOConfig

logger = logging.getLogger(__name__)

_PIPELINE_MEMBERS = (
    "unet",
    "vae",
    "text_encoder",
    "scheduler",
    "encode_prompt",
    "score_transitions",
)


def check_pipeline(sd_pipeline: Any, config: DDPOConfig) -> None:
    """TypeError unless ``sd_pipeline`` is a pipeline object; ValueError if the config asks for
    a number of DDIM steps its scheduler cannot make. Cheap: no model work."""
    if isinstance(sd_pipeline, str | os.PathLike):
        raise TypeError(
            f"DDPOTrainer: sd_pipeline must be a pipeline object, got the string {sd_pipeline!r}; "
            f"pass DefaultDDPOStableDiffusionPipeline({str(sd_pipeline)!r}) (from ddpo import "
            "DefaultDDPOStableDiffusionPipeline) or your own DDPOStableDiffusionPipeline"
        )
    missing = [m for m in _PIPELINE_MEMBERS if not hasattr(sd_pipeline, m)]
    if missing or not callable(sd_pipeline):
        raise TypeError(
            f"DDPOTrainer: sd_pipeline must be a DDPOStableDiffusionPipeline (e.g. "
            f"DefaultDDPOStableDiffusionPipeline('ddpo-tiny-shapes')); got "
            f"{type(sd_pipeline).__name__}, which lacks {missing or ['__call__']}"
        )
    scheduler = sd_pipeline.scheduler
    num_train = getattr(getattr(scheduler, "config", None), "num_train_timesteps", None)
    steps = config.sample_num_steps
    if isinstance(num_train, int) and steps > num_train:
        raise ValueError(
            f"DDPOConfig.sample_num_steps={steps} is more than the pipeline's scheduler allows "
            f"({type(scheduler).__name__} has num_train_timesteps={num_train}); use at most "
            f"{num_train} steps"
        )
    if isinstance(num_train, int) and callable(getattr(scheduler, "set_timesteps", None)):
        # The timesteps the sampler will use, on a copy: some spacings cannot make every count
        # (e.g. "leading" with steps_offset=1 at 1000 steps starts at t = 1000; diffusers'
        # "trailing" yields one timestep too many, ending at t = -1, for 61, 103, 121, ... steps).
        probe = copy.deepcopy(scheduler)
        probe.set_timesteps(steps)
        timesteps = torch.as_tensor(probe.timesteps)
        if len(timesteps) != steps or int(timesteps.min()) < 0 or int(timesteps.max()) >= num_train:
            spacing = getattr(scheduler.config, "timestep_spacing", "?")
            raise ValueError(
                f"DDPOConfig.sample_num_steps={steps}: the pipeline's {type(scheduler).__name__} "
                f"(timestep_spacing={spacing!r}) gives {len(timesteps)} timesteps from "
                f"{int(timesteps.max())} to {int(timesteps.min())} for it, outside [0, "
                f"{num_train}) or not one per step; choose another step count"
            )


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
