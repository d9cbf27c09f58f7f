"""Behaviour lock: fixed short trainings whose per-epoch figures and trained weights are recorded.

Written before the trainer was split into modules (the architecture issue): a refactor must give
the same numbers. The record is ``behaviour_lock.json`` beside this file; rewrite it only for a
deliberate change of behaviour, with ``DDPO_WRITE_BEHAVIOUR_LOCK=1 pytest this file``, and say
why in the commit. Values are compared to 1e-5 relative (not bit for bit) so that another CPU's
kernels, which may round differently, do not fail it; any change of the algorithm moves them by
far more.
"""

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from ddpo import DDPOTrainer, DefaultDDPOStableDiffusionPipeline

from .test_trainer import MODEL, brightness, pick_prompt, read_metrics, tiny_config

pytestmark = pytest.mark.slow

RECORD = Path(__file__).with_name("behaviour_lock.json")
WRITE = os.environ.get("DDPO_WRITE_BEHAVIOUR_LOCK") == "1"

CASES: dict[str, dict[str, Any]] = {
    "lora_per_prompt_sync": {
        "use_lora": True,
        "config": {
            "per_prompt_stat_tracking": True,
            "per_prompt_stat_tracking_buffer_size": 4,
            "per_prompt_stat_tracking_min_count": 2,
            "kl_coef": 0.1,
        },
    },
    "lora_group_async_inner2": {
        "use_lora": True,
        "config": {
            "advantage_mode": "group",
            "async_reward_computation": True,
            "train_num_inner_epochs": 2,
            "negative_prompts": "blurry",
        },
    },
    "full_group_global_sf_accumulate": {
        "use_lora": False,
        "config": {
            "advantage_mode": "group_global",
            "loss_type": "score_function",
            "train_batch_size": 1,
            "train_gradient_accumulation_steps": 2,
            "train_learning_rate": 1e-4,
            "train_cfg": False,
        },
    },
}


def _weight_digest(weights: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Per tensor: sum, sum of squares and the first value, in float64."""
    digest = {}
    for name in sorted(weights):
        w = weights[name].double().flatten()
        digest[name] = [float(w.sum()), float((w * w).sum()), float(w[0])]
    return digest


def _run(tmp_path: Path, case: dict[str, Any]) -> dict[str, Any]:
    config = tiny_config(
        tmp_path / "run",
        num_epochs=2,
        sample_guidance_scale=3.0,
        seed=7,
        **case["config"],
    )
    pipeline = DefaultDDPOStableDiffusionPipeline(MODEL, use_lora=case["use_lora"])
    trainer = DDPOTrainer(config, brightness, pick_prompt, pipeline)
    trainer.train()
    trainer.close()
    metrics = read_metrics(tmp_path / "run")
    keys = ("reward_mean", "reward_std", "loss", "approx_kl", "clip_fraction", "kl", "global_step")
    return {
        "epochs": [{k: m[k] for k in keys if k in m} for m in metrics],
        "weights": _weight_digest(trainer.trainable_state_dict()),
    }


def _assert_close(actual: Any, expected: Any, where: str) -> None:
    if isinstance(expected, dict):
        assert sorted(actual) == sorted(expected), where
        for key in expected:
            _assert_close(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _assert_close(a, e, f"{where}[{i}]")
    else:
        assert actual == pytest.approx(expected, rel=1e-5, abs=1e-7), where


@pytest.mark.parametrize("name", sorted(CASES))
def test_training_gives_the_recorded_numbers(tmp_path: Path, name: str) -> None:
    result = _run(tmp_path, CASES[name])
    record = json.loads(RECORD.read_text()) if RECORD.is_file() else {}
    if WRITE:
        record[name] = result
        RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    assert name in record, f"no record for {name}: run with DDPO_WRITE_BEHAVIOUR_LOCK=1 once"
    _assert_close(result, record[name], name)
