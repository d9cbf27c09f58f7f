"""``ddpo train``: the wiring of a training run (its flags parsed by :mod:`ddpo.cli`).

`run_train` checks the flags, builds the prompt function (:mod:`ddpo.prompts`), the reward
(:mod:`ddpo.rewards.registry`), the image hook, the pipeline and the trainer, trains, writes the
reward curve and prints the epoch table (:mod:`ddpo.reporting`), and uploads the final pipeline
last. The defaults of `TrainArgs` are the default preset's (:mod:`ddpo.presets`).
"""

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ddpo.presets import DEFAULT_SETTINGS, PRESETS, PresetName, default_preset
from ddpo.prompts import PromptSetName, RepeatPrompts, training_prompt_fn
from ddpo.rewards.registry import (
    RewardFn,
    RewardOptions,
    check_reward_options,
    summary_keys_for,
)
from ddpo.rewards.registry import (
    build_reward_fn as build_named_reward_fn,
)
from ddpo.trainer.config import DDPOConfig

__all__ = [
    "RESUMABLE_TRAIN_ARGS",
    "HubUploadError",
    "TrainArgs",
    "TrainResult",
    "build_reward_fn",
    "check_reward_flags",
    "check_train_values",
    "preset_prompt_fn",
    "run_settings",
    "run_train",
    "setup_train",
    "train_and_report",
]


