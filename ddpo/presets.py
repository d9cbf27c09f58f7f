"""Presets: settings of whole training runs, as data.

:func:`default_preset` is the `DDPOConfig` of the default ``ddpo train`` run and
:data:`DEFAULT_SETTINGS` the rest of that run (model, LoRA, reward, prompts); ``ddpo train``
with no flags and ``examples/ddpo.py`` take their defaults from here.

:func:`flow_grpo_sd3_preset` and :data:`FLOW_GRPO_SD3_SETTINGS` are Flow-GRPO's SD3.5 Medium
configuration (Liu et al., 2025) in this library's fields (``ddpo train --preset flow_grpo_sd3``).
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ddpo._typing import no_type_check
from ddpo.prompts import PromptSetName
from ddpo.rewards.registry import RewardName
from ddpo.trainer.config import DDPOConfig

__all__ = [
    "DEFAULT_SETTINGS",
    "FLOW_GRPO_SD3_PROCESSES",
    "FLOW_GRPO_SD3_SETTINGS",
    "FLOW_GRPO_TINY_SETTINGS",
    "MIXGRPO_TINY_SETTINGS",
    "PRESETS",
    "PresetName",
    "PresetSettings",
    "default_preset",
    "flow_grpo_sd3_preset",
    "flow_grpo_tiny_preset",
    "mixgrpo_tiny_preset",
]


def default_preset() -> DDPOConfig:
    """The config of the default ``ddpo train`` run on ``ddpo-tiny-shapes``.

    `DDPOConfig()` itself keeps TRL's defaults. These values come from short runs measured on
    the tiny shapes model (README and ``docs/tiny_shapes.md`` give the figures):

    - 128 samples per epoch of the 2 prompts of ``DEFAULT_SETTINGS.prompt_pool``, 16 in a row
      each: the reward rose only with many images per prompt;
    - ``seed=2``, which draws the pool "a yellow square on a gray background" and "a purple
      triangle in the center on a green background": shapes the model draws right about half
      the time. With it the alignment accuracy rose 0.45 -> 0.61 in 18 epochs (reward 0.634 ->
      0.654). Seeds 0, 1 and 6 draw pools with a cross the model never draws, or a shape it
      draws right a third of the time, and their accuracy stayed flat in 18 epochs;
    - ``advantage_mode="group_global"``: each prompt's rewards centred, divided by the batch
      std, so that a prompt whose images all score alike gets advantages near 0, not +-1;
    - guidance 1 and 5 DDIM steps, 4 times cheaper per image than guidance 7.5 and 10 steps.

    Other settings left the reward flat or made it fall: a fresh prompt per group (8 per
    epoch), 10 DDIM steps, guidance 3 or 7.5 with 32 samples per epoch, full-UNet learning
    rates of 2e-4 and above (with train batch 8), and LoRA at 1e-3.
    """
    return DDPOConfig(
        exp_name="ddpo",
        seed=2,
        num_epochs=18,
        save_freq=6,
        num_checkpoint_limit=1,
        mixed_precision="no",
        log_with="tensorboard",
        tracker_project_name="ddpo",
        sample_num_steps=5,
        sample_eta=1.0,
        sample_guidance_scale=1.0,
        sample_batch_size=16,
        sample_num_batches_per_epoch=8,
        train_batch_size=8,
        train_gradient_accumulation_steps=1,
        train_learning_rate=1e-4,
        train_clip_range=0.1,
        train_adv_clip_max=5.0,
        train_timestep_fraction=0.6,
        train_num_inner_epochs=1,
        train_cfg=True,
        advantage_mode="group_global",
        per_prompt_stat_tracking=False,
    )


@dataclass(frozen=True)
class PresetSettings:
    """What a preset sets besides its `DDPOConfig`: the model, its training, reward, prompts."""

    pretrained_model: str
    """Built-in model name, local diffusers folder or hub id."""
    use_lora: bool
    """LoRA adapters on the UNet's attention (True) or the whole UNet (False)."""
    lora_rank: int
    """Rank of the LoRA adapters (``use_lora`` only)."""
    reward: RewardName
    """Name in :mod:`ddpo.rewards.registry`."""
    prompts: PromptSetName
    """Prompt set of :data:`ddpo.prompts.PROMPT_SETS`."""
    prompt_repeats: int
    """Each prompt this many times in a row (see :func:`ddpo.prompts.training_prompt_fn`)."""
    prompt_pool: int
    """A fixed pool of this many prompts, drawn with the config's seed (0: fresh prompts)."""
    lora_alpha: float | None = None
    """LoRA's alpha (``None``: the rank, a scale of 1)."""
    resolution: int | None = None
    """Image side in pixels (``None``: the model's native size)."""
    noise_level: float | None = None
    """A flow model's SDE noise level (``None``: the policy's default, 0.7)."""
    sde_window_size: int | None = None
    """A flow model's stochastic window, in steps (``None``: every step is an SDE step)."""


