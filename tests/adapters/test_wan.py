"""DefaultDDPOWanPipeline on the tiny random Wan2.1 text-to-video model built from config (no hub):
what is Wan's own.

Stock diffusers' ``WanPipeline`` is the reference, run with a ``FlowMatchEulerDiscreteScheduler``
of the folder's shift (the stock folders ship UniPC; the policy samples with flow-matching
Euler, as Flow-GRPO and DanceGRPO train Wan): the frame axis of video latents ``(batch, C,
frames, h, w)`` and videos ``(batch, frames, 3, H, W)``, the ``4 k + 1`` frame counts, the
scheduler mapping, the prompt cleaning, LoRA on the attention of both attention layers, the
defaults from the VAE's config, Wan 2.2 and other folders refused. What every family does is the
Wan row of the shared suites: ``test_conformance.py`` (stock videos in the ODE limit,
``encode``, the reference policy, LoRA and full saves, gradient checkpointing, the family
table), ``test_sampling_boundary.py`` (re-scoring gives ratio 1, schedule rows, ``grad_steps``,
per-call sizes) and ``test_model_members.py`` (``predict``, the forward process, ``decode``,
``encode_images``, ``predicted_clean``). One epoch trains through ``DDPOTrainer`` with a reward
of videos, and resumes exactly.
"""

import inspect
import json
import random
import shutil
from pathlib import Path
from typing import Any

import beartype
import jaxtyping
import pytest
import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
    WanPipeline,
)
from safetensors.torch import load_file
from torch import Tensor

from ddpo import DDPOConfig, DDPOTrainer
from ddpo.adapters import load_policy
from ddpo.adapters.wan.checks import wan_euler_scheduler
from ddpo.adapters.wan.policy import DefaultDDPOWanPipeline
from ddpo.adapters.wan.tiny import TINY_WAN_NAME, WAN_SCHEDULER_CONFIG
from ddpo.policy import PolicyRollout
from ddpo.prompts import RepeatPrompts

pytestmark = pytest.mark.slow

PROMPTS = ["a red circle", "a blue square"]
FRAMES, SIDE = 5, 64  # the tiny model's video: 5 frames of 64 x 64 (2 latent frames of 8 x 8)
LATENTS = (2, 4, 2, 8, 8)
TYPE_ERRORS = (jaxtyping.TypeCheckError, beartype.roar.BeartypeException)


def stock_pipeline(folder: Path) -> Any:
    """Stock ``WanPipeline`` of ``folder`` with the Euler scheduler of the folder's shift."""
    stock = WanPipeline.from_pretrained(folder)
    stock.scheduler = FlowMatchEulerDiscreteScheduler(shift=WAN_SCHEDULER_CONFIG["flow_shift"])
    stock.set_progress_bar_config(disable=True)
    return stock


def new_policy(folder: Path, **kwargs: Any) -> DefaultDDPOWanPipeline:
    policy = DefaultDDPOWanPipeline(folder, **kwargs)
    policy.set_progress_bar_config(disable=True)
    return policy


def stock_videos(stock: Any, *, frames: int = FRAMES, size: tuple[int, int] = (SIDE, SIDE),
                 guidance: float = 5.0, seed: int = 3, **kwargs: Any) -> Tensor:  # fmt: skip
    out = stock(
        PROMPTS, height=size[0], width=size[1], num_frames=frames, num_inference_steps=3,
        guidance_scale=guidance, output_type="pt", generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )  # fmt: skip
    videos: Tensor = out.frames
    return videos


def copy_folder(source: Path, target: Path, **edits: dict[str, Any]) -> Path:
    """A copy of ``source`` with JSON files changed: ``{"model_index.json": {...}}``, keys to
    set (``None`` values delete)."""
    shutil.copytree(source, target)
    for name, changes in edits.items():
        path = target / name.replace("__", "/")
        data = json.loads(path.read_text())
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        path.write_text(json.dumps(data))
    return target


def rollout(policy: Any, seed: int, **kwargs: Any) -> PolicyRollout:
    kwargs.setdefault("num_steps", 3)
    kwargs.setdefault("guidance_scale", 1.0)
    out: PolicyRollout = policy.rollout(
        policy.encode(PROMPTS, ""), generator=torch.Generator().manual_seed(seed), **kwargs
    )
    return out


# ---- video latents, frames and the schedule --------------------------------------------------


