"""`DDPOConfig.ema_decay`: the EMA of the trained weights follows its formula step by step,
evaluation scores it, ``final_ema/`` holds it, checkpoints keep it (exact resume), and bad
values are refused."""

import json
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file

from ddpo import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline
from ddpo.trainer.checkpoint import EMA_WEIGHTS_FILENAME
from ddpo.trainer.ema import WeightsEMA
from ddpo.trainer.optimisation import trainable_named_parameters

from .test_trainer import MODEL, brightness, pick_prompt, tiny_config

pytestmark = pytest.mark.slow

# one optimizer step per epoch (2 micro-batches accumulated), an EMA update every 2nd step
EMA = {"ema_decay": 0.6, "ema_update_every": 2, "train_gradient_accumulation_steps": 2,
       "train_learning_rate": 1e-2}  # fmt: skip


def _trainer(config: DDPOConfig) -> DDPOTrainer:
    torch.manual_seed(0)
    return DDPOTrainer(config, brightness, pick_prompt, DefaultDDPOStableDiffusionPipeline(MODEL))


def _close(trainer: DDPOTrainer) -> None:
    trainer.close()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_the_ema_follows_its_formula_and_is_evaluated_and_saved(tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "a", num_epochs=4, eval_freq=4, eval_num_prompts=2,
                         eval_num_steps=2, **EMA)  # fmt: skip
    trainer = _trainer(config)
    weights = [trainer.trainable_state_dict()]
    step = 0
    for epoch in range(3):
        step = trainer.step(epoch, step)
        weights.append(trainer.trainable_state_dict())
    assert step == 3
    # updates after steps 2 (decay min(3/12, 0.6) = 0.25) only, so far; none after 1 and 3
    expected = {k: w + (1 - 0.25) * (weights[2][k] - w) for k, w in weights[0].items()}
    assert trainer.ema is not None
    for name, average in trainer.ema.shadow.items():
        torch.testing.assert_close(average, expected[name])
        assert not torch.equal(average, weights[3][name])  # not the trained weights
    # the 4th epoch's evaluation scores the EMA weights and leaves the trained ones in place
    step = trainer.step(3, step)
    trained = trainer.trainable_state_dict()
    decay = min(5 / 14, 0.6)
    expected = {k: a + (1 - decay) * (trained[k] - a) for k, a in expected.items()}
    for name, average in trainer.ema.shadow.items():
        torch.testing.assert_close(average, expected[name])
    named = dict(trainable_named_parameters(trainer.sd_pipeline))

    def load(values: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, param in named.items():
                param.copy_(values[name])

    row = trainer.evaluate()
    assert all(torch.equal(named[k].detach(), trained[k]) for k in trained)  # put back
    kept, trainer.ema = trainer.ema, None  # evaluation without an EMA: the trained weights
    trained_row = trainer.evaluate()
    load(expected)  # the EMA weights copied in by hand
    by_hand = trainer.evaluate()
    load(trained)
    trainer.ema = kept
    assert row == by_hand and row["eval/reward"] != trained_row["eval/reward"]
    # final/ holds the trained weights, final_ema/ the EMA's: as the pipeline saves each when
    # they are copied into it by hand (the run ends at epoch 4: nothing more trains)
    for name, values in (("trained", trained), ("ema", expected)):
        load(values)
        trainer.sd_pipeline.save_pretrained(str(tmp_path / name))
    load(trained)
    assert trainer.train(4) == 4
    _close(trainer)
    unet = "unet/diffusion_pytorch_model.safetensors"
    for folder, by_hand in (("final", "trained"), ("final_ema", "ema")):
        saved, wanted = (
            load_file(tmp_path / "a" / folder / unet),
            load_file(tmp_path / by_hand / unet),
        )
        assert saved.keys() == wanted.keys()
        assert all(torch.equal(saved[k], wanted[k]) for k in saved), folder
    final, final_ema = (
        load_file(tmp_path / "a/final" / unet),
        load_file(tmp_path / "a/final_ema" / unet),
    )
    assert any(not torch.equal(final[k], final_ema[k]) for k in final)


def test_resume_restores_the_ema_exactly(tmp_path: Path) -> None:
    straight = _trainer(tiny_config(tmp_path / "a", num_epochs=4, **EMA))
    straight.train()
    _close(straight)
    assert straight.ema is not None
    first = _trainer(tiny_config(tmp_path / "b", num_epochs=2, save_freq=2, **EMA))
    first.train()
    _close(first)
    checkpoint = next((tmp_path / "b" / "checkpoints").iterdir())
    assert (checkpoint / EMA_WEIGHTS_FILENAME).is_file()
    saved = load_file(checkpoint / EMA_WEIGHTS_FILENAME)
    assert first.ema is not None
    assert all(torch.equal(saved[k], first.ema.shadow[k]) for k in saved)
    resumed = _trainer(
        tiny_config(None, num_epochs=4, save_freq=2, resume_from=str(tmp_path / "b"), **EMA)
    )
    resumed.train()
    _close(resumed)
    assert resumed.ema is not None
    for name, average in straight.ema.shadow.items():
        assert torch.equal(resumed.ema.shadow[name], average), name
    end = resumed.trainable_state_dict()
    assert all(torch.equal(end[k], v) for k, v in straight.trainable_state_dict().items())


def test_no_ema_by_default_and_bad_values_are_refused(tmp_path: Path) -> None:
    trainer = _trainer(tiny_config(tmp_path / "c"))
    trainer.train()
    _close(trainer)
    assert trainer.ema is None and not (tmp_path / "c" / "final_ema").exists()
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\) \(0: no EMA\), got 1.0"):
        tiny_config(None, ema_decay=1.0)
    with pytest.raises(ValueError, match="ema_update_every must be > 0, got 0"):
        tiny_config(None, ema_decay=0.9, ema_update_every=0)
    config = tiny_config(None)
    config.ema_convention = "per_batch"  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"ema_convention must be one of .* got 'per_batch'"):
        config.validate()


