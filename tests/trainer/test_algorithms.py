"""``DDPOConfig.algorithm``: DiffusionNFT, Advantage Weighted Matching and online Diffusion-DPO
train every family through `DDPOTrainer`, resume exactly, and are refused with a clear error
where they cannot train (before any model work)."""

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from ddpo import DDPOTrainer, DefaultDDPOStableDiffusionPipeline
from ddpo.objectives import (
    AdvantageWeightedMatching,
    DiffusionDPO,
    DiffusionNFT,
    RewardBackprop,
)
from ddpo.prompts import RepeatPrompts
from ddpo.trainer import checkpoint as ckpt
from ddpo.trainer import setup

from .test_trainer import (
    FAMILY_MODELS,
    MODEL,
    SD3_MODEL,
    brightness,
    pick_prompt,
    pipeline_factory,
    read_metrics,
    tiny_config,
)

pytestmark = pytest.mark.slow
__all__ = ["pipeline_factory"]  # the module fixture, shared with test_trainer

ALGORITHMS = ("nft", "awm", "dpo", "draft", "draft_lv", "alignprop")
OBJECTIVES = {
    "nft": DiffusionNFT,
    "awm": AdvantageWeightedMatching,
    "dpo": DiffusionDPO,
    "draft": RewardBackprop,
    "draft_lv": RewardBackprop,
    "alignprop": RewardBackprop,
}
DIAGNOSTICS = {
    "nft": ("optimality", "old_deviation", "policy_loss", "kl"),
    "awm": ("approx_kl", "clip_fraction", "policy_loss", "kl"),
    "dpo": ("implicit_accuracy", "model_diff", "reference_diff"),
    "draft": ("backprop_reward", "grad_steps"),
    "draft_lv": ("backprop_reward",),
    "alignprop": ("backprop_reward", "grad_steps"),
}


def _config(output_dir: Path | None, algorithm: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "algorithm": algorithm,
        "sample_num_steps": 3,
        "sample_guidance_scale": 1.0,
        "train_learning_rate": 3e-3,
        "kl_coef": 0.01 if algorithm in ("nft", "awm") else 0.0,
        "dpo_beta": 50.0,
        "backprop_grad_steps": 2,
    }
    values.update(overrides)
    return tiny_config(output_dir, **values)


def _trainer(config: Any, model: str, pipeline_factory: Any) -> DDPOTrainer:
    return DDPOTrainer(
        config, brightness, RepeatPrompts(pick_prompt, 2), pipeline_factory(model, use_lora=True)
    )


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@FAMILY_MODELS
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_trains_each_family(
    tmp_path: Path, model: str, algorithm: str, pipeline_factory: Any
) -> None:
    trainer = _trainer(_config(tmp_path / "run", algorithm), model, pipeline_factory)
    assert isinstance(trainer.objective, OBJECTIVES[algorithm])
    assert trainer.num_train_timesteps == 0  # no transitions kept: the final latents only
    before = trainer.trainable_state_dict()
    assert trainer.train() == 2  # 4 samples (2 pairs for dpo), 2 micro-batches of 1 step each
    trainer.close()
    after = trainer.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    (row,) = read_metrics(tmp_path / "run")
    for key in (*DIAGNOSTICS[algorithm], "loss"):
        assert torch.isfinite(torch.tensor(row[key])), (key, row)
    assert "time_prepare_s" in row


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_resumes_exactly(
    tmp_path: Path, algorithm: str, pipeline_factory: Any
) -> None:
    """Two epochs in one run equal one epoch and a resumed second: weights and every logged
    number (DiffusionNFT's old policy, which samples the second epoch, comes back from the
    checkpoint, as do the starting weights reward backpropagation's pull is toward)."""
    backprop = algorithm in ("draft", "draft_lv", "alignprop")
    common: dict[str, Any] = {"save_freq": 1, **({"backprop_base_pull": 0.5} if backprop else {})}
    trainer = _trainer(_config(tmp_path / "a", algorithm, num_epochs=2, **common), SD3_MODEL,
                       pipeline_factory)  # fmt: skip
    trainer.train()
    trainer.close()
    weights_a = trainer.trainable_state_dict()
    _reset_accelerate()
    trainer = _trainer(_config(tmp_path / "b", algorithm, num_epochs=1, **common), SD3_MODEL,
                       pipeline_factory)  # fmt: skip
    trainer.train()
    trainer.close()
    checkpoint = tmp_path / "b" / "checkpoints" / "checkpoint_1"
    has_tensors = (checkpoint / ckpt.OBJECTIVE_TENSORS_FILENAME).is_file()
    assert has_tensors == (algorithm == "nft" or backprop)
    _reset_accelerate()
    config_c = _config(None, algorithm, num_epochs=2, resume_from=str(tmp_path / "b"), **common)
    trainer = _trainer(config_c, SD3_MODEL, pipeline_factory)
    trainer.train()
    trainer.close()
    weights_c = trainer.trainable_state_dict()
    assert all(torch.equal(weights_a[k], weights_c[k]) for k in weights_a)
    rows_a, rows_b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    pulled = ("base_distance",) if backprop else ()
    for key in ("reward_mean", "loss", "global_step", *DIAGNOSTICS[algorithm], *pulled):
        assert [r[key] for r in rows_a] == [r[key] for r in rows_b], key
    if backprop:  # the weights left their start, and the pull measured it
        assert rows_a[0]["base_distance"] < rows_a[1]["base_distance"]
        assert rows_a[1]["base_distance"] > 0


