"""Command-line parsing: nested DDPOConfig flags, help, the default preset, reward/prompt names."""

import subprocess
import sys

import pytest

from ddpo.cli import (
    PROMPT_SETS,
    REWARDS,
    TrainArgs,
    build_prompt_fn,
    build_reward_fn,
    default_preset,
    main,
    parse_train_args,
)
from ddpo.trainer.config import DDPOConfig


def test_no_flags_give_the_default_preset() -> None:
    args = parse_train_args([])
    assert args.ddpo_config == default_preset()
    assert args.pretrained_model == "ddpo-tiny-shapes"
    assert args.reward == "alignment" and args.prompts == "shapes"
    assert args.hf_user_access_token is None
    # the preset lives in the CLI: DDPOConfig() keeps TRL's defaults
    assert DDPOConfig().train_learning_rate == 3e-4
    assert DDPOConfig().sample_batch_size == 1
    assert args.ddpo_config.log_with == "tensorboard"


def test_nested_overrides() -> None:
    args = parse_train_args(
        [
            "--ddpo_config.sample_batch_size=6",
            "--ddpo_config.train_batch_size",
            "3",
            "--ddpo_config.train_learning_rate=0.001",
            "--ddpo_config.no_train_cfg",
            "--ddpo_config.log_with",
            "None",
            "--ddpo_config.accelerator_kwargs",
            '{"cpu": true}',
            "--pretrained_model=ddpo-tiny-random",
            "--reward=jpeg_compressibility",
            "--prompts",
            "simple_animals",
            "--use_lora",
            "--hf_user_access_token=hf_abc",
        ]
    )
    config = args.ddpo_config
    assert (config.sample_batch_size, config.train_batch_size) == (6, 3)
    assert config.train_learning_rate == 0.001
    assert config.train_cfg is False
    assert config.log_with is None
    assert config.accelerator_kwargs == {"cpu": True}
    # fields not given keep the preset's values
    assert config.num_epochs == default_preset().num_epochs
    assert args.pretrained_model == "ddpo-tiny-random"
    assert (args.reward, args.prompts, args.use_lora) == (
        "jpeg_compressibility",
        "simple_animals",
        True,
    )
    assert args.hf_user_access_token == "hf_abc"


def test_invalid_config_is_rejected_with_the_field_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_train_args(["--ddpo_config.sample_batch_size=3", "--ddpo_config.train_batch_size=2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "DDPOConfig.sample_batch_size (3) must be a" in err
    with pytest.raises(SystemExit):
        parse_train_args(["--reward=nope"])
    assert "nope" in capsys.readouterr().err


def test_help_documents_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    import dataclasses

    with pytest.raises(SystemExit) as exit_info:
        parse_train_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(DDPOConfig):
        assert f"--ddpo_config.{f.name}" in text
    for f in dataclasses.fields(TrainArgs):
        if f.name != "ddpo_config":
            assert f"--{f.name}" in text
    assert "PPO clip range" in text  # a DDPOConfig field docstring
    assert "Prompt function" in text  # a TrainArgs field docstring


def test_main_usage_and_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "ddpo train" in capsys.readouterr().out
    assert main(["bogus"]) == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err


def test_console_entry_point_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ddpo", "train", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "--ddpo_config.sample_batch_size" in result.stdout
    assert "--pretrained_model" in result.stdout


@pytest.mark.parametrize("name", [p for p in PROMPT_SETS if p != "shapes"])
def test_prompt_sets_by_name(name: str) -> None:
    a, b = build_prompt_fn(name, seed=1), build_prompt_fn(name, seed=1)
    assert [a() for _ in range(5)] == [b() for _ in range(5)]
    with pytest.raises(ValueError, match="prompts must be one of"):
        build_prompt_fn("nope", seed=0)


def test_rewards_by_name() -> None:
    import torch

    assert set(REWARDS) >= {
        "alignment",
        "jpeg_compressibility",
        "jpeg_incompressibility",
        "aesthetic",
    }
    images = torch.rand(2, 3, 16, 16)
    for name in ("jpeg_compressibility", "jpeg_incompressibility", "brightness"):
        fn = build_reward_fn(TrainArgs(reward=name))  # type: ignore[arg-type]
        rewards, _ = fn(images, ("a", "b"), ({}, {}))
        assert len(rewards) == 2


def test_alignment_reward_needs_shapes_prompts() -> None:
    from ddpo.cli import run_train

    with pytest.raises(ValueError, match="prompts='simple_animals'"):
        run_train(TrainArgs(reward="alignment", prompts="simple_animals"))
    with pytest.raises(ValueError, match="grid_images"):
        run_train(TrainArgs(grid_images=0))


def test_repeat_prompts() -> None:
    from ddpo.cli import repeat_prompts

    base = build_prompt_fn("simple_animals", seed=0)
    reference = build_prompt_fn("simple_animals", seed=0)
    expected = [reference() for _ in range(3)]
    repeated = repeat_prompts(base, 3)
    drawn = [repeated() for _ in range(9)]
    assert drawn == [item for item in expected for _ in range(3)]
    drawn[0][1]["animal"] = "changed"  # metadata dicts are copies
    assert drawn[1][1]["animal"] == expected[0][1]["animal"] != "changed"
    with pytest.raises(ValueError, match="prompt_repeats"):
        repeat_prompts(base, 0)


def test_pool_prompts_cycles_a_fixed_pool() -> None:
    from ddpo.cli import pool_prompts

    reference = build_prompt_fn("shapes", seed=3)
    expected = [reference() for _ in range(3)]
    pooled = pool_prompts(build_prompt_fn("shapes", seed=3), 3)
    drawn = [pooled() for _ in range(7)]
    assert drawn == [*expected, *expected, expected[0]]
    drawn[0][1]["colour"] = "changed"  # metadata dicts are copies
    assert pooled()[1]["colour"] == expected[1][1]["colour"]
    with pytest.raises(ValueError, match="prompt_pool must be positive, got 0"):
        pool_prompts(reference, 0)


def test_preset_prompt_fn_pool_is_shared_across_processes() -> None:
    from ddpo.cli import preset_prompt_fn

    args = TrainArgs(prompt_pool=2, prompt_repeats=2)
    first = preset_prompt_fn(args, seed=5, process_index=0)
    second = preset_prompt_fn(args, seed=5, process_index=1)
    drawn = [first() for _ in range(8)]
    assert drawn == [second() for _ in range(8)]
    prompts = [p for p, _ in drawn]
    assert prompts[0] == prompts[1] != prompts[2] == prompts[3]
    assert prompts[:4] == prompts[4:]  # two prompts, each twice, then again
    # without a pool, each process draws its own prompts
    fresh = TrainArgs(prompt_pool=0, prompt_repeats=1)
    rank0 = preset_prompt_fn(fresh, seed=5, process_index=0)
    rank1 = preset_prompt_fn(fresh, seed=5, process_index=1)
    assert [rank0()[0] for _ in range(20)] != [rank1()[0] for _ in range(20)]
    with pytest.raises(ValueError, match="prompt_pool must be >= 0, got -1"):
        preset_prompt_fn(TrainArgs(prompt_pool=-1), seed=0)
