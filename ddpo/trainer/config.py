"""`DDPOConfig`: every knob of a DDPO run, with TRL's field names and defaults.

The fields from ``exp_name`` to ``push_to_hub`` are TRL's ``DDPOConfig`` (TRL 0.11) with the same
names and defaults; the fields after them (``output_dir`` onwards) are what this library adds.
`DDPOConfig.validate` checks the whole config before any model is loaded; it runs in
``__post_init__`` (without the process count) and again in `DDPOTrainer` (with it).
"""

import dataclasses
import importlib.util
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

LossType = Literal["ppo", "score_function"]
AdvantageMode = Literal["auto", "per_prompt", "global", "group", "group_global"]

LOSS_TYPES: tuple[str, ...] = ("ppo", "score_function")
ADVANTAGE_MODES: tuple[str, ...] = ("auto", "per_prompt", "global", "group", "group_global")
MIXED_PRECISIONS: tuple[str, ...] = ("no", "fp16", "bf16")
LOG_WITH: tuple[str, ...] = ("tensorboard", "wandb")
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
)
# Accelerator arguments that come from the config's own fields.
RESERVED_ACCELERATOR_KWARGS: tuple[str, ...] = (
    "log_with",
    "mixed_precision",
    "project_config",
    "project_dir",
    "gradient_accumulation_steps",
)


def _default_exp_name() -> str:
    # TRL took the script name minus ".py"; `Path.stem` gives the same for scripts and does not
    # chop three letters off names without the suffix (`pytest` -> `pytest`).
    return Path(sys.argv[0]).stem.lstrip("-") or "ddpo"


