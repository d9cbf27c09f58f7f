"""DDPOTrainer end to end on the tiny random models (CPU, seconds per epoch).

The tests marked with ``FAMILY_MODELS`` run on every model family (SD, SDXL, SD3, FLUX.1,
Qwen-Image and Wan2.1, whose rewards score videos) through the same trainer: sync/async rewards
with per-prompt advantages, KL and checkpointing, exact resume, and two-process gradient sync."""

import json
import math
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch

from ddpo import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline
from ddpo.adapters import load_policy, resolve_pretrained
from ddpo.adapters.families import FLOW_OPTIONS
from ddpo.trainer.trainer import PromptRNG

MODEL = "ddpo-tiny-random"
SDXL_MODEL = "ddpo-tiny-sdxl-random"
SD3_MODEL = "ddpo-tiny-sd3-random"
FLUX_MODEL = "ddpo-tiny-flux-random"
QWENIMAGE_MODEL = "ddpo-tiny-qwenimage-random"
WAN_MODEL = "ddpo-tiny-wan-random"
FAMILY_MODELS = pytest.mark.parametrize(
    "model",
    [MODEL, SDXL_MODEL, SD3_MODEL, FLUX_MODEL, QWENIMAGE_MODEL, WAN_MODEL],
    ids=["sd", "sdxl", "sd3", "flux", "qwenimage", "wan"],
)
PROMPTS = ("a red circle", "a blue square", "a green star")


def brightness(images: torch.Tensor, prompts: Any, metadata: Any) -> tuple[torch.Tensor, dict]:
    """Mean pixel value (of every frame of a video): a cheap, deterministic reward."""
    return images.flatten(1).mean(dim=1), {"kind": "brightness"}


def pick_prompt() -> tuple[str, dict[str, Any]]:
    prompt = random.choice(PROMPTS)
    return prompt, {"index": PROMPTS.index(prompt)}


def tiny_config(output_dir: Path | None, **overrides: Any) -> DDPOConfig:
    values: dict[str, Any] = {
        "num_epochs": 1,
        "sample_num_steps": 2,
        "sample_batch_size": 2,
        "sample_num_batches_per_epoch": 2,
        "train_batch_size": 2,
        "train_timestep_fraction": 0.5,
        "train_learning_rate": 1e-3,
        "save_freq": 0,
        "mixed_precision": "no",
        "output_dir": str(output_dir) if output_dir is not None else "",
        "accelerator_kwargs": {"cpu": True},
    }
    values.update(overrides)
    return DDPOConfig(**values)


def read_metrics(output_dir: Path) -> list[dict[str, Any]]:
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def pipeline_factory() -> Any:
    def make(model: str = MODEL, **kwargs: Any) -> Any:
        torch.manual_seed(0)  # the LoRA initialisation draws from the global RNG
        if model == MODEL:
            return DefaultDDPOStableDiffusionPipeline(MODEL, **kwargs)
        flow = {k: kwargs.pop(k) for k in FLOW_OPTIONS if k in kwargs}
        # the family from the folder's model_index.json
        return load_policy(model, family_options=flow, **kwargs)

    return make


pytestmark = pytest.mark.slow


