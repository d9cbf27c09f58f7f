"""The alignment reward's differentiable form against finite differences and the exact score.

The differentiable form (`differentiable_alignment_scores`) differs from the exact score in two
steps only: the border ring's mean in place of its median, and a ramp in place of the position
score's presence step. On rendered images (one background colour in the ring, every shape above
the minimum area) both steps give the exact values, so the two scores must agree there to float
rounding: that is asserted at 1e-5 on every eighth caption of the grammar. Off that set (noisy
renders) they differ; there the assertion is only that they rank the images alike, at the rank
correlation measured when the form was written (0.992 at noise 0.05) less a margin.
"""

from typing import Any

import pytest
import torch

from ddpo.data.shapes import all_prompts, render_batch
from ddpo.rewards.alignment import (
    alignment_reward_fn,
    alignment_scores,
    differentiable_alignment_reward_fn,
    differentiable_alignment_scores,
)
from ddpo.rewards.registry import DIFFERENTIABLE_REWARDS, build_reward_fn

METAS: list[dict[str, Any]] = [
    {"colour": "red", "shape": "circle", "position": "left", "background": "blue"},
    {"colour": "green", "shape": "square", "position": None, "background": "white"},
    {"colour": "blue", "shape": "triangle", "position": "top", "background": None},
    {"colour": "yellow", "shape": "cross", "position": None, "background": None},
    {"colour": "purple", "shape": "circle", "position": "bottom", "background": "gray"},
    {"colour": "orange", "shape": "triangle", "position": "center", "background": "black"},
]

# The exact rewards of `_golden_images` as computed before the differentiable form was added
# (commit 80870dd's ddpo/rewards/alignment.py): clean renders, the same with noise, uniform noise,
# and the clean renders under another image's caption.
GOLDEN_REWARDS = [
    0.897571325, 0.810808837, 0.901434422, 0.853831947, 0.906837881, 0.84250617,
    0.196107537, 0.221022666, 0.0676692128, 0.133528188, 0.216312766, 0.305386513,
    0.0331811346, 0.0799061954, 0.0542696677, 0.0359506607, 0.210582167, 0.142456174,
    0.0117739039, 0.169161081, 1.62844663e-05, 0.000826272648, 0.0165462699, 0.0241774581,
]  # fmt: skip


def _golden_images() -> tuple[torch.Tensor, list[dict[str, Any]]]:
    clean = render_batch(METAS, torch.Generator().manual_seed(0))
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    noisy = (clean + 0.15 * noise).clamp(0, 1)
    uniform = torch.rand(clean.shape, generator=torch.Generator().manual_seed(2))
    images = torch.cat([clean, noisy, uniform, clean])
    return images, METAS * 3 + METAS[1:] + METAS[:1]


def _rendered(step: int = 8, seed: int = 0) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Every ``step``-th caption of the grammar, rendered."""
    metas = [dict(meta) for _, meta in all_prompts("all")[::step]]
    return render_batch(metas, torch.Generator().manual_seed(seed)), metas


def _rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = torch.stack([a.argsort().argsort(), b.argsort().argsort()]).double()
    return float(torch.corrcoef(ranks)[0, 1])


def test_the_exact_reward_is_unchanged() -> None:
    images, metas = _golden_images()
    scores = alignment_scores(images, metas)
    expected = torch.tensor(GOLDEN_REWARDS)
    torch.testing.assert_close(scores.reward, expected, rtol=0, atol=1e-7)
    assert scores.correct.tolist() == [True] * 6 + [False] * 18


def test_gradients_match_finite_differences_in_float64() -> None:
    """On random images of another size (the resize on the path) and on noisy renders (every
    attribute's score in its working range)."""
    generator = torch.Generator().manual_seed(3)
    prompts = [p for p, _ in all_prompts("all")[:2]]
    metas = [m for _, m in all_prompts("all")[:2]]
    random = torch.rand(2, 3, 20, 24, generator=generator, dtype=torch.float64)
    noise = torch.randn(2, 3, 64, 64, generator=generator, dtype=torch.float64)
    rendered = (render_batch(metas, generator).double() + 0.03 * noise).clamp(0, 1)

    def reward(images: torch.Tensor) -> torch.Tensor:
        return differentiable_alignment_reward_fn(images, prompts)[0]

    for images in (random, rendered):
        images.requires_grad_(True)
        assert reward(images).dtype == torch.float64
        assert torch.autograd.gradcheck(reward, (images,), fast_mode=True)


def test_gradients_reach_each_images_own_pixels_in_float32() -> None:
    images, metas = _rendered(step=200)
    images = images + 0.02 * torch.randn(images.shape, generator=torch.Generator().manual_seed(4))
    images = images.clamp(0, 1).requires_grad_(True)
    scores = differentiable_alignment_scores(images, metas)
    assert scores.reward.dtype == torch.float32 and scores.reward.requires_grad
    for i in range(len(metas)):
        (grad,) = torch.autograd.grad(scores.reward[i], images, retain_graph=True)
        assert torch.isfinite(grad).all()
        others = torch.cat([grad[:i], grad[i + 1 :]])
        assert grad[i].abs().sum() > 0 and others.abs().sum() == 0


def test_equals_the_exact_score_on_rendered_images() -> None:
    """The ring is one colour and each shape covers more than the minimum area: the mean is the
    median and the ramp is 1, so only float rounding separates the two (measured: under 5e-6
    over all 1,296 captions)."""
    images, metas = _rendered()
    exact = alignment_scores(images, metas)
    differentiable = differentiable_alignment_scores(images, metas)
    torch.testing.assert_close(differentiable.reward, exact.reward, rtol=0, atol=1e-5)
    assert torch.equal(differentiable.correct, exact.correct)


@pytest.mark.parametrize("sigma", [0.02, 0.05])
def test_ranks_noisy_renders_as_the_exact_score(sigma: float) -> None:
    """With noise the ring's mean and median part (clamped noise on a dark or light ground biases
    the mean, by 0.001 and 0.009 on average here); the two still order the images alike
    (Spearman's rank correlation measured 0.999 and 0.992)."""
    images, metas = _rendered(seed=5)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(6))
    images = (images + sigma * noise).clamp(0, 1)
    exact = alignment_scores(images, metas).reward
    differentiable = differentiable_alignment_scores(images, metas).reward
    assert _rank_correlation(exact, differentiable) > 0.98


def test_the_registry_builds_it_and_its_metadata_reports_the_exact_score() -> None:
    assert "alignment" in DIFFERENTIABLE_REWARDS
    reward_fn = build_reward_fn("alignment", differentiable=True)
    # wrapped to score videos frame by frame (ddpo.rewards.video.per_frame)
    assert reward_fn.reward_fn is differentiable_alignment_reward_fn  # type: ignore[attr-defined]
    images, metas = _golden_images()
    prompts = ["unused"] * len(metas)  # the metadata names every attribute
    rewards, info = reward_fn(images.requires_grad_(True), prompts, metas)
    assert rewards.requires_grad
    exact, exact_info = alignment_reward_fn(images.detach(), prompts, metas)
    assert torch.equal(info["exact"], exact)
    assert torch.equal(info["accuracy"], exact_info["accuracy"])
    assert not any(value.requires_grad for value in info.values())
    with pytest.raises(ValueError, match=r"images of a differentiable reward"):
        reward_fn((images.detach() * 255).to(torch.uint8), prompts, metas)
