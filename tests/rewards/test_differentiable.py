"""The differentiable forms of the model rewards, on the tiny models of their own tests.

Each reward is built with ``differentiable=True``; its exact form is the same object with the
flag off. The gradient check runs in float64 on a deep copy cast to float64, in gradcheck's fast
mode (random projections ``v^T J u`` of the Jacobian against finite differences) on images larger
than the models' 32 x 32 input and not square, so that the antialiased downsampling, the crop or
the padding are all on the path.
"""

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from test_aesthetic import build_tiny_aesthetic
from test_clip_score import build_tiny_clip
from test_hps import build_tiny_hps
from test_image_reward import build_tiny_image_reward
from test_pickscore import build_tiny_pickscore
from torch import nn

from ddpo.rewards._preprocess import check_float_images
from ddpo.rewards.aesthetic import aesthetic_score
from ddpo.rewards.brightness import brightness
from ddpo.rewards.clip_score import clip_score_reward
from ddpo.rewards.combine import weighted_sum
from ddpo.rewards.hps import hps_reward
from ddpo.rewards.image_reward import image_reward
from ddpo.rewards.pickscore import pickscore_reward
from ddpo.rewards.registry import (
    DIFFERENTIABLE_REWARDS,
    REWARDS,
    build_reward_fn,
    is_differentiable,
)

pytestmark = pytest.mark.slow

MODEL_REWARDS = ("aesthetic", "clip_score", "pickscore", "hps", "image_reward")
PROMPTS = ("a red cat", "a photo of a dog")
INPUT_SIZE = 32  # every tiny model's image size


def build_differentiable_rewards(root: Path) -> dict[str, Any]:
    """The five model rewards on their tiny models, ``differentiable=True``, on the CPU."""
    for name in MODEL_REWARDS:
        (root / name).mkdir(parents=True, exist_ok=True)
    clip_dir, mlp_path, _ = build_tiny_aesthetic(root / "aesthetic")
    clip_score_dir = build_tiny_clip(root / "clip_score")
    pick_model, pick_processor = build_tiny_pickscore(root / "pickscore")
    _, _, hps_ckpt, hps_tok = build_tiny_hps(root / "hps")
    ir = build_tiny_image_reward(root / "image_reward")
    return {
        "aesthetic": aesthetic_score(str(clip_dir), str(mlp_path), differentiable=True),
        "clip_score": clip_score_reward(str(clip_score_dir), device="cpu", differentiable=True),
        "pickscore": pickscore_reward(
            str(pick_model), processor=str(pick_processor), device="cpu", differentiable=True
        ),
        "hps": hps_reward(str(hps_ckpt), tokenizer=str(hps_tok), device="cpu", differentiable=True),
        "image_reward": image_reward(
            str(ir["ckpt"]), tokenizer=str(ir["tok"]), device="cpu", differentiable=True
        ),
    }


def exact_form(reward: Any) -> Any:
    """The same reward (sharing its model) scoring exactly as the original."""
    exact = copy.copy(reward)
    exact.differentiable = False
    return exact


def model_of(reward: Any) -> nn.Module:
    module: nn.Module = getattr(reward, "scorer", None) or reward.similarity
    return module


@pytest.fixture(scope="module")
def rewards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    rewards = build_differentiable_rewards(tmp_path_factory.mktemp("differentiable"))
    for reward in rewards.values():
        assert not any(p.requires_grad for p in model_of(reward).parameters())  # frozen
    return rewards


