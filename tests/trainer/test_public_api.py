"""DDPO features through the public API only: ``from ddpo import ...``, ``DDPOTrainer.train``,
``step``, ``trainable_state_dict``, the run folder's ``metrics.jsonl``, ``ddpo.cli.main``."""

import contextlib
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

import ddpo.cli
from ddpo import (
    DDPOConfig,
    DDPOPipelineOutput,
    DDPOSchedulerOutput,
    DDPOStableDiffusionPipeline,
    DDPOTrainer,
    DefaultDDPOStableDiffusionPipeline,
)
from ddpo.adapters.sd.interface import scheduler_step_with_logprob
from ddpo.adapters.sd.tiny import tiny_pipeline_path

from .test_trainer import MODEL, PROMPTS, read_metrics, tiny_config

pytestmark = pytest.mark.slow


def brightness(images: Tensor, prompts: Any, metadata: Any) -> tuple[Tensor, dict[str, Any]]:
    return images.mean(dim=(1, 2, 3)), {}


def pick_prompt() -> tuple[str, dict[str, Any]]:
    return random.choice(PROMPTS), {}


def train_once(
    output_dir: Path, reward: Callable[..., Any] = brightness, **overrides: Any
) -> tuple[dict[str, Tensor], dict[str, Tensor], list[dict[str, Any]], int]:
    """One LoRA run: (weights before, weights after, metrics rows, returned global step)."""
    pipeline = DefaultDDPOStableDiffusionPipeline(MODEL, use_lora=True, lora_init_seed=0)
    trainer = DDPOTrainer(tiny_config(output_dir, **overrides), reward, pick_prompt, pipeline)
    before = trainer.trainable_state_dict()
    global_step = trainer.train()
    trainer.close()
    return before, trainer.trainable_state_dict(), read_metrics(output_dir), global_step


def changed(before: dict[str, Tensor], after: dict[str, Tensor]) -> int:
    assert before.keys() == after.keys()
    return sum(not torch.equal(before[k], after[k]) for k in before)


def update(before: dict[str, Tensor], after: dict[str, Tensor]) -> Tensor:
    """All parameters' change, flattened into one vector."""
    return torch.cat([(after[k] - before[k]).flatten() for k in sorted(before)])


def test_inner_epochs_and_gradient_accumulation(tmp_path: Path) -> None:
    """4 samples per epoch: 2 optimizer steps per inner epoch with 2 samples per step, whether
    they come as one batch of 2 or as 2 accumulated batches of 1; 2 inner epochs take 4."""
    init, one, metrics_one, step_one = train_once(tmp_path / "one")
    init_two, two, metrics_two, step_two = train_once(tmp_path / "two", train_num_inner_epochs=2)
    init_acc, acc, metrics_acc, step_acc = train_once(
        tmp_path / "acc", train_batch_size=1, train_gradient_accumulation_steps=2
    )
    assert all(
        torch.equal(init[k], init_two[k]) and torch.equal(init[k], init_acc[k]) for k in init
    )

    # 1. inner epochs: twice the optimizer steps, other weights, on the same samples
    assert (step_one, metrics_one[0]["global_step"]) == (2, 2)
    assert (step_two, metrics_two[0]["global_step"]) == (4, 4)
    assert metrics_two[0]["reward_mean"] == metrics_one[0]["reward_mean"]
    assert changed(init, one) == len(init)
    assert changed(one, two) == len(init)

    # 2. gradient accumulation: the same samples, the same samples per optimizer step, hence
    #    the same step count (not 4, one per micro-batch); the weights moved
    assert (step_acc, metrics_acc[0]["global_step"]) == (2, 2)
    assert metrics_acc[0]["reward_mean"] == metrics_one[0]["reward_mean"]
    assert metrics_acc[0]["num_samples"] == metrics_one[0]["num_samples"] == 4
    assert changed(init, acc) == len(init)
    # ... in the direction of the unaccumulated run's (equal only up to rounding, which Adam
    # amplifies for near-zero gradients: cosine 0.9999996 here; a step per micro-batch: 0.15)
    cosine = torch.nn.functional.cosine_similarity(update(init, acc), update(init, one), dim=0)
    assert cosine > 0.999
    for rows in (metrics_one, metrics_two, metrics_acc):
        assert len(rows) == 1 and all(math.isfinite(rows[0][k]) for k in ("loss", "approx_kl"))


