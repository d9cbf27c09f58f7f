"""Held-out evaluation during training (`DDPOConfig.eval_freq` and the other ``eval_`` fields):
the rows it logs, that the run trains exactly as without it, that a resumed run logs the same
rows, and the checks before any work."""

from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

from ddpo import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline
from ddpo.evaluation import EVAL_PROMPT_SETS, evaluate
from ddpo.trainer.config_checks import EVAL_PROMPT_SET_NAMES

from .test_trainer import MODEL, brightness, pick_prompt, read_metrics, tiny_config

pytestmark = pytest.mark.slow

EVAL = {"eval_num_prompts": 3, "eval_num_steps": 2, "save_freq": 1, "train_learning_rate": 1e-2}
TIMES = ("time_", "_s")


def _pipeline() -> Any:
    torch.manual_seed(0)
    return DefaultDDPOStableDiffusionPipeline(MODEL, use_lora=True)


def _train(config: DDPOConfig) -> tuple[DDPOTrainer, dict[str, torch.Tensor]]:
    trainer = DDPOTrainer(config, brightness, pick_prompt, _pipeline())
    trainer.train()
    trainer.close()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return trainer, trainer.trainable_state_dict()


def _untimed(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not (k.startswith("time") or k.endswith("_s"))}


def test_eval_rows_are_logged_and_training_is_unchanged_and_resumes_exactly(
    tmp_path: Path,
) -> None:
    # A: two epochs, evaluated after each; B: the same without evaluation.
    trainer_a, weights_a = _train(tiny_config(tmp_path / "a", num_epochs=2, eval_freq=1, **EVAL))
    rows_a = read_metrics(tmp_path / "a")
    for row in rows_a:
        low, mean, high = row["eval/reward_low"], row["eval/reward"], row["eval/reward_high"]
        assert 0 < low <= mean <= high < 1
    assert rows_a[0]["eval/reward"] != rows_a[1]["eval/reward"]  # the policy changed
    # The last row is the trained policy's evaluation, as `evaluate` computes it.
    final = evaluate(
        trainer_a.sd_pipeline, "shapes_heldout", {"reward": brightness}, num_prompts=3,
        num_steps=2, guidance_scale=trainer_a.config.sample_guidance_scale, batch_size=2,
    ).report.metrics["reward"]  # fmt: skip
    assert rows_a[-1]["eval/reward"] == pytest.approx(final.mean, abs=1e-6)
    _, weights_b = _train(tiny_config(tmp_path / "b", num_epochs=2, **{**EVAL}))
    rows_b = read_metrics(tmp_path / "b")
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    for row_a, row_b in zip(rows_a, rows_b, strict=True):
        assert not any(k.startswith("eval/") for k in row_b)
        same = {k: v for k, v in _untimed(row_a).items() if not k.startswith("eval/")}
        assert same == _untimed(row_b)
    # C: one epoch, then resumed for the second: the same rows (evaluations included).
    _train(tiny_config(tmp_path / "c", num_epochs=1, eval_freq=1, **EVAL))
    _, weights_c = _train(
        tiny_config(None, num_epochs=2, eval_freq=1, resume_from=str(tmp_path / "c"), **EVAL)
    )
    assert all(torch.equal(weights_a[k], weights_c[k]) for k in weights_a)
    rows_c = read_metrics(tmp_path / "c")
    assert [_untimed(r) for r in rows_c] == [_untimed(r) for r in rows_a]


@pytest.mark.parametrize(
    ("field", "value", "error", "match"),
    [
        ("eval_prompt_set", "shapes", ValueError, "eval_prompt_set must be one of .* got 'shapes'"),
        ("eval_sampler", "ode", ValueError, "eval_sampler must be one of .* got 'ode'"),
        ("eval_num_prompts", 0, ValueError, "eval_num_prompts must be > 0, got 0"),
        ("eval_images_per_prompt", 0, ValueError, "eval_images_per_prompt must be > 0, got 0"),
        ("eval_freq", -1, ValueError, "eval_freq must be >= 0, got -1"),
        ("eval_num_steps", 2.5, TypeError, "eval_num_steps must be an int, got 2.5"),
    ],
)
def test_eval_settings_are_checked_before_any_work(
    field: str, value: object, error: type[Exception], match: str
) -> None:
    assert EVAL_PROMPT_SET_NAMES == EVAL_PROMPT_SETS
    config = DDPOConfig()  # set afterwards: validate() itself is tested (beartype checks init)
    setattr(config, field, value)
    with pytest.raises(error, match=match):
        config.validate()


def test_a_policy_without_a_deterministic_sampler_is_refused_before_sampling(
    tmp_path: Path,
) -> None:
    pipeline = _pipeline()
    sampled: list[int] = []
    rollout = pipeline.rollout

    class NoDeterministic:
        """The same policy, without ``deterministic_images``."""

        deterministic_images = None

        def __getattr__(self, name: str) -> Any:
            return getattr(pipeline, name)

        def rollout(self, *args: Any, **kwargs: Any) -> Any:
            sampled.append(1)
            return rollout(*args, **kwargs)

    config = tiny_config(tmp_path / "run", eval_freq=1, **EVAL)
    with pytest.raises(ValueError, match="NoDeterministic has no deterministic sampler"):
        DDPOTrainer(config, brightness, pick_prompt, NoDeterministic())
    assert sampled == []
