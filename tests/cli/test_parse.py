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
