"""Command-line parsing: nested DDPOConfig flags, help, the default preset, reward/prompt names."""

import dataclasses
import subprocess
import sys
from typing import Any

import pytest

from ddpo.cli import (
    REWARDS,
    TrainArgs,
    build_reward_fn,
    default_preset,
    main,
    parse_train_args,
    preset_prompt_fn,
)
from ddpo.rewards.alignment import alignment_reward_fn
from ddpo.trainer.config import DDPOConfig


def test_no_flags_give_the_default_preset() -> None:
    """``ddpo train`` with no flags is the documented default run (README, ddpo/presets.py)."""
    args = parse_train_args([])
    config = args.ddpo_config
    trl_defaults = dataclasses.asdict(DDPOConfig())
    changed = {k: v for k, v in dataclasses.asdict(config).items() if v != trl_defaults[k]}
    changed.pop("exp_name", None)  # TRL's default is the script's name
    assert config.exp_name == "ddpo"
    assert changed == {
        "seed": 2,
        "num_epochs": 18,
        "save_freq": 6,
        "num_checkpoint_limit": 1,
        "mixed_precision": "no",
        "log_with": "tensorboard",
        "tracker_project_name": "ddpo",
        "sample_num_steps": 5,
        "sample_guidance_scale": 1.0,
        "sample_batch_size": 16,
        "sample_num_batches_per_epoch": 8,
        "train_batch_size": 8,
        "train_learning_rate": 1e-4,
        "train_clip_range": 0.1,
        "train_timestep_fraction": 0.6,
        "advantage_mode": "group_global",
    }
    assert (args.pretrained_model, args.pretrained_revision) == ("ddpo-tiny-shapes", "main")
    assert (args.use_lora, args.lora_rank) == (False, 4)  # the full UNet
    assert (args.reward, args.prompts) == ("alignment", "shapes")
    assert (args.prompt_pool, args.prompt_repeats, args.grid_images) == (2, 16, 16)
    assert args.hf_user_access_token is None
    # the preset is the library's; DDPOConfig() keeps TRL's defaults
    assert config == default_preset()
    assert (DDPOConfig().train_learning_rate, DDPOConfig().sample_batch_size) == (3e-4, 1)


def test_no_flags_train_on_the_preset_pool() -> None:
    """The default run's prompts: seed 2 draws this pool of 2, each taken 16 times in a row."""
    args = parse_train_args([])
    prompt_fn = preset_prompt_fn(args, seed=args.ddpo_config.seed)
    prompts = [prompt_fn()[0] for _ in range(64)]
    yellow = "a yellow square on a gray background"
    purple = "a purple triangle in the center on a green background"
    assert prompts == ([yellow] * 16 + [purple] * 16) * 2
    assert build_reward_fn(args).reward_fn is alignment_reward_fn  # type: ignore[attr-defined]


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
    assert (config.num_epochs, config.seed, config.advantage_mode) == (18, 2, "group_global")
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


def test_preset_prompt_fn_pool_is_shared_across_processes() -> None:
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
    with pytest.raises(ValueError, match="prompt_repeats must be positive, got 0"):
        preset_prompt_fn(TrainArgs(prompt_repeats=0), seed=0)


def test_reward_sums_and_reward_options_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from ddpo.rewards.combine import WeightedSumReward

    args = parse_train_args(
        [
            "--reward",
            "pickscore:1.0,ocr:0.5",
            "--reward_model",
            "pickscore",
            "/models/pick",
            "pickscore_processor",
            "/models/proc",
            "--reward_device=cpu",
            "--reward_batch_size=4",
            "--prompts=text_rendering",
        ]
    )
    assert args.reward == "pickscore:1.0,ocr:0.5"
    assert args.reward_model == {"pickscore": "/models/pick", "pickscore_processor": "/models/proc"}
    assert (args.reward_device, args.reward_batch_size) == ("cpu", 4)
    calls: dict[str, Any] = {}

    def fake(name: str) -> Any:
        def build(*a: Any, **k: Any) -> Any:
            calls[name] = (a, k)
            return lambda images, prompts, metadata: ([1.0] * len(prompts), {})

        return build

    monkeypatch.setattr("ddpo.rewards.pickscore.pickscore_reward", fake("pickscore"))
    fake_ocr = types.SimpleNamespace(ocr_reward=fake("ocr"))
    monkeypatch.setitem(sys.modules, "ddpo.rewards.ocr", fake_ocr)
    fn = build_reward_fn(args)
    assert isinstance(fn, WeightedSumReward)
    assert {name: weight for name, (_, weight) in fn.rewards.items()} == {
        "pickscore": 1.0,
        "ocr": 0.5,
    }
    assert calls["pickscore"] == (
        ("/models/pick",),
        {"device": "cpu", "batch_size": 4, "token": None, "processor": "/models/proc"},
    )
    assert calls["ocr"] == ((), {"device": "cpu"})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--reward=pickscore:abc"], "got 'abc'"),
        (["--reward=remote"], "--remote_reward_url"),
        (["--reward=ocr", "--reward_model", "ocr", "x"], "--reward_model: unknown keys"),
        (["--reward=ocr", "--reward_batch_size=0"], "--reward_batch_size"),
    ],
)
def test_bad_reward_flags_are_rejected_while_parsing(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_train_args(flags)
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.replace("│", " ").split())
    assert message in err


def test_help_lists_every_reward(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_train_args(["--help"])
    text = capsys.readouterr().out
    help_of_reward = text[text.index("--reward STR") : text.index("--reward_model")]
    for name in REWARDS:
        assert f"``{name}``: " in help_of_reward, name  # one line each


def test_alignment_in_a_sum_needs_shapes_prompts() -> None:
    with pytest.raises(ValueError, match="prompts='simple_animals'"):
        build_reward_fn(TrainArgs(reward="alignment,brightness:0.1", prompts="simple_animals"))


@pytest.mark.parametrize("command", ["train", "sample"])
def test_help_names_every_family_from_the_table(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The help lists every family of the table (its title and pipeline classes), so a new
    family's row is enough to name it."""
    from ddpo.adapters.families import FAMILIES

    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    for family in FAMILIES:
        assert family.title in text, (command, family.name)
        assert all(c in text for c in family.pipeline_classes), (command, family.name)
