"""The presets: Flow-GRPO's SD3.5 Medium configuration in this library's fields."""

import dataclasses
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from ddpo.core import clip_advantages
from ddpo.presets import (
    FLOW_GRPO_SD3_PROCESSES,
    FLOW_GRPO_SD3_SETTINGS,
    flow_grpo_sd3_preset,
)
from ddpo.trainer.optimisation import num_train_timesteps, timestep_loss

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_flow_grpo_sd3_preset_is_its_config() -> None:
    """Each value as yifan123/flow_grpo's ``config/base.py`` and ``general_ocr_sd3`` set it."""
    config = flow_grpo_sd3_preset()
    flow_grpo = {
        "seed": 42,  # config.seed
        "sample_num_steps": 10,  # sample.num_steps
        "sample_guidance_scale": 4.5,  # sample.guidance_scale
        "train_cfg": True,  # train.cfg
        "sample_batch_size": 9,  # sample.train_batch_size
        "train_batch_size": 9,  # train.batch_size
        "train_num_inner_epochs": 1,  # train.num_inner_epochs
        "train_learning_rate": 3e-4,  # train.learning_rate
        "train_adam_beta1": 0.9,
        "train_adam_beta2": 0.999,
        "train_adam_weight_decay": 1e-4,
        "train_adam_epsilon": 1e-8,
        "train_max_grad_norm": 1.0,
        "train_adv_clip_max": 5.0,  # train.adv_clip_max
        "train_clip_range": 1e-4,  # train.clip_range
        "train_timestep_fraction": 0.99,  # train.timestep_fraction
        "train_timestep_order": "first",  # range(num_train_timesteps)
        "advantage_mode": "group_global",  # per-prompt mean, sample.global_std
        "train_drop_zero_advantages": True,  # its mask of all-zero advantages
        "kl_coef": 0.04,  # train.beta
        "kl_convention": "flow_grpo",
        "mixed_precision": "fp16",
    }
    assert {k: getattr(config, k) for k in flow_grpo} == flow_grpo
    assert num_train_timesteps(config) == int(10 * 0.99) == 9
    settings = FLOW_GRPO_SD3_SETTINGS
    assert (settings.resolution, settings.noise_level) == (512, 0.7)  # config.resolution
    assert (settings.lora_rank, settings.lora_alpha, settings.use_lora) == (32, 64.0, True)
    assert settings.prompt_repeats == 24  # sample.num_image_per_prompt


@pytest.mark.parametrize("num_processes", FLOW_GRPO_SD3_PROCESSES)
def test_flow_grpo_sd3_epoch_is_its_epoch_on_any_process_count(num_processes: int) -> None:
    config = flow_grpo_sd3_preset(num_processes)
    config.validate(num_processes=num_processes)
    per_process = config.sample_batch_size * config.sample_num_batches_per_epoch
    assert per_process * num_processes == 48 * 24  # 48 prompts x 24 images
    assert per_process % FLOW_GRPO_SD3_SETTINGS.prompt_repeats == 0  # whole groups
    micro_batches = per_process // config.train_batch_size
    assert micro_batches // config.train_gradient_accumulation_steps == 2  # optimizer steps


def test_flow_grpo_sd3_preset_refuses_a_process_count_that_splits_groups() -> None:
    with pytest.raises(ValueError, match=r"num_processes must be one of .* got 32"):
        flow_grpo_sd3_preset(32)