def test_the_two_conventions_update_when_they_say() -> None:
    """``step``: after optimizer steps 2, 4, ...; ``flow_grpo``: after each micro-batch whose
    step count s has (s + 1) % 2 == 0, so twice in a row with 2 accumulated micro-batches."""
    weights = {"w": torch.zeros(3)}  # the trained weights, which the EMAs read
    # (global step after the micro-batch, whether it ended with an optimizer step, weights)
    batches = [(0, False, 1.0), (1, True, 2.0), (1, False, 2.0), (2, True, 3.0), (2, False, 3.0)]
    ours = WeightsEMA(weights, 0.6, 2)
    theirs = WeightsEMA(weights, 0.6, 2, convention="flow_grpo")
    updates: dict[str, list[int]] = {"ours": [], "theirs": []}
    for step, stepped, value in batches:
        weights["w"].fill_(value)
        if ours.after_micro_batch(step, stepped):
            updates["ours"].append(step)
        if theirs.after_micro_batch(step, stepped):
            updates["theirs"].append(step)
    assert updates == {"ours": [2], "theirs": [1, 1]}
    d2, d1 = min(3 / 12, 0.6), min(2 / 11, 0.6)
    torch.testing.assert_close(ours.shadow["w"], torch.full((3,), (1 - d2) * 3.0))
    once = (1 - d1) * 2.0
    torch.testing.assert_close(theirs.shadow["w"], torch.full((3,), once + (1 - d1) * (2.0 - once)))


def test_flow_grpos_convention_through_the_trainer(tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "f", num_epochs=2, ema_convention="flow_grpo", **EMA)
    trainer = _trainer(config)
    start = trainer.trainable_state_dict()
    trainer.step(0, 0)  # micro-batches at steps 0 and 1: updates after the 2nd (s = 1)
    after_one = trainer.trainable_state_dict()
    trainer.step(1, 1)  # micro-batches at steps 1 (update again) and 2 (none)
    _close(trainer)
    assert trainer.ema is not None
    d = min(2 / 11, 0.6)
    for name, average in trainer.ema.shadow.items():
        once = start[name] + (1 - d) * (after_one[name] - start[name])
        torch.testing.assert_close(average, once + (1 - d) * (after_one[name] - once))


def test_sampling_with_the_ema_weights(tmp_path: Path) -> None:
    """``ema_sampling``: the first epoch samples as without it (the average starts at the
    weights), later ones with the average, not the trained weights; PPO's ratios are then off
    the EMA's log-probs by design, so no on-policy check stops the run (AWM's old surrogate is
    computed with the same EMA weights); refused without an EMA and with DiffusionNFT."""
    every_step = {**EMA, "ema_update_every": 1, "train_gradient_accumulation_steps": 1}
    rows = {}
    for name, sampling in (("plain", False), ("ema", True)):
        config = tiny_config(tmp_path / name, num_epochs=3, ema_sampling=sampling, **every_step)
        trainer = _trainer(config)
        trainer.train()
        _close(trainer)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        rows[name] = [json.loads(line)["reward_mean"] for line in lines]
    assert rows["ema"][0] == rows["plain"][0]
    assert rows["ema"][1:] != rows["plain"][1:]
    config = tiny_config(tmp_path / "awm", num_epochs=2, algorithm="awm", ema_sampling=True,
                         sample_num_steps=3, **every_step)  # fmt: skip
    trainer = _trainer(config)
    assert trainer.train() == 4
    _close(trainer)
    with pytest.raises(ValueError, match=r"ema_sampling=True samples with the EMA weights: it"):
        tiny_config(None, ema_sampling=True)
    with pytest.raises(ValueError, match=r"ema_sampling=True with algorithm='nft'"):
        tiny_config(None, ema_sampling=True, algorithm="nft", **every_step)
