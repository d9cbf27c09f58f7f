"""Videos in the reward contract: image rewards scored frame by frame, and a video reward.

A video family decodes float videos ``(batch, frames, 3, H, W)`` in [0, 1], and a reward gives one
number per video (:mod:`ddpo.rewards.contract`).

- `per_frame`: any image reward as a video reward. The chosen frames of every video go to the
  image reward as one batch of images ``(batch * k, 3, H, W)``, each with its video's prompt and
  prompt metadata, and each video's ``k`` rewards are reduced to one (their mean, or their
  minimum). Images ``(batch, 3, H, W)`` pass straight through, so the wrapped reward is the same
  reward on images; `ddpo.rewards.registry.build_reward_fn` wraps every image reward in it. The
  reshape and the reduction keep the gradients of a differentiable reward.
- `temporal_consistency`: a video reward of our own that needs no download, the mean cosine
  similarity of consecutive frames' features; by default the features are the frames' pixels
  at low resolution (`frame_pixel_features`), deterministic and without any model; with a CLIP
  model (`ClipFrameFeatures`), its image embeddings.
"""

from collections.abc import Callable, Sequence
from typing import Any, Final, Literal, final, get_args

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ddpo._callables import callable_name
from ddpo._typing import PerSample, Videos, no_type_check
from ddpo.rewards.contract import RewardFunction, RewardOutput, check_rewards

__all__ = [
    "FRAME_CHOICES",
    "REDUCTIONS",
    "ClipFrameFeatures",
    "FrameChoice",
    "PerFrameReward",
    "Reduction",
    "TemporalConsistency",
    "check_frame_choice",
    "check_reduction",
    "consecutive_cosine",
    "frame_indices",
    "frame_pixel_features",
    "per_frame",
    "temporal_consistency",
]

FrameName = Literal["all", "first", "middle", "last"]
FRAME_CHOICES: Final[tuple[FrameName, ...]] = get_args(FrameName)
FrameChoice = FrameName | Sequence[int]
"""Which frames of each video an image reward scores: all of them, the first, the middle one
(``frames // 2``), the last, or a sequence of frame indices (negative ones count from the end)."""

Reduction = Literal["mean", "min"]
REDUCTIONS: Final[tuple[Reduction, ...]] = get_args(Reduction)
"""How a video's per-frame rewards become its reward: their mean, or their minimum (the worst
frame)."""


def check_frame_choice(frames: Any, *, argument: str = "frames") -> FrameChoice:
    """``frames`` if it is a `FrameChoice` (a name of `FRAME_CHOICES` or a non-empty sequence of
    ints), as a tuple for a sequence.

    Raises:
        ValueError: naming ``argument`` and the value otherwise.
    """
    if isinstance(frames, str):
        if frames not in FRAME_CHOICES:
            raise ValueError(
                f"{argument} must be one of {FRAME_CHOICES} or a sequence of frame indices, "
                f"got {frames!r}"
            )
        return frames  # checked against the names above
    if not isinstance(frames, Sequence) or not frames:
        raise ValueError(
            f"{argument} must be one of {FRAME_CHOICES} or a non-empty sequence of frame "
            f"indices, got {frames!r}"
        )
    if any(isinstance(i, bool) or not isinstance(i, int) for i in frames):
        raise ValueError(f"{argument}: frame indices must be ints, got {list(frames)!r}")
    return tuple(frames)