def test_nfts_old_policy_samples_and_follows_its_schedule(
    tmp_path: Path, pipeline_factory: Any
) -> None:
    """After an epoch of s optimizer steps the old policy is ``d old + (1 - d) theta`` with
    ``d = min(0.001 s, 0.5)``; the next epoch samples with it, not with the trained weights."""
    config = _config(tmp_path / "run", "nft", num_epochs=1)
    trainer = _trainer(config, SD3_MODEL, pipeline_factory)
    objective = trainer.objective
    assert isinstance(objective, DiffusionNFT)
    start = trainer.trainable_state_dict()
    step = trainer.train()
    trained = trainer.trainable_state_dict()
    old = objective.tensor_state_dict()
    decay = min(0.001 * step, 0.5)
    for name, value in old.items():
        expected = decay * start[name] + (1 - decay) * trained[name]
        torch.testing.assert_close(value.cpu(), expected, rtol=1e-6, atol=1e-7)
    parameters = dict(trainer.sd_pipeline.denoiser.named_parameters())
    with objective.sampling_weights({n: parameters[n] for n in old}):
        swapped = {n: parameters[n].detach().clone() for n in old}
    assert all(torch.equal(swapped[n].cpu(), old[n].cpu()) for n in old)
    assert all(torch.equal(parameters[n].detach().cpu(), trained[n]) for n in old)
    trainer.close()


def test_dpo_pairs_each_prompts_best_and_worst(tmp_path: Path, pipeline_factory: Any) -> None:
    """Rows of the epoch's DPO training are the pairs: the preferred image's row, with the
    other's latents; a prompt drawn once has no pair, and an epoch without any pair is refused
    with the fix."""
    from ddpo.objectives.dpo import preference_pairs

    rewards = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7, 0.2])
    prompts = ["a", "a", "b", "b", "b", "c"]
    preferred, other = preference_pairs(prompts, rewards)
    assert preferred.tolist() == [1, 4] and other.tolist() == [0, 3]
    preferred, other = preference_pairs(prompts, rewards, pairs="all")
    assert list(zip(preferred.tolist(), other.tolist(), strict=True)) == [
        (1, 0), (2, 3), (4, 2), (4, 3)
    ]  # fmt: skip
    preferred, other = preference_pairs(["x"] * 4, torch.tensor([0.2, 0.8, 0.5, 0.1]),
                                        pairs="halves")  # fmt: skip
    assert preferred.tolist() == [1, 2] and other.tolist() == [3, 0]  # 1st vs 4th, 2nd vs 3rd
    with pytest.raises(ValueError, match=r"no prompt with two samples .*--prompt_repeats 2"):
        preference_pairs(["a", "b"], torch.tensor([0.0, 1.0]))
    trainer = DDPOTrainer(
        _config(tmp_path / "run", "dpo"), brightness, pick_prompt, pipeline_factory(MODEL)
    )
    import random

    random.seed(0)  # pick_prompt draws 4 prompts from 3: in this seed, at most one repeats
    with pytest.raises(ValueError, match=r"fewer than the epoch.s 2 training micro-batches|no "):
        trainer.train()
    trainer.close()