def test_one_epoch_lora_changes_adapters_and_logs(
    tmp_path: Path, pipeline_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[list[list[Any]], int, Any]] = []
    config = tiny_config(
        tmp_path / "run",
        mixed_precision="fp16",  # TRL's default: falls back to full precision on CPU
        kl_coef=0.1,
        per_prompt_stat_tracking=True,
        per_prompt_stat_tracking_buffer_size=4,
        per_prompt_stat_tracking_min_count=2,
    )
    pipeline = pipeline_factory()
    frozen_name, frozen = next(
        (n, p.detach().clone()) for n, p in pipeline.unet.named_parameters() if not p.requires_grad
    )
    with caplog.at_level("WARNING"):
        trainer = DDPOTrainer(
            config, brightness, pick_prompt, pipeline, lambda *args: calls.append(args)
        )
    assert trainer.mixed_precision == "no"
    assert "mixed_precision='fp16' needs a GPU" in caplog.text
    before = trainer.trainable_state_dict()
    assert before and all("lora" in name for name in before)

    start = time.perf_counter()
    global_step = trainer.train()
    wall_s = time.perf_counter() - start
    trainer.close()

    # 4 samples / train_batch_size 2 = 2 micro-batches = 2 optimizer steps (accumulating over
    # the kept timesteps of each).
    assert global_step == 2
    after = trainer.trainable_state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(dict(pipeline.unet.named_parameters())[frozen_name].detach(), frozen)

    (metrics,) = read_metrics(tmp_path / "run")
    assert metrics["epoch"] == 0 and metrics["global_step"] == 2 and metrics["num_samples"] == 4
    for key in ("reward_mean", "reward_std", "loss", "approx_kl", "clip_fraction", "kl", "lr"):
        assert math.isfinite(metrics[key]), key
    assert metrics["kl"] > 0  # the LoRA policy moved away from the reference
    assert metrics["lr"] == config.train_learning_rate
    # Timings: every phase was timed, the phases fit in the epoch, the epoch in train() (which
    # also saves final/). Relations only, no absolute speeds.
    phases = ("time_sample_s", "time_reward_s", "time_advantages_s", "time_train_s")
    for key in phases:
        assert metrics[key] > 0, key
    assert sum(metrics[key] for key in phases) <= metrics["time_epoch_s"] + 1e-6
    assert metrics["time_epoch_s"] < wall_s

    # The hook: one entry per sampling batch, no tracker configured (TRL: IndexError).
    ((image_data, step, tracker),) = calls
    assert step == 0 and tracker is None and len(image_data) == 2
    rewards_seen = []
    for images, prompts, prompt_metadata, rewards, reward_metadata in image_data:
        assert images.shape == (2, 3, 64, 64)
        assert float(images.min()) >= 0 and float(images.max()) <= 1
        assert len(prompts) == 2 and all(p in PROMPTS for p in prompts)
        assert [m["index"] for m in prompt_metadata] == [PROMPTS.index(p) for p in prompts]
        torch.testing.assert_close(rewards, images.mean(dim=(1, 2, 3)).float())
        assert reward_metadata == {"kind": "brightness"}
        rewards_seen.append(rewards)
    assert metrics["reward_mean"] == pytest.approx(float(torch.cat(rewards_seen).mean()))
    assert trainer.stat_tracker is not None and set(trainer.stat_tracker.get_stats()) <= set(
        PROMPTS
    )
    assert (tmp_path / "run" / "final").is_dir()
    assert not (tmp_path / "run" / "checkpoints").exists()  # save_freq=0


def test_full_unet_score_function_group_tensorboard(tmp_path: Path, pipeline_factory: Any) -> None:
    calls: list[Any] = []
    config = tiny_config(
        tmp_path / "run",
        loss_type="score_function",
        advantage_mode="group",
        train_cfg=False,
        sample_guidance_scale=1.0,  # unguided training re-scores unguided samples
        gradient_checkpointing=True,
        log_with="tensorboard",
        train_learning_rate=1e-4,
        kl_coef=0.05,  # the reference policy of a full UNet is the pipeline's frozen copy
    )
    pipeline = pipeline_factory(use_lora=False)
    trainer = DDPOTrainer(config, brightness, pick_prompt, pipeline, lambda *a: calls.append(a))
    before = trainer.trainable_state_dict()
    assert len(before) == len(list(pipeline.unet.parameters()))
    trainer.train()
    trainer.close()
    after = trainer.trainable_state_dict()
    changed = sum(not torch.equal(before[k], after[k]) for k in before)
    assert changed > len(before) // 2
    ((_, _, tracker),) = calls
    assert tracker is not None and tracker.name == "tensorboard"
    events = list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    (metrics,) = read_metrics(tmp_path / "run")
    assert math.isfinite(metrics["loss"]) and metrics["kl"] > 0


@pytest.mark.parametrize("mode", ["group", "group_global"])
def test_group_advantage_modes(tmp_path: Path, pipeline_factory: Any, mode: str) -> None:
    """``group`` divides each prompt's centred rewards by that prompt's std (near-identical samples
    become +-1); ``group_global`` divides them by the whole batch's std (they stay near 0)."""
    from ddpo.core import group_normalize_advantages

    config = tiny_config(tmp_path / "run", advantage_mode=mode)
    trainer = DDPOTrainer(config, brightness, pick_prompt, pipeline_factory(use_lora=False))
    rewards = torch.tensor([0.10, 0.11, 0.90, 0.70])
    prompts = ["a red circle", "a red circle", "a blue square", "a blue square"]
    advantages = trainer._advantages(rewards, prompts)
    std = "global" if mode == "group_global" else "group"
    expected = group_normalize_advantages(rewards, prompts, std=std)
    torch.testing.assert_close(advantages, expected)
    batch_std = float(rewards.std(unbiased=False))
    if mode == "group":
        torch.testing.assert_close(advantages.abs(), torch.ones(4), atol=3e-2, rtol=0)
    else:
        centred = torch.tensor([-0.005, 0.005, 0.10, -0.10])
        torch.testing.assert_close(advantages, centred / batch_std, atol=1e-3, rtol=0)
    before = trainer.trainable_state_dict()
    trainer.train()
    trainer.close()
    after = trainer.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    (metrics,) = read_metrics(tmp_path / "run")
    assert math.isfinite(metrics["loss"])


