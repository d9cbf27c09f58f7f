"""What a new user hit: non-finite rollouts, seeds, stateful prompt functions, resume, bad input.

Each test here failed before its fix (issue: NaN from the packaged model, inexact resume, late or
misleading errors).
"""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from ddpo import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline
from ddpo.trainer.checkpoint import CheckpointError

from .test_trainer import MODEL, PROMPTS, brightness, pick_prompt, read_metrics, tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline_factory() -> Any:
    def make(**kwargs: Any) -> DefaultDDPOStableDiffusionPipeline:
        return DefaultDDPOStableDiffusionPipeline(MODEL, **kwargs)

    return make


# ---------------------------------------------------------------------------------------------
# Non-finite values are caught where they arise


def test_non_finite_rollout_names_the_step_and_settings(
    tmp_path: Path, pipeline_factory: Any
) -> None:
    pipeline = pipeline_factory()
    config = tiny_config(tmp_path / "run", sample_num_steps=4, sample_guidance_scale=3.0)
    rewards_called: list[int] = []

    def reward(images: torch.Tensor, prompts: Any, metadata: Any) -> Any:
        rewards_called.append(1)
        return brightness(images, prompts, metadata)

    trainer = DDPOTrainer(config, reward, pick_prompt, pipeline)
    pipeline.scheduler.set_timesteps(4)
    poisoned = int(pipeline.scheduler.timesteps[2])

    def nan_at_third_step(module: Any, args: Any, kwargs: Any, output: Any) -> Any:
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if int(torch.as_tensor(timestep).reshape(-1)[0]) == poisoned:
            output.sample.fill_(float("nan"))
        return output

    handle = pipeline.unet.register_forward_hook(nan_at_third_step, with_kwargs=True)
    before = trainer.trainable_state_dict()
    try:
        with pytest.raises(FloatingPointError) as caught:
            trainer.train()
    finally:
        handle.remove()
        trainer.close()
    message = str(caught.value)
    assert f"at denoising step 2 of 4 (timestep {poisoned})" in message
    for setting in (
        "sample_num_steps=4",
        "sample_eta=1.0",
        "sample_guidance_scale=3.0",
        "dtype=torch.float32",
    ):
        assert setting in message
    assert "not the reward or the learning rate" in message
    assert not rewards_called  # raised before the reward function saw NaN images
    after = trainer.trainable_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ---------------------------------------------------------------------------------------------
# Same seed, same run, in any process