def _images(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _scorer(reward: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    def score(images: torch.Tensor) -> torch.Tensor:
        rewards, _ = reward(images, PROMPTS[: images.shape[0]], None)
        return rewards  # type: ignore[no-any-return]

    return score


@pytest.mark.parametrize("name", [*MODEL_REWARDS, "brightness"])
def test_gradients_match_finite_differences_in_float64(rewards: dict[str, Any], name: str) -> None:
    if name == "brightness":
        reward: Any = brightness
    else:
        reward = copy.deepcopy(rewards[name])
        model_of(reward).double()
    images = _images((2, 3, 40, 36), seed=0, dtype=torch.float64).requires_grad_(True)
    scores = _scorer(reward)(images)
    assert scores.dtype == torch.float64 and scores.shape == (2,)
    assert torch.autograd.gradcheck(_scorer(reward), (images,), fast_mode=True)


@pytest.mark.parametrize("name", MODEL_REWARDS)
def test_gradients_reach_every_image_in_float32(rewards: dict[str, Any], name: str) -> None:
    reward = rewards[name]
    assert reward.differentiable is True
    images = _images((2, 3, 48, 40), seed=1).requires_grad_(True)
    scores, metadata = reward(images, PROMPTS, None)
    assert scores.dtype == torch.float32 and scores.requires_grad
    # CLIPScore is w * max(cos, 0): no gradient where the (tiny random) model's cosine is < 0,
    # so the cosine it reports is checked; it carries the images' gradients too.
    scores = metadata.get("cosine", scores)
    for i in range(2):  # each score depends on its own image only, and does depend on it
        (grad,) = torch.autograd.grad(scores[i], images, retain_graph=True)
        assert torch.isfinite(grad).all()
        assert grad[i].abs().sum() > 0 and grad[1 - i].abs().sum() == 0


@pytest.mark.parametrize("name", MODEL_REWARDS)
def test_equals_the_exact_score_on_8_bit_images_at_the_input_size(
    rewards: dict[str, Any], name: str
) -> None:
    """Without a resize and quantisation the two paths run the same arithmetic; only the
    float rounding of ``k / 255`` may differ (float64-then-float32 in transformers' path)."""
    reward = rewards[name]
    images = (_images((2, 3, INPUT_SIZE, INPUT_SIZE), seed=2) * 255).round() / 255
    differentiable, _ = reward(images, PROMPTS, None)
    exact, _ = exact_form(reward)(images, PROMPTS, None)
    torch.testing.assert_close(differentiable.detach(), exact, rtol=1e-5, atol=1e-5)


def test_hps_equals_the_exact_score_on_8_bit_images_of_any_size(rewards: dict[str, Any]) -> None:
    """OpenCLIP's resize already runs in torch on floats: only the quantisation differs."""
    reward = rewards["hps"]
    images = (_images((2, 3, 48, 40), seed=3) * 255).round() / 255
    differentiable, _ = reward(images, PROMPTS, None)
    exact, _ = exact_form(reward)(images, PROMPTS, None)
    torch.testing.assert_close(differentiable.detach(), exact, rtol=1e-5, atol=1e-5)


def test_a_weighted_sum_of_differentiable_rewards_is_differentiable(
    rewards: dict[str, Any],
) -> None:
    total_fn = weighted_sum({"clip": (rewards["pickscore"], 1.0), "bright": (brightness, 0.5)})
    images = _images((2, 3, 40, 40), seed=4).requires_grad_(True)
    total, metadata = total_fn(images, PROMPTS, None)
    assert total.requires_grad and not metadata["clip"].requires_grad
    expected = rewards["pickscore"](images, PROMPTS, None)[0] + 0.5 * brightness(images)[0]
    torch.testing.assert_close(total.detach(), expected.detach())
    (grad,) = torch.autograd.grad(total.sum(), images)
    assert torch.isfinite(grad).all() and (grad.abs().flatten(1).sum(1) > 0).all()


def test_the_registry_names_the_differentiable_rewards() -> None:
    # alignment's form is tested in test_alignment_differentiable.py
    assert set(DIFFERENTIABLE_REWARDS) == {
        *MODEL_REWARDS,
        "brightness",
        "alignment",
        "temporal_consistency",  # tested in test_video.py
    }
    assert all(is_differentiable(name) == (name in DIFFERENTIABLE_REWARDS) for name in REWARDS)
    assert is_differentiable("pickscore:1.0,brightness:0.5")
    assert not is_differentiable("pickscore:1.0,ocr:0.5")
    assert is_differentiable("alignment:1.0,brightness:0.5")
    fn = build_reward_fn("brightness", differentiable=True)
    images = torch.rand(2, 3, 8, 8, requires_grad=True)
    assert fn(images, PROMPTS, None)[0].requires_grad


@pytest.mark.parametrize(
    "spec",
    [
        "jpeg_compressibility",
        "jpeg_incompressibility",
        "ocr",
        "brightness,ocr:0.5",
        "alignment,ocr",  # alignment has one since issue #25; ocr has none
    ],
)
def test_asking_for_a_reward_without_a_differentiable_form_names_it(spec: str) -> None:
    name = spec.split(",")[-1].split(":")[0]
    with pytest.raises(ValueError, match=f"'{name}'.*no differentiable form"):
        build_reward_fn(spec, differentiable=True)


def test_a_differentiable_reward_takes_float_tensors_only(rewards: dict[str, Any]) -> None:
    uint8 = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"images of a differentiable reward .* torch\.uint8"):
        check_float_images(uint8)
    with pytest.raises(ValueError, match=r"images must be \(batch, 3, H, W\), got shape"):
        check_float_images(torch.zeros(1, 1, 32, 32))
    for name in MODEL_REWARDS:  # a TypeError where the jaxtyping annotations are checked
        with pytest.raises((ValueError, TypeError)):
            rewards[name](uint8, PROMPTS[:1], None)
