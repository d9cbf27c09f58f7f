"""Videos in the reward contract: image rewards per frame, temporal consistency, the registry."""

from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpo._typing import Images, ImagesOrVideos, Videos
from ddpo.data.shapes import batches
from ddpo.rewards.brightness import brightness
from ddpo.rewards.contract import RewardFunction
from ddpo.rewards.registry import (
    DIFFERENTIABLE_REWARDS,
    REWARD_SPECS,
    RewardOptions,
    build_reward_fn,
    reward_weights,
)
from ddpo.rewards.video import (
    PerFrameReward,
    TemporalConsistency,
    consecutive_cosine,
    frame_indices,
    frame_pixel_features,
    per_frame,
    temporal_consistency,
)


def _video(batch: int = 2, frames: int = 5, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _moving_blob(frames: int = 8, size: int = 32) -> torch.Tensor:
    """One smooth video ``(1, frames, 3, size, size)``: a soft blob moving a pixel per frame."""
    axis = torch.arange(size, dtype=torch.float32)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    video = []
    for t in range(frames):
        blob = torch.exp(-((x - 8 - t) ** 2 + (y - 12) ** 2) / 30)
        video.append(torch.stack([blob, 0.5 * blob, 1 - blob]))
    return torch.stack(video)[None]


class _Recorder:
    """An image reward recording what it is given; its reward is each image's mean."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], Any, Any]] = []

    def __call__(self, images: Any, prompts: Any, metadata: Any) -> tuple[torch.Tensor, dict]:
        self.calls.append((tuple(images.shape), prompts, metadata))
        means = images.mean(dim=(1, 2, 3))
        return means, {
            "value": means.tolist(),
            "bright": [bool(m > 0.5) for m in means],
            "prompt": list(prompts or ["-"] * len(means)),
            "scalar": 3.0,
        }


# ---------------------------------------------------------------------------------------------
# The contract


def test_the_contract_annotation_takes_images_and_videos() -> None:
    annotation = RewardFunction.__call__.__annotations__["images"]
    assert annotation == ImagesOrVideos
    assert isinstance(torch.rand(2, 3, 8, 8), ImagesOrVideos)
    assert isinstance(torch.rand(2, 5, 3, 8, 8), ImagesOrVideos)
    assert isinstance(torch.rand(2, 3, 8, 8), Images)
    assert isinstance(torch.rand(2, 5, 3, 8, 8), Videos)
    for bad in (torch.rand(2, 8, 8), torch.rand(2, 5, 4, 8, 8), torch.rand(1, 2, 5, 3, 8, 8)):
        assert not isinstance(bad, ImagesOrVideos)


# ---------------------------------------------------------------------------------------------
# per_frame


def test_images_pass_straight_through() -> None:
    recorder = _Recorder()
    images = torch.rand(3, 3, 8, 8)
    rewards, info = per_frame(recorder)(images, ("a", "b", "c"), ({}, {}, {}))
    assert recorder.calls == [((3, 3, 8, 8), ("a", "b", "c"), ({}, {}, {}))]
    torch.testing.assert_close(rewards, images.mean(dim=(1, 2, 3)))
    assert "frame_rewards" not in info


def test_videos_are_scored_frame_by_frame_with_prompts_and_metadata_repeated() -> None:
    recorder = _Recorder()
    video = _video(batch=2, frames=3)
    rewards, info = per_frame(recorder)(video, ("a", "b"), ({"k": 0}, {"k": 1}))
    ((shape, prompts, metadata),) = recorder.calls
    assert shape == (6, 3, 8, 8)
    assert prompts == ("a", "a", "a", "b", "b", "b")
    assert metadata == ({"k": 0},) * 3 + ({"k": 1},) * 3
    frame_means = video.mean(dim=(2, 3, 4))
    torch.testing.assert_close(rewards, frame_means.mean(dim=1))
    torch.testing.assert_close(info["frame_rewards"], frame_means)
    # per-frame metadata regrouped per video: numbers and flags averaged, the rest grouped
    torch.testing.assert_close(torch.tensor(info["value"]), frame_means.mean(dim=1))
    assert info["bright"] == [sum(m > 0.5 for m in row.tolist()) / 3 for row in frame_means]
    assert info["prompt"] == [("a", "a", "a"), ("b", "b", "b")]
    assert info["scalar"] == 3.0
    # no prompts (a reward server's request without them) stay None
    per_frame(recorder)(video, None, None)
    assert recorder.calls[-1][1:] == (None, None)


@pytest.mark.parametrize(
    ("frames", "chosen"),
    [("first", [0]), ("middle", [2]), ("last", [4]), ((0, -1), [0, 4]), ([3, 1, 3], [3, 1, 3])],
)
def test_a_chosen_frame_set_is_scored(frames: Any, chosen: list[int]) -> None:
    video = _video(batch=2, frames=5)
    rewards, info = per_frame(brightness, frames=frames)(video, ("a", "b"), None)
    frame_means = video.mean(dim=(2, 3, 4))[:, chosen]
    torch.testing.assert_close(rewards, frame_means.mean(dim=1))
    assert info["frame_rewards"].shape == (2, len(chosen))
    assert frame_indices(frames, 5) == chosen


def test_min_reduction_is_the_worst_frame() -> None:
    video = _video(batch=3, frames=4)
    rewards, _ = per_frame(brightness, reduce="min")(video, ("a",) * 3, None)
    torch.testing.assert_close(rewards, video.mean(dim=(2, 3, 4)).amin(dim=1))


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 3),
    frames=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_a_video_of_one_batch_equals_its_videos_one_by_one(
    batch: int, frames: int, seed: int, dtype: torch.dtype
) -> None:
    video = _video(batch=batch, frames=frames, seed=seed).to(dtype)
    wrapped = per_frame(brightness)
    together, _ = wrapped(video, ("p",) * batch, None)
    apart = torch.cat([wrapped(video[i : i + 1], ("p",), None)[0] for i in range(batch)])
    torch.testing.assert_close(together, apart)
    assert together.dtype == torch.promote_types(dtype, torch.float32)
    # a still video scores as its frame
    still = video[:, :1].expand(-1, frames, -1, -1, -1)
    torch.testing.assert_close(wrapped(still, None, None)[0], brightness(video[:, 0])[0])


def test_gradients_flow_through_the_wrapper() -> None:
    video = _video(batch=2, frames=4).double().requires_grad_(True)
    rewards, _ = per_frame(brightness, frames=[1, 2])(video, ("a", "b"), None)
    assert rewards.requires_grad
    (grad,) = torch.autograd.grad(rewards.sum(), video)
    expected = torch.zeros_like(video)
    expected[:, [1, 2]] = 1 / (2 * 3 * 8 * 8)
    torch.testing.assert_close(grad, expected)
    torch.autograd.gradcheck(
        lambda v: per_frame(brightness, reduce="min")(v, ("a", "b"), None)[0],
        (video.detach().mul(0.9).add(0.05).requires_grad_(True),),
        fast_mode=True,
    )


def test_bad_choices_and_inputs_are_named() -> None:
    with pytest.raises(ValueError, match=r"frames must be one of .* got 'every'"):
        per_frame(brightness, frames="every")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty sequence"):
        per_frame(brightness, frames=[])
    with pytest.raises(ValueError, match="frame indices must be ints"):
        per_frame(brightness, frames=[0, 1.5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"reduce must be one of \('mean', 'min'\), got 'max'"):
        per_frame(brightness, reduce="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"indices \[5, -6\] are outside a video of 5 frames"):
        per_frame(brightness, frames=[0, 5, -6])(_video(frames=5), ("a", "b"), None)
    with pytest.raises(ValueError, match=r"prompts has 3 entries for a batch of 2 videos"):
        per_frame(brightness)(_video(), ("a", "b", "c"), None)
    with pytest.raises(ValueError, match=r"videos must be \(batch, frames, 3, H, W\)"):
        per_frame(brightness)(torch.rand(2, 5, 4, 8, 8), ("a", "b"), None)

    def one_per_video(images: Any, prompts: Any, metadata: Any) -> tuple[torch.Tensor, None]:
        return torch.zeros(2), None

    with pytest.raises(ValueError, match=r"returned rewards of shape \(2,\).* length 10"):
        per_frame(one_per_video)(_video(), ("a", "b"), None)
    assert per_frame(brightness).__name__ == "per_frame(brightness)"


# ---------------------------------------------------------------------------------------------
# temporal_consistency


def test_identical_frames_score_one() -> None:
    reward = temporal_consistency()
    frame = torch.rand(3, 1, 3, 24, 20, generator=torch.Generator().manual_seed(1))
    still = frame.expand(-1, 6, -1, -1, -1)
    rewards, info = reward(still, None, None)
    torch.testing.assert_close(rewards, torch.ones(3))
    torch.testing.assert_close(info["min_similarity"], torch.ones(3))
    # flat frames of one colour are identical too (their features are all zero)
    flat = torch.full((1, 4, 3, 8, 8), 0.3)
    torch.testing.assert_close(reward(flat, None, None)[0], torch.ones(1))


def test_shuffled_noisy_and_flickering_frames_score_lower() -> None:
    reward = temporal_consistency()
    smooth = _moving_blob()
    base = float(reward(smooth, None, None)[0])
    shuffled = smooth[:, [0, 5, 2, 7, 1, 6, 3, 4]]
    noise = torch.rand(smooth.shape, generator=torch.Generator().manual_seed(0))
    noisy = (smooth + 0.5 * (noise - 0.5)).clamp(0, 1)
    flicker = smooth.clone()
    flicker[:, 1::2] = (flicker[:, 1::2] * 0.3).clamp(0, 1)
    assert 0.8 < base < 1
    for other in (shuffled, noisy, flicker):
        assert float(reward(other, None, None)[0]) < base - 0.05
    # independent noise frames are about uncorrelated
    assert abs(float(reward(_video(1, 8, 16), None, None)[0])) < 0.2


def test_consecutive_cosine_is_bounded_and_scale_free() -> None:
    features = torch.randn(4, 5, 7, generator=torch.Generator().manual_seed(0))
    cosine = consecutive_cosine(features)
    assert cosine.shape == (4, 4) and bool((cosine.abs() <= 1 + 1e-6).all())
    torch.testing.assert_close(consecutive_cosine(features * 3.0), cosine)
    torch.testing.assert_close(
        consecutive_cosine(torch.stack([features[:, 0], -features[:, 0]], 1)), -torch.ones(4, 1)
    )
    one_flat = torch.stack([torch.zeros(7), torch.ones(7)])[None]
    assert consecutive_cosine(one_flat).tolist() == [[0.0]]


def test_temporal_consistency_refuses_images_naming_the_shape() -> None:
    reward = temporal_consistency()
    with pytest.raises(ValueError, match=r"got shape \(2, 3, 8, 8\) \(images have no frames"):
        reward(torch.rand(2, 3, 8, 8), None, None)
    with pytest.raises(ValueError, match=r"at least 2 frames, got shape \(2, 1, 3, 8, 8\)"):
        reward(torch.rand(2, 1, 3, 8, 8), None, None)
    with pytest.raises(ValueError, match=r"a float tensor .* got list"):
        reward([torch.rand(3, 8, 8)], None, None)
    with pytest.raises(ValueError, match="size must be a positive int"):
        temporal_consistency(size=0)


def test_temporal_consistency_gradients() -> None:
    video = _moving_blob(frames=4, size=12).double().mul(0.9).add(0.05)
    exact = temporal_consistency()(video.requires_grad_(True), None, None)[0]
    assert not exact.requires_grad  # the plain form computes no graph
    differentiable = temporal_consistency(size=4, differentiable=True)
    rewards = differentiable(video, None, None)[0]
    assert rewards.requires_grad and rewards.dtype == torch.float64
    torch.autograd.gradcheck(lambda v: differentiable(v, None, None)[0], (video,), fast_mode=True)


@pytest.mark.slow
def test_clip_features_from_a_model_path(tmp_path: Path) -> None:
    from test_clip_score import build_tiny_clip

    folder = build_tiny_clip(tmp_path / "clip")
    options = RewardOptions(models={"temporal_consistency": str(folder)}, device="cpu")
    reward = build_reward_fn("temporal_consistency", options)
    assert isinstance(reward, TemporalConsistency)
    still = _video(2, 1, 40).expand(-1, 3, -1, -1, -1)
    torch.testing.assert_close(reward(still, None, None)[0], torch.ones(2))
    changing = _video(2, 3, 40, seed=1)
    assert bool((reward(changing, None, None)[0] < 1 - 1e-4).all())
    differentiable = build_reward_fn("temporal_consistency", options, differentiable=True)
    video = changing.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(differentiable(video, None, None)[0].sum(), video)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert [w.source for w in reward_weights("temporal_consistency", options)] == [str(folder)]


# ---------------------------------------------------------------------------------------------
# The registry


def test_the_registry_wraps_every_image_reward() -> None:
    assert REWARD_SPECS["temporal_consistency"].video
    assert "temporal_consistency" in DIFFERENTIABLE_REWARDS
    assert reward_weights("temporal_consistency", RewardOptions()) == []  # pixel features
    for name in ("brightness", "jpeg_compressibility", "jpeg_incompressibility"):
        fn = build_reward_fn(name)
        assert isinstance(fn, PerFrameReward)
        rewards, _ = fn(_video(), ("a", "b"), ({}, {}))
        assert len(rewards) == 2
    assert isinstance(build_reward_fn("temporal_consistency"), TemporalConsistency)
    first = build_reward_fn("brightness", RewardOptions(video_frames="first", video_reduce="min"))
    video = _video()
    torch.testing.assert_close(first(video, ("a", "b"), None)[0], brightness(video[:, 0])[0])
    with pytest.raises(ValueError, match="video_frames must be one of"):
        build_reward_fn("brightness", RewardOptions(video_frames="some"))
    with pytest.raises(ValueError, match="video_reduce must be one of"):
        build_reward_fn("brightness", RewardOptions(video_reduce="sum"))


def test_a_sum_of_an_image_and_a_video_reward_scores_videos_with_gradients() -> None:
    fn = build_reward_fn("brightness:1,temporal_consistency:0.5", differentiable=True)
    video = _video().requires_grad_(True)
    total, info = fn(video, ("a", "b"), None)
    assert total.requires_grad and total.shape == (2,)
    expected = video.mean(dim=(1, 2, 3, 4)) + 0.5 * temporal_consistency()(video, None, None)[0]
    torch.testing.assert_close(total.detach(), expected.detach())
    assert info["brightness/frame_rewards"].shape == (2, 5)
    (grad,) = torch.autograd.grad(total.sum(), video)
    assert torch.isfinite(grad).all()


def test_alignment_scores_a_still_video_as_its_image() -> None:
    images, captions, metas = next(batches(4, seed=0, split="all"))
    reward = build_reward_fn("alignment")
    exact, info = reward(images, captions, metas)
    still = images[:, None].expand(-1, 3, -1, -1, -1)
    per_video, video_info = reward(still, captions, metas)
    torch.testing.assert_close(torch.as_tensor(per_video), torch.as_tensor(exact))
    torch.testing.assert_close(
        torch.as_tensor(video_info["accuracy"]).float(), torch.as_tensor(info["accuracy"]).float()
    )


def test_frame_pixel_features_see_a_brightness_change() -> None:
    frame = torch.rand(1, 1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    video = torch.cat([frame, frame + 0.4], dim=1)
    features = frame_pixel_features(video, size=4)
    assert features.shape == (1, 2, 48)
    assert float(consecutive_cosine(features)[0, 0]) < 0.5