def test_flow_grpo_sd3_preset_gives_flow_grpos_per_step_loss() -> None:
    """Case 0 of the loss fixture was computed by Flow-GRPO's training code with its SD3.5-M
    settings (clip range 1e-4, advantages clipped to 5, beta 0.04, noise level 0.7): the preset's
    loss of the same tensors is Flow-GRPO's."""
    case = json.loads((FIXTURES / "flow_grpo_loss.json").read_text())["cases"][0]
    config = flow_grpo_sd3_preset()
    assert (case["clip_range"], case["adv_clip_max"], case["beta"], case["noise_level"]) == (
        config.train_clip_range,
        config.train_adv_clip_max,
        config.kl_coef,
        FLOW_GRPO_SD3_SETTINGS.noise_level,
    )
    t = {
        k.removeprefix("case0."): v
        for k, v in load_file(FIXTURES / "flow_grpo_loss.safetensors").items()
        if k.startswith("case0.")
    }
    std_dev_t = t["std_dev_t"].flatten()
    minus_dt = (t["sigma"] - t["sigma_prev"]).flatten()

    class Score:
        def __init__(self, mean: object) -> None:
            self.log_prob, self.mean = t["log_prob"], mean
            self.std_dev, self.flow_grpo_std_dev = std_dev_t * minus_dt.sqrt(), std_dev_t

    advantages = clip_advantages(t["advantages"], adv_clip_max=config.train_adv_clip_max)
    loss, metrics = timestep_loss(
        config,
        Score(t["prev_sample_mean"]),  # type: ignore[arg-type]
        t["old_log_prob"],
        advantages,
        Score(t["prev_sample_mean_ref"]),  # type: ignore[arg-type]
    )
    assert float(loss) == pytest.approx(case["loss"], rel=1e-6, abs=1e-7)
    assert float(metrics["kl"]) == pytest.approx(case["kl_loss"], rel=1e-6)