@dataclass
class DDPOConfig:
    """Configuration of `DDPOTrainer` (TRL-compatible field names and defaults).

    Sizes are per process, as in TRL: one epoch samples
    ``sample_batch_size * num_processes * sample_num_batches_per_epoch`` images, and one optimizer
    step sees ``train_batch_size * num_processes * train_gradient_accumulation_steps`` samples
    (times the number of trained timesteps, over which gradients are accumulated too).
    """

    # ----------------------------------------------------------------------------------------
    # Run identity and logging (TRL)
    exp_name: str = field(default_factory=_default_exp_name)
    """Name of the experiment (default: the running script's file name without extension).
    Used to build the run name when ``run_name`` is empty."""
    run_name: str = ""
    """Name of this run: names the output folder and the tracker run. Empty: ``<exp_name>_<UTC
    timestamp>``, a new folder for each run."""
    seed: int = 0
    """Seed of everything random in the loop: sampling noise and shuffles (derived from the seed,
    process index, epoch and batch) and the global Python/numpy/torch RNGs the prompt function
    may use (``seed + process index``)."""
    log_with: Literal["wandb", "tensorboard"] | None = None
    """Tracker: ``"tensorboard"`` (offline, writes event files under ``<output_dir>/logs``),
    ``"wandb"`` (needs wandb installed), or None for no tracker (metrics still go to
    ``<output_dir>/metrics.jsonl``)."""
    tracker_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the tracker's init (``accelerator.init_trackers(init_kwargs=...)``),
    e.g. ``{"wandb": {"entity": ...}}``."""
    accelerator_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for ``accelerate.Accelerator`` (e.g. ``{"cpu": True}``)."""
    project_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for ``accelerate.utils.ProjectConfiguration`` (e.g.
    ``logging_dir``); ``project_dir`` is always the run's output folder."""
    tracker_project_name: str = "trl"
    """Project name given to the tracker (``accelerator.init_trackers``)."""
    logdir: str = "logs"
    """Top-level folder of runs: the output folder is ``<logdir>/<run_name>`` unless
    ``output_dir`` is set."""

    # ----------------------------------------------------------------------------------------
    # Schedule, checkpoints, precision (TRL)
    num_epochs: int = 100
    """Number of epochs; each samples a batch of images, scores them and trains on them."""
    save_freq: int = 1
    """Write a checkpoint every ``save_freq`` epochs (and after the last epoch); 0 disables."""
    num_checkpoint_limit: int = 5
    """Keep at most this many complete checkpoints (the oldest are deleted); 0 keeps all."""
    mixed_precision: str = "fp16"
    """``"no"``, ``"fp16"`` or ``"bf16"`` (accelerate's autocast). fp16 needs a GPU: on a CPU-only
    run the trainer falls back to ``"no"`` and logs a warning."""
    allow_tf32: bool = True
    """Allow TF32 matmuls on Ampere or newer GPUs (``torch.backends.cuda.matmul.allow_tf32``)."""
    resume_from: str = ""
    """Resume from a checkpoint folder (``.../checkpoints/checkpoint_N``) or a run folder (its
    newest complete checkpoint). Empty: start fresh."""

    # ----------------------------------------------------------------------------------------
    # Sampling (TRL)
    sample_num_steps: int = 50
    """Number of DDIM steps when sampling (T, the length of each trajectory)."""
    sample_eta: float = 1.0
    """DDIM eta (> 0: DDPO needs a stochastic sampler to have log-probabilities)."""
    sample_guidance_scale: float = 5.0
    """Classifier-free guidance weight when sampling (and training, when ``train_cfg``)."""
    sample_batch_size: int = 1
    """Images per sampling batch, per process."""
    sample_num_batches_per_epoch: int = 2
    """Sampling batches per epoch, per process."""

    # ----------------------------------------------------------------------------------------
    # Training (TRL)
    train_batch_size: int = 1
    """Samples per training micro-batch, per process."""
    train_use_8bit_adam: bool = False
    """Use bitsandbytes' 8-bit AdamW (an error if bitsandbytes is not installed)."""
    train_learning_rate: float = 3e-4
    """AdamW learning rate."""
    train_adam_beta1: float = 0.9
    """AdamW beta1."""
    train_adam_beta2: float = 0.999
    """AdamW beta2."""
    train_adam_weight_decay: float = 1e-4
    """AdamW weight decay."""
    train_adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    train_gradient_accumulation_steps: int = 1
    """Micro-batches accumulated per optimizer step (gradients are also accumulated over the
    trained timesteps of each micro-batch)."""
    train_max_grad_norm: float = 1.0
    """Clip the gradient norm to this value at each optimizer step."""
    train_num_inner_epochs: int = 1
    """Passes over each epoch's samples (shuffled anew each pass)."""
    train_cfg: bool = True
    """Apply classifier-free guidance (``sample_guidance_scale``) when recomputing log-probs in
    training, as when sampling; False trains the conditional prediction alone."""
    train_adv_clip_max: float = 5.0
    """Clip advantages to ``[-train_adv_clip_max, train_adv_clip_max]``."""
    train_clip_range: float = 1e-4
    """PPO clip range epsilon on the probability ratio (``ppo`` loss only)."""
    train_timestep_fraction: float = 1.0
    """Fraction of each trajectory's timesteps trained on (a random subset per sample)."""
    per_prompt_stat_tracking: bool = False
    """Normalise rewards per prompt over a buffer of past rewards (``advantage_mode="auto"``
    then means ``"per_prompt"``; otherwise ``"global"``)."""
    per_prompt_stat_tracking_buffer_size: int = 16
    """Rewards kept per prompt by the per-prompt tracker."""
    per_prompt_stat_tracking_min_count: int = 16
    """Below this many buffered rewards a prompt is normalised with the whole batch's stats."""
    async_reward_computation: bool = False
    """Compute rewards in a thread pool while the next batch is sampled."""
    max_workers: int = 2
    """Threads of the reward pool (``async_reward_computation`` only)."""
    negative_prompts: str = ""
    """Negative prompt for classifier-free guidance (used for every sample); empty: the empty
    prompt, as in the paper."""
    push_to_hub: bool = False
    """After training, upload the final pipeline to the Hub (``hub_model_id``)."""

    # ----------------------------------------------------------------------------------------
    # Added by this library
    output_dir: str = ""
    """Run folder: checkpoints, ``metrics.jsonl``, tracker logs and final weights. Empty:
    ``<logdir>/<run_name>``. An existing non-empty folder is an error (never overwritten), except
    when resuming from a checkpoint inside it."""
    loss_type: LossType = "ppo"
    """``"ppo"`` (DDPO-IS: clipped importance-sampling ratio, the paper's main method) or
    ``"score_function"`` (DDPO-SF: REINFORCE; the paper pairs it with one optimizer step per
    epoch of samples)."""
    advantage_mode: AdvantageMode = "auto"
    """How rewards become advantages: ``"per_prompt"`` (normalise by per-prompt buffered stats,
    as the paper), ``"global"`` (normalise by the epoch's mean and std), ``"group"`` (normalise
    within the epoch's samples of each prompt, no buffer), ``"group_global"`` (centre within each
    prompt's samples, divide by the whole epoch's std: near-identical samples of a prompt get
    near-zero advantages instead of +-1), ``"auto"`` (TRL: per-prompt when
    ``per_prompt_stat_tracking`` is set, else global)."""
    kl_coef: float = 0.0
    """Weight of a KL-to-reference penalty (Gaussian KL between the DDIM step means of the
    current and the pre-fine-tuning policy); 0 disables it and its extra UNet pass."""
    gradient_checkpointing: bool = False
    """Enable the UNet's gradient checkpointing (less memory, more compute)."""
    hub_model_id: str = ""
    """Hub repository for ``push_to_hub`` (default: the run name)."""
    resume_allow_config_changes: bool = False
    """When resuming, accept changes to the fields that make the continued run differ from an
    uninterrupted one (seeds, sizes, sampler, loss and optimizer settings). Without it such
    changes are an error that lists them; fields that do not change the run (``num_epochs``,
    logging, ``save_freq``, ...) may always change."""

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------------------
    @property
    def resolved_advantage_mode(self) -> str:
        """The advantage mode in use: ``advantage_mode`` with ``"auto"`` resolved (TRL's flag)."""
        if self.advantage_mode == "auto":
            return "per_prompt" if self.per_prompt_stat_tracking else "global"
        return self.advantage_mode

    def to_dict(self) -> dict[str, Any]:
        """The config as a flat, JSON-serialisable dict (for trackers and checkpoints)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                for key, sub in value.items():
                    out[f"{f.name}/{key}"] = sub if _is_scalar(sub) else repr(sub)
            else:
                out[f.name] = value
        return out

    def validate(self, *, num_processes: int | None = None) -> None:
        """Check every field; raise ValueError (or ImportError) naming the field and the value.

        Args:
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
        )
        for name in int_fields:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"DDPOConfig.{name} must be an int, got {value!r}")
        # bool fields take True or False only: "False" is truthy and 0/1 hide a typo.
        for name in BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(
                    f"DDPOConfig.{name} must be True or False, got {value!r} "
                    f"({type(value).__name__})"
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
        )
        for name in float_fields:
            value = getattr(self, name)
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
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"DDPOConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("save_freq", "num_checkpoint_limit", "per_prompt_stat_tracking_min_count"):
            if getattr(self, name) < 0:
                raise ValueError(f"DDPOConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in (
            "train_learning_rate",
            "train_adam_epsilon",
            "train_max_grad_norm",
            "train_adv_clip_max",
            "train_clip_range",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"DDPOConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("train_adam_weight_decay", "kl_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"DDPOConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("train_adam_beta1", "train_adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(
                    f"DDPOConfig.{name} must be in [0, 1), got {getattr(self, name)!r}"
                )

        # 3. Seed, sampler and training-step ranges.
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(
                f"DDPOConfig.seed must be in [0, 2**32 - 1] (numpy's and accelerate's seeding "
                f"range), got {self.seed!r}"
            )
        if not 0 < self.sample_eta <= 1:
            raise ValueError(
                "DDPOConfig.sample_eta must be in (0, 1]: DDPO needs a stochastic DDIM sampler "
                "(eta > 0), and above 1 the step's standard deviation exceeds "
                "sqrt(1 - alpha_bar_prev), so the DDIM mean's coefficient "
                f"sqrt(1 - alpha_bar_prev - sigma_t^2) does not exist; got {self.sample_eta!r}"
            )
        if not 0.0 < self.train_timestep_fraction <= 1.0:
            raise ValueError(
                f"DDPOConfig.train_timestep_fraction must be in (0, 1], "
                f"got {self.train_timestep_fraction!r}"
            )
        if self.sample_guidance_scale < 0:
            raise ValueError(
                f"DDPOConfig.sample_guidance_scale must be >= 0, got {self.sample_guidance_scale!r}"
            )

        # 4. Batch rules (TRL's three).
        if self.sample_batch_size < self.train_batch_size:
            raise ValueError(
                f"DDPOConfig.sample_batch_size ({self.sample_batch_size}) must be >= "
                f"train_batch_size ({self.train_batch_size})"
            )
        if self.sample_batch_size % self.train_batch_size != 0:
            raise ValueError(
                f"DDPOConfig.sample_batch_size ({self.sample_batch_size}) must be a multiple of "
                f"train_batch_size ({self.train_batch_size})"
            )
        if num_processes is not None:
            if num_processes <= 0:
                raise ValueError(f"num_processes must be > 0, got {num_processes!r}")
            sampled = self.sample_batch_size * num_processes * self.sample_num_batches_per_epoch
            per_step = (
                self.train_batch_size * num_processes * self.train_gradient_accumulation_steps
            )
            if sampled % per_step != 0:
                raise ValueError(
                    "DDPOConfig: samples per epoch (sample_batch_size "
                    f"{self.sample_batch_size} x num_processes {num_processes} x "
                    f"sample_num_batches_per_epoch {self.sample_num_batches_per_epoch} = "
                    f"{sampled}) must be a multiple of samples per optimizer step "
                    f"(train_batch_size {self.train_batch_size} x num_processes {num_processes}"
                    f" x train_gradient_accumulation_steps "
                    f"{self.train_gradient_accumulation_steps} = {per_step})"
                )

        # 5. Choices.
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(
                f"DDPOConfig.mixed_precision must be one of {MIXED_PRECISIONS}, "
                f"got {self.mixed_precision!r}"
            )
        if self.log_with is not None and self.log_with not in LOG_WITH:
            raise ValueError(
                f"DDPOConfig.log_with must be None or one of {LOG_WITH}, got {self.log_with!r}"
            )
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(
                f"DDPOConfig.loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}"
            )
        if self.advantage_mode not in ADVANTAGE_MODES:
            raise ValueError(
                f"DDPOConfig.advantage_mode must be one of {ADVANTAGE_MODES}, "
                f"got {self.advantage_mode!r}"
            )
        if self.per_prompt_stat_tracking and self.advantage_mode not in ("auto", "per_prompt"):
            raise ValueError(
                f"DDPOConfig.per_prompt_stat_tracking=True contradicts "
                f"advantage_mode={self.advantage_mode!r}; set advantage_mode to 'per_prompt' "
                "or 'auto', or per_prompt_stat_tracking to False"
            )
        if (
            self.resolved_advantage_mode == "per_prompt"
            and self.per_prompt_stat_tracking_min_count > self.per_prompt_stat_tracking_buffer_size
        ):
            raise ValueError(
                "DDPOConfig.per_prompt_stat_tracking_min_count "
                f"({self.per_prompt_stat_tracking_min_count}) must be <= "
                "per_prompt_stat_tracking_buffer_size "
                f"({self.per_prompt_stat_tracking_buffer_size}) (a larger one would never use "
                "the buffer)"
            )
        for name in ("tracker_kwargs", "accelerator_kwargs", "project_kwargs"):
            if not isinstance(getattr(self, name), dict):
                raise TypeError(f"DDPOConfig.{name} must be a dict, got {getattr(self, name)!r}")
        for name in STR_FIELDS:
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"DDPOConfig.{name} must be a str, got {getattr(self, name)!r}")
        if not self.tracker_project_name:
            raise ValueError(
                "DDPOConfig.tracker_project_name must be a non-empty str (the trackers' project "
                f"name), got {self.tracker_project_name!r}"
            )
        if self.run_name and (os.sep in self.run_name or self.run_name in (".", "..")):
            raise ValueError(
                f"DDPOConfig.run_name must be a plain folder name, got {self.run_name!r}"
            )
        clash = sorted(set(self.accelerator_kwargs) & set(RESERVED_ACCELERATOR_KWARGS))
        if clash:
            raise ValueError(
                f"DDPOConfig.accelerator_kwargs must not set {clash} (they come from the config's "
                f"own fields), got {self.accelerator_kwargs!r}"
            )
        if "project_dir" in self.project_kwargs:
            raise ValueError(
                "DDPOConfig.project_kwargs must not set 'project_dir' (it is the run's "
                f"output folder; set output_dir instead), got {self.project_kwargs!r}"
            )

        # 6. Optional dependencies.
        if self.train_use_8bit_adam and importlib.util.find_spec("bitsandbytes") is None:
            raise ImportError(
                "DDPOConfig.train_use_8bit_adam=True needs bitsandbytes, which is not installed "
                "(pip install bitsandbytes), or set train_use_8bit_adam=False"
            )
        if self.log_with == "wandb" and importlib.util.find_spec("wandb") is None:
            raise ImportError(
                "DDPOConfig.log_with='wandb' needs wandb, which is not installed "
                "(pip install wandb), or use log_with='tensorboard'"
            )


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