@dataclass
class TrainArgs:
    """Fine-tune a text-to-image diffusion model with DDPO (``ddpo train``)."""

    preset: PresetName = "default"
    """Start from a preset (`ddpo.presets.PRESETS`); the other flags given override its values.
    ``default``: the tiny shapes run below. ``flow_grpo_sd3``: Flow-GRPO's SD3.5 Medium run
    (`ddpo.presets.flow_grpo_sd3_preset` for the launch's process count, ``WORLD_SIZE``:
    1, 2, 4, 8 or 16; 512 px, LoRA rank 32 and alpha 64, the OCR reward on ``text_rendering``
    prompts, 24 images per prompt). ``flow_grpo_tiny``: Flow-GRPO's algorithm on the packaged
    ``ddpo-tiny-shapes-flow`` with the alignment reward, sized for a CPU
    (`ddpo.presets.flow_grpo_tiny_preset`). ``nft_tiny``, ``awm_tiny``, ``dpo_tiny``,
    ``draft_tiny``: DiffusionNFT, AWM, online Diffusion-DPO and DRaFT-1 (on the alignment
    reward's differentiable form) on the same run, with their papers' settings
    (`ddpo.presets.algorithm_tiny_preset`). ``mixgrpo_tiny``: Flow-GRPO with a window of 2 SDE
    steps that MixGRPO's schedule slides over the steps (`ddpo.presets.mixgrpo_tiny_preset`)."""
    ddpo_config: DDPOConfig = field(default_factory=default_preset)
    """The DDPO run (TRL's `DDPOConfig` fields); defaults: the preset's."""
    algorithm: Literal["ddpo", "nft", "awm", "dpo", "draft", "draft_lv", "alignprop"] | None = None
    """What to train (``--ddpo_config.algorithm``, which this sets; default: the config's,
    ``ddpo``): ``ddpo``, DDPO's and Flow-GRPO's policy gradient; ``nft``, DiffusionNFT; ``awm``,
    Advantage Weighted Matching; ``dpo``, online Diffusion-DPO on pairs of each prompt's images
    (needs ``--prompt_repeats`` of 2 or more), or offline with ``--preference_data``;
    ``draft``, DRaFT-K, and ``alignprop``, AlignProp: reward backpropagation through the last
    ``--ddpo_config.backprop_grad_steps`` steps, with the differentiable form of ``--reward``
    (one process); ``draft_lv``, DRaFT-LV. See ``docs/algorithms.md``."""
    preference_data: str | None = None
    """With ``--algorithm dpo``: train offline on this preference data set instead of sampling:
    a ``.parquet`` file or a folder of shards in the Pick-a-Pic layout (``caption``, ``jpg_0``,
    ``jpg_1``, ``label_0``; ties dropped), or a folder with ``pairs.jsonl`` (``prompt``,
    ``preferred``, ``other`` image paths). Read and checked before the model loads; each image
    is encoded by the model's VAE once and cached (``--preference_cache``). An epoch trains on
    ``sample_batch_size * sample_num_batches_per_epoch`` pairs; ``--reward`` and ``--prompts``
    serve only held-out evaluation (``eval_freq``)."""
    preference_limit: int = 0
    """Read at most this many pairs of ``--preference_data`` (0: all)."""
    preference_cache: str | None = None
    """Folder of the encoded preference images (default ``$XDG_CACHE_HOME/ddpo/
    preference_latents``, ``~/.cache`` without it); keyed by the image, the resolution and the
    VAE, so a changed model or size encodes again."""
    pretrained_model: str = DEFAULT_SETTINGS.pretrained_model
    """Model to fine-tune: a built-in name (``ddpo-tiny-shapes``, ``ddpo-tiny-shapes-flow``, or a
    family's tiny random model, ``ddpo-tiny-<family>-random``), a local diffusers folder, or a
    hub id. The family is read from the folder's ``model_index.json`` (the families are listed
    at the top of this help, from `ddpo.adapters.families.FAMILIES`)."""
    pretrained_revision: str = "main"
    """Hub revision of ``pretrained_model``."""
    use_lora: bool = DEFAULT_SETTINGS.use_lora
    """Train LoRA adapters on the denoiser's attention (True) or the whole denoiser (False): the
    UNet (SD, SDXL) or the transformer (SD3, FLUX.1)."""
    lora_rank: int = DEFAULT_SETTINGS.lora_rank
    """Rank of the LoRA adapters (``use_lora`` only)."""
    lora_alpha: float | None = None
    """Alpha of new LoRA adapters (their update is scaled by alpha / rank); default: the rank
    (Flow-GRPO's LoRA: twice the rank)."""
    resolution: int | None = None
    """Side of the square training images in pixels, a multiple of 8 (default: the model's
    native size: 512 for SD 1.5, 1024 for SDXL, SD3 and FLUX.1, 64 for the tiny models)."""
    noise_level: float | None = None
    """Flow-matching models (SD3, FLUX.1): the noise level of Flow-GRPO's SDE sampler, > 0 (default
    0.7); 0 samples with the deterministic ODE, for ``--algorithm nft``, ``awm`` or ``dpo``
    (the default with ``nft`` and ``awm``, as their authors sample deterministically). DDIM
    models use ``--ddpo_config.sample_eta`` instead."""
    sde_window_size: int | None = None
    """Flow-matching models: sample only this many consecutive steps with the SDE and train
    only those (the others are deterministic ODE steps: Flow-GRPO-Fast); default: every step."""
    sde_window_start: int | None = None
    """Flow-matching models: the first step of the SDE window (default: drawn per sampling
    batch from its seeded generator)."""
    sde_window_range: tuple[int, int] | None = None
    """Flow-matching models: ``LOW HIGH``, draw the SDE window's start in ``[LOW, HIGH -
    sde_window_size]``, so the window lies in steps ``LOW..HIGH - 1`` (Flow-GRPO's
    ``sample.sde_window_range``); default: every start that fits."""
    post_window_solver: Literal["euler", "dpmsolver++"] | None = None
    """Flow-matching models with ``--sde_window_size``: the deterministic steps after the window,
    Euler's (the default) or the second-order DPM-Solver++ (``dpmsolver++``: MixGRPO-Flash's)."""
    post_window_step_ratio: float | None = None
    """Flow-matching models with ``--sde_window_size``: MixGRPO-Flash's
    ``dpm_post_compress_ratio`` in (0, 1], fewer steps after the window (0.4 in its scripts);
    default 1, as many as the schedule has."""
    sde_type: Literal["sde", "cps"] | None = None
    """Flow-matching models: Flow-GRPO's ``sample.sde_type``, its SDE step (``sde``, the
    default) or the coefficients-preserving step (``cps``: noise level in (0, 1], Flow-GRPO's
    log-probability without constants; the last step is an ODE step)."""
    lora_targets: Literal["attention", "attention_ff"] | None = None
    """Flow-matching models: new LoRA adapters on the transformer's ``attention`` projections
    (the default) or on those and the feed-forward layers (``attention_ff``, as Flow-GRPO's FLUX
    LoRA)."""
    reward: str = DEFAULT_SETTINGS.reward
    """Reward function: one name, or a weighted sum such as ``pickscore:1.0,ocr:0.5``
    (a bare name weighs 1). The names:
    ``alignment``: programmatic prompt alignment (shapes prompts only);
    ``jpeg_compressibility``: minus the JPEG size in kB;
    ``jpeg_incompressibility``: plus the JPEG size in kB;
    ``aesthetic``: the LAION aesthetic predictor on CLIP ViT-L/14;
    ``brightness``: the mean pixel value;
    ``clip_score``: CLIPScore, 2.5 * max(cos, 0) of CLIP image and prompt embeddings;
    ``pickscore``: PickScore v1, a CLIP-H human-preference score of image and prompt;
    ``hps``: Human Preference Score v2;
    ``image_reward``: ImageReward, a BLIP human-preference score;
    ``ocr``: the prompt's quoted text read back by OCR, 1 - normalised edit distance;
    ``temporal_consistency``: videos only, the mean cosine similarity of consecutive frames
    (low-resolution pixels, or a CLIP's embeddings named by ``reward_model``);
    ``remote``: scores from a reward server (``--remote_reward_url``)."""
    reward_model: dict[str, str] = dataclasses.field(default_factory=dict)
    """Model overrides of the rewards, as ``NAME PATH`` pairs (hub id or local path): names
    ``clip_score``, ``pickscore``, ``pickscore_processor``, ``hps``, ``hps_tokenizer``,
    ``image_reward``, ``image_reward_tokenizer``, ``temporal_consistency`` (a CLIP for its
    features); a reward not named loads its default model (``temporal_consistency``: none).
    Every model's files are checked before the diffusion model loads (offline with
    ``HF_HUB_OFFLINE=1``: they must be in the Hugging Face cache, or given here as folders)."""
    reward_device: str | None = None
    """Device of the model-based rewards (e.g. ``cuda:1``); default CUDA when available, else
    CPU (``ocr`` runs on CPU unless set)."""
    reward_batch_size: int = 32
    """Images per forward pass of the model-based rewards."""
    remote_reward_url: str | None = None
    """URL of the reward server of the ``remote`` reward."""
    remote_reward_token: str | None = None
    """Bearer token for the reward server."""
    remote_reward_timeout: float = 60.0
    """Seconds to wait for the reward server per request."""
    prompts: PromptSetName = DEFAULT_SETTINGS.prompts
    """Prompt function: ``shapes`` (the tiny model's caption grammar), ``simple_animals``,
    ``imagenet_animals`` (ImageNet classes 0-397), ``nouns_activities`` ("a cat riding a bike"),
    ``text_rendering`` (a quoted word on a thing, 'a wooden sign that says "OPEN"': for ``ocr``)."""
    hf_user_access_token: str | None = None
    """Hugging Face token, used to upload the final pipeline when
    ``--ddpo_config.push_to_hub`` is set."""
    aesthetic_clip_model: str = RewardOptions.aesthetic_clip_model
    """CLIP model of the ``aesthetic`` reward (hub id or local folder)."""
    aesthetic_mlp_weights: str = RewardOptions.aesthetic_mlp_weights
    """Aesthetic MLP weights (``.safetensors``/``.pth`` file, folder, or hub repository holding
    ``aesthetic-model.pth``)."""
    prompt_repeats: int = DEFAULT_SETTINGS.prompt_repeats
    """Draw each prompt this many times in a row, so that the group advantage modes compare
    images of the same prompt (1: a fresh prompt for every image)."""
    prompt_pool: int = DEFAULT_SETTINGS.prompt_pool
    """Train on a fixed pool of this many prompts. They are drawn once from ``--prompts``
    (seeded by ``ddpo_config.seed``) and then taken in turn, as the paper trains on a fixed
    prompt list. 0: a fresh prompt each draw."""
    grid_images: int = 16
    """Images per epoch in the ``images/epoch_NNNN.png`` grid."""
    verbose: bool = False
    """Show diffusers', transformers' and huggingface_hub's loading progress bars and messages
    (``ddpo train`` keeps them quiet by default)."""

    def __post_init__(self) -> None:
        if self.algorithm is not None and self.algorithm != self.ddpo_config.algorithm:
            self.ddpo_config = dataclasses.replace(self.ddpo_config, algorithm=self.algorithm)
        # A bad value, --reward or reward option is reported while the flags are parsed.
        check_train_values(self)
        check_reward_flags(self)


