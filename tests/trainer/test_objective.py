"""The objective seam: `DDPOTrainer` trains an objective defined outside the package, from the
policy's model members, and checkpoints and resumes it exactly."""

from pathlib import Path
from typing import Any

import pytest
import torch

from ddpo import DDPOTrainer
from ddpo.objectives import (
    ObjectiveContext,
    ObjectiveLoss,
    ObjectiveNeeds,
    PolicyGradient,
)
from ddpo.samples import Trajectories

from .test_trainer import MODEL, brightness, pick_prompt, read_metrics, tiny_config

pytestmark = pytest.mark.slow


class WeightedDenoising:
    """Advantage-weighted denoising regression on the epoch's final latents (the shape of AWM
    or DiffusionNFT: forward-noise the samples, regress the denoiser onto its training target,
    weight each sample by its advantage). Two terms per micro-batch, each at its own random
    timesteps; it counts its loss calls as state, checkpointed with the run."""

    needs = ObjectiveNeeds(transitions=False, final=True)

    def __init__(self) -> None:
        self.calls = 0

    def terms(self, kept_transitions: int) -> int:
        assert kept_transitions == 0  # it asked for no transitions
        return 2

    def loss(self, context: ObjectiveContext, batch: Trajectories, term: int) -> ObjectiveLoss:
        assert batch.final_latents is not None and batch.advantages is not None
        assert batch.images is not None and batch.latents.shape[1] == 0
        policy, x0 = context.policy, batch.final_latents
        noise = torch.randn(x0.shape, generator=context.generator).to(x0)
        t = torch.randint(
            0, policy.num_train_timesteps, (len(batch),), generator=context.generator
        ).to(device=x0.device, dtype=torch.float32)
        noisy = policy.add_noise(x0, noise, t)
        with context.autocast():
            prediction = policy.predict(batch.conditioning, noisy, t, denoiser=context.denoiser)
        target = policy.training_target(x0, noise, t)
        per_sample = (prediction.float() - target.float()).square().flatten(1).mean(1)
        weights = torch.sigmoid(batch.advantages)  # positive, larger for better samples
        self.calls += 1
        return ObjectiveLoss((weights * per_sample).mean(), {"mse": per_sample.mean().detach()})

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = int(state["calls"])


def _pipeline() -> Any:
    from ddpo import DefaultDDPOStableDiffusionPipeline

    torch.manual_seed(0)
    return DefaultDDPOStableDiffusionPipeline(MODEL, use_lora=True)


def test_a_custom_objective_trains_checkpoints_and_resumes_exactly(tmp_path: Path) -> None:
    common: dict[str, Any] = {"save_freq": 1, "train_learning_rate": 3e-3}
    # A: two epochs in one run.
    objective_a = WeightedDenoising()
    trainer = DDPOTrainer(
        tiny_config(tmp_path / "a", num_epochs=2, **common),
        brightness,
        pick_prompt,
        _pipeline(),
        objective=objective_a,
    )
    before = trainer.trainable_state_dict()
    assert trainer.terms == 2 and trainer.num_train_timesteps == 0
    step_a = trainer.train()
    trainer.close()
    weights_a = trainer.trainable_state_dict()
    # 4 samples / 2 per micro-batch = 2 optimizer steps an epoch, each of 2 terms.
    assert step_a == 4 and objective_a.calls == 8
    assert all(not torch.equal(before[k], weights_a[k]) for k in before)
    rows_a = read_metrics(tmp_path / "a")
    assert all(row["mse"] > 0 and "clip_fraction" not in row for row in rows_a)

    # B: one epoch; C resumes it for the second, objective state included.
    trainer = DDPOTrainer(
        tiny_config(tmp_path / "b", num_epochs=1, **common),
        brightness,
        pick_prompt,
        _pipeline(),
        objective=WeightedDenoising(),
    )
    trainer.train()
    trainer.close()
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    objective_c = WeightedDenoising()
    trainer = DDPOTrainer(
        tiny_config(None, num_epochs=2, resume_from=str(tmp_path / "b"), **common),
        brightness,
        pick_prompt,
        _pipeline(),
        objective=objective_c,
    )
    assert objective_c.calls == 4  # restored from the checkpoint
    trainer.train()
    trainer.close()
    weights_c = trainer.trainable_state_dict()
    assert objective_c.calls == 8
    assert all(torch.equal(weights_a[k], weights_c[k]) for k in weights_a)
    rows_bc = read_metrics(tmp_path / "b")
    for key in ("reward_mean", "mse", "loss", "global_step"):
        assert [r[key] for r in rows_a] == [r[key] for r in rows_bc], key


def test_the_default_objective_is_the_configs_policy_gradient(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path / "run", loss_type="score_function", kl_coef=0.1, train_cfg=False,
        sample_guidance_scale=1.0, train_clip_range_low=1e-3,
    )  # fmt: skip
    trainer = DDPOTrainer(config, brightness, pick_prompt, _pipeline())
    assert trainer.objective == PolicyGradient(
        loss_type="score_function",
        clip_range=(1e-3, config.train_clip_range),
        kl_coef=0.1,
        kl_convention="exact",
        cfg=False,
    )
    assert trainer.terms == trainer.num_train_timesteps == 1
    trainer.close()


def test_an_objective_is_checked_before_model_work(tmp_path: Path) -> None:
    class TooManyGradSteps(WeightedDenoising):
        needs = ObjectiveNeeds(transitions=False, grad_steps=5)

    config = tiny_config(tmp_path / "run")
    with pytest.raises(ValueError, match=r"last 5 steps, more than DDPOConfig\.sample_num_steps=2"):
        DDPOTrainer(config, brightness, pick_prompt, _pipeline(), objective=TooManyGradSteps())
    with pytest.raises(TypeError, match=r"objective must implement .* lacks \['needs', 'terms'"):
        DDPOTrainer(config, brightness, pick_prompt, _pipeline(), objective=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grad_steps must be >= 0"):
        ObjectiveNeeds(grad_steps=-1)


def test_a_pipeline_eta_that_differs_from_the_config_is_refused(tmp_path: Path) -> None:
    """The trainer samples with DDPOConfig.sample_eta: a pipeline built with another eta is
    refused before any model work, not silently overridden; a default one takes the config's."""
    from ddpo import DefaultDDPOStableDiffusionPipeline

    pipeline = DefaultDDPOStableDiffusionPipeline(MODEL, eta=0.5)
    with pytest.raises(
        ValueError, match=r"pipeline's eta=0\.5 differs from DDPOConfig\.sample_eta"
    ):
        DDPOTrainer(tiny_config(tmp_path / "a"), brightness, pick_prompt, pipeline)
    config = tiny_config(tmp_path / "b", sample_eta=0.5)
    DDPOTrainer(config, brightness, pick_prompt, pipeline).close()
    default = DefaultDDPOStableDiffusionPipeline(MODEL)
    DDPOTrainer(tiny_config(tmp_path / "c", sample_eta=0.7), brightness, pick_prompt, default)
    assert default.eta == 0.7