_SEED_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    import safetensors.torch
    from ddpo import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

    torch.seed()  # whatever the global RNG holds before the run must not matter
    torch.set_num_threads(1)

    def brightness(images, prompts, metadata):
        return images.mean(dim=(1, 2, 3)), {}

    def prompt_fn():
        return "a red circle", {}

    config = DDPOConfig(
        num_epochs=2, sample_num_steps=2, sample_batch_size=2, sample_num_batches_per_epoch=1,
        train_batch_size=2, train_learning_rate=1e-2, save_freq=0, mixed_precision="no",
        output_dir=sys.argv[1], accelerator_kwargs={"cpu": True}, seed=3,
    )
    pipeline = DefaultDDPOStableDiffusionPipeline("ddpo-tiny-random")
    trainer = DDPOTrainer(config, brightness, prompt_fn, pipeline)
    trainer.train()
    trainer.close()
    safetensors.torch.save_file(trainer.trainable_state_dict(), sys.argv[2])
    """
)


def test_two_processes_with_the_same_seed_end_with_the_same_weights(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(_SEED_SCRIPT)
    # The first process builds the tiny model into an empty cache, the second loads it: before
    # the fix, building moved the global RNG that the LoRA initialisation then drew from.
    env = os.environ | {"DDPO_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("DDPO_TYPECHECK", None)
    weights = []
    for run in ("a", "b"):
        out = tmp_path / f"{run}.safetensors"
        subprocess.run(
            [sys.executable, str(script), str(tmp_path / run), str(out)],
            check=True,
            env=env,
            capture_output=True,
            timeout=600,
        )
        weights.append(safetensors.torch.load_file(str(out)))
    first, second = weights
    assert first.keys() == second.keys() and first
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_building_a_pipeline_leaves_the_global_rng_alone(pipeline_factory: Any) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = pipeline_factory()
    drawn = torch.rand(3)
    torch.manual_seed(999)
    second = pipeline_factory()
    assert torch.equal(drawn, expected)
    lora_a = {k: v for k, v in first.trainable_parameters().items() if "lora_A" in k}
    assert lora_a
    assert all(torch.equal(v, second.trainable_parameters()[k]) for k, v in lora_a.items())
    third = pipeline_factory(lora_init_seed=1)
    assert any(not torch.equal(v, third.trainable_parameters()[k]) for k, v in lora_a.items())


# ---------------------------------------------------------------------------------------------
# Stateful prompt and reward functions are checkpointed; metrics.jsonl after a resume


class CyclingPrompts:
    """Takes the prompts in turn: its position is state that only it knows."""

    def __init__(self) -> None:
        self.position = 0
        self.seen: list[str] = []

    def __call__(self) -> tuple[str, dict[str, Any]]:
        prompt = PROMPTS[self.position % len(PROMPTS)]
        self.position += 1
        self.seen.append(prompt)
        return prompt, {"position": self.position}

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


class CountingReward:
    """A reward that depends on how many batches it has scored (state to checkpoint)."""

    def __init__(self, fail_at_call: int | None = None) -> None:
        self.calls = 0
        self.fail_at_call = fail_at_call

    def __call__(self, images: torch.Tensor, prompts: Any, metadata: Any) -> Any:
        if self.calls == self.fail_at_call:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        return images.mean(dim=(1, 2, 3)) + 0.01 * self.calls, {}

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = int(state["calls"])


def _resume_config(output_dir: Path, **overrides: Any) -> DDPOConfig:
    values = {"num_epochs": 4, "save_freq": 2, "sample_batch_size": 2, "train_batch_size": 1}
    return tiny_config(output_dir, **(values | overrides))


def test_stateful_functions_resume_exactly_and_metrics_keep_one_row_per_epoch(
    tmp_path: Path, pipeline_factory: Any
) -> None:
    # Uninterrupted: 4 epochs.
    prompts_full = CyclingPrompts()
    full = DDPOTrainer(
        _resume_config(tmp_path / "full"), CountingReward(), prompts_full, pipeline_factory()
    )
    full.train()
    full.close()

    # Interrupted in epoch 3 (after checkpoint_2 and epoch 2's metrics row), then resumed with
    # new function objects, as a new process would build them.
    run = tmp_path / "run"
    first = DDPOTrainer(
        _resume_config(run), CountingReward(fail_at_call=6), CyclingPrompts(), pipeline_factory()
    )
    with pytest.raises(KeyboardInterrupt):
        first.train()
    first.close()
    assert [m["epoch"] for m in read_metrics(run)] == [0, 1, 2]
    prompts_resumed = CyclingPrompts()
    resumed = DDPOTrainer(
        _resume_config(run, resume_from=str(run)),
        CountingReward(),
        prompts_resumed,
        pipeline_factory(),
    )
    assert resumed.first_epoch == 2
    # The row of epoch 2, logged after the checkpoint, is dropped; the earlier ones are kept.
    assert [m["epoch"] for m in read_metrics(run)] == [0, 1]
    resumed.train()
    resumed.close()

    assert prompts_resumed.seen == prompts_full.seen[len(prompts_full.seen) // 2 :]
    rows, reference = read_metrics(run), read_metrics(tmp_path / "full")
    assert [m["epoch"] for m in rows] == [0, 1, 2, 3]
    assert [m["reward_mean"] for m in rows] == [m["reward_mean"] for m in reference]
    weights, expected = resumed.trainable_state_dict(), full.trainable_state_dict()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)


def test_a_stateful_function_needs_its_state_in_the_checkpoint(
    tmp_path: Path, pipeline_factory: Any
) -> None:
    run = tmp_path / "run"
    config = _resume_config(run, num_epochs=2)
    trainer = DDPOTrainer(config, brightness, pick_prompt, pipeline_factory())
    trainer.train()
    trainer.close()
    resume = _resume_config(run, num_epochs=3, resume_from=str(run))
    with pytest.raises(CheckpointError, match="no state for the prompt function CyclingPrompts"):
        DDPOTrainer(resume, brightness, CyclingPrompts(), pipeline_factory())


# ---------------------------------------------------------------------------------------------
# Checkpoint integrity and changed configs


@pytest.fixture()
def finished_run(tmp_path: Path, pipeline_factory: Any) -> Path:
    run = tmp_path / "run"
    trainer = DDPOTrainer(
        _resume_config(run, num_epochs=1, save_freq=1), brightness, pick_prompt, pipeline_factory()
    )
    trainer.train()
    trainer.close()
    return run


def _resume(run: Path, pipeline_factory: Any, **overrides: Any) -> DDPOTrainer:
    config = _resume_config(run, num_epochs=2, save_freq=1, resume_from=str(run), **overrides)
    return DDPOTrainer(config, brightness, pick_prompt, pipeline_factory())


def test_truncated_weights_file_is_named(finished_run: Path, pipeline_factory: Any) -> None:
    weights = finished_run / "checkpoints" / "checkpoint_1" / "trainable_weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{weights} is truncated"):
        _resume(finished_run, pipeline_factory)


def test_corrupt_optimizer_file_is_named(finished_run: Path, pipeline_factory: Any) -> None:
    (optimizer,) = (finished_run / "checkpoints" / "checkpoint_1").glob("optimizer*.bin")
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    optimizer.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{optimizer} is corrupt"):
        _resume(finished_run, pipeline_factory)


def test_missing_rng_state_is_an_error(finished_run: Path, pipeline_factory: Any) -> None:
    rng = finished_run / "checkpoints" / "checkpoint_1" / "random_states_0.pkl"
    rng.unlink()
    with pytest.raises(CheckpointError, match=rf"{rng} is missing"):
        _resume(finished_run, pipeline_factory)
    # a checkpoint without a file list (format 1) is still checked for what resuming needs
    marker = finished_run / "checkpoints" / "checkpoint_1" / "ddpo_checkpoint.json"
    data = json.loads(marker.read_text())
    del data["files"]
    marker.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"has no random_states_0\.pkl"):
        _resume(finished_run, pipeline_factory)


def test_changed_config_is_listed_and_refused_unless_allowed(
    finished_run: Path, pipeline_factory: Any
) -> None:
    with pytest.raises(CheckpointError) as caught:
        _resume(finished_run, pipeline_factory, train_learning_rate=2e-3, seed=5)
    message = str(caught.value)
    assert "seed: 0 -> 5" in message and "train_learning_rate: 0.001 -> 0.002" in message
    assert "num_epochs" not in message  # a longer run is not a change of the run
    assert "resume_allow_config_changes=True" in message
    trainer = _resume(
        finished_run, pipeline_factory, train_learning_rate=2e-3, resume_allow_config_changes=True
    )
    assert trainer.first_epoch == 1
    trainer.close()


def test_changed_pipeline_settings_are_listed_and_refused_unless_allowed(
    finished_run: Path, pipeline_factory: Any
) -> None:
    # The policy's own options (resolution, LoRA shape; a flow model's noise level and SDE
    # window) are recorded in the checkpoint: a pipeline built otherwise would not continue it.
    config = _resume_config(finished_run, num_epochs=2, resume_from=str(finished_run))
    with pytest.raises(CheckpointError) as caught:
        DDPOTrainer(config, brightness, pick_prompt, pipeline_factory(resolution=32, lora_rank=8))
    message = str(caught.value)
    assert "changed pipeline settings: lora_rank: 4 -> 8, resolution: None -> [32, 32]" in message
    assert "resume_allow_config_changes=True" in message
    allowed = dataclasses.replace(config, resume_allow_config_changes=True)
    trainer = DDPOTrainer(allowed, brightness, pick_prompt, pipeline_factory(resolution=32))
    assert trainer.first_epoch == 1
    trainer.close()


def test_lora_layers_and_text_length_are_recorded() -> None:
    """Options that change the policy without changing the config: which layers LoRA adapts and
    how many text tokens condition it (a resume with others would not continue the run)."""
    from ddpo.adapters import load_policy
    from ddpo.trainer.run_state import policy_settings

    attention = policy_settings(load_policy("ddpo-tiny-sd3-random"))
    options = {"lora_targets": "attention_ff"}
    both = policy_settings(load_policy("ddpo-tiny-sd3-random", family_options=options))
    assert set(attention["lora_layers"]) < set(both["lora_layers"])
    assert attention["max_sequence_length"] == 256
    shorter = load_policy("ddpo-tiny-sd3-random", max_sequence_length=77)
    assert policy_settings(shorter)["max_sequence_length"] == 77


def _tree(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder``, a file with the SHA-256 of its bytes."""
    return {
        path.relative_to(folder).as_posix(): (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        )
        for path in sorted(folder.rglob("*"))
    }