def test_bad_algorithm_settings_are_refused_before_model_work(tmp_path: Path) -> None:
    config = _config(tmp_path, "nft")
    config.algorithm = "grpo"  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"DDPOConfig\.algorithm must be one of .* 'grpo'"):
        config.validate()
    with pytest.raises(ValueError, match=r"DDPOConfig\.loss_type='score_function' is the policy"):
        _config(tmp_path, "nft", loss_type="score_function")
    with pytest.raises(ValueError, match=r"train_num_timesteps=3 with algorithm='awm'"):
        _config(tmp_path, "awm", train_num_timesteps=3)
    with pytest.raises(ValueError, match=r"DDPOConfig\.nft_decay_type must be one of"):
        _config(tmp_path, "nft", nft_decay_type=3)
    with pytest.raises(ValueError, match=r"DDPOConfig\.dpo_beta must be > 0"):
        _config(tmp_path, "dpo", dpo_beta=0.0)
    with pytest.raises(ValueError, match=r"backprop_base_pull=0.1 must be >= 0, and is reward"):
        _config(tmp_path, "nft", backprop_base_pull=0.1)
    config = _config(tmp_path, "ddpo", sde_window_schedule="sliding")
    config.sliding_window_strategy = "random"  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"sliding_window_strategy must be one of .*'random'"):
        config.validate()
    with pytest.raises(ValueError, match=r"sliding_window_decay_rate must be >= 0, got -1.0"):
        _config(tmp_path, "ddpo", sliding_window_decay_rate=-1.0)
    with pytest.raises(ValueError, match=r"sliding_window_min_shift_interval must be >= 1"):
        _config(tmp_path, "ddpo", sliding_window_min_shift_interval=0)

    class NoCleanEstimate(DefaultDDPOStableDiffusionPipeline):
        predicted_clean = None  # a policy that cannot give DiffusionNFT's target

    pipeline = NoCleanEstimate(MODEL)
    with pytest.raises(TypeError, match=r"DiffusionNFT needs the policy's predicted_clean\(\)"):
        DDPOTrainer(_config(tmp_path / "nft", "nft"), brightness, pick_prompt, pipeline)
    with pytest.raises(ValueError, match=r"awm_weighting='sigma' .* predicts 'epsilon'"):
        DDPOTrainer(_config(tmp_path / "awm", "awm", awm_weighting="sigma"), brightness,
                    pick_prompt, pipeline)  # fmt: skip
    assert not (tmp_path / "nft").exists() and not (tmp_path / "awm").exists()