#: The default run: the whole UNet of ``ddpo-tiny-shapes`` with the alignment reward, on a pool
#: of 2 shapes prompts, each 16 times in a row (see `default_preset` for why).
DEFAULT_SETTINGS = PresetSettings(
    pretrained_model="ddpo-tiny-shapes",
    use_lora=False,
    lora_rank=4,
    reward="alignment",
    prompts="shapes",
    prompt_repeats=16,
    prompt_pool=2,
)


FLOW_GRPO_SD3_PROCESSES: tuple[int, ...] = (1, 2, 4, 8, 16)
"""Process counts over which `flow_grpo_sd3_preset` keeps Flow-GRPO's epoch whole: 48 prompts x
24 images per epoch, in sampling batches of 9, each prompt's 24 images on one process (this
library's groups do not span processes) and 2 optimizer steps per epoch."""


def flow_grpo_sd3_preset(num_processes: int = 1) -> DDPOConfig:
    """Flow-GRPO's SD3.5 Medium configuration (its ``config/grpo.py``, ``general_ocr_sd3``) as a
    `DDPOConfig`, per process for ``num_processes`` processes.

    Flow-GRPO (yifan123/flow_grpo, ``config/base.py`` and ``config/grpo.py``; their keys in
    brackets): seed 42; 10 sampling steps [``sample.num_steps``] at CFG 4.5
    [``sample.guidance_scale``], re-scored with the same CFG [``train.cfg = True``]; epochs of
    48 prompts x 24 images [``sample.num_image_per_prompt``] in batches of 9
    [``sample.train_batch_size``, ``train.batch_size``], two optimizer steps per epoch
    [``train.gradient_accumulation_steps = num_batches_per_epoch // 2``], one inner epoch; AdamW
    at 3e-4 with TRL's betas, weight decay 1e-4 and epsilon 1e-8, gradient norm clipped to 1;
    PPO clip range 1e-4 [``train.clip_range``], advantages clipped to 5; the first
    ``int(0.99 x 10) = 9`` steps trained in order [``train.timestep_fraction = 0.99``]; each
    prompt's rewards centred within the epoch and divided by the whole epoch's std + 1e-4
    [``per_prompt_stat_tracking`` with ``sample.global_std``: ``advantage_mode="group_global"``];
    samples whose advantage is 0 dropped before training (always on in its ``train_sd3.py``); a
    KL penalty of weight 0.04 [``train.beta``; 0.01 in its PickScore config] in its own
    convention [``kl_convention="flow_grpo"``]; fp16 mixed precision (its accelerate configs).
    The pipeline settings (512 px, noise level 0.7, LoRA rank 32 and alpha 64 on the attention
    projections) are :data:`FLOW_GRPO_SD3_SETTINGS`.

    Not reproduced: its EMA copy of the LoRA weights (decay 0.9 every 8 steps), which only its
    evaluation and saved checkpoints use, not training; the held-out evaluation every 60 epochs;
    the number of epochs (it trains until stopped by hand: ``num_epochs`` is TRL's 100 here).

    Args:
        num_processes: the processes of the run (one per GPU), one of
            :data:`FLOW_GRPO_SD3_PROCESSES`; Flow-GRPO's own runs used 32 GPUs, over which it
            spreads a prompt's 24 images, which this library's per-process groups cannot.

    Raises:
        ValueError: for another ``num_processes``.
    """
    if num_processes not in FLOW_GRPO_SD3_PROCESSES:
        raise ValueError(
            f"flow_grpo_sd3_preset: num_processes must be one of {FLOW_GRPO_SD3_PROCESSES} (48 "
            "prompts x 24 images in batches of 9 per epoch, each prompt on one process), got "
            f"{num_processes!r}"
        )
    batches = 128 // num_processes  # 1152 images per epoch / (9 per batch x processes)
    return DDPOConfig(
        exp_name="flow_grpo_sd3",
        seed=42,
        mixed_precision="fp16",
        sample_num_steps=10,
        sample_guidance_scale=4.5,
        sample_batch_size=9,
        sample_num_batches_per_epoch=batches,
        train_batch_size=9,
        train_gradient_accumulation_steps=batches // 2,
        train_num_inner_epochs=1,
        train_learning_rate=3e-4,
        train_clip_range=1e-4,
        train_adv_clip_max=5.0,
        train_max_grad_norm=1.0,
        train_timestep_fraction=0.99,
        train_timestep_order="first",
        train_cfg=True,
        advantage_mode="group_global",
        train_drop_zero_advantages=True,
        kl_coef=0.04,
        kl_convention="flow_grpo",
    )