def test_a_refused_resume_writes_nothing(
    finished_run: Path, pipeline_factory: Any, tmp_path: Path
) -> None:
    # Refused while the checkpoint loads, after the model is prepared: no tracker files (the
    # tensorboard writer started before the resume did), no new run folder, no metrics rows.
    before = _tree(finished_run)
    elsewhere = tmp_path / "elsewhere"
    for output_dir in ("", str(elsewhere)):
        config = dataclasses.replace(
            _resume_config(finished_run, num_epochs=2, resume_from=str(finished_run)),
            log_with="tensorboard",
            output_dir=output_dir,
        )
        with pytest.raises(CheckpointError, match="no state for the prompt function Cycling"):
            DDPOTrainer(config, brightness, CyclingPrompts(), pipeline_factory())
    assert _tree(finished_run) == before
    assert not elsewhere.exists()


# ---------------------------------------------------------------------------------------------
# Validation that needs the pipeline, prompt metadata of any type, reruns after a crash


def test_pipeline_name_instead_of_pipeline_is_a_type_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"pass DefaultDDPOStableDiffusionPipeline\('ddpo-tiny"):
        DDPOTrainer(tiny_config(tmp_path / "run"), brightness, pick_prompt, "ddpo-tiny-shapes")
    with pytest.raises(TypeError, match=r"must be a DDPOStableDiffusionPipeline .* lacks"):
        DDPOTrainer(tiny_config(tmp_path / "run"), brightness, pick_prompt, object())