@dataclass
class TrainResult:
    """What `run_train` produced."""

    output_dir: Path
    metrics: list[dict[str, Any]]
    """The run's ``metrics.jsonl`` records, each with its epoch's reward-metadata means
    (``<key>_mean``, e.g. ``accuracy_mean``; see `ddpo.reporting.merge_epoch_means`)."""
    reward_curve: Path
    final_dir: Path
    hub_repo: str | None = None


class HubUploadError(RuntimeError):
    """The upload to the Hub failed; the message says where the local files are."""


def _reward_options(args: TrainArgs) -> RewardOptions:
    """The `RewardOptions` of the reward flags of ``args``."""
    return RewardOptions(
        args.aesthetic_clip_model,
        args.aesthetic_mlp_weights,
        token=args.hf_user_access_token,
        models=dict(args.reward_model),
        device=args.reward_device,
        batch_size=args.reward_batch_size,
        remote_url=args.remote_reward_url,
        remote_token=args.remote_reward_token,
        remote_timeout=args.remote_reward_timeout,
    )


def build_reward_fn(args: TrainArgs) -> RewardFn:
    """The reward function of ``args.reward``, a name or a weighted sum
    (`ddpo.rewards.registry.build_reward_fn`).

    Raises:
        ValueError: for a bad ``--reward`` or reward option, or ``alignment`` (alone or in a
            sum) with prompts other than ``shapes``; all before any model loads.
        ImportError: naming the extra to install when a reward's packages are missing.

    With ``--algorithm draft`` or ``alignprop`` it is the reward's differentiable form.
    """
    differentiable = args.ddpo_config.algorithm in BACKPROP_ALGORITHMS
    return build_named_reward_fn(
        args.reward, check_reward_flags(args), differentiable=differentiable
    )