#: Flow-GRPO's SD3.5 Medium run besides its `DDPOConfig`: the model at 512 px, noise level 0.7,
#: LoRA rank 32 and alpha 64 on the joint-attention projections (its ``train_sd3.py``), the OCR
#: reward on text-rendering prompts, 24 images per prompt.
FLOW_GRPO_SD3_SETTINGS = PresetSettings(
    pretrained_model="stabilityai/stable-diffusion-3.5-medium",
    use_lora=True,
    lora_rank=32,
    lora_alpha=64.0,
    reward="ocr",
    prompts="text_rendering",
    prompt_repeats=24,
    prompt_pool=0,
    resolution=512,
    noise_level=0.7,
)


def flow_grpo_tiny_preset() -> DDPOConfig:
    """Flow-GRPO on the packaged ``ddpo-tiny-shapes-flow``, sized for a CPU: the algorithm of
    `flow_grpo_sd3_preset` (the SDE sampler at noise level 0.7, 10 steps of which the first 9
    train in order, CFG in sampling and re-scoring, ``group_global`` advantages, samples of zero
    advantage dropped, PPO clip 1e-4, two optimizer steps per epoch, the KL penalty 0.04 in
    Flow-GRPO's convention, AdamW at 3e-4 on LoRA adapters, gradient norm clipped to 1) with
    the default run's epoch: 128 samples of a pool of 2 shapes prompts, 16 in a row each, for 18
    epochs, guidance 1 instead of 4.5 (half the cost; the model's held-out accuracy is 0.61 with
    this sampler against 0.91 at guidance 3, which leaves the reward room to rise), and no mixed
    precision. `FLOW_GRPO_TINY_SETTINGS` holds the model, LoRA, reward and prompts."""
    default = default_preset()
    epoch = ("seed", "num_epochs", "save_freq", "num_checkpoint_limit", "mixed_precision",
             "log_with", "tracker_project_name", "sample_batch_size",
             "sample_num_batches_per_epoch")  # fmt: skip
    return dataclasses.replace(
        flow_grpo_sd3_preset(),
        exp_name="flow_grpo_tiny",
        **{name: getattr(default, name) for name in epoch},
        sample_guidance_scale=1.0,
        train_batch_size=16,
        train_gradient_accumulation_steps=4,  # 8 batches of 16: two optimizer steps
    )