@pytest.mark.parametrize(
    ("model", "extra", "policy_options"),
    [
        (MODEL, {}, {}),
        (
            SDXL_MODEL,
            {
                "per_prompt_stat_tracking": True,
                "per_prompt_stat_tracking_min_count": 1,
                "kl_coef": 0.1,
                "gradient_checkpointing": True,
                "train_cfg": True,
                "sample_guidance_scale": 5.0,
            },
            {},
        ),
        (
            SD3_MODEL,
            {
                "kl_coef": 0.1,
                "train_cfg": True,  # sampled with CFG 4: re-scored with it (on-policy)
                "sample_guidance_scale": 4.0,
                "train_timestep_fraction": 1.0,
            },
            {"sde_window_size": 1, "noise_level": 0.7},
        ),
        (
            FLUX_MODEL,
            {
                "kl_coef": 0.1,
                "gradient_checkpointing": True,
                "sample_guidance_scale": 3.5,
                "train_timestep_fraction": 1.0,
            },
            {"sde_window_size": 1, "sde_window_start": 0, "noise_level": 0.9},
        ),
    ],
    ids=[
        "sd",
        "sdxl-per-prompt-kl-checkpointing",
        "sd3-window-auto-group-kl-cfg",
        "flux-window-kl-checkpointing",
    ],
)
def test_async_rewards_equal_sync(
    tmp_path: Path,
    pipeline_factory: Any,
    model: str,
    extra: dict[str, Any],
    policy_options: dict[str, Any],
) -> None:
    results = {}
    for mode in (False, True):
        threads: set[str] = set()

        def reward(
            images: torch.Tensor, prompts: Any, metadata: Any, threads: set[str] = threads
        ) -> Any:
            threads.add(threading.current_thread().name)
            return brightness(images, prompts, metadata)

        config = tiny_config(tmp_path / f"run-{mode}", async_reward_computation=mode, **extra)
        trainer = DDPOTrainer(
            config, reward, pick_prompt, pipeline_factory(model, **policy_options)
        )
        assert trainer.num_train_timesteps == policy_options.get("sde_window_size", 1)
        # "auto": TRL's rule, except that flow policies prefer GRPO's group advantages
        expected = {MODEL: "global", SDXL_MODEL: "per_prompt"}.get(model, "group")
        assert trainer.advantage_mode == expected
        trainer.train()
        trainer.close()
        results[mode] = (read_metrics(tmp_path / f"run-{mode}"), trainer.trainable_state_dict())
        assert (threads == {threading.current_thread().name}) is (not mode)
    (sync_metrics, sync_weights), (async_metrics, async_weights) = results[False], results[True]
    assert ("kl" in sync_metrics[0]) is ("kl_coef" in extra)  # kl_coef=0: no reference pass
    assert all(math.isfinite(sync_metrics[0][k]) for k in ("loss", "reward_mean", "approx_kl"))
    initial = pipeline_factory(model).trainable_parameters()
    assert any(not torch.equal(initial[k], sync_weights[k]) for k in sync_weights)
    assert sync_metrics[0]["reward_mean"] == async_metrics[0]["reward_mean"]
    assert sync_metrics[0]["loss"] == async_metrics[0]["loss"]
    assert all(torch.equal(sync_weights[k], async_weights[k]) for k in sync_weights)


def _wrong_length(images: torch.Tensor, prompts: Any, metadata: Any) -> Any:
    return [0.5], {}


def _non_numeric(images: torch.Tensor, prompts: Any, metadata: Any) -> Any:
    return [0.5, "high"], {}


def _nan_in_second_batch(images: torch.Tensor, prompts: Any, metadata: Any) -> Any:
    _nan_in_second_batch.calls += 1  # type: ignore[attr-defined]
    rewards = images.mean(dim=(1, 2, 3))
    if _nan_in_second_batch.calls == 2:  # type: ignore[attr-defined]
        rewards[1] = float("nan")
    return rewards, {}