BACKPROP_ALGORITHMS: tuple[str, ...] = ("draft", "draft_lv", "alignprop")
"""The algorithms that backpropagate the reward (its differentiable form)."""


def preset_args(name: str, *, num_processes: int = 1) -> TrainArgs:
    """The `TrainArgs` of preset ``name`` (`ddpo.presets.PRESETS`) for a run of ``num_processes``
    processes: what ``ddpo train --preset NAME`` starts from.

    Raises:
        ValueError: for an unknown preset, or a process count the preset does not take.
    """
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    settings, make_config = PRESETS[name]
    values = dataclasses.asdict(settings)
    return TrainArgs(preset=name, ddpo_config=make_config(num_processes), **values)  # type: ignore[arg-type]


def check_train_values(args: TrainArgs) -> None:
    """Check the values of the flags that are not `DDPOConfig`'s nor the reward's; cheap.

    Raises:
        ValueError: naming the flag and its value.
    """
    if args.grid_images <= 0:
        raise ValueError(f"grid_images must be positive, got {args.grid_images}")
    if args.lora_rank <= 0:
        raise ValueError(f"lora_rank must be positive, got {args.lora_rank}")
    if args.lora_alpha is not None and not (args.lora_alpha > 0 and math.isfinite(args.lora_alpha)):
        raise ValueError(f"lora_alpha must be positive and finite, got {args.lora_alpha}")
    if args.resolution is not None and (args.resolution <= 0 or args.resolution % 8):
        raise ValueError(f"resolution must be a positive multiple of 8, got {args.resolution}")
    noise_level = args.noise_level
    if noise_level is not None and not (noise_level >= 0 and math.isfinite(noise_level)):
        raise ValueError(f"noise_level must be >= 0 and finite, got {noise_level}")
    if noise_level == 0 and args.ddpo_config.algorithm == "ddpo":
        raise ValueError(
            "noise_level 0 samples with the ODE, which has no step log-probabilities for the "
            "policy gradient (algorithm 'ddpo'): use it with --algorithm nft, awm or dpo"
        )
    if args.sde_window_size is not None and args.sde_window_size < 1:
        raise ValueError(f"sde_window_size must be >= 1, got {args.sde_window_size}")
    if args.sde_window_start is not None and args.sde_window_start < 0:
        raise ValueError(f"sde_window_start must be >= 0, got {args.sde_window_start}")
    if args.preference_data is not None and args.ddpo_config.algorithm != "dpo":
        raise ValueError(
            f"preference_data is Diffusion-DPO's offline data: it needs --algorithm dpo, got "
            f"algorithm {args.ddpo_config.algorithm!r}"
        )
    if args.ddpo_config.algorithm in BACKPROP_ALGORITHMS:
        from ddpo.rewards.registry import DIFFERENTIABLE_REWARDS, is_differentiable

        if not is_differentiable(args.reward):
            raise ValueError(
                f"algorithm {args.ddpo_config.algorithm!r} backpropagates the reward: --reward "
                f"{args.reward!r} has no differentiable form (those that do: "
                f"{', '.join(DIFFERENTIABLE_REWARDS)})"
            )
    if args.preference_limit < 0:
        raise ValueError(f"preference_limit must be >= 0 (0: all), got {args.preference_limit}")
    offline = args.preference_data is not None
    if args.ddpo_config.algorithm == "dpo" and not offline and args.prompt_repeats < 2:
        raise ValueError(
            f"algorithm 'dpo' pairs the images of each prompt: it needs prompt_repeats >= 2, "
            f"got {args.prompt_repeats} (or --preference_data for offline pairs)"
        )