#: Flow-GRPO on ``ddpo-tiny-shapes-flow`` besides its `DDPOConfig`: LoRA rank 8 and alpha 16
#: (Flow-GRPO's alpha of twice the rank) on the joint-attention projections, the alignment
#: reward on a pool of 2 shapes prompts drawn by the seed, 16 images per prompt in a row.
FLOW_GRPO_TINY_SETTINGS = PresetSettings(
    pretrained_model="ddpo-tiny-shapes-flow",
    use_lora=True,
    lora_rank=8,
    lora_alpha=16.0,
    reward="alignment",
    prompts="shapes",
    prompt_repeats=16,
    prompt_pool=2,
    noise_level=0.7,
)


AlgorithmName = Literal["nft", "awm", "dpo", "draft"]
"""The algorithms with a tiny preset besides DDPO and Flow-GRPO."""

DRAFT_TINY_LEARNING_RATE = 1e-4
"""``draft_tiny``'s AdamW learning rate: a third of the other arms' 3e-4. Fixed before the
measured runs from one 6-epoch trial on seed 0 at 3e-4 (RESULTS.md, issue #25): the training
pool's exact alignment reward rose 0.653 -> 0.684 in 6 epochs, as far as Flow-GRPO's rose in
18, with the held-out reward flat (0.712 -> 0.712); at a third of the rate the 18 epochs take
about the steps the trial showed to be safe (Adam's steps scale with the rate, and the
reward's gradient keeps one direction from step to step)."""


@no_type_check  # it checks ``algorithm`` itself, naming the value
def algorithm_tiny_preset(algorithm: AlgorithmName) -> DDPOConfig:
    """``algorithm`` (``"nft"``, ``"awm"``, ``"dpo"`` or ``"draft"``) on the packaged
    ``ddpo-tiny-shapes-flow`` with `flow_grpo_tiny_preset`'s epoch (128 samples of a pool of 2
    shapes prompts, 16 in a row each, 18 epochs, guidance 1, two optimizer steps per epoch,
    AdamW at 3e-4 on LoRA rank 8 and alpha 16, the sampler's 10 SDE steps at noise level 0.7)
    and `FLOW_GRPO_TINY_SETTINGS`, so that the learning benchmark compares the algorithms on
    the same samples, with each algorithm's published settings where they differ:

    - ``nft``: DiffusionNFT's ``config/nft.py``: ``beta`` 1, the old policy's ``decay_type``
      1, the KL weight 1e-4, advantages clipped at 5; each sample trains at 9 of the
      sampler's 10 timesteps (``train_timestep_fraction`` 0.9);
    - ``awm``: AWM's GenEval recipe (``config/dgx_awm.py``): 6 timesteps per sample, the
      ``ghuber`` weighting at power 0.25, PPO clip 1.0, the KL weight 1e-3 (uniform);
    - ``dpo``: online Diffusion-DPO on each prompt's better half of images against its worse
      half, rank by rank (``dpo_pairs="halves"``: the pool's 2 prompts give 64 pairs an
      epoch; their best and worst alone would give 2), 4 timesteps per pair, ``beta`` 500: the
      paper's 5000 (SD 1.5, learning rate about 2e-5 after its scaling) saturated the sigmoid
      at this run's 3e-4 (logits 3 to 18 within 8 epochs of ``examples/diffusion_dpo.py``);
    - ``draft``: DRaFT-K at ``K`` 1 (the paper's best trade-off): each micro-batch of 16 is
      sampled again with the SDE sampler, the last step keeping its graph, and descends minus
      the mean of the alignment reward's differentiable form (``ddpo train`` builds it for
      ``draft``; `ddpo.rewards.alignment.differentiable_alignment_scores`), at the learning
      rate `DRAFT_TINY_LEARNING_RATE`, no KL term (DRaFT has none).

    Flow-GRPO's own options (its KL convention, training the first steps in order, dropping
    samples of zero advantage) are reset to the defaults; advantages stay ``group_global``.
    """
    changes: dict[str, dict[str, Any]] = {
        "nft": {"kl_coef": 1e-4, "nft_beta": 1.0, "nft_decay_type": 1},
        "awm": {
            "kl_coef": 1e-3,
            "train_clip_range": 1.0,
            "awm_weighting": "ghuber",
            "awm_ghuber_power": 0.25,
            "train_num_timesteps": 6,
        },
        "dpo": {
            "kl_coef": 0.0,
            "dpo_beta": 500.0,
            "dpo_pairs": "halves",
            "train_num_timesteps": 4,
        },
        "draft": {
            "kl_coef": 0.0,
            "backprop_grad_steps": 1,
            "train_learning_rate": DRAFT_TINY_LEARNING_RATE,
        },
    }
    if algorithm not in changes:
        raise ValueError(f"algorithm must be one of {sorted(changes)}, got {algorithm!r}")
    return dataclasses.replace(
        flow_grpo_tiny_preset(),
        exp_name=f"{algorithm}_tiny",
        algorithm=algorithm,
        kl_convention="exact",
        train_timestep_order="random",
        train_drop_zero_advantages=False,
        **changes[algorithm],
    )


