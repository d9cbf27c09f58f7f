"""`DDPOConfig`: every knob of a DDPO run, with TRL's field names and defaults.

The fields from ``exp_name`` to ``push_to_hub`` are TRL's ``DDPOConfig`` (TRL 0.11) with the same
names and defaults; the fields after them (``output_dir`` onwards) are what this library adds.
`DDPOConfig.validate` checks the whole config before any model is loaded; it runs in
``__post_init__`` (without the process count) and again in `DDPOTrainer` (with it). The rules
themselves are in :mod:`ddpo.trainer.config_checks`.
"""

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ddpo.trainer.config_checks import validate_config

LossType = Literal["ppo", "score_function"]
AdvantageMode = Literal["auto", "per_prompt", "global", "group", "group_global"]
KLConvention = Literal["exact", "flow_grpo"]
TimestepOrder = Literal["random", "first"]


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
    ``per_prompt_stat_tracking`` is set, else the policy's preferred mode: ``"group"`` for the
    flow-matching models (GRPO, as Flow-GRPO), ``"global"`` for the others)."""
    kl_coef: float = 0.0
    """Weight of a KL-to-reference penalty (Gaussian KL between the DDIM step means of the
    current and the pre-fine-tuning policy; ``kl_convention`` says how it is measured); 0
    disables it and its extra denoiser pass."""
    gradient_checkpointing: bool = False
    """Enable the denoiser's gradient checkpointing (less memory, more compute)."""
    hub_model_id: str = ""
    """Hub repository for ``push_to_hub`` (default: the run name)."""
    resume_allow_config_changes: bool = False
    """When resuming, accept changes to the fields that make the continued run differ from an
    uninterrupted one (seeds, sizes, sampler, loss and optimizer settings). Without it such
    changes are an error that lists them; fields that do not change the run (``num_epochs``,
    logging, ``save_freq``, ...) may always change."""

    on_policy_tolerance: float | None = None
    """The on-policy check: before an epoch's first optimizer step the weights are those that
    sampled, so every re-scored log-probability must equal the sampled one; the epoch stops
    with an error if some ``|log_prob - old_log_prob|`` exceeds this. None: 1e-3 in full
    precision, 5e-2 under ``fp16``/``bf16`` autocast (whose kernels may round a batch
    differently from a micro-batch). Raise it only for kernels that are not batch-invariant:
    sampling with classifier-free guidance and re-scoring without it differs by 8e-2 to 3.4 on
    the tiny models, rounding by about 1e-6."""

    # ----------------------------------------------------------------------------------------
    # Flow-GRPO's training conventions (docs/flow_models.md lists both sides and its config keys);
    # the defaults are DDPO's
    kl_convention: KLConvention = "exact"
    """How ``kl_coef``'s penalty measures the drift from the reference policy at a step:
    ``"exact"``, the KL between the two steps' Gaussians with the step's true standard deviation
    (for a flow SDE step ``std_t sqrt(-dt)``); ``"flow_grpo"``, Flow-GRPO's ``kl_loss``, the same
    squared mean gap over ``2 std_t^2``, without the step size: ``-dt`` times the exact KL
    (1/3.7 to 1/112 of it on SD3.5's 10-step schedule), so Flow-GRPO's ``train.beta`` ports to
    ``kl_coef`` with ``"flow_grpo"``. Offered by the policies whose ``score`` reports Flow-GRPO's
    ``std_dev_t`` (SD3, FLUX.1); the others refuse it before any model work."""
    train_drop_zero_advantages: bool = False
    """Train only on samples whose advantage is not 0, as Flow-GRPO does (e.g. a group whose
    rewards are all equal). Each process keeps its nonzero-advantage samples, topped up with
    zero-advantage ones drawn at random (seeded) to a multiple of its number of micro-batches,
    which stays ``sample_batch_size * sample_num_batches_per_epoch / train_batch_size``: the
    micro-batches shrink instead, so every process runs the same backward passes and optimizer
    steps. The epoch's metrics count the dropped samples of all processes
    (``num_dropped_samples``)."""
    train_timestep_order: TimestepOrder = "random"
    """Which ``int(K * train_timestep_fraction)`` of each trajectory's ``K`` recorded transitions
    train: ``"random"``, a fresh random subset per sample and inner epoch (DDPO); ``"first"``, the
    first ones in sampling order, the same for every sample (Flow-GRPO: at fraction 0.99 every
    step but the last; with a flow policy's SDE window, the window's steps, as Flow-GRPO-Fast
    at fraction 1)."""
    train_clip_range_low: float | None = None
    """PPO's lower clip bound: ratios below ``1 - train_clip_range_low`` are clipped (Flow-GRPO's
    ``train.clip_range_lt``). None: ``train_clip_range``."""
    train_clip_range_high: float | None = None
    """PPO's upper clip bound: ratios above ``1 + train_clip_range_high`` are clipped
    (Flow-GRPO's ``train.clip_range_gt``). None: ``train_clip_range``."""

    # ----------------------------------------------------------------------------------------
    # Initial noise shared by a prompt's samples (Flow-GRPO's sample.same_latent)
    sample_same_latent: bool = False
    """Start every sample of the same prompt in an epoch from the same initial noise ``x_T``
    (the steps' noise still differs), as Flow-GRPO's ``sample.same_latent``: ``x_T`` is drawn
    from a seed mixed from ``seed``, the epoch and the prompt's SHA-256, so a prompt's samples
    share it in any sampling batch, on any process, and after a resume. Needs a policy whose
    ``rollout`` takes ``initial_noise_generators`` (every built-in family's does); another is
    refused before sampling."""

    # ----------------------------------------------------------------------------------------
    # Throughput (`ddpo.trainer.speed`); none of these changes the math, only its speed
    compile_denoiser: bool = False
    """``torch.compile`` the denoiser regionally: each of its repeated blocks (diffusers'
    ``_repeated_blocks``: the UNet's transformer blocks, SD3's and FLUX's transformer blocks) is
    compiled on its own, so compile time stays short. Sampling and training use it."""
    sample_cuda_graphs: bool = False
    """With ``compile_denoiser``: run the compiled blocks with CUDA graphs
    (``mode="reduce-overhead"``) when no gradient is taken (the fixed-shape sampling loop, the
    reference policy); training keeps the default mode. Needs a GPU: on a CPU the run samples
    compiled without graphs (and logs a warning)."""
    channels_last: bool = False
    """Keep the denoiser's convolution weights in channels-last memory format (faster
    convolutions on tensor-core GPUs)."""
    prompt_embedding_cache_size: int = 0
    """Keep the text embeddings of up to this many distinct prompts (with the negative prompt)
    and encode only prompts not seen before; the least recently used are dropped. For a fixed
    prompt set, its size. 0: encode every batch."""

    # ----------------------------------------------------------------------------------------
    # Held-out evaluation during training (`ddpo.evaluation`); off by default, as TRL had none
    eval_freq: int = 0
    """Evaluate on held-out prompts after every this many epochs' training (0: never). Each
    evaluation scores ``eval_num_prompts`` prompts of ``eval_prompt_set`` with the run's reward
    function and logs, per metric, ``eval/<metric>`` (the mean over prompts) with
    ``eval/<metric>_low`` and ``_high`` (its 95 % interval) in ``metrics.jsonl`` and the
    trackers; the reward is ``eval/reward``, each per-image number of its metadata
    ``eval/reward/<key>``. It draws from its own seeded generators, so the run trains exactly as
    without it and a resumed run logs the same rows. Every process evaluates the same prompts
    (the main process logs)."""
    eval_prompt_set: str = "shapes_heldout"
    """The evaluation prompts: a named set of `ddpo.evaluation.EVAL_PROMPT_SETS`
    (``shapes_heldout``, ``text_rendering_heldout``)."""
    eval_num_prompts: int = 16
    """Prompts per evaluation (the first of the set in its order seeded by ``seed``)."""
    eval_images_per_prompt: int = 1
    """Images drawn per evaluation prompt."""
    eval_sampler: Literal["deterministic", "policy"] = "deterministic"
    """``deterministic``: the family's deterministic sampler (DDIM at eta 0, the flow ODE), as
    Flow-GRPO evaluates; ``policy``: the stochastic sampler the run trains."""
    eval_num_steps: int = 0
    """Sampling steps of an evaluation (0: ``sample_num_steps``); guidance is
    ``sample_guidance_scale``, the batch ``sample_batch_size``."""

    # ----------------------------------------------------------------------------------------
    # An exponential moving average of the trained weights (Flow-GRPO's ``train.ema``)
    ema_decay: float = 0.0
    """Keep an EMA of the trained weights with this decay (0: none; Flow-GRPO uses 0.9 every 8
    steps). After optimizer step ``s`` (counted from 1), when ``s`` is a multiple of
    ``ema_update_every``, ``ema <- d ema + (1 - d) weights`` with ``d = min((1 + s) / (10 + s),
    ema_decay)`` (`ddpo.core.ema_decay_at`: diffusers' and Flow-GRPO's warm-up). The EMA
    weights are what held-out evaluation (``eval_freq``) scores, checkpoints save them (resume
    is exact), and with ``ema_save_final`` the run also writes them as ``final_ema/``. Sampling
    and training use the trained weights."""
    ema_update_every: int = 1
    """Update the EMA after every this many optimizer steps (Flow-GRPO: 8)."""
    ema_convention: Literal["step", "flow_grpo"] = "step"
    """When the EMA updates. ``step``: once per optimizer step, as above. ``flow_grpo``:
    Flow-GRPO's ``train_sd3.py``, which steps its EMA after every training micro-batch with the
    optimizer steps taken so far, ``s``, and updates when ``(s + 1) % ema_update_every == 0``
    (the same decay), so with gradient accumulation it updates once per micro-batch of those
    steps (e.g. 8 times in a row with 8 accumulated micro-batches)."""
    ema_save_final: bool = True
    """With ``ema_decay``: besides ``final/`` (the trained weights), write ``final_ema/``, the
    same pipeline with the EMA weights."""
    ema_sampling: bool = False
    """With ``ema_decay``: sample each epoch with the EMA weights (an off-policy sampler, as
    AWM's ``train.off_policy``), and run the objective's per-epoch preparation with them (AWM's
    old surrogate); the policy gradient's ratios are then those of the trained weights to the
    EMA's, so the trainer's on-policy check does not apply. Not with ``algorithm="nft"``,
    which samples with its own old policy."""

    # ----------------------------------------------------------------------------------------
    # MixGRPO's sliding window (Li et al., 2025)
    sde_window_schedule: Literal["fixed", "sliding"] = "fixed"
    """Where a flow policy's stochastic window (its ``sde_window_size``) lies each epoch.
    ``fixed``: the policy's own ``sde_window_start`` (or one drawn per rollout). ``sliding``:
    MixGRPO's progressive schedule (`ddpo.core.sliding_window_start`): it starts at the first
    step it can take and moves ``sliding_window_stride`` steps every
    ``sliding_window_shift_interval`` epochs, stopping at the last whole window (or starting over
    with ``sliding_window_roll_back``); each epoch logs ``sde_window_start``."""
    sliding_window_shift_interval: int = 25
    """Epochs per window position (MixGRPO's ``iters_per_group``, 25)."""
    sliding_window_stride: int = 0
    """Steps per move (0: the window's size, MixGRPO's default; its ``prog_overlap_step`` with
    overlap)."""
    sliding_window_roll_back: bool = False
    """Start the window over from the first step past the end (MixGRPO's ``roll_back``)."""
    sliding_window_strategy: Literal["progressive", "decay", "exp_decay"] = "progressive"
    """How long the window stays at each position (MixGRPO's ``sample_strategy``;
    `ddpo.core.sliding_window_start`): ``progressive``, ``sliding_window_shift_interval`` epochs
    everywhere; ``decay``, from that at the first step down linearly to
    ``sliding_window_min_shift_interval`` at the last start; ``exp_decay``, that until step
    ``sliding_window_decay_threshold``, then exponentially fewer at
    ``sliding_window_decay_rate`` per step."""
    sliding_window_min_shift_interval: int = 1
    """``decay``'s epochs at the last start (MixGRPO's ``min_iters_per_group``, 1; its
    ``max_iters_per_group``, 10 in its scripts, is ``sliding_window_shift_interval``)."""
    sliding_window_decay_threshold: int = 13
    """``exp_decay``'s last step held ``sliding_window_shift_interval`` epochs (MixGRPO's
    ``exp_decay_thre_timestep``, 13)."""
    sliding_window_decay_rate: float = 0.1
    """``exp_decay``'s rate per step past the threshold (MixGRPO's ``exp_decay_k``, 0.1)."""

    # ----------------------------------------------------------------------------------------
    # The algorithm (`docs/algorithms.md`; `ddpo.trainer.algorithms.objective_from_config`)
    algorithm: Literal["ddpo", "nft", "awm", "dpo", "draft", "draft_lv", "alignprop"] = "ddpo"
    """What the trainer optimises. ``ddpo``: DDPO's and Flow-GRPO's policy gradient on the
    sampler's steps (``loss_type``, the clip range, ``kl_coef``). ``nft``: DiffusionNFT
    (Zheng et al., 2025) on the forward process, sampling with its old policy. ``awm``:
    Advantage Weighted Matching (Xue et al., 2025), PPO's clip on the matching-loss surrogate
    (``train_clip_range``, ``kl_coef``). ``dpo``: online Diffusion-DPO (Wallace et al., 2023)
    on pairs of each prompt's samples, which needs repeated prompts. ``nft``, ``awm`` and
    ``dpo`` train on the final latents at timesteps of their own, CFG-free, with any family of
    ``ddpo.adapters``. ``draft`` (DRaFT-K, Clark et al., 2023) and ``alignprop`` (Prabhudesai
    et al., 2023): reward backpropagation through the last ``backprop_grad_steps`` sampling
    steps with a differentiable ``reward_function``, on one process; ``draft_lv``: DRaFT-LV,
    the last step taken again ``backprop_lv_samples`` times from fresh noise."""
    train_num_timesteps: int = 0
    """Timesteps each sample (a pair for ``dpo``) trains at per inner epoch with ``nft``,
    ``awm`` and ``dpo``, one backward pass each. 0: the algorithm's default: ``nft``, the
    sampler's ``int(sample_num_steps * train_timestep_fraction)`` (the authors'); ``awm``,
    ``min(6, sample_num_steps - 1)`` (its GenEval recipe's 6); ``dpo``, 1 (the authors')."""
    backprop_grad_steps: int = 1
    """``draft``: the last sampling steps whose graph the reward is backpropagated through
    (DRaFT-K's ``K``; DRaFT's best was 1); ``alignprop``: the largest of them, drawn uniformly
    in ``[1, backprop_grad_steps]`` per micro-batch."""
    backprop_lv_samples: int = 2
    """``draft_lv``: the re-noised last steps per image (DRaFT-LV's ``n``, the paper's 2)."""
    backprop_base_pull: float = 0.0
    """``draft``, ``draft_lv`` and ``alignprop``: a weight-decay pull toward the weights the run
    started from (the base model; with LoRA, the base model's adapters at zero), ``c sum
    (theta - theta_0)^2`` added to ``-mean(reward)``, against reward hacking (DRaFT's
    regularisation of the fine-tuned weights); 0: none."""
    nft_beta: float = 1.0
    """DiffusionNFT's implicit-policy step ``beta`` (the paper's 1; 0.1 in its OCR recipe)."""
    nft_decay_type: int = 1
    """DiffusionNFT's old-policy schedule (`ddpo.core.nft_old_policy_decay`): 1, ``min(0.001
    s, 0.5)`` after ``s`` optimizer steps (the paper's); 2, its OCR recipe's; 0, none."""
    awm_weighting: Literal["uniform", "sigma", "sigma_squared", "ghuber"] = "uniform"
    """AWM's surrogate weighting (`ddpo.core.awm_log_likelihood`; the paper's ``uniform``, its
    GenEval recipe's ``ghuber``; the others need a flow model)."""
    awm_ghuber_power: float = 0.25
    """The power of AWM's ``ghuber`` weighting (its recipe's 0.25)."""
    awm_kl_weighting: Literal["uniform", "elbo"] = "uniform"
    """How ``kl_coef``'s AWM regulariser weighs the velocity distance (`ddpo.core.
    awm_kl_penalty`; the recipe's ``uniform``; ``elbo`` needs a flow model)."""
    dpo_beta: float = 5000.0
    """Diffusion-DPO's ``beta`` (the paper's 5000 for SD 1.5, 2500 for SDXL)."""
    dpo_pairs: Literal["best_worst", "halves", "all"] = "best_worst"
    """Diffusion-DPO's pairs per prompt group (the samples of one prompt string): its best and
    worst sample; ``halves``, its better half against its worse half rank by rank; or every
    two."""

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------------------
    @property
    def resolved_advantage_mode(self) -> str:
        """The advantage mode in use: ``advantage_mode`` with ``"auto"`` resolved (TRL's flag)."""
        return self.resolve_advantage_mode()

    def resolve_advantage_mode(self, preferred: str | None = None) -> str:
        """``advantage_mode`` with ``"auto"`` resolved: per-prompt when
        ``per_prompt_stat_tracking`` is set (TRL's flag), else ``preferred`` (a policy's
        ``preferred_advantage_mode``), else ``"global"``."""
        if self.advantage_mode == "auto":
            if self.per_prompt_stat_tracking:
                return "per_prompt"
            return preferred or "global"
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

        The rules are `ddpo.trainer.config_checks.validate_config`.

        Args:
            num_processes: number of accelerate processes, when known (the trainer passes it);
                needed for the rule that an epoch splits into whole optimizer steps.
        """
        validate_config(self, num_processes=num_processes)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