def _inf(images: torch.Tensor, prompts: Any, metadata: Any) -> Any:
    return torch.tensor([float("inf"), 0.0]), {}


def _no_metadata(images: torch.Tensor, prompts: Any, metadata: Any) -> Any:
    return images.mean(dim=(1, 2, 3))


@pytest.mark.parametrize(
    ("reward", "error", "match"),
    [
        (
            _wrong_length,
            ValueError,
            r"_wrong_length returned rewards of shape \(1,\) for samples 0",
        ),
        (
            _non_numeric,
            TypeError,
            r"_non_numeric returned non-numeric rewards at sample indices \[1\]",
        ),
        (_nan_in_second_batch, ValueError, r"_nan_in_second_batch returned non-finite .* \[3\]"),
        (_inf, ValueError, r"_inf returned non-finite rewards \[inf\] at sample indices \[0\]"),
        (_no_metadata, TypeError, r"_no_metadata must return \(rewards, reward_metadata\)"),
    ],
)
def test_reward_contract_errors(
    tmp_path: Path, pipeline_factory: Any, reward: Any, error: type[Exception], match: str
) -> None:
    _expect_reward_error(tmp_path, pipeline_factory, reward, error, match, asynchronous=False)


def test_reward_contract_errors_async(tmp_path: Path, pipeline_factory: Any) -> None:
    match = r"_nan_in_second_batch returned non-finite .* \[3\]"
    _expect_reward_error(
        tmp_path, pipeline_factory, _nan_in_second_batch, ValueError, match, asynchronous=True
    )


def _expect_reward_error(
    tmp_path: Path,
    pipeline_factory: Any,
    reward: Any,
    error: type[Exception],
    match: str,
    *,
    asynchronous: bool,
) -> None:
    _nan_in_second_batch.calls = 0  # type: ignore[attr-defined]
    config = tiny_config(tmp_path / "run", async_reward_computation=asynchronous)
    trainer = DDPOTrainer(config, reward, pick_prompt, pipeline_factory())
    before = trainer.trainable_state_dict()
    with pytest.raises(error, match=match):
        trainer.step(0, 0)
    trainer.close()
    after = trainer.trainable_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no optimizer step
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_prompt_rng_is_isolated_and_round_trips() -> None:
    rng = PromptRNG.seeded(7)
    with rng.active():
        first = [random.random(), float(np.random.rand())]
    random.random()  # other code drawing from the global RNGs in between ...
    np.random.rand()
    restored = PromptRNG.from_json(json.loads(json.dumps(rng.to_json())))
    with rng.active():
        second = [random.random(), float(np.random.rand())]
    with restored.active():
        again = [random.random(), float(np.random.rand())]
    reference = PromptRNG.seeded(7)
    with reference.active():
        expected = [
            random.random(),
            float(np.random.rand()),
            random.random(),
            float(np.random.rand()),
        ]
    assert first + second == expected  # ... does not shift the prompt stream
    assert again == second