def check_reward_flags(args: TrainArgs) -> RewardOptions:
    """Check ``--reward`` (a name or a weighted sum) and the reward options; cheap, nothing loads.

    Returns:
        The reward options of ``args``.

    Raises:
        ValueError: as `build_reward_fn`.
    """
    options = _reward_options(args)
    terms = check_reward_options(args.reward, options)
    if any(name == "alignment" for name, _ in terms) and args.prompts != "shapes":
        raise ValueError(
            f"reward='alignment' scores prompts of the shapes grammar only; got "
            f"prompts={args.prompts!r} (use --prompts=shapes or another reward)"
        )
    if any(name == "ocr" for name, _ in terms) and args.prompts != "text_rendering":
        raise ValueError(
            f"reward='ocr' reads back the quoted text of each prompt, and prompts="
            f"{args.prompts!r} quote none (use --prompts=text_rendering)"
        )
    return options


def preset_prompt_fn(args: TrainArgs, *, seed: int, process_index: int = 0) -> RepeatPrompts:
    """The prompt function of a run from ``--prompts``, ``--prompt_repeats`` and
    ``--prompt_pool`` (`ddpo.prompts.training_prompt_fn`)."""
    return training_prompt_fn(
        args.prompts,
        seed=seed,
        prompt_repeats=args.prompt_repeats,
        prompt_pool=args.prompt_pool,
        process_index=process_index,
    )


# ---------------------------------------------------------------------------------------------
# ddpo train
#
# The heavy modules (torch, diffusers, accelerate) are imported once the flags are checked, so
# that `--help` and a bad flag answer at once.


# ---------------------------------------------------------------------------------------------
# Resuming: the flags that change a run are recorded in its checkpoints and compared on resume

RESUMABLE_TRAIN_ARGS: tuple[str, ...] = (
    "ddpo_config",  # compared field by field (`ddpo.trainer.checkpoint.check_resume_config`)
    "preset",  # only sets the defaults of the other fields, which are compared
    "algorithm",  # only sets ddpo_config.algorithm, which is compared
    "preference_cache",  # where encoded images are cached, not what they are
    "reward_device",
    "reward_batch_size",
    "remote_reward_token",
    "remote_reward_timeout",
    "hf_user_access_token",
    "grid_images",
    "verbose",
)
"""`TrainArgs` fields that may change when a run resumes: devices, the reward models' batch
size, tokens, timeouts, the image grid, messages. Every other field changes the run
(`run_settings`); a new field is one of them until it is listed here."""