def test_too_many_sampling_steps_fail_before_sampling(
    tmp_path: Path, pipeline_factory: Any
) -> None:
    config = tiny_config(tmp_path / "run", sample_num_steps=1001)
    with pytest.raises(ValueError, match=r"sample_num_steps=1001 is more than .*allows"):
        DDPOTrainer(config, brightness, pick_prompt, pipeline_factory())
    assert not (tmp_path / "run").exists()


def test_prompt_metadata_of_any_type_reaches_the_reward(
    tmp_path: Path, pipeline_factory: Any
) -> None:
    seen: list[Any] = []

    def reward(images: torch.Tensor, prompts: Any, metadata: Any) -> Any:
        seen.extend(metadata)
        return brightness(images, prompts, metadata)

    trainer = DDPOTrainer(
        tiny_config(tmp_path / "run"), reward, lambda: ("a red circle", "note"), pipeline_factory()
    )
    trainer.train()
    trainer.close()
    assert seen == ["note"] * 4


def test_rerun_after_a_crash_before_the_first_checkpoint_says_what_to_do(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n')
    with pytest.raises(FileExistsError, match=rf"no checkpoint .* delete it \(rm -r {run}\)"):
        DDPOTrainer(tiny_config(run), brightness, pick_prompt, sd_pipeline=None)


def test_trl_documented_image_hook_logs_to_tensorboard(
    tmp_path: Path, pipeline_factory: Any
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from .test_tracking import image_outputs_logger  # TRL's documented hook, verbatim

    config = tiny_config(tmp_path / "run", log_with="tensorboard", num_epochs=2)
    trainer = DDPOTrainer(config, brightness, pick_prompt, pipeline_factory(), image_outputs_logger)
    trainer.train()
    trainer.close()
    events = tmp_path / "run" / "logs" / config.tracker_project_name  # (hparams: a subfolder)
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["images"]
    assert tags and all(" | " in tag for tag in tags)
    logged = [image for tag in tags for image in accumulator.Images(tag)]
    assert {image.step for image in logged} == {0, 2}  # the global step at each epoch's start
    assert all((image.width, image.height) == (256, 256) for image in logged)


def test_step_counts_the_scheduler_cannot_make_fail_before_sampling(tmp_path: Path) -> None:
    # The packaged model's "trailing" DDIM schedule: diffusers yields 62 timesteps for 61 steps.
    pipeline = DefaultDDPOStableDiffusionPipeline("ddpo-tiny-shapes")
    config = tiny_config(tmp_path / "run", sample_num_steps=61)
    with pytest.raises(ValueError, match=r"sample_num_steps=61: .*'trailing'.* gives 62"):
        DDPOTrainer(config, brightness, pick_prompt, pipeline)
    assert not (tmp_path / "run").exists()