def mixgrpo_tiny_preset() -> DDPOConfig:
    """MixGRPO's sliding window (Li et al., 2025, arXiv 2507.21802; its ``progressive``
    strategy) on `flow_grpo_tiny_preset`'s run: with `MIXGRPO_TINY_SETTINGS`' window of 2 SDE
    steps of the 10 (the other 8 ODE steps), the window starts at step 0 and moves one step
    every 2 epochs (``sliding_window_shift_interval`` 2, ``sliding_window_stride`` 1), so that
    over the 18 epochs it visits each of its 9 starts, 0 to 8, for 2 epochs; both steps of the
    window train (``train_timestep_fraction`` 1: MixGRPO optimises every step of its window,
    where Flow-GRPO's 0.99 keeps ``int(2 x 0.99) = 1``). Everything else is Flow-GRPO's
    (clip 1e-4, the KL penalty 0.04 in its convention, AdamW at 3e-4, two steps an epoch); not
    reproduced: MixGRPO's higher-order ODE solver for the steps after the window (MixGRPO-Flash)
    and its own learning rate, clip and KL settings."""
    return dataclasses.replace(
        flow_grpo_tiny_preset(),
        exp_name="mixgrpo_tiny",
        sde_window_schedule="sliding",
        sliding_window_shift_interval=2,
        sliding_window_stride=1,
        train_timestep_fraction=1.0,
    )


#: `mixgrpo_tiny_preset`'s model, reward and prompts: `FLOW_GRPO_TINY_SETTINGS` with a
#: stochastic window of 2 steps.
MIXGRPO_TINY_SETTINGS = dataclasses.replace(FLOW_GRPO_TINY_SETTINGS, sde_window_size=2)


PresetName = Literal[
    "default",
    "flow_grpo_sd3",
    "flow_grpo_tiny",
    "nft_tiny",
    "awm_tiny",
    "dpo_tiny",
    "draft_tiny",
    "mixgrpo_tiny",
]
"""The names of `PRESETS` (``ddpo train --preset``)."""

PRESETS: dict[str, tuple[PresetSettings, Callable[[int], DDPOConfig]]] = {
    "default": (DEFAULT_SETTINGS, lambda num_processes: default_preset()),
    "flow_grpo_sd3": (FLOW_GRPO_SD3_SETTINGS, flow_grpo_sd3_preset),
    "flow_grpo_tiny": (FLOW_GRPO_TINY_SETTINGS, lambda num_processes: flow_grpo_tiny_preset()),
    "nft_tiny": (FLOW_GRPO_TINY_SETTINGS, lambda num_processes: algorithm_tiny_preset("nft")),
    "awm_tiny": (FLOW_GRPO_TINY_SETTINGS, lambda num_processes: algorithm_tiny_preset("awm")),
    "dpo_tiny": (FLOW_GRPO_TINY_SETTINGS, lambda num_processes: algorithm_tiny_preset("dpo")),
    "draft_tiny": (FLOW_GRPO_TINY_SETTINGS, lambda num_processes: algorithm_tiny_preset("draft")),
    "mixgrpo_tiny": (MIXGRPO_TINY_SETTINGS, lambda num_processes: mixgrpo_tiny_preset()),
}
"""``ddpo train --preset NAME``: each preset's settings and its config for a process count."""
