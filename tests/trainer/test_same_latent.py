"""``DDPOConfig.sample_same_latent``: a prompt's samples of an epoch share their initial noise.

Through `DDPOTrainer` on the tiny random SD3 (the flow policies' ``rollout`` takes
``initial_noise_generators``): the same ``x_T`` for the same prompt in other sampling batches,
another for another prompt or epoch, the steps' noise still per sample, an exact resume; a
policy without the keyword is refused before sampling.
"""

import functools
from pathlib import Path
from typing import Any

import pytest
import torch

from ddpo import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline
from ddpo.adapters import load_policy
from ddpo.trainer.rollout import initial_noise_seed

pytestmark = pytest.mark.slow

SD3_MODEL = "ddpo-tiny-sd3-random"
CYCLE = ("a red circle", "a blue square", "a blue square", "a red circle")


def brightness(images: torch.Tensor, prompts: Any, metadata: Any) -> tuple[torch.Tensor, dict]:
    return images.mean(dim=(1, 2, 3)), {}


class CyclePrompts:
    """Batches of 2: ``[red, blue]`` then ``[blue, red]``: each prompt in both batches."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> tuple[str, dict[str, Any]]:
        prompt = CYCLE[self.count % len(CYCLE)]
        self.count += 1
        return prompt, {}

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])


def config(output_dir: Path, **overrides: Any) -> DDPOConfig:
    values: dict[str, Any] = {
        "num_epochs": 2,
        "sample_num_steps": 2,
        "sample_batch_size": 2,
        "sample_num_batches_per_epoch": 2,
        "train_batch_size": 2,
        "train_learning_rate": 1e-3,
        "sample_guidance_scale": 1.0,
        "train_cfg": False,
        "sample_same_latent": True,
        "save_freq": 1,
        "mixed_precision": "no",
        "output_dir": str(output_dir),
        "accelerator_kwargs": {"cpu": True},
    }
    return DDPOConfig(**{**values, **overrides})


def recording_policy(rollouts: list[Any]) -> Any:
    """The tiny SD3 policy whose rollouts are kept (the wrapper keeps the signature)."""
    torch.manual_seed(0)
    policy = load_policy(SD3_MODEL)
    rollout = policy.rollout

    @functools.wraps(rollout)
    def recorded(*args: Any, **kwargs: Any) -> Any:
        out = rollout(*args, **kwargs)
        rollouts.append(out)
        return out

    policy.rollout = recorded
    return policy


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_initial_noise_seed_depends_on_the_seed_epoch_and_prompt_only() -> None:
    """SHA-256 of the prompt, not Python's salted ``hash``: the same number in every process
    (a recorded value), and no process or batch index among its inputs."""
    assert initial_noise_seed(0, 3, "a cat") == 3026093612952248864
    seeds = {
        initial_noise_seed(*args)
        for args in [(0, 3, "a cat"), (1, 3, "a cat"), (0, 4, "a cat"), (0, 3, "a dog")]
    }
    assert len(seeds) == 4


def test_a_prompts_samples_share_x_T_within_an_epoch(tmp_path: Path) -> None:
    rollouts: list[Any] = []
    trainer = DDPOTrainer(config(tmp_path / "run"), brightness, CyclePrompts(),
                          recording_policy(rollouts))  # fmt: skip
    trainer.train()
    trainer.close()
    assert len(rollouts) == 4  # 2 epochs x 2 sampling batches
    x_T = [out.latents[:, 0] for out in rollouts]  # no window: x_T is recorded first
    for epoch in range(2):
        first, second = x_T[2 * epoch], x_T[2 * epoch + 1]  # [red, blue], [blue, red]
        torch.testing.assert_close(first[0], second[1], atol=0, rtol=0)  # red, both batches
        torch.testing.assert_close(first[1], second[0], atol=0, rtol=0)  # blue, both batches
        assert not torch.allclose(first[0], first[1])  # red and blue differ
        # it is the first draw of the prompt's seed: nothing of process or batch enters
        for prompt, row in (("a red circle", first[0]), ("a blue square", first[1])):
            gen = torch.Generator().manual_seed(initial_noise_seed(0, epoch, prompt))
            torch.testing.assert_close(row, torch.randn(row.shape, generator=gen), atol=0, rtol=0)
        # the steps' noise is each sample's own: the same x_T goes different ways
        after = (rollouts[2 * epoch].latents[0, 1], rollouts[2 * epoch + 1].latents[1, 1])
        assert not torch.allclose(*after, atol=1e-3)
    assert not torch.allclose(x_T[0][0], x_T[2][0])  # another epoch, another x_T


def test_same_latent_resumes_exactly(tmp_path: Path) -> None:
    straight: list[Any] = []
    trainer = DDPOTrainer(config(tmp_path / "a"), brightness, CyclePrompts(),
                          recording_policy(straight))  # fmt: skip
    trainer.train()
    trainer.close()
    weights = trainer.trainable_state_dict()
    _reset_accelerate()
    first: list[Any] = []
    trainer = DDPOTrainer(config(tmp_path / "b", num_epochs=1), brightness, CyclePrompts(),
                          recording_policy(first))  # fmt: skip
    trainer.train()
    trainer.close()
    _reset_accelerate()
    resumed: list[Any] = []
    trainer = DDPOTrainer(config(tmp_path / "c", resume_from=str(tmp_path / "b")), brightness,
                          CyclePrompts(), recording_policy(resumed))  # fmt: skip
    trainer.train()
    trainer.close()
    for mine, theirs in zip(first + resumed, straight, strict=True):
        torch.testing.assert_close(mine.latents, theirs.latents, atol=0, rtol=0)
    resumed_weights = trainer.trainable_state_dict()
    assert all(torch.equal(resumed_weights[k], weights[k]) for k in weights)


def test_a_policy_without_initial_noise_is_refused_before_sampling(tmp_path: Path) -> None:
    class NoInitialNoise(DefaultDDPOStableDiffusionPipeline):
        """A policy whose rollout cannot draw x_T per row (every built-in family can)."""

        def rollout(  # type: ignore[override]
            self, conditioning: Any, *, num_steps: int, guidance_scale: float, generator: Any
        ) -> Any:
            return super().rollout(
                conditioning, num_steps=num_steps, guidance_scale=guidance_scale,
                generator=generator,
            )  # fmt: skip

    torch.manual_seed(0)
    sd = NoInitialNoise("ddpo-tiny-random")
    with pytest.raises(ValueError, match=r"DDPOConfig.sample_same_latent=True needs a policy "
                                         r"whose rollout takes initial_noise_generators .*"
                                         r"NoInitialNoise"):  # fmt: skip
        DDPOTrainer(config(tmp_path / "run"), brightness, CyclePrompts(), sd)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