def test_a_rollout_records_video_latents_and_returns_videos(wan_policy: Any) -> None:
    """The tiny model's 5 frames are 2 latent frames (the first frame, then 4 per latent
    frame); the frames of a video differ."""
    assert (wan_policy.resolution, wan_policy.num_frames) == ((SIDE, SIDE), FRAMES)
    assert wan_policy.latent_frames() == 2
    out = rollout(wan_policy, 0)
    assert out.latents.shape == (2, 4, *LATENTS[1:])  # x_T and the 3 SDE steps
    assert out.images.shape == (2, FRAMES, 3, SIDE, SIDE)
    # a video, not one image repeated
    assert float((out.images[:, 0] - out.images[:, -1]).abs().mean()) > 1e-3


def test_the_ode_draws_the_stock_videos_at_another_frame_count_and_size(wan_path: Path) -> None:
    """``num_frames`` (the policy's) and ``height``/``width`` (per call) as the stock
    pipeline's: the same videos for the same generator."""
    frames, size = 9, (32, 48)
    policy = new_policy(wan_path, num_frames=frames)
    assert policy.latent_frames() == 3
    mine = policy(PROMPTS, num_inference_steps=3, guidance_scale=5.0, noise_level=0,
                  height=size[0], width=size[1], output_type="pt",
                  generator=torch.Generator().manual_seed(3))  # fmt: skip
    theirs = stock_videos(stock_pipeline(wan_path), frames=frames, size=size)
    assert mine.images.shape == (2, frames, 3, *size)
    torch.testing.assert_close(mine.images, theirs, atol=2e-5, rtol=0)
    assert mine.latents.shape[2:] == (4, 3, size[0] // 8, size[1] // 8)


def test_latents_and_videos_without_the_policys_frames_are_refused(wan_policy: Any) -> None:
    """``predict`` takes video latents and ``encode_images`` videos of ``num_frames``."""
    gen = torch.Generator().manual_seed(0)
    latents, t = torch.randn(LATENTS, generator=gen), torch.tensor([500.0, 250.0])
    with pytest.raises(ValueError, match=r"latents must be \(batch, channels, frames, height"):
        wan_policy.predict(wan_policy.encode(PROMPTS, ""), latents[:, :, 0], t)
    clips = torch.rand(2, FRAMES, 3, SIDE, 32, generator=gen)
    with pytest.raises((ValueError, *TYPE_ERRORS)):  # jaxtyping's check in the tests
        wan_policy.encode_images(clips[:, 0])
    with pytest.raises(ValueError, match=r"images must be videos \(batch, 5, 3, height, width\)"):
        wan_policy.encode_images(clips[:, :3])


def test_the_schedule_is_flow_match_euler_with_the_folders_flow_shift(
    wan_path: Path, wan_policy: Any
) -> None:
    """The stock folder's UniPC (flow sigmas, ``flow_shift=3``) becomes the Euler scheduler of
    shift 3, whose table the rollout steps through at any size (a rollout's rows are its
    scheduler's table: ``test_sampling_boundary.py``); a folder shipping Euler keeps its own."""
    stock = WanPipeline.from_pretrained(wan_path)
    assert isinstance(stock.scheduler, UniPCMultistepScheduler)
    scheduler = wan_policy.scheduler
    assert isinstance(scheduler, FlowMatchEulerDiscreteScheduler)
    assert scheduler.config.shift == 3.0 and not scheduler.config.use_dynamic_shifting
    reference = FlowMatchEulerDiscreteScheduler(shift=3.0)
    reference.set_timesteps(6)
    for size in (None, (32, 96)):
        ours = wan_policy._flow_schedule(type(scheduler).from_config(scheduler.config), 6,
                                         size=size)  # fmt: skip
        torch.testing.assert_close(ours.sigmas, reference.sigmas, atol=0, rtol=0)
        torch.testing.assert_close(ours.timesteps, reference.timesteps, atol=0, rtol=0)
    euler = FlowMatchEulerDiscreteScheduler(shift=5.0, num_train_timesteps=1000)
    assert wan_euler_scheduler(euler).config.shift == 5.0
    unipc = UniPCMultistepScheduler(**{**WAN_SCHEDULER_CONFIG, "flow_shift": 5.0})
    assert wan_euler_scheduler(unipc).config.shift == 5.0


def test_encode_cleans_prompts_as_the_stock_pipeline(wan_path: Path, wan_policy: Any) -> None:
    """Whitespace runs and HTML entities are cleaned as ``WanPipeline``'s ``prompt_clean``; the
    states past each prompt's tokens are zero."""
    prompts = ["  a red&amp;circle \n", "a   blue square"]
    stock = stock_pipeline(wan_path)
    with torch.no_grad():
        expected, _ = stock.encode_prompt(
            prompts, do_classifier_free_guidance=False, device="cpu", max_sequence_length=512
        )
        again, _ = stock.encode_prompt(
            ["a red&circle", "a blue square"], do_classifier_free_guidance=False, device="cpu",
            max_sequence_length=512,
        )  # fmt: skip
    embeds = wan_policy.encode(prompts, "")["prompt_embeds"]
    assert embeds.shape == (2, 512, 32)
    torch.testing.assert_close(embeds, expected, atol=2e-6, rtol=0)
    torch.testing.assert_close(embeds, again, atol=2e-6, rtol=0)
    assert bool((embeds[:, 20:] == 0).all()) and bool((embeds[:, :3] != 0).any())


# ---- LoRA ------------------------------------------------------------------------------------


def test_lora_adapts_both_attention_layers_in_diffusers_format(
    wan_path: Path, tmp_path: Path
) -> None:
    policy = new_policy(wan_path, lora_targets="attention_ff")
    names = {n.split(".lora_")[0] for n in policy.trainable_parameters()}
    block = "blocks.0."
    for layer in ("attn1", "attn2"):
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            assert f"{block}{layer}.{proj}" in names
    assert f"{block}ffn.net.0.proj" in names and f"{block}ffn.net.2" in names
    assert not any("condition_embedder" in n or "patch_embedding" in n for n in names)
    saved = load_file(
        policy.save_lora_weights(tmp_path / "lora") / "pytorch_lora_weights.safetensors"
    )
    assert "transformer.blocks.0.attn1.to_q.lora_A.weight" in saved
    assert "transformer.blocks.1.attn2.to_out.0.lora_B.weight" in saved
    assert all(k.startswith("transformer.blocks.") for k in saved)
    default = new_policy(wan_path)
    assert {n.split(".lora_")[0].split(".")[-1] for n in default.trainable_parameters()} == {
        "to_q", "to_k", "to_v", "0"
    }  # fmt: skip


# ---- folders and arguments -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edits", "match"),
    [
        ({"model_index.json": {"transformer_2": ["diffusers", "WanTransformer3DModel"],
                               "boundary_ratio": 0.875}}, r"Wan 2\.2 model"),
        ({"model_index.json": {"boundary_ratio": 0.9}}, r"Wan 2\.2 model"),
        ({"model_index.json": {"expand_timesteps": True}}, r"Wan 2\.2 model"),
        ({"scheduler__scheduler_config.json": {"_class_name": "DDIMScheduler"}},
         r"scheduler 'DDIMScheduler' is not one of"),
        ({"scheduler__scheduler_config.json": {"use_flow_sigmas": False}},
         r"must run on flow sigmas"),
        ({"scheduler__scheduler_config.json": {"use_dynamic_shifting": True}},
         r"use_dynamic_shifting=True"),
        ({"transformer__config.json": {"text_dim": 48}}, r"text_dim=48 is not the text encoder"),
        ({"transformer__config.json": {"image_dim": 1280}}, r"image-to-video"),
        ({"vae__config.json": {"latents_std": [1.0]}}, r"latents_std must hold z_dim=4"),
    ],
    ids=["two-experts", "boundary", "ti2v", "ddim", "unipc-not-flow", "dynamic-shift",
         "text-width", "i2v", "vae-stats"],
)  # fmt: skip
def test_wan_2_2_and_unfit_folders_are_refused_before_loading(
    wan_path: Path, tmp_path: Path, edits: dict[str, Any], match: str
) -> None:
    folder = copy_folder(wan_path, tmp_path / "edited", **edits)
    with pytest.raises(ValueError, match=match):
        DefaultDDPOWanPipeline(folder)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_frames": 6}, r"num_frames must be an int 4 k \+ 1 .* got num_frames=6"),
        ({"num_frames": 0}, r"num_frames=0"),
        ({"resolution": 40}, r"resolution must be positive multiples of 16"),
        ({"max_sequence_length": 513}, r"max_sequence_length must be an int in \[1, 512\]"),
        ({"noise_level": 0, "sde_window_size": 2}, r"noise_level=0 samples with the ODE"),
    ],
)
def test_bad_arguments_are_refused_naming_them(
    wan_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        DefaultDDPOWanPipeline(wan_path, **kwargs)


def test_unknown_lora_targets_are_refused(wan_path: Path) -> None:
    with pytest.raises((ValueError, *TYPE_ERRORS)):  # jaxtyping's check in the tests
        DefaultDDPOWanPipeline(wan_path, lora_targets="ff")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"lora_targets must be one of .* got lora_targets='ff'"):
        inspect.unwrap(DefaultDDPOWanPipeline.__init__)(
            object.__new__(DefaultDDPOWanPipeline), wan_path, lora_targets="ff"
        )