def test_ddpo_train_preset_flag_sets_the_defaults_flags_override(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ddpo.cli import main, parse_train_args

    args = parse_train_args(["--preset", "flow_grpo_sd3", "--ddpo_config.num_epochs=3"])
    assert args.ddpo_config == dataclasses.replace(flow_grpo_sd3_preset(), num_epochs=3)
    settings = dataclasses.asdict(FLOW_GRPO_SD3_SETTINGS)
    assert {k: getattr(args, k) for k in settings} == settings
    assert parse_train_args(["--preset=flow_grpo_sd3", "--lora_rank=8"]).lora_rank == 8
    monkeypatch.setenv("WORLD_SIZE", "4")  # as accelerate launch sets it
    assert parse_train_args(["--preset=flow_grpo_sd3"]).ddpo_config == flow_grpo_sd3_preset(4)
    monkeypatch.setenv("WORLD_SIZE", "32")
    assert main(["train", "--preset=flow_grpo_sd3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "num_processes must be one of" in err[0], err


@pytest.mark.slow
def test_the_flow_grpo_preset_trains_at_tiny_sizes(tmp_path: Path) -> None:
    """Every Flow-GRPO option of the preset at once in a real run (tiny SD3, one epoch)."""
    from ddpo.cli import main

    tiny = {
        "sample_batch_size": 2,
        "train_batch_size": 2,
        "sample_num_batches_per_epoch": 2,
        "train_gradient_accumulation_steps": 1,
        "sample_num_steps": 4,
        "num_epochs": 1,
        "mixed_precision": "no",
        "output_dir": str(tmp_path / "run"),
    }
    status = main(
        [
            "train",
            "--preset=flow_grpo_sd3",
            "--pretrained_model=ddpo-tiny-sd3-random",
            "--resolution=64",
            "--reward=brightness",
            "--prompts=simple_animals",
            "--prompt_repeats=2",
            *(f"--ddpo_config.{k}={v}" for k, v in tiny.items()),
        ]
    )
    assert status == 0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    (metrics,) = [json.loads(line) for line in lines]
    assert metrics["global_step"] == 2 and "kl" in metrics and "num_dropped_samples" in metrics


def test_flow_grpo_tiny_preset_is_flow_grpos_algorithm_on_the_tiny_flow_model() -> None:
    """The tiny preset keeps every setting of Flow-GRPO's that defines the algorithm; it changes
    only the sizes (epoch, guidance, precision, LoRA rank) for a CPU."""
    from ddpo.presets import FLOW_GRPO_TINY_SETTINGS, flow_grpo_tiny_preset

    tiny, sd3 = flow_grpo_tiny_preset(), flow_grpo_sd3_preset()
    algorithm = ("sample_num_steps", "train_cfg", "train_num_inner_epochs", "train_learning_rate",
                 "train_adam_weight_decay", "train_max_grad_norm", "train_adv_clip_max",
                 "train_clip_range", "train_timestep_fraction", "train_timestep_order",
                 "advantage_mode", "train_drop_zero_advantages", "kl_coef",
                 "kl_convention")  # fmt: skip
    assert {k: getattr(tiny, k) for k in algorithm} == {k: getattr(sd3, k) for k in algorithm}
    tiny.validate(num_processes=1)
    per_epoch = tiny.sample_batch_size * tiny.sample_num_batches_per_epoch
    assert per_epoch // tiny.train_batch_size // tiny.train_gradient_accumulation_steps == 2
    assert per_epoch % FLOW_GRPO_TINY_SETTINGS.prompt_repeats == 0
    settings = FLOW_GRPO_TINY_SETTINGS
    assert settings.pretrained_model == "ddpo-tiny-shapes-flow" and settings.noise_level == 0.7
    assert settings.lora_alpha == 2 * settings.lora_rank  # Flow-GRPO's alpha of twice the rank


def test_the_flow_demos_flags_parse_to_the_tiny_preset_with_a_window() -> None:
    """``nox -s demo -- flow`` passes noxfile's FLOW_DEMO to ``ddpo train``."""
    import ast

    from ddpo.cli import parse_train_args
    from ddpo.presets import flow_grpo_tiny_preset

    tree = ast.parse((Path(__file__).resolve().parents[1] / "noxfile.py").read_text())
    flags = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "FLOW_DEMO"
    )
    args = parse_train_args([*flags, "--ddpo_config.output_dir=/tmp/x"])
    assert args.preset == "flow_grpo_tiny" and args.sde_window_size == 2
    assert args.pretrained_model == "ddpo-tiny-shapes-flow"
    expected = dataclasses.replace(
        flow_grpo_tiny_preset(), log_with=None, save_freq=0, output_dir="/tmp/x"
    )
    assert args.ddpo_config == expected


@pytest.mark.parametrize("algorithm", ["nft", "awm", "dpo"])
def test_the_algorithm_presets_share_flow_grpo_tinys_run(algorithm: str) -> None:
    """``nft_tiny``, ``awm_tiny`` and ``dpo_tiny`` change the algorithm and its own settings,
    not the run: the same model, prompts, epoch, optimizer and sampler as ``flow_grpo_tiny``."""
    from ddpo.cli import parse_train_args
    from ddpo.presets import FLOW_GRPO_TINY_SETTINGS, algorithm_tiny_preset, flow_grpo_tiny_preset

    config, tiny = algorithm_tiny_preset(algorithm), flow_grpo_tiny_preset()
    shared = ("seed", "num_epochs", "sample_num_steps", "sample_batch_size",
              "sample_num_batches_per_epoch", "sample_guidance_scale", "train_batch_size",
              "train_gradient_accumulation_steps", "train_learning_rate", "train_max_grad_norm",
              "train_adv_clip_max", "advantage_mode", "mixed_precision")  # fmt: skip
    assert {k: getattr(config, k) for k in shared} == {k: getattr(tiny, k) for k in shared}
    assert config.algorithm == algorithm and config.kl_convention == "exact"
    config.validate(num_processes=1)
    args = parse_train_args([f"--preset={algorithm}_tiny", "--ddpo_config.output_dir=/tmp/x"])
    assert args.ddpo_config == dataclasses.replace(config, output_dir="/tmp/x")
    assert args.pretrained_model == FLOW_GRPO_TINY_SETTINGS.pretrained_model
    choices = r"\[.awm., .dpo., .draft., .nft.\]"
    with pytest.raises(ValueError, match=rf"algorithm must be one of {choices}"):
        algorithm_tiny_preset("ddpo")


def test_draft_tiny_is_drafts_first_step_on_flow_grpo_tinys_run() -> None:
    """``draft_tiny``: DRaFT-1 at a third of the learning rate, no KL term, on the same model,
    prompts, epoch and sampler as ``flow_grpo_tiny``; ``ddpo train`` builds the alignment
    reward's differentiable form for it."""
    from ddpo.cli import parse_train_args
    from ddpo.cli_train import build_reward_fn
    from ddpo.presets import (
        DRAFT_TINY_LEARNING_RATE,
        FLOW_GRPO_TINY_SETTINGS,
        algorithm_tiny_preset,
        flow_grpo_tiny_preset,
    )
    from ddpo.rewards.alignment import differentiable_alignment_reward_fn

    config, tiny = algorithm_tiny_preset("draft"), flow_grpo_tiny_preset()
    shared = ("seed", "num_epochs", "sample_num_steps", "sample_batch_size",
              "sample_num_batches_per_epoch", "sample_guidance_scale", "train_batch_size",
              "train_gradient_accumulation_steps", "train_max_grad_norm",
              "mixed_precision")  # fmt: skip
    assert {k: getattr(config, k) for k in shared} == {k: getattr(tiny, k) for k in shared}
    assert (config.algorithm, config.backprop_grad_steps, config.kl_coef) == ("draft", 1, 0.0)
    assert config.train_learning_rate == DRAFT_TINY_LEARNING_RATE < tiny.train_learning_rate
    config.validate(num_processes=1)
    args = parse_train_args(["--preset=draft_tiny", "--ddpo_config.output_dir=/tmp/x"])
    assert args.ddpo_config == dataclasses.replace(config, output_dir="/tmp/x")
    assert args.reward == FLOW_GRPO_TINY_SETTINGS.reward == "alignment"
    reward_fn = build_reward_fn(args).reward_fn  # type: ignore[attr-defined]  # per_frame's
    assert reward_fn is differentiable_alignment_reward_fn


def test_mixgrpo_tiny_slides_a_window_of_2_over_the_10_steps_in_18_epochs() -> None:
    """``mixgrpo_tiny``: Flow-GRPO's run with a window of 2 SDE steps (a preset setting, passed
    to the policy as ``--sde_window_size``) that starts at step 0 and moves one step every 2
    epochs, through each of its 9 starts; both of its steps train."""
    from ddpo.cli import parse_train_args
    from ddpo.core import sliding_window_start
    from ddpo.presets import (
        FLOW_GRPO_TINY_SETTINGS,
        MIXGRPO_TINY_SETTINGS,
        flow_grpo_tiny_preset,
        mixgrpo_tiny_preset,
    )

    config = mixgrpo_tiny_preset()
    assert config == dataclasses.replace(
        flow_grpo_tiny_preset(), exp_name="mixgrpo_tiny", sde_window_schedule="sliding",
        sliding_window_shift_interval=2, sliding_window_stride=1, train_timestep_fraction=1.0,
    )  # fmt: skip
    config.validate(num_processes=1)
    windowed = dataclasses.replace(FLOW_GRPO_TINY_SETTINGS, sde_window_size=2)
    assert windowed == MIXGRPO_TINY_SETTINGS
    size = MIXGRPO_TINY_SETTINGS.sde_window_size
    assert size is not None
    max_start = config.sample_num_steps - size  # the SDE sampler's starts: 0 to 8
    starts = [
        sliding_window_start(epoch, shift_interval=config.sliding_window_shift_interval,
                             stride=config.sliding_window_stride, max_start=max_start)
        for epoch in range(config.num_epochs)
    ]  # fmt: skip
    assert starts == [p for p in range(max_start + 1) for _ in range(2)]
    args = parse_train_args(["--preset=mixgrpo_tiny", "--ddpo_config.output_dir=/tmp/x"])
    assert args.sde_window_size == 2 and args.pretrained_model == "ddpo-tiny-shapes-flow"
    assert args.ddpo_config == dataclasses.replace(config, output_dir="/tmp/x")
    assert parse_train_args(["--preset=flow_grpo_tiny"]).sde_window_size is None