def test_negative_prompt_guides_sampling_but_never_reaches_the_reward(tmp_path: Path) -> None:
    negative = "zebra"
    results = {}
    for name, negative_prompts in (("empty", ""), ("zebra", negative)):
        seen: list[str] = []
        images: list[Tensor] = []

        def reward(batch: Tensor, prompts: Any, metadata: Any, seen: list[str] = seen) -> Any:
            seen.extend(prompts)
            return brightness(batch, prompts, metadata)

        pipeline = DefaultDDPOStableDiffusionPipeline(MODEL, use_lora=True, lora_init_seed=0)
        config = tiny_config(
            tmp_path / name,
            negative_prompts=negative_prompts,
            sample_guidance_scale=5.0,
            sample_num_batches_per_epoch=1,
        )
        trainer = DDPOTrainer(
            config,
            reward,
            pick_prompt,
            pipeline,
            lambda data, *_, images=images: images.extend(batch[0] for batch in data),
        )
        trainer.step(0, 0)
        trainer.close()
        results[name] = (torch.cat(images), read_metrics(tmp_path / name)[0], seen)

    (empty_images, empty_metrics, empty_seen) = results["empty"]
    (zebra_images, zebra_metrics, zebra_seen) = results["zebra"]
    # the same seed draws the same prompts and noise; the negative prompt changes the images
    assert empty_seen == zebra_seen and len(zebra_seen) == 2
    assert all(p in PROMPTS for p in zebra_seen)
    assert all(negative not in p for p in zebra_seen)
    assert (empty_images - zebra_images).abs().max() > 1e-4
    assert empty_metrics["reward_mean"] != zebra_metrics["reward_mean"]


class UserPipeline(DDPOStableDiffusionPipeline):
    """A user's own DDPO pipeline over diffusers components; only the UNet's ``conv_out``
    trains (a few parameters)."""

    def __init__(self, folder: Path) -> None:
        sd: Any = StableDiffusionPipeline.from_pretrained(
            folder, safety_checker=None, requires_safety_checker=False
        )
        self._sd = sd
        self._scheduler = DDIMScheduler.from_config(sd.scheduler.config)
        for module in (sd.unet, sd.vae, sd.text_encoder):
            module.requires_grad_(False).eval()
        sd.unet.conv_out.requires_grad_(True)

    @property
    def unet(self) -> nn.Module:
        unet: nn.Module = self._sd.unet
        return unet

    @property
    def vae(self) -> nn.Module:
        vae: nn.Module = self._sd.vae
        return vae

    @property
    def text_encoder(self) -> nn.Module:
        text_encoder: nn.Module = self._sd.text_encoder
        return text_encoder

    @property
    def tokenizer(self) -> Any:
        return self._sd.tokenizer

    @property
    def scheduler(self) -> Any:
        return self._scheduler

    @property
    def autocast(self) -> Callable[[], contextlib.AbstractContextManager[Any]] | None:
        return None

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self._sd.set_progress_bar_config(**kwargs)

    def get_trainable_layers(self) -> Any:
        return self._sd.unet.conv_out

    def scheduler_step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        eta: float | int = 1.0,
        use_clipped_model_output: bool = False,
        prev_sample: Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> DDPOSchedulerOutput:
        out = scheduler_step_with_logprob(
            self.scheduler,
            model_output,
            timestep,
            sample,
            eta=eta,
            prev_sample=prev_sample,
            generator=generator,
        )
        return DDPOSchedulerOutput(latents=out.prev_sample, log_probs=out.log_prob)

    @torch.no_grad()
    def __call__(
        self,
        *,
        prompt_embeds: Tensor,
        negative_prompt_embeds: Tensor | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        eta: float = 1.0,
        generator: torch.Generator | None = None,
        output_type: str = "pt",
    ) -> DDPOPipelineOutput:
        assert output_type == "pt"
        unet = self._sd.unet
        batch = prompt_embeds.shape[0]
        size = int(unet.config.sample_size)
        shape = (batch, int(unet.config.in_channels), size, size)
        self.scheduler.set_timesteps(num_inference_steps, device=prompt_embeds.device)
        x_t = randn_tensor(shape, generator=generator, device=prompt_embeds.device)
        guided = negative_prompt_embeds is not None and guidance_scale > 1
        latents, log_probs = [x_t], []
        for t in self.scheduler.timesteps:
            if guided:
                assert negative_prompt_embeds is not None
                embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
                uncond, cond = unet(
                    torch.cat([x_t, x_t]), t, encoder_hidden_states=embeds
                ).sample.chunk(2)
                model_output = uncond + guidance_scale * (cond - uncond)
            else:
                model_output = unet(x_t, t, encoder_hidden_states=prompt_embeds).sample
            step = self.scheduler_step(model_output, t, x_t, eta, generator=generator)
            x_t = step.latents
            latents.append(x_t)
            log_probs.append(step.log_probs)
        vae = self._sd.vae
        decoded = vae.decode(x_t / vae.config.scaling_factor).sample
        return DDPOPipelineOutput(
            images=(decoded / 2 + 0.5).clamp(0, 1),
            latents=torch.stack(latents, dim=1),
            log_probs=torch.stack(log_probs, dim=1),
        )

    def save_pretrained(self, output_dir: str) -> None:
        self._sd.save_pretrained(output_dir, safe_serialization=True)

    def save_checkpoint(self, models: list[Any], weights: list[Any], output_dir: str) -> None:
        raise AssertionError("the trainer saves trainable weights itself")

    def load_checkpoint(self, models: list[Any], input_dir: str) -> None:
        raise AssertionError("the trainer loads trainable weights itself")


