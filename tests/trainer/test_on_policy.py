"""On-policy where the algorithm says so: the policy that re-scores a sample is the one that
drew it.

Two guards, both through the public API: a configuration whose re-scoring pass cannot be the
sampling policy (classifier-free guidance when sampling, none when training) is refused before
any model work, by `DDPOTrainer` and by ``ddpo train`` before the model loads; and at run time,
every micro-batch scored before an epoch's first optimizer step must give ratio 1, which also
catches a pipeline of the user's own whose ``score`` differs from its ``rollout``.
"""

from pathlib import Path
from typing import Any

import pytest
import torch

from ddpo import DDPOConfig, DDPOTrainer
from ddpo.cli import main
from ddpo.trainer import OffPolicyError
from ddpo.trainer.optimisation import OnPolicyCheck

from .test_trainer import (
    FLUX_MODEL,
    MODEL,
    SD3_MODEL,
    SDXL_MODEL,
    brightness,
    pick_prompt,
    pipeline_factory,
    read_metrics,
    tiny_config,
)

pytestmark = pytest.mark.slow
__all__ = ["pipeline_factory"]  # the shared module-scoped fixture


@pytest.mark.parametrize("model", [MODEL, SDXL_MODEL, SD3_MODEL], ids=["sd", "sdxl", "sd3"])
def test_guided_sampling_with_unguided_training_is_refused_before_any_work(
    tmp_path: Path, pipeline_factory: Any, model: str
) -> None:
    config = tiny_config(tmp_path / "run", train_cfg=False, sample_guidance_scale=4.5)
    pipeline = pipeline_factory(model)
    with pytest.raises(ValueError, match=r"train_cfg=False with sample_guidance_scale=4\.5"):
        DDPOTrainer(config, brightness, pick_prompt, pipeline)
    assert not (tmp_path / "run").exists()  # nothing written, nothing prepared


def test_embedded_guidance_and_no_guidance_are_allowed_without_train_cfg(
    tmp_path: Path, pipeline_factory: Any
) -> None:
    # FLUX.1-dev's guidance is an input of its one pass; at scale 1 no family guides.
    DDPOTrainer(
        tiny_config(tmp_path / "flux", train_cfg=False, sample_guidance_scale=3.5),
        brightness,
        pick_prompt,
        pipeline_factory(FLUX_MODEL),
    ).close()
    DDPOTrainer(
        tiny_config(tmp_path / "sd", train_cfg=False, sample_guidance_scale=1.0),
        brightness,
        pick_prompt,
        pipeline_factory(MODEL),
    ).close()


def test_a_scale_below_one_guides_neither_pass(tmp_path: Path, pipeline_factory: Any) -> None:
    """Sampling guides only above 1 (as diffusers); re-scoring under ``train_cfg`` must too, or
    the run-time check stops the epoch (it did before re-scoring followed the same rule)."""
    config = tiny_config(
        tmp_path / "run",
        sample_guidance_scale=0.5,
        train_cfg=True,
        train_gradient_accumulation_steps=4,  # one optimizer step: every ratio scored before it
        train_batch_size=1,
    )
    trainer = DDPOTrainer(config, brightness, pick_prompt, pipeline_factory(MODEL))
    trainer.train()
    trainer.close()
    (metrics,) = read_metrics(tmp_path / "run")
    assert metrics["clip_fraction"] == 0.0 and metrics["approx_kl"] < 1e-10


class RescoresDifferently:
    """A user's pipeline that delegates to a real one but re-scores with another DDIM eta from
    its ``from_call``-th call of ``score`` on (a policy mismatch the config cannot see)."""

    def __init__(self, inner: Any, from_call: int) -> None:
        self._inner, self._from_call, self.calls = inner, from_call, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def score(
        self, conditioning: Any, latents: Any, next_latents: Any, rows: Any, **kw: Any
    ) -> Any:
        self.calls += 1
        if self.calls >= self._from_call:
            rows = rows.clone()
            rows[:, 2] = 0.5  # the DDIM row's eta: it sampled with eta 1
        return self._inner.score(conditioning, latents, next_latents, rows, **kw)


@pytest.mark.parametrize("from_call", [1, 3], ids=["first", "third-micro-batch"])
def test_a_pipeline_that_rescores_another_policy_stops_before_any_update(
    tmp_path: Path, pipeline_factory: Any, from_call: int
) -> None:
    # 4 samples, 1 per micro-batch, 1 trained timestep each, 4 micro-batches per optimizer
    # step: the mismatch in the third micro-batch must be caught as well as in the first.
    config = tiny_config(
        tmp_path / "run",
        train_batch_size=1,
        train_gradient_accumulation_steps=4,
        sample_guidance_scale=1.0,
    )
    pipeline = RescoresDifferently(pipeline_factory(MODEL), from_call)
    trainer = DDPOTrainer(config, brightness, pick_prompt, pipeline)
    before = trainer.trainable_state_dict()
    with pytest.raises(OffPolicyError, match=r"epoch 0: before the first optimizer step"):
        trainer.train()
    trainer.close()
    assert pipeline.calls == 4  # every micro-batch of the first step was scored, none after
    after = trainer.trainable_state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert not trainer.optimizer.state_dict()["state"]  # the optimizer never stepped