def run_settings(args: TrainArgs) -> dict[str, Any]:
    """The flags of ``args`` that change the run: every `TrainArgs` field but
    `RESUMABLE_TRAIN_ARGS` (the model, LoRA, resolution, the flow sampler, the reward and its
    models, the prompts), as JSON data; local paths absolute, the LoRA shape only with LoRA.

    Each checkpoint of ``ddpo train`` records them (section ``ddpo_train`` of
    ``run_settings.json``); a resume with other values is refused before the model loads,
    unless ``--ddpo_config.resume_allow_config_changes``.
    """
    settings: dict[str, Any] = {}
    for item in dataclasses.fields(args):
        if item.name not in RESUMABLE_TRAIN_ARGS:
            value = getattr(args, item.name)
            settings[item.name] = _recorded(value) if item.name in PATH_TRAIN_ARGS else value
    if not args.use_lora:
        for name in ("lora_rank", "lora_alpha", "lora_targets"):
            settings.pop(name, None)
    return dict(json.loads(json.dumps(settings)))


PATH_TRAIN_ARGS: tuple[str, ...] = (
    "pretrained_model",
    "preference_data",
    "reward_model",
    "aesthetic_clip_model",
    "aesthetic_mlp_weights",
)
"""`TrainArgs` fields that may name local files: recorded with existing paths made absolute
(other values, such as a prompt set called like a folder here, are recorded as given)."""


def _recorded(value: Any) -> Any:
    """A flag's value as recorded: an existing local path absolute (so that a resume from
    another folder names the same files), dicts value by value."""
    if isinstance(value, dict):
        return {key: _recorded(item) for key, item in value.items()}
    if isinstance(value, str) and value and Path(value).expanduser().exists():
        return str(Path(value).expanduser().resolve())
    return value


def _check_resume(args: TrainArgs) -> Any:
    """The checkpoint that ``--ddpo_config.resume_from`` names (or None), once checked as far
    as it can be before anything loads: every file present and undamaged, the config and the
    run-changing flags (`run_settings`) those it was written with.

    Raises:
        FileNotFoundError, ddpo.trainer.checkpoint.CheckpointError: naming the file or the
            changed settings.
    """
    from ddpo.trainer import checkpoint as ckpt

    config = args.ddpo_config
    if not config.resume_from:
        return None
    info = ckpt.resolve_resume(config.resume_from)[0]
    ckpt.verify_checkpoint(info.path)
    ckpt.check_resume_config(info.path, config)
    ckpt.check_resume_settings(
        info.path,
        "ddpo_train",
        run_settings(args),
        allow_changes=config.resume_allow_config_changes,
        what="ddpo train flags",
        key_prefix="--",
    )
    return info


def _check_resume_process(resume: Any, accelerator: Any, prompt_fn: Any) -> None:
    """What the checkpoint holds for this process, before the model loads: an RNG-state file
    per process of this run, this process's RNG states readable, and its prompt function's
    saved state fit for the prompt function built from the flags."""
    from ddpo.trainer import checkpoint as ckpt
    from ddpo.trainer.run_state import load_callable_states

    index = accelerator.process_index
    ckpt.verify_checkpoint(resume.path, num_processes=accelerator.num_processes, hashes=False)
    ckpt.check_rng_state(resume.path, index)
    load_callable_states(resume.path, index, {"prompt_function": prompt_fn})


@dataclass
class _TrainSetup:
    """What `run_train` builds before it trains."""

    args: TrainArgs
    trainer: Any
    hook: Any
    console: Any
    push: bool


def run_train(args: TrainArgs, *, console: Any = None) -> TrainResult:
    """Run ``ddpo train``: build reward, prompts, pipeline and trainer, train, report, push.

    Raises:
        ValueError: bad arguments (before any model loads).
        FileExistsError: the output folder is taken (before any model loads).
        HubUploadError: when ``push_to_hub`` is set and the upload fails (after saving).
    """
    return train_and_report(setup_train(args, console=console))