def test_errors_before_any_model_work(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    config = tiny_config(tmp_path / "run", resume_from=str(missing))
    with pytest.raises(FileNotFoundError, match=r"resume_from=.*nowhere.*no such folder"):
        DDPOTrainer(config, brightness, pick_prompt, sd_pipeline=None)
    (tmp_path / "empty-run").mkdir()
    config = tiny_config(tmp_path / "run", resume_from=str(tmp_path / "empty-run"))
    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint"):
        DDPOTrainer(config, brightness, pick_prompt, sd_pipeline=None)
    # an existing run is never overwritten
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(FileExistsError, match="taken exists and is not empty"):
        DDPOTrainer(tiny_config(tmp_path / "taken"), brightness, pick_prompt, sd_pipeline=None)
    with pytest.raises(TypeError, match="reward_function"):
        DDPOTrainer(tiny_config(tmp_path / "x"), "reward", pick_prompt, sd_pipeline=None)


def test_timestamped_run_names_never_collide(tmp_path: Path, pipeline_factory: Any) -> None:
    config = tiny_config(None, logdir=str(tmp_path), exp_name="exp")
    first = DDPOTrainer(config, brightness, pick_prompt, pipeline_factory())
    first.output_dir.mkdir(parents=True, exist_ok=True)
    (first.output_dir / "marker").write_text("x")
    first.close()
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    second = DDPOTrainer(config, brightness, pick_prompt, pipeline_factory())
    second.close()
    assert first.output_dir.parent == second.output_dir.parent == tmp_path.resolve()
    assert first.run_name.startswith("exp_") and second.run_name.startswith("exp_")
    assert first.output_dir != second.output_dir


@FAMILY_MODELS
def test_checkpoint_limit_and_exact_resume(
    tmp_path: Path, pipeline_factory: Any, model: str
) -> None:
    common: dict[str, Any] = {
        "per_prompt_stat_tracking": True,
        "per_prompt_stat_tracking_buffer_size": 4,
        "per_prompt_stat_tracking_min_count": 2,
        "train_learning_rate": 3e-3,
        "save_freq": 1,
    }
    # A: two epochs in one run, keeping one checkpoint.
    run_a = tmp_path / "a"
    trainer = DDPOTrainer(
        tiny_config(run_a, num_epochs=2, num_checkpoint_limit=1, **common),
        brightness,
        pick_prompt,
        pipeline_factory(model),
    )
    step_a = trainer.train()
    trainer.close()
    weights_a = trainer.trainable_state_dict()
    assert sorted(p.name for p in (run_a / "checkpoints").iterdir()) == ["checkpoint_2"]

    # B: one epoch, then C resumes B's run folder for the second.
    run_b = tmp_path / "b"
    trainer = DDPOTrainer(
        tiny_config(run_b, num_epochs=1, **common), brightness, pick_prompt, pipeline_factory(model)
    )
    trainer.train()
    trainer.close()
    weights_b = trainer.trainable_state_dict()
    # Debris a crash could leave: never taken for a checkpoint.
    (run_b / "checkpoints" / ".tmp-checkpoint_2").mkdir()
    (run_b / "checkpoints" / ".tmp-checkpoint_2" / "optimizer.bin").write_bytes(b"partial")
    (run_b / "checkpoints" / "checkpoint_7").mkdir()

    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    config_c = tiny_config(None, num_epochs=2, resume_from=str(run_b), **common)
    fresh = pipeline_factory(model)
    trainer = DDPOTrainer(config_c, brightness, pick_prompt, fresh)
    assert trainer.output_dir == run_b.resolve()
    assert (trainer.first_epoch, trainer.global_step) == (1, 2)
    resumed = trainer.trainable_state_dict()
    assert all(torch.equal(resumed[k], weights_b[k]) for k in weights_b)
    step_c = trainer.train()
    trainer.close()
    weights_c = trainer.trainable_state_dict()

    assert step_c == step_a == 4
    assert all(torch.equal(weights_a[k], weights_c[k]) for k in weights_a)
    metrics_a, metrics_bc = read_metrics(run_a), read_metrics(run_b)
    assert [m["epoch"] for m in metrics_bc] == [0, 1]
    for key in ("reward_mean", "reward_std", "loss", "global_step"):
        assert [m[key] for m in metrics_a] == [m[key] for m in metrics_bc], key
    assert sorted(p.name for p in (run_b / "checkpoints").iterdir()) == [
        "checkpoint_1",
        "checkpoint_2",
        "checkpoint_7",
    ]
    marker = json.loads(
        (run_b / "checkpoints" / "checkpoint_2" / "ddpo_checkpoint.json").read_text()
    )
    assert marker["epoch"] == 2 and marker["global_step"] == 4
    stats = json.loads(
        (run_b / "checkpoints" / "checkpoint_2" / "per_prompt_stats.json").read_text()
    )
    assert sum(len(v) for v in stats["buffers"].values()) > 0


# The two-process runs: one DDIM family and one flow family. The same over a compiled denoiser
# is `test_speed.py`'s (it runs there, after the compile checks, on their compiled kernels).
TWO_PROCESS_RUNS = {"sd": MODEL, "sd3": SD3_MODEL}
"""Two processes keep identical weights through the trainer's all-reduce, whatever the family:
checked on one DDIM family and on one flow family (which also gathers prompts across processes
for its group advantages and draws its SDE window per process). SDXL and FLUX train through the
same code as SD and SD3 there."""


def launch_two_processes(out: Path, runs: dict[str, str]) -> Path:
    """Every run of ``runs`` (``NAME: MODEL[:compiled]``) by `ddp_worker.py` in one launch of
    two processes (starting them costs more than the tiny runs); run ``NAME`` writes into
    ``<out>/NAME``."""
    # The tiny models are built here first: built by the workers once their process group
    # exists, rank 1's copy lacks the text encoders (transformers saves on rank 0 only).
    for spec in runs.values():
        resolve_pretrained(spec.split(":")[0])
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*cmd, str(worker), str(out), *(f"{name}:{spec}" for name, spec in runs.items())],
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def check_two_process_run(folder: Path) -> None:
    """The ranks trained on different samples from rank 0's weights and stayed identical; the
    checkpoint holds every rank's RNG states; the unwrapped control diverged."""
    load = lambda name: safetensors.torch.load_file(str(folder / name))  # noqa: E731
    init0, init1, final0, final1 = (
        load(f) for f in ("init0.st", "init1.st", "final0.st", "final1.st")
    )
    rewards0 = json.loads((folder / "rewards0.json").read_text())
    rewards1 = json.loads((folder / "rewards1.json").read_text())
    assert rewards0 != rewards1  # each rank trained on different samples ...
    assert all(torch.equal(init0[k], init1[k]) for k in init0)  # ... from rank 0's weights
    assert all(torch.equal(final0[k], final1[k]) for k in final0)  # and stayed identical
    assert any(not torch.equal(init0[k], final0[k]) for k in init0)
    # The checkpoint holds every rank's RNG states next to the shared weights and optimizer.
    names = {p.name for p in (folder / "run" / "checkpoints" / "checkpoint_1").iterdir()}
    assert {"random_states_0.pkl", "random_states_1.pkl", "prompt_rng_0.json"} <= names
    assert {"prompt_rng_1.json", "trainable_weights.safetensors", "optimizer.bin"} <= names
    # Control: training through the unwrapped UNet (TRL's bug) lets the ranks diverge.
    unsynced0, unsynced1 = load("unsynced0.st"), load("unsynced1.st")
    assert any(not torch.equal(unsynced0[k], unsynced1[k]) for k in unsynced0)


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return launch_two_processes(tmp_path_factory.mktemp("two-processes"), TWO_PROCESS_RUNS)