def test_the_tolerance_follows_the_precision_and_is_validated() -> None:
    class FakeAccelerator:
        def __init__(self, precision: str) -> None:
            self.mixed_precision = precision

        def gather(self, tensor: torch.Tensor) -> torch.Tensor:
            return tensor

    assert OnPolicyCheck(FakeAccelerator("no"), None, epoch=0).tolerance == 1e-3
    assert OnPolicyCheck(FakeAccelerator("bf16"), None, epoch=0).tolerance == 5e-2
    check = OnPolicyCheck(FakeAccelerator("no"), 0.2, epoch=3)
    check.update(torch.tensor(0.1))
    check.update(torch.tensor(0.15))
    check.verify()  # within 0.2
    check.update(torch.tensor(0.3))
    with pytest.raises(OffPolicyError, match=r"epoch 3: .* up to 0.3 "):
        check.verify()
    nan = OnPolicyCheck(FakeAccelerator("no"), 0.2, epoch=3)
    nan.update(torch.tensor(float("nan")))
    nan.verify()  # a NaN score is the gradient-norm check's to report, not a policy mismatch
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"DDPOConfig.on_policy_tolerance must be a finite"):
            DDPOConfig(on_policy_tolerance=bad)
    with pytest.raises(TypeError, match=r"on_policy_tolerance"):  # (or the runtime type check)
        DDPOConfig(on_policy_tolerance="0.1")  # type: ignore[arg-type]


class _LoadedAModel(Exception):
    """Raised by the patched loader: the CLI got as far as loading the model."""


def _refuse_loading(*args: Any, **kwargs: Any) -> Any:
    raise _LoadedAModel


@pytest.mark.parametrize(
    ("model", "refused"), [(SD3_MODEL, True), (SDXL_MODEL, True), (FLUX_MODEL, False)]
)
def test_ddpo_train_refuses_the_mismatch_before_the_model_loads(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    model: str,
    refused: bool,
) -> None:
    monkeypatch.setattr("ddpo.adapters.families.load_policy", _refuse_loading)
    argv = [
        "train",
        f"--pretrained_model={model}",
        "--ddpo_config.no_train_cfg",
        "--ddpo_config.sample_guidance_scale=4.5",
        "--reward=brightness",
        "--prompts=simple_animals",
        f"--ddpo_config.output_dir={tmp_path / 'run'}",
    ]
    if not refused:  # FLUX: the check passes and the CLI goes on to load the model
        with pytest.raises(_LoadedAModel):
            main(argv)
        return
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ddpo: DDPOConfig.train_cfg=False with"), err


def test_sample_eta_on_a_flow_policy_is_refused_not_ignored(
    tmp_path: Path, pipeline_factory: Any
) -> None:
    pipeline = pipeline_factory(SD3_MODEL)
    config = tiny_config(tmp_path / "run", sample_eta=0.5, sample_guidance_scale=1.0)
    with pytest.raises(ValueError, match=r"DDPOConfig.sample_eta=0.5: sample_eta applies to"):
        DDPOTrainer(config, brightness, pick_prompt, pipeline)
    DDPOTrainer(  # DDIM families use it
        tiny_config(tmp_path / "sd", sample_eta=0.5, sample_guidance_scale=1.0),
        brightness,
        pick_prompt,
        pipeline_factory(MODEL),
    ).close()


@pytest.mark.parametrize(
    ("model", "flag", "message"),
    [
        (
            MODEL,
            "--ddpo_config.kl_convention=flow_grpo",
            "kl_convention='flow_grpo' is not offered",
        ),
        (SD3_MODEL, "--ddpo_config.sample_eta=0.5", "sample_eta applies to the DDIM families"),
    ],
    ids=["kl-convention", "eta"],
)
def test_ddpo_train_refuses_what_the_policy_cannot_run_before_the_model_loads(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    model: str,
    flag: str,
    message: str,
) -> None:
    monkeypatch.setattr("ddpo.adapters.families.load_policy", _refuse_loading)
    argv = ["train", f"--pretrained_model={model}", flag, "--reward=brightness"]
    argv += ["--prompts=simple_animals", f"--ddpo_config.output_dir={tmp_path / 'run'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