def setup_train(args: TrainArgs, *, console: Any = None) -> _TrainSetup:
    """Check the arguments and the output folder, then build prompts, reward, pipeline, trainer.

    Everything this raises is a bad flag, path or setting (`ddpo.cli.main` reports it in a line):
    also an output folder that cannot be written, a reward model whose files are neither local,
    cached nor on a reachable Hub, and a flag the model's family does not take.
    """
    from rich.console import Console

    from ddpo.cli_checks import check_writable_folder
    from ddpo.rewards.registry import check_reward_weights
    from ddpo.trainer.run_folder import check_output_dir

    console = console or Console()
    check_train_values(args)  # again: the fields may have changed since they were parsed
    options = check_reward_flags(args)
    config = args.ddpo_config
    # A taken or unwritable output folder is reported now, not after the model has loaded.
    check_output_dir(config)
    resume = _check_resume(args)
    run_folder = _run_folder(config)
    if run_folder is not None:
        check_writable_folder(run_folder[0], flag=run_folder[1])

    from ddpo.adapters.families import check_family_options, load_policy
    from ddpo.reporting import ImageGridHook
    from ddpo.trainer import DDPOTrainer
    from ddpo.trainer.setup import check_policy_supports

    # The trainer pushes without a token; we push ourselves once everything is on disk.
    trainer_config = dataclasses.replace(config, push_to_hub=False)

    # The model's family takes the sampler flags given (read from model_index.json only).
    family_options = {
        "noise_level": args.noise_level,
        "sde_window_size": args.sde_window_size,
        "sde_window_start": args.sde_window_start,
        "sde_window_range": args.sde_window_range,
        "sde_type": args.sde_type,
        "post_window_solver": args.post_window_solver,
        "post_window_step_ratio": args.post_window_step_ratio,
        "lora_targets": args.lora_targets,
    }
    family, _ = check_family_options(
        args.pretrained_model, args.pretrained_revision, family_options
    )
    # DiffusionNFT and AWM sample deterministically, as their authors do: a flow model's ODE,
    # unless --noise_level is given (the DDIM families sample at sample_eta > 0).
    deterministic = config.algorithm in DETERMINISTIC_SAMPLING_ALGORITHMS
    if deterministic and args.noise_level is None and "noise_level" in family.options:
        family_options["noise_level"] = 0.0
    # What the family's policy cannot run (CFG sampling re-scored without it, a sample_eta it
    # would ignore, a KL convention or shared initial noise it lacks) is refused now.
    check_policy_supports(family.policy_class(), trainer_config)

    # The reward models' files: local, cached, or on a reachable Hub (nothing loads yet).
    check_reward_weights(args.reward, options)
    # Offline preference pairs: every row read and checked now, before the model loads.
    pairs = None
    if args.preference_data is not None:
        from ddpo.data.preferences import read_preference_pairs

        pairs = read_preference_pairs(args.preference_data, limit=args.preference_limit or None)

    # Prompts (which check prompt_repeats and prompt_pool), reward, image hook, pipeline,
    # trainer.
    # The run's Accelerator, as the trainer would build it: accelerate's process state, which
    # every later accelerate call shares, takes the config's accelerator_kwargs ({"cpu": true}:
    # CPU processes that meet over gloo); the trainer sets its gradient accumulation.
    from ddpo.trainer.setup import make_accelerator

    accelerator = make_accelerator(trainer_config, accumulation_steps=1)
    prompt_fn = preset_prompt_fn(args, seed=config.seed, process_index=accelerator.process_index)
    if resume is not None:
        _check_resume_process(resume, accelerator, prompt_fn)
    reward_fn = build_reward_fn(args)
    hook = ImageGridHook(max_images=args.grid_images)
    pipeline = load_policy(
        args.pretrained_model,
        revision=args.pretrained_revision,
        resolution=args.resolution,
        family_options=family_options,
        use_lora=args.use_lora,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_rank if args.lora_alpha is None else args.lora_alpha,
    )
    objective = None if pairs is None else _offline_dpo(args, pipeline, pairs)
    trainer = DDPOTrainer(
        trainer_config,
        reward_fn,
        prompt_fn,
        pipeline,
        image_samples_hook=hook,
        accelerator=accelerator,
        objective=objective,
    )
    trainer.run_settings["ddpo_train"] = run_settings(args)  # recorded in each checkpoint
    hook.folder = Path(trainer.output_dir) / "images"
    hook.epoch = trainer.first_epoch
    return _TrainSetup(args, trainer, hook, console, config.push_to_hub)