CLI_TINY = [
    "--ddpo_config.num_epochs=1",
    "--ddpo_config.sample_batch_size=2",
    "--ddpo_config.sample_num_batches_per_epoch=2",
    "--ddpo_config.train_batch_size=2",
    "--ddpo_config.sample_num_steps=3",
    "--ddpo_config.sample_guidance_scale=1.0",
    "--ddpo_config.mixed_precision=no",
    "--pretrained_model=ddpo-tiny-sd3-random",
    "--use_lora",
    "--reward=brightness",
    "--prompts=simple_animals",
    "--prompt_repeats=2",
    "--prompt_pool=0",
]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_ddpo_train_takes_the_algorithm(
    tmp_path: Path, algorithm: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from ddpo.cli import main

    run = tmp_path / "run"
    status = main(["train", *CLI_TINY, f"--algorithm={algorithm}",
                   f"--ddpo_config.output_dir={run}"])  # fmt: skip
    assert status == 0, capsys.readouterr().err
    (row,) = read_metrics(run)
    assert all(key in row for key in DIAGNOSTICS[algorithm] if key != "kl")  # kl_coef is 0
    assert "kl" not in row and (run / "final").is_dir()
    _reset_accelerate()


def test_ddpo_train_refuses_dpo_without_repeated_prompts_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import ddpo.adapters.families
    from ddpo.cli import main, parse_train_args

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(ddpo.adapters.families, "load_policy", forbidden)
    assert parse_train_args([*CLI_TINY, "--algorithm=nft"]).ddpo_config.algorithm == "nft"
    run = tmp_path / "run"
    status = main(["train", *CLI_TINY, "--algorithm=dpo", "--prompt_repeats=1",
                   f"--ddpo_config.output_dir={run}"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    assert "algorithm 'dpo' pairs the images of each prompt: it needs prompt_repeats >= 2" in err
    assert not run.exists()


def _pickapic(file: Path, count: int) -> Path:
    """``count`` Pick-a-Pic rows of two plain images each (a bright and a dark one, the
    preferred side alternating) and one tie, which is dropped."""
    import io

    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from PIL import Image

    def png(level: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (40, 40), (level, level // 2, 255 - level)).save(buffer, format="PNG")
        return buffer.getvalue()

    captions = [PROMPT_NAMES[i % len(PROMPT_NAMES)] for i in range(count + 1)]
    bright = [png(200 + i) for i in range(count + 1)]
    dark = [png(20 + i) for i in range(count + 1)]
    labels = [float(i % 2) for i in range(count)] + [0.5]
    sides = list(zip(bright, dark, labels, strict=True))
    table = pa.table({
        "caption": captions,
        "jpg_0": [b if label == 1.0 else d for b, d, label in sides],
        "jpg_1": [d if label == 1.0 else b for b, d, label in sides],
        "label_0": labels,
    })  # fmt: skip
    pq.write_table(table, file)
    return file


PROMPT_NAMES = ("a red circle", "a blue square", "a green star")


def test_offline_dpo_trains_from_pickapic_parquet_and_resumes_exactly(
    tmp_path: Path, pipeline_factory: Any
) -> None:
    """Pairs read from a Parquet file in Pick-a-Pic's layout, encoded by the model's VAE, train
    through DDPOTrainer without sampling or rewarding; each epoch takes the next pairs of a
    seeded order; a resumed run equals one run."""
    from ddpo.data import encode_preference_pairs, read_preference_pairs
    from ddpo.objectives import OfflineDiffusionDPO

    pairs = read_preference_pairs(_pickapic(tmp_path / "prefs.parquet", 6))
    assert len(pairs) == 6  # the tie is dropped

    def run(output: Path | None, epochs: int, **overrides: Any) -> DDPOTrainer:
        pipeline = pipeline_factory(MODEL, use_lora=True)
        latents = encode_preference_pairs(pipeline, pairs, resolution=32, cache_dir=tmp_path / "c")
        objective = OfflineDiffusionDPO.from_latents(latents, beta=50.0, num_train_timesteps=2)
        config = _config(output, "dpo", num_epochs=epochs, save_freq=1, **overrides)
        calls: list[int] = []

        def reward(*args: Any) -> Any:
            calls.append(1)
            return brightness(*args)

        trainer = DDPOTrainer(config, reward, pick_prompt, pipeline, objective=objective)
        trainer.train()
        trainer.close()
        assert not calls  # nothing sampled, nothing rewarded
        return trainer

    weights_a = run(tmp_path / "a", 3).trainable_state_dict()
    rows_a = read_metrics(tmp_path / "a")
    assert [r["num_samples"] for r in rows_a] == [0, 0, 0] and "reward_mean" not in rows_a[0]
    assert all(0 <= r["implicit_accuracy"] <= 1 for r in rows_a)
    _reset_accelerate()
    run(tmp_path / "b", 1)
    _reset_accelerate()
    weights_c = run(None, 3, resume_from=str(tmp_path / "b")).trainable_state_dict()
    assert all(torch.equal(weights_a[k], weights_c[k]) for k in weights_a)
    assert [r["loss"] for r in read_metrics(tmp_path / "b")] == [r["loss"] for r in rows_a]


def test_offline_dpo_walks_the_data_in_seeded_passes(pipeline_factory: Any) -> None:
    """4 rows an epoch over 6 pairs on 2 processes: each pass is a permutation of the pairs,
    the processes take alternate rows, and the order depends only on the seed."""
    from ddpo.objectives import ObjectiveContext, OfflineDiffusionDPO

    policy = pipeline_factory(MODEL)
    n = 6
    latents = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 4, 2, 2)
    prompts = [PROMPT_NAMES[i % 3] for i in range(n)]
    objective = OfflineDiffusionDPO.from_latents((prompts, latents, -latents))

    def rows(epoch: int, process: int, seed: int = 0) -> list[int]:
        context = ObjectiveContext(
            policy=policy, denoiser=policy.denoiser, autocast=torch.autocast,
            seed_keys=(seed, 8, process), epoch=epoch, inner_epoch=-1, process_index=process,
            num_processes=2, rows_per_epoch=2,
        )  # fmt: skip
        batch = objective.epoch_rows(context)
        assert batch.final_latents is not None
        torch.testing.assert_close(batch.extras["dpo_other_latents"], -batch.final_latents)
        index = [int(v) for v in batch.final_latents[:, 0, 0, 0]]
        assert batch.prompts == [prompts[i] for i in index]
        return index

    stream = [
        i for e in range(3) for pair in zip(rows(e, 0), rows(e, 1), strict=True) for i in pair
    ]
    assert sorted(stream[:6]) == list(range(6)) and sorted(stream[6:]) == list(range(6))
    assert stream[:6] != stream[6:]  # a fresh order for the second pass
    assert rows(0, 0, seed=1) + rows(0, 1, seed=1) != rows(0, 0) + rows(0, 1)


def test_ddpo_train_takes_offline_preference_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ddpo.cli import main

    data = _pickapic(tmp_path / "prefs.parquet", 4)
    run = tmp_path / "run"
    cache = tmp_path / "cache"
    flags = ["train", *CLI_TINY, "--algorithm=dpo", f"--preference_data={data}",
             f"--preference_cache={cache}", f"--ddpo_config.output_dir={run}"]  # fmt: skip
    assert main(flags) == 0, capsys.readouterr().err
    (row,) = read_metrics(run)
    assert "implicit_accuracy" in row and row["num_samples"] == 0
    assert any(cache.iterdir())
    _reset_accelerate()

    import ddpo.adapters.families

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(ddpo.adapters.families, "load_policy", forbidden)
    capsys.readouterr()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "pairs.jsonl").write_text('{"prompt": "a", "preferred": "x.png", "other": "y.png"}\n')
    for extra, message in (
        ([f"--preference_data={data}", "--algorithm=awm"], "it needs --algorithm dpo"),
        ([f"--preference_data={bad}", "--algorithm=dpo"], "pairs.jsonl line 1"),
    ):
        status = main(["train", *CLI_TINY, *extra, f"--ddpo_config.output_dir={tmp_path / 'x'}"])
        err = capsys.readouterr().err
        assert status == 2 and message in err and "Traceback" not in err, err


def test_a_flow_model_samples_with_the_ode_for_the_forward_process_algorithms(
    tmp_path: Path, pipeline_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """``noise_level=0``: the rollout is the ODE (the images of the deterministic sampler for
    the same initial noise) and records no transition; DiffusionNFT trains on it (as its authors
    sample deterministically); the policy gradient, which needs transitions, is refused."""
    policy = pipeline_factory(SD3_MODEL, use_lora=True, noise_level=0)
    prompts = ["a red circle", "a blue square"]
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    out = policy.rollout(
        policy.encode(prompts, ""), num_steps=3, guidance_scale=1.0,
        generator=torch.Generator().manual_seed(9),
        initial_noise_generators=[torch.Generator().manual_seed(i) for i in range(2)],
    )  # fmt: skip
    assert out.log_probs.shape == (2, 0) and out.timesteps.numel() == 0
    assert policy.transitions_per_rollout(3) == 0 and out.final_latents is not None
    ode = policy.deterministic_images(prompts, num_steps=3, guidance_scale=1.0,
                                      generators=generators)  # fmt: skip
    torch.testing.assert_close(out.images, ode)

    trainer = DDPOTrainer(_config(tmp_path / "nft", "nft"), brightness,
                          RepeatPrompts(pick_prompt, 2), policy)  # fmt: skip
    assert trainer.train() == 2
    trainer.close()
    _reset_accelerate()
    with pytest.raises(ValueError, match=r"PolicyGradient trains on the sampler's recorded"):
        DDPOTrainer(_config(tmp_path / "ddpo", "ddpo"), brightness, pick_prompt,
                    pipeline_factory(SD3_MODEL, noise_level=0))  # fmt: skip

    from ddpo.cli import main

    status = main(["train", *CLI_TINY, "--noise_level=0",
                   f"--ddpo_config.output_dir={tmp_path / 'cli'}"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and "noise_level 0 samples with the ODE" in err, err


@pytest.mark.parametrize(("algorithm", "flags", "expected"), [
    ("nft", [], 0.0), ("awm", [], 0.0), ("nft", ["--noise_level=0.7"], 0.7), ("dpo", [], 0.7),
])  # fmt: skip
def test_ddpo_train_samples_nft_and_awm_with_the_ode_by_default(
    tmp_path: Path, algorithm: str, flags: list[str], expected: float
) -> None:
    """As DiffusionNFT's and AWM's authors sample deterministically, ``ddpo train`` gives a flow
    model noise level 0 for them unless ``--noise_level`` says otherwise."""
    from ddpo.cli import parse_train_args
    from ddpo.cli_train import setup_train

    args = parse_train_args([*CLI_TINY, f"--algorithm={algorithm}", *flags,
                             f"--ddpo_config.output_dir={tmp_path / 'run'}"])  # fmt: skip
    setup = setup_train(args)
    try:
        assert setup.trainer.sd_pipeline.noise_level == expected
    finally:
        setup.trainer.close()
        _reset_accelerate()


def test_reward_backpropagation_needs_a_differentiable_reward(
    tmp_path: Path, pipeline_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """DRaFT keeps K fixed and AlignProp draws it in [1, K] (the logged mean lies between); a
    reward without gradients is refused when it is first differentiated, a named reward without
    a differentiable form before the model loads."""
    for algorithm, low, high in (("draft", 3.0, 3.0), ("alignprop", 1.0, 3.0)):
        config = _config(tmp_path / algorithm, algorithm, backprop_grad_steps=3, num_epochs=2)
        trainer = _trainer(config, MODEL, pipeline_factory)
        trainer.train()
        trainer.close()
        _reset_accelerate()
        values = [row["grad_steps"] for row in read_metrics(tmp_path / algorithm)]
        assert all(low <= v <= high for v in values), values

    def detached(images: Any, prompts: Any, metadata: Any) -> Any:
        return images.detach().mean(dim=(1, 2, 3)), {}

    trainer = DDPOTrainer(_config(tmp_path / "detached", "draft"), detached, pick_prompt,
                          pipeline_factory(MODEL, use_lora=True))  # fmt: skip
    with pytest.raises(ValueError, match=r"rewards without gradients: reward backpropagation"):
        trainer.train()
    trainer.close()
    _reset_accelerate()
    with pytest.raises(ValueError, match=r"algorithm='draft' has no KL penalty"):
        _config(tmp_path, "draft", kl_coef=0.1)

    from ddpo.cli import main

    status = main(["train", *CLI_TINY, "--algorithm=draft", "--reward=jpeg_compressibility",
                   f"--ddpo_config.output_dir={tmp_path / 'cli'}"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and "--reward 'jpeg_compressibility' has no differentiable form" in err


def test_mixgrpos_window_slides_with_the_epochs_and_resumes(
    tmp_path: Path, pipeline_factory: Any
) -> None:
    """``sde_window_schedule="sliding"``: a window of 1 step of 3 starts at steps 0, 1, 2 in
    epochs 0, 1, 2 (moved every epoch by one step); a resumed run places it as one run does;
    a DDIM policy is refused."""
    sliding = {"sde_window_schedule": "sliding", "sliding_window_shift_interval": 1,
               "sliding_window_stride": 1, "save_freq": 1,
               "train_timestep_fraction": 1.0}  # fmt: skip

    def trainer(output: Path | None, epochs: int, **extra: Any) -> DDPOTrainer:
        config = _config(output, "ddpo", num_epochs=epochs, **sliding, **extra)
        policy = pipeline_factory(SD3_MODEL, use_lora=True, sde_window_size=1)
        return DDPOTrainer(config, brightness, RepeatPrompts(pick_prompt, 2), policy)

    run = trainer(tmp_path / "a", 3)
    run.train()
    run.close()
    weights_a = run.trainable_state_dict()
    rows = read_metrics(tmp_path / "a")
    assert [r["sde_window_start"] for r in rows] == [0, 1, 2]
    _reset_accelerate()
    run = trainer(tmp_path / "b", 1)
    run.train()
    run.close()
    _reset_accelerate()
    run = trainer(None, 3, resume_from=str(tmp_path / "b"))
    run.train()
    run.close()
    assert all(torch.equal(weights_a[k], run.trainable_state_dict()[k]) for k in weights_a)
    assert [r["sde_window_start"] for r in read_metrics(tmp_path / "b")] == [0, 1, 2]
    # MixGRPO's decay: 3 epochs at step 0, then 2 (3 (1 - 1/2) + 1/2), then 1 at the last start.
    decay = dataclasses.replace(run.config, sliding_window_strategy="decay",
                                sliding_window_shift_interval=3)  # fmt: skip
    starts = [setup.sliding_window_at(run.sd_pipeline, decay, epoch) for epoch in range(8)]
    assert starts == [0, 0, 0, 1, 1, 2, 2, 2]
    _reset_accelerate()
    with pytest.raises(ValueError, match=r"sde_window_schedule='sliding' moves a stochastic"):
        DDPOTrainer(_config(tmp_path / "c", "ddpo", **sliding), brightness, pick_prompt,
                    pipeline_factory(MODEL))  # fmt: skip