def test_user_written_pipeline_trains_end_to_end(tmp_path: Path) -> None:
    pipeline = UserPipeline(tiny_pipeline_path())
    trainer = DDPOTrainer(tiny_config(tmp_path / "run"), brightness, pick_prompt, pipeline)
    before = trainer.trainable_state_dict()
    assert sorted(before) == ["conv_out.bias", "conv_out.weight"]
    conv_in = dict(pipeline.unet.named_parameters())["conv_in.weight"]
    frozen = conv_in.detach().clone()
    assert trainer.train() == 2
    trainer.close()
    after = trainer.trainable_state_dict()
    assert changed(before, after) == 2
    assert torch.equal(conv_in.detach(), frozen)  # not trainable: untouched
    (metrics,) = read_metrics(tmp_path / "run")
    assert metrics["global_step"] == 2 and metrics["num_samples"] == 4
    for key in ("reward_mean", "reward_std", "loss", "approx_kl", "clip_fraction"):
        assert math.isfinite(metrics[key]), key
    saved = StableDiffusionPipeline.from_pretrained(tmp_path / "run" / "final").unet
    torch.testing.assert_close(saved.conv_out.weight, after["conv_out.weight"], rtol=0, atol=0)


def test_default_cli_preset_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    epochs = 2
    code = ddpo.cli.main(
        [
            "train",
            "--pretrained_model",
            MODEL,
            "--ddpo_config.num_epochs",
            str(epochs),
            "--ddpo_config.sample_batch_size",
            "2",
            "--ddpo_config.sample_num_batches_per_epoch",
            "1",
            "--ddpo_config.train_batch_size",
            "2",
            "--ddpo_config.sample_num_steps",
            "2",
            "--ddpo_config.output_dir",
            str(out),
        ]
    )
    assert code == 0
    metrics = read_metrics(out)
    assert [m["epoch"] for m in metrics] == list(range(epochs))
    steps = [m["global_step"] for m in metrics]
    assert steps[0] > 0 and steps == [steps[0] * (i + 1) for i in range(epochs)]
    assert all(m["num_samples"] == 2 and math.isfinite(m["reward_mean"]) for m in metrics)
    final = StableDiffusionPipeline.from_pretrained(out / "final")
    assert isinstance(final.scheduler, DDIMScheduler)
    base = StableDiffusionPipeline.from_pretrained(tiny_pipeline_path()).unet.state_dict()
    tuned = final.unet.state_dict()
    assert tuned.keys() == base.keys()
    assert any(not torch.equal(tuned[k], base[k]) for k in base)


def test_an_accelerator_can_be_passed_in(tmp_path: Path) -> None:
    from accelerate import Accelerator

    from ddpo import DDPOTrainer, DefaultDDPOStableDiffusionPipeline

    accelerator = Accelerator(cpu=True, mixed_precision="no")
    config = DDPOConfig(
        num_epochs=1,
        sample_num_steps=2,
        sample_batch_size=2,
        sample_num_batches_per_epoch=1,
        train_batch_size=1,
        train_timestep_fraction=1.0,
        save_freq=0,
        mixed_precision="no",
        output_dir=str(tmp_path / "run"),
    )
    pipeline = DefaultDDPOStableDiffusionPipeline("ddpo-tiny-random")
    trainer = DDPOTrainer(
        config,
        lambda images, prompts, metadata: (images.mean(dim=(1, 2, 3)), {}),
        lambda: ("a red circle", {}),
        pipeline,
        accelerator=accelerator,
    )
    assert trainer.accelerator is accelerator
    # gradients accumulate over the 2 trained timesteps of each micro-batch
    assert accelerator.gradient_accumulation_steps == 2
    assert trainer.train() == 2  # 2 samples / train_batch_size 1
    trainer.close()
    assert accelerator.project_configuration.project_dir == str((tmp_path / "run").resolve())