DETERMINISTIC_SAMPLING_ALGORITHMS: tuple[str, ...] = ("nft", "awm")
"""The algorithms whose ``ddpo train`` runs sample a flow model with the ODE unless
``--noise_level`` is given (their authors' deterministic sampling)."""


def _offline_dpo(args: TrainArgs, pipeline: Any, pairs: Any) -> Any:
    """`ddpo.objectives.OfflineDiffusionDPO` of the pairs, encoded by the pipeline's VAE at its
    resolution (``--resolution``, or the model's) through the cache."""
    import os

    from ddpo.data.preferences import encode_preference_pairs
    from ddpo.objectives import OfflineDiffusionDPO

    resolution = args.resolution or getattr(pipeline, "resolution", None)
    if isinstance(resolution, tuple):
        resolution = resolution[0]
    if not isinstance(resolution, int):
        raise ValueError("preference_data: the model's resolution is not known; pass --resolution")
    cache = args.preference_cache
    if cache is None:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        cache = str(Path(base) / "ddpo" / "preference_latents")
    latents = encode_preference_pairs(pipeline, pairs, resolution=resolution, cache_dir=cache)
    config = args.ddpo_config
    return OfflineDiffusionDPO.from_latents(
        latents, beta=config.dpo_beta, num_train_timesteps=config.train_num_timesteps or 1
    )


def _run_folder(config: DDPOConfig) -> tuple[Path, str] | None:
    """The folder the run writes into (or the folder its timestamped run folder goes in) and the
    flag that sets it; None for a resumed run that continues in its own folder (which the resume
    checks read)."""
    if config.output_dir:
        return Path(config.output_dir), "--ddpo_config.output_dir"
    if config.run_name:
        return Path(config.logdir) / config.run_name, "--ddpo_config.logdir/run_name"
    return None if config.resume_from else (Path(config.logdir), "--ddpo_config.logdir")


def train_and_report(setup: _TrainSetup) -> TrainResult:
    """Train, then write the reward curve, print the table and push (`run_train`'s steps 2-4)."""
    from ddpo.reporting import merge_epoch_means, read_metrics, run_curve, run_table
    from ddpo.trainer.trainer import METRICS_FILENAME

    args, trainer, console = setup.args, setup.trainer, setup.console
    output_dir = Path(trainer.output_dir)
    main_process = trainer.accelerator.is_main_process

    # 2. Train (writes metrics.jsonl, tracker logs, checkpoints and final/).
    try:
        trainer.train()
    finally:
        trainer.close()
    final_dir = output_dir / "final"

    # 3. Report: each epoch's metrics with the means of the reward's numeric per-sample
    #    metadata (averaged by the image hook); the curve and table show the reward's summary
    #    keys (the registry's `summary_keys_for`, e.g. the alignment reward's `accuracy`).
    metrics = merge_epoch_means(read_metrics(output_dir / METRICS_FILENAME), setup.hook.epochs)
    summary_keys = summary_keys_for(args.reward)
    curve_path = output_dir / "reward_curve.png"
    if main_process and metrics and "reward_mean" in metrics[0]:  # offline data: no rewards
        title = f"{args.reward}: mean reward per epoch ({args.pretrained_model})"
        run_curve(metrics, summary_keys, title=title).save(curve_path)
        title = f"DDPO run: {args.reward} reward per epoch"
        console.print(run_table(metrics, summary_keys, title=title))
    if main_process:
        console.print(f"Run folder: {output_dir}  (final pipeline: {final_dir})")

    # 4. Upload last, once everything is saved.
    hub_repo = None
    if setup.push and main_process:
        hub_repo = _push(trainer, args.hf_user_access_token, output_dir, final_dir)
    return TrainResult(output_dir, metrics, curve_path, final_dir, hub_repo)


def _push(trainer: Any, token: str | None, output_dir: Path, final_dir: Path) -> str:
    try:
        return str(trainer.push_to_hub(token=token))
    except Exception as err:
        from huggingface_hub import constants

        raise HubUploadError(
            f"could not upload the final pipeline to the Hugging Face Hub at "
            f"{constants.ENDPOINT} (unreachable, offline, or refused: {err}). Nothing is lost: "
            f"the run is saved locally in {output_dir}, the final pipeline in {final_dir}."
        ) from err