def test_the_builtin_name_and_the_stock_defaults(
    wan_path: Path, tmp_path: Path, use_tiny_cache: Path
) -> None:
    """``ddpo-tiny-wan-random`` resolves through the family table; a folder whose VAE records no
    default size samples ``WanPipeline``'s 480 x 832 and 81 frames."""
    policy = load_policy(TINY_WAN_NAME, use_lora=False)
    assert type(policy) is DefaultDDPOWanPipeline and policy.num_frames == FRAMES
    unset = {"sample_size": None, "sample_frames": None}
    bare = copy_folder(wan_path, tmp_path / "bare", **{"vae__config.json": unset})
    policy = new_policy(bare)
    assert (policy.resolution, policy.num_frames, policy.latent_frames()) == ((480, 832), 81, 21)
    assert policy._latent_shape(1) == (1, 4, 21, 60, 104)


# ---- training through DDPOTrainer -------------------------------------------------------------


def video_brightness(videos: Tensor, prompts: Any, metadata: Any) -> tuple[Tensor, dict]:
    """The mean pixel over a video's frames: a cheap, deterministic reward of videos."""
    assert videos.ndim == 5 and videos.shape[1:3] == (FRAMES, 3)
    return videos.mean(dim=(1, 2, 3, 4)), {}


def pick_prompt() -> tuple[str, dict[str, Any]]:
    prompt = random.choice(PROMPTS)
    return prompt, {}