def check_reduction(reduce: Any, *, argument: str = "reduce") -> Reduction:
    """``reduce`` if it is one of `REDUCTIONS`.

    Raises:
        ValueError: naming ``argument`` and the value otherwise.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"{argument} must be one of {REDUCTIONS}, got {reduce!r}")
    return reduce  # checked above


def frame_indices(frames: FrameChoice, num_frames: int) -> list[int]:
    """The frame indices ``frames`` picks in a video of ``num_frames`` frames, in its order,
    each in ``[0, num_frames)``.

    Raises:
        ValueError: naming ``frames``, an index outside ``[-num_frames, num_frames)`` and the
            frame count.
    """
    if num_frames < 1:
        raise ValueError(f"videos must have at least one frame, got {num_frames}")
    if frames == "all":
        return list(range(num_frames))
    if frames == "first":
        return [0]
    if frames == "middle":
        return [num_frames // 2]
    if frames == "last":
        return [num_frames - 1]
    chosen = check_frame_choice(frames)
    assert not isinstance(chosen, str)  # the names are handled above
    bad = [i for i in chosen if not -num_frames <= i < num_frames]
    if bad:
        raise ValueError(
            f"frames {list(chosen)!r}: indices {bad} are outside a video of {num_frames} frames"
        )
    return [i % num_frames for i in chosen]


def _repeat_per_frame(values: Any, batch: int, k: int, *, argument: str) -> Any:
    """Each of the ``batch`` entries of ``values`` repeated ``k`` times, as a tuple; None and
    values that are not a sequence of one entry per video pass as they are."""
    if values is None or isinstance(values, str | bytes) or not isinstance(values, Sequence):
        return values
    if len(values) != batch:
        if argument == "prompts":
            raise ValueError(f"prompts has {len(values)} entries for a batch of {batch} videos")
        return values
    return tuple(value for value in values for _ in range(k))


def _is_number(value: Any) -> bool:
    return isinstance(value, bool | int | float)


def _regroup(value: Any, batch: int, k: int) -> Any:
    """One per-frame metadata value of ``batch * k`` entries as one entry per video: numbers
    (and flags) averaged over the video's frames, other entries as a tuple of its ``k`` values;
    any other value, and any value when ``k`` is 1, as it is."""
    if k == 1:
        return value
    if isinstance(value, Tensor):
        if value.ndim == 0 or value.shape[0] != batch * k or value.is_complex():
            return value
        grouped = value.detach().reshape(batch, k, *value.shape[1:])
        return (grouped if grouped.is_floating_point() else grouped.float()).mean(dim=1)
    if isinstance(value, list | tuple) and len(value) == batch * k:
        groups = [value[v * k : (v + 1) * k] for v in range(batch)]
        if all(_is_number(item) for item in value):
            return [sum(float(item) for item in group) / k for group in groups]
        return [tuple(group) for group in groups]
    return value


@final
class PerFrameReward:
    """An image reward scoring videos frame by frame (see `per_frame`).

    ``reward(videos)_v = reduce_{j in frames} reward_fn(videos[v, j])``: the chosen frames of all
    videos are scored as one batch of images, with each video's prompt and prompt metadata
    repeated per frame. Images ``(batch, 3, H, W)`` (or any other layout the image reward takes)
    go to ``reward_fn`` unchanged, and its answer comes back unchanged.

    The metadata of a video batch is the image reward's, each value with one entry per scored
    frame regrouped per video (when more than one frame is scored): numbers and flags averaged
    over the video's frames (the fraction of frames for a flag), other entries as a tuple of the
    frames' values; it also holds ``frame_rewards``, the per-frame rewards ``(batch, k)``
    (float32, CPU), unless the image reward reports a key of that name.

    Args:
        reward_fn: an image reward (`ddpo.rewards.contract.RewardFunction`).
        frames: which frames each video is scored on (`FrameChoice`).
        reduce: ``"mean"`` or ``"min"`` of a video's frame rewards.

    Raises:
        ValueError: naming ``frames`` or ``reduce`` when they are not valid choices, or
            ``reward_fn`` when it is not callable.
    """

    @no_type_check  # it checks its arguments itself, naming each
    def __init__(
        self, reward_fn: RewardFunction, *, frames: FrameChoice = "all", reduce: Reduction = "mean"
    ) -> None:
        if not callable(reward_fn):
            raise ValueError(f"reward_fn must be callable, got {type(reward_fn).__name__}")
        self.reward_fn = reward_fn
        self.frames = check_frame_choice(frames)
        self.reduce = check_reduction(reduce)
        self.__name__ = f"per_frame({callable_name(reward_fn)})"

    def __repr__(self) -> str:
        return f"PerFrameReward({self.reward_fn!r}, frames={self.frames!r}, reduce={self.reduce!r})"

    def __call__(self, images: Any, prompts: Any, prompt_metadata: Any = None) -> RewardOutput:
        """The rewards of a batch of videos (one per video, on the image reward's device and
        dtype for a tensor answer, else float32 on the CPU), or the image reward's answer on
        images.

        Raises:
            ValueError: if videos are not ``(batch, frames, 3, H, W)``, a frame index is
                outside the videos, or the prompts are not one per video; TypeError or
                ValueError (`ddpo.rewards.contract.check_rewards`) if the image reward's answer
                is not one reward per frame.
        """
        if not (isinstance(images, Tensor) and images.ndim == 5):
            return self.reward_fn(images, prompts, prompt_metadata)
        batch, num_frames = images.shape[:2]
        if images.shape[2] != 3:
            raise ValueError(
                f"videos must be (batch, frames, 3, H, W), got shape {tuple(images.shape)}"
            )
        chosen = frame_indices(self.frames, num_frames)
        k = len(chosen)
        selected = images if chosen == list(range(num_frames)) else images[:, chosen]
        flat = selected.reshape(batch * k, *images.shape[2:])
        result = self.reward_fn(
            flat,
            _repeat_per_frame(prompts, batch, k, argument="prompts"),
            _repeat_per_frame(prompt_metadata, batch, k, argument="prompt_metadata"),
        )
        checked, metadata = check_rewards(result, self.reward_fn, batch_size=batch * k, offset=0)
        raw = result[0]
        per_frame_rewards = raw if isinstance(raw, Tensor) and raw.is_floating_point() else checked
        per_frame_rewards = per_frame_rewards.reshape(batch, k)
        if self.reduce == "mean":
            rewards = per_frame_rewards.mean(dim=1)
        else:
            rewards = per_frame_rewards.amin(dim=1)
        if isinstance(metadata, dict):
            regrouped = {key: _regroup(value, batch, k) for key, value in metadata.items()}
            regrouped.setdefault("frame_rewards", checked.reshape(batch, k))
            metadata = regrouped
        elif metadata is None:
            metadata = {"frame_rewards": checked.reshape(batch, k)}
        return rewards, metadata


@no_type_check  # as `PerFrameReward`
def per_frame(
    reward_fn: RewardFunction, *, frames: FrameChoice = "all", reduce: Reduction = "mean"
) -> PerFrameReward:
    """``reward_fn``, an image reward, as a reward of images and videos: a video's reward is the
    ``reduce`` (mean or min) of its ``frames``' rewards; images pass straight through. See
    `PerFrameReward`."""
    return PerFrameReward(reward_fn, frames=frames, reduce=reduce)


# ---------------------------------------------------------------------------------------------
# Temporal consistency

FrameFeatures = Callable[[Videos], Float[Tensor, "batch frames dim"]]
"""Per-frame features of videos: ``(batch, frames, 3, H, W) -> (batch, frames, dim)``."""


def frame_pixel_features(videos: Videos, *, size: int = 16) -> Float[Tensor, "batch frames dim"]:
    """Each frame average-pooled to ``size x size`` pixels, less its video's mean colour.

    ``phi(x_t) = flatten(pool(x_t) - mean_{t', i, j} pool(x_{t'})_{c, i, j})``: the mean is per
    channel over all frames and pixels of the video, so a change of a frame's brightness or
    colour against the others shows in its features (a frame's own mean would hide it).

    Args:
        videos: ``(batch, frames, 3, H, W)`` in [0, 1] (clamped to it), any float dtype.
        size: the pooled frame's side (adaptive average pooling; a smaller frame is repeated).

    Returns:
        ``(batch, frames, 3 * size * size)``, float32 (float64 for float64 videos), with the
        videos' gradients and device.
    """
    if size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    batch, num_frames, channels, height, width = videos.shape
    pixels = videos.to(torch.promote_types(videos.dtype, torch.float32)).clamp(0, 1)
    pooled = F.adaptive_avg_pool2d(pixels.reshape(-1, channels, height, width), size)
    pooled = pooled.reshape(batch, num_frames, channels, size, size)
    centred = pooled - pooled.mean(dim=(1, 3, 4), keepdim=True)
    return centred.reshape(batch, num_frames, -1)


def consecutive_cosine(
    features: Float[Tensor, "batch frames dim"], *, eps: float = 1e-6
) -> Float[Tensor, "batch pairs"]:
    """The cosine similarity of each frame's features with the next frame's.

    ``s_t = <phi_t, phi_{t+1}> / (||phi_t|| ||phi_{t+1}||)`` for ``t < frames - 1``, in
    [-1, 1]. A pair where both features are (near) zero (``||phi|| <= eps``: flat frames of the
    video's mean colour) is identical: 1; where one of them is: 0.

    Returns:
        ``(batch, frames - 1)``, in the features' dtype, with their gradients.
    """
    current, following = features[:, :-1], features[:, 1:]
    norm_current = torch.linalg.vector_norm(current, dim=-1)
    norm_following = torch.linalg.vector_norm(following, dim=-1)
    dot = (current * following).sum(dim=-1)
    cosine = dot / (norm_current * norm_following).clamp_min(eps * eps)
    flat_current, flat_following = norm_current <= eps, norm_following <= eps
    cosine = torch.where(flat_current | flat_following, torch.zeros_like(cosine), cosine)
    return torch.where(flat_current & flat_following, torch.ones_like(cosine), cosine)


@final
class ClipFrameFeatures:
    """The L2-normalised CLIP image embeddings of every frame (vision tower and visual
    projection), the frames preprocessed in torch as CLIP's image processor does
    (`ddpo.rewards._clip.ClipImageTransform.differentiable`: resize, centre crop, normalise,
    with gradients), ``batch_size`` frames per forward pass on ``device``.

    Args:
        model: a transformers ``CLIPModel`` (or one with ``vision_model`` and
            ``visual_projection``).
        transform: its image preprocessing.
        device: where the model runs.
        batch_size: frames per forward pass.
    """

    def __init__(
        self, model: Any, transform: Any, *, device: torch.device, batch_size: int = 32
    ) -> None:
        from ddpo.rewards._clip import check_batch_size

        self.model = model.to(device)
        self.transform = transform
        self.device = device
        self.batch_size = check_batch_size(batch_size)

    def __call__(self, videos: Videos) -> Float[Tensor, "batch frames dim"]:
        """``(batch, frames, 3, H, W)`` to ``(batch, frames, dim)`` embeddings on the videos'
        device, float32 (float64 for a float64 model), with gradients."""
        batch, num_frames = videos.shape[:2]
        frames = videos.reshape(batch * num_frames, *videos.shape[2:])
        dtype = self.model.visual_projection.weight.dtype
        embeds = []
        for start in range(0, frames.shape[0], self.batch_size):
            pixels = self.transform.differentiable(frames[start : start + self.batch_size])
            pooled = self.model.vision_model(pixel_values=pixels.to(self.device, dtype))
            embed = self.model.visual_projection(pooled.pooler_output)
            embed = embed.to(torch.promote_types(dtype, torch.float32))
            embeds.append(embed / torch.linalg.vector_norm(embed, dim=-1, keepdim=True))
        return torch.cat(embeds).to(videos.device).reshape(batch, num_frames, -1)


@final
class TemporalConsistency:
    """Reward ``(videos, prompts, prompt_metadata) -> (mean_t s_t, {"min_similarity": min_t
    s_t})``, with ``s_t`` the cosine similarity of consecutive frames' features
    (`consecutive_cosine`).

    What it measures, and its limits: how alike each frame is to the next, nothing of what the
    video shows nor of its prompt. 1 is a still video (every frame the same), which this reward
    alone would train towards: use it beside a per-frame reward of quality or alignment, as a
    penalty on flicker, cuts and frame-to-frame noise. With the default pixel features
    (`frame_pixel_features`, 16 x 16 pixels, no model, no download) it sees changes of layout,
    colour and brightness at that resolution; finer detail, and motion that keeps the
    low-resolution picture, go unseen, and a camera pan scores as a change. With CLIP features
    (`ClipFrameFeatures`, a model path) it sees changes of content as CLIP does (VBench's
    background consistency uses CLIP features this way), at the cost of a CLIP forward pass per
    frame.

    Args:
        features: per-frame features of the videos (`FrameFeatures`); default
            `frame_pixel_features`.
        differentiable: keep the videos' gradients (else the features are computed under
            ``torch.no_grad``).

    The rewards are on the videos' device, float32 (float64 for float64 videos and features).
    """

    def __init__(
        self, features: FrameFeatures | None = None, *, differentiable: bool = False
    ) -> None:
        self.features: FrameFeatures = features or frame_pixel_features
        self.differentiable = differentiable

    def __call__(
        self, images: Any, prompts: Any = None, prompt_metadata: Any = None
    ) -> tuple[PerSample, dict[str, Any]]:
        """The temporal consistency of each video.

        Raises:
            ValueError: naming the shape, for anything but a float tensor
                ``(batch, frames, 3, H, W)`` with at least two frames (images have no frames to
                compare).
        """
        del prompts, prompt_metadata
        if not isinstance(images, Tensor) or not images.is_floating_point():
            raise ValueError(
                "temporal_consistency scores videos, a float tensor (batch, frames, 3, H, W) in "
                f"[0, 1]; got {type(images).__name__}"
            )
        if images.ndim != 5 or images.shape[2] != 3:
            what = "images have no frames to compare" if images.ndim == 4 else "not a video"
            raise ValueError(
                f"temporal_consistency scores videos (batch, frames, 3, H, W); got shape "
                f"{tuple(images.shape)} ({what})"
            )
        if images.shape[1] < 2:
            raise ValueError(
                f"temporal_consistency compares consecutive frames: videos need at least 2 "
                f"frames, got shape {tuple(images.shape)}"
            )
        with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()):
            similarities = consecutive_cosine(self.features(images))
        rewards = similarities.mean(dim=1)
        minimum = similarities.detach().amin(dim=1).float().cpu()
        return rewards, {"min_similarity": minimum}


def temporal_consistency(
    model: str | None = None,
    *,
    size: int = 16,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    token: str | None = None,
    differentiable: bool = False,
) -> TemporalConsistency:
    """The `TemporalConsistency` reward: with pixel features by default, or with the image
    embeddings of the CLIP model ``model`` (a local folder or hub id).

    Args:
        model: a CLIP model (``CLIPModel`` folder, with its ``preprocessor_config.json`` or CLIP
            defaults at its vision config's ``image_size``); None: pixel features.
        size: the pooled frame's side of the pixel features.
        device, batch_size, token: where the CLIP model runs, frames per forward pass, the
            Hugging Face token for downloads.
        differentiable: keep the videos' gradients.

    Raises:
        ValueError: if ``size`` or ``batch_size`` is not a positive int (before anything loads).
        OSError: if ``model`` is neither a local folder nor reachable on the hub.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if model is None:

        def pixels(videos: Videos) -> Float[Tensor, "batch frames dim"]:
            return frame_pixel_features(videos, size=size)

        return TemporalConsistency(pixels, differentiable=differentiable)
    from ddpo.rewards._clip import (
        ClipImageTransform,
        check_batch_size,
        load_clip_model,
        read_preprocessor_config,
        resolve_device,
    )

    check_batch_size(batch_size)
    clip = load_clip_model(model, argument="model", token=token)
    transform = ClipImageTransform.from_config(
        read_preprocessor_config(model, token=token),
        image_size=int(clip.config.vision_config.image_size),
    )
    features = ClipFrameFeatures(
        clip, transform, device=resolve_device(device), batch_size=batch_size
    )
    return TemporalConsistency(features, differentiable=differentiable)
