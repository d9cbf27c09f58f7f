"""The gap between the differentiable and the exact scores of the model rewards (issue 25).

Each model reward (aesthetic, clip_score, pickscore, hps, image_reward) is built on the tiny
random model of its tests (``tests/rewards/test_differentiable.py``), once with
``differentiable=True``; its exact form is the same object with the flag off. Both score the same
16 float images (random in [0, 1], not 8-bit values) per row, with one prompt of the tests. The
table gives the mean and max ``|differentiable - exact|`` and the standard deviation of the exact
scores over the 16 images, so that the gap reads against the spread the reward has to rank.

Two kinds of images: ``noise`` (every pixel uniform, independent: the worst case for a
resampling filter) and ``smooth`` (uniform 8 x 8 noise upsampled bilinearly: nearer to what a
decoder makes). The exact path quantises to 8 bits then resizes with PIL's bicubic (``a = -0.5``,
output rounded to 8 bits); the differentiable one resizes the floats with torch's antialiased
bicubic (``a = -0.75``); HPS resizes in torch on both paths, so its gap is the quantisation
alone. CLIPScore is compared before its clamp (``w * cos``), as the clamp makes both 0 wherever
the tiny model's cosine is negative.

Tiny random models are not the released ones: the gaps say how far the preprocessing moves the
input of a model, through a random model's sensitivity; they are no measure of a released
model's gap. Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reward_differentiable_gap.py``.
"""

import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "rewards"))  # the tests' tiny-model builders

from test_differentiable import (  # noqa: E402
    MODEL_REWARDS,
    PROMPTS,
    build_differentiable_rewards,
    exact_form,
)

BATCH = 16
SIZES = ((32, 32), (64, 64), (512, 512), (512, 384))


def images(kind: str, size: tuple[int, int], seed: int) -> torch.Tensor:
    """``BATCH`` float images in [0, 1] of one kind (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "noise":
        return torch.rand(BATCH, 3, *size, generator=generator)
    coarse = torch.rand(BATCH, 3, 8, 8, generator=generator)
    return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False).clamp(0, 1)


def score(reward: Any, name: str, batch: torch.Tensor) -> torch.Tensor:
    prompts = [PROMPTS[0]] * batch.shape[0]  # one prompt: the spread is the images' alone
    with torch.no_grad():
        rewards, metadata = reward(batch, prompts, None)
    if name == "clip_score":
        rewards = reward.weight * metadata["cosine"]
    return torch.as_tensor(rewards).double().cpu()


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        rewards = build_differentiable_rewards(Path(folder))
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, {BATCH} images per row\n"
    )
    columns = ("reward", "images", "size (H x W)", "mean abs gap", "max abs gap", "std of scores")
    print(f"| {' | '.join(columns)} | gap / std |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for name in MODEL_REWARDS:
        reward = rewards[name]
        exact = exact_form(reward)
        for kind in ("noise", "smooth"):
            for seed, size in enumerate(SIZES):
                batch = images(kind, size, seed)
                gap = (score(reward, name, batch) - score(exact, name, batch)).abs()
                spread = score(exact, name, batch).std().item()
                label = "clip_score (w cos)" if name == "clip_score" else name
                print(
                    f"| {label} | {kind} | {size[0]} x {size[1]} | {gap.mean().item():.2e} | "
                    f"{gap.max().item():.2e} | {spread:.2e} | {gap.mean().item() / spread:.3f} |"
                )


if __name__ == "__main__":
    main()
