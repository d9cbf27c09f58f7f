"""``ddpo train``'s flags for Flow-GRPO's sampling options reach the flow policy (in process).

``--sde_type``, ``--sde_window_range``, ``--post_window_solver``, ``--lora_targets`` and
``--lora_alpha`` are policy
arguments (family options of the flow families, refused for the DDIM ones before any model
loads); ``--ddpo_config.sample_same_latent`` is a `DDPOConfig` field.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from ddpo.cli import main, parse_train_args
from ddpo.cli_train import setup_train

pytestmark = pytest.mark.slow

TINY = [
    "--ddpo_config.num_epochs=1",
    "--ddpo_config.sample_batch_size=2",
    "--ddpo_config.sample_num_batches_per_epoch=1",
    "--ddpo_config.train_batch_size=2",
    "--ddpo_config.train_gradient_accumulation_steps=1",
    "--ddpo_config.sample_num_steps=3",
    "--ddpo_config.train_timestep_fraction=1.0",
    "--ddpo_config.mixed_precision=no",
    "--reward=brightness",
    "--prompts=simple_animals",
    "--prompt_repeats=2",
]


@pytest.fixture(autouse=True)
def _fresh_accelerate_state() -> Iterator[None]:
    yield
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def test_flow_grpo_flags_reach_the_policy_and_train(tmp_path: Path) -> None:
    args = parse_train_args(
        [
            *TINY,
            "--pretrained_model=ddpo-tiny-sd3-random",
            "--sde_type=cps",
            "--noise_level=0.8",
            "--sde_window_size=1",
            "--sde_window_range",
            "1",
            "2",
            "--post_window_solver=dpmsolver++",
            "--use_lora",
            "--lora_targets=attention_ff",
            "--lora_rank=2",
            "--lora_alpha=4",
            "--ddpo_config.sample_same_latent",
            f"--ddpo_config.output_dir={tmp_path / 'run'}",
        ]
    )
    setup = setup_train(args)
    try:
        policy = setup.trainer.sd_pipeline
        assert (policy.sde_type, policy.noise_level) == ("cps", 0.8)
        assert (policy.sde_window_size, policy.sde_window_range) == (1, (1, 2))
        assert (policy.post_window_solver, policy.post_window_step_ratio) == ("dpmsolver++", 1.0)
        assert (policy.lora_rank, policy.lora_alpha) == (2, 4.0)
        names = list(policy.trainable_parameters())
        assert any(".ff.net.2.lora_A" in n for n in names)
        assert any(".ff_context.net.0.proj.lora_A" in n for n in names)
        assert setup.trainer.config.sample_same_latent
        # an epoch trains (its on-policy check re-scores the CPS transitions before any update)
        assert setup.trainer.train() == 1
    finally:
        setup.trainer.close()


def test_flow_grpo_flags_on_a_ddim_model_are_refused_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import ddpo.adapters.families

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(ddpo.adapters.families, "load_policy", forbidden)
    capsys.readouterr()
    run = tmp_path / "run"
    for flags in (
        ["--noise_level=0.7"],
        ["--lora_targets=attention_ff"],
        ["--sde_type=cps"],
        ["--sde_window_range", "0", "1"],
        ["--post_window_step_ratio=0.4"],
    ):
        status = main(["train", *TINY, "--pretrained_model=ddpo-tiny-random",
                       f"--ddpo_config.output_dir={run}", *flags])  # fmt: skip
        err = capsys.readouterr().err
        assert status == 2 and "Traceback" not in err, err
        assert not run.exists()
        name = flags[0].removeprefix("--").split("=")[0]
        assert f"['{name}'] apply to the flow-matching families" in err
        hint = "UNet's attention" if name == "lora_targets" else "stochasticity is sample_eta"
        assert hint in err, err