def wan_trainer(output_dir: Path | None, wan_path: Path, **overrides: Any) -> DDPOTrainer:
    """A trainer of the tiny Wan policy: 2 batches of 2 videos (each prompt twice, group
    advantages), 2 guided steps, every transition trained, on the CPU."""
    values: dict[str, Any] = {
        "num_epochs": 1,
        "sample_num_steps": 2,
        "sample_batch_size": 2,
        "sample_num_batches_per_epoch": 2,
        "sample_guidance_scale": 4.0,
        "train_batch_size": 2,
        "train_learning_rate": 3e-3,
        "save_freq": 0,
        "mixed_precision": "no",
        "output_dir": str(output_dir) if output_dir is not None else "",
        "accelerator_kwargs": {"cpu": True},
    }
    torch.manual_seed(0)
    config = DDPOConfig(**{**values, **overrides})
    return DDPOTrainer(
        config, video_brightness, RepeatPrompts(pick_prompt, 2), new_policy(wan_path)
    )


def read_metrics(output_dir: Path) -> list[dict[str, Any]]:
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_one_epoch_trains_on_video_rewards_and_resumes_exactly(
    wan_path: Path, tmp_path: Path
) -> None:
    """Two epochs in one run equal one epoch and a resumed second: the weights and every
    logged number."""
    from accelerate.state import AcceleratorState, GradientState

    def reset() -> None:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()

    trainer = wan_trainer(tmp_path / "a", wan_path, num_epochs=2, save_freq=1)
    before = trainer.trainable_state_dict()
    trainer.train()
    trainer.close()
    weights_a = trainer.trainable_state_dict()
    assert any(not torch.equal(before[k], weights_a[k]) for k in before)
    reset()
    trainer = wan_trainer(tmp_path / "b", wan_path, num_epochs=1, save_freq=1)
    trainer.train()
    trainer.close()
    reset()
    trainer = wan_trainer(None, wan_path, num_epochs=2, save_freq=1,
                          resume_from=str(tmp_path / "b"))  # fmt: skip
    trainer.train()
    trainer.close()
    weights_c = trainer.trainable_state_dict()
    assert all(torch.equal(weights_a[k], weights_c[k]) for k in weights_a)
    rows_a, rows_b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert len(rows_a) == len(rows_b) == 2
    for key in ("reward_mean", "loss", "approx_kl", "clip_fraction", "global_step"):
        assert [r[key] for r in rows_a] == [r[key] for r in rows_b], key
    reset()