@pytest.mark.parametrize("run", list(TWO_PROCESS_RUNS))
def test_two_processes_keep_identical_weights(two_process_runs: Path, run: str) -> None:
    check_two_process_run(two_process_runs / run)


def test_push_to_hub_failure_keeps_everything_local(
    tmp_path: Path, pipeline_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    config = tiny_config(tmp_path / "run", push_to_hub=True, hub_model_id="someone/tiny-ddpo")
    trainer = DDPOTrainer(config, brightness, pick_prompt, pipeline_factory())
    with pytest.raises(RuntimeError, match=r"push_to_hub to 'someone/tiny-ddpo' failed .* saved"):
        trainer.train()
    trainer.close()
    final = tmp_path / "run" / "final"
    assert (final / "model_index.json").is_file()
    assert len(read_metrics(tmp_path / "run")) == 1


def test_non_finite_gradients_never_reach_the_optimizer(
    tmp_path: Path, pipeline_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = pipeline_factory()
    score = pipeline.score

    def poisoned(*args: Any, **kwargs: Any) -> Any:
        out = score(*args, **kwargs)
        return out._replace(log_prob=out.log_prob * float("nan"))

    monkeypatch.setattr(pipeline, "score", poisoned)
    trainer = DDPOTrainer(tiny_config(tmp_path / "run"), brightness, pick_prompt, pipeline)
    before = trainer.trainable_state_dict()
    with pytest.raises(FloatingPointError, match="gradient norm is nan"):
        trainer.train()
    trainer.close()
    after = trainer.trainable_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_flux_rescored_without_cfg_keeps_the_sampling_guidance(
    tmp_path: Path, pipeline_factory: Any
) -> None:
    """FLUX.1-dev's guidance is an input of its one pass: with train_cfg=False the re-scoring
    must still embed the sampling scale, or the first ratio is not 1 (a policy mismatch)."""
    config = tiny_config(
        tmp_path / "run",
        train_cfg=False,
        sample_guidance_scale=3.5,
        train_learning_rate=1e-12,  # the weights barely move: every ratio must be 1
        train_timestep_fraction=1.0,
    )
    trainer = DDPOTrainer(config, brightness, pick_prompt, pipeline_factory(FLUX_MODEL))
    trainer.train()
    trainer.close()
    (metrics,) = read_metrics(tmp_path / "run")
    assert metrics["approx_kl"] < 1e-9 and metrics["clip_fraction"] == 0.0
