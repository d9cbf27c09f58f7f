"""Reward functions by name: the ``--reward`` choices of ``ddpo train``.

`RewardName` is the one place the names are spelled; `REWARDS` is derived from it and
`REWARD_SPECS` maps each name to how its reward is built and which of its per-sample metadata
keys a run's summary shows. A reward's module is imported only when it is built (the aesthetic
scorer pulls in transformers and downloads CLIP).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

__all__ = [
    "REWARDS",
    "REWARD_SPECS",
    "RewardFn",
    "RewardName",
    "RewardOptions",
    "RewardSpec",
    "build_reward_fn",
    "reward_spec",
]

RewardName = Literal[
    "alignment", "jpeg_compressibility", "jpeg_incompressibility", "aesthetic", "brightness"
]
REWARDS: tuple[RewardName, ...] = get_args(RewardName)

RewardFn = Callable[..., tuple[Any, Any]]
"""``(images, prompts, prompt_metadata) -> (rewards, reward_metadata)``."""


@dataclass(frozen=True)
class RewardOptions:
    """Settings of the rewards that take any (the others ignore them)."""

    aesthetic_clip_model: str = "openai/clip-vit-large-patch14"
    """CLIP model of the ``aesthetic`` reward (hub id or local folder)."""
    aesthetic_mlp_weights: str = "trl-lib/ddpo-aesthetic-predictor"
    """Aesthetic MLP weights (``.safetensors``/``.pth`` file, folder, or hub repository)."""
    token: str | None = None
    """Hugging Face token for downloads."""


class RewardSpec(NamedTuple):
    """How a named reward is built, and what a run's summary shows of it."""

    build: Callable[[RewardOptions], RewardFn]
    summary_keys: tuple[str, ...] = ()
    """Per-sample reward-metadata keys (values in [0, 1]) whose epoch means (``<key>_mean``)
    the run's closing table and reward curve show; every numeric key's mean is logged anyway."""


def _alignment(options: RewardOptions) -> RewardFn:
    from ddpo.rewards.alignment import alignment_reward_fn

    return alignment_reward_fn


def _jpeg_compressibility(options: RewardOptions) -> RewardFn:
    from ddpo.rewards.jpeg import jpeg_compressibility

    return jpeg_compressibility


def _jpeg_incompressibility(options: RewardOptions) -> RewardFn:
    from ddpo.rewards.jpeg import jpeg_incompressibility

    return jpeg_incompressibility


def _aesthetic(options: RewardOptions) -> RewardFn:
    from ddpo.rewards.aesthetic import aesthetic_score

    return aesthetic_score(
        options.aesthetic_clip_model, options.aesthetic_mlp_weights, token=options.token
    )


def _brightness(options: RewardOptions) -> RewardFn:
    from ddpo.rewards.brightness import brightness

    return brightness


#: Each name of `REWARDS` with its spec (``tests/rewards/test_registry.py`` checks they match).
REWARD_SPECS: dict[RewardName, RewardSpec] = {
    # `accuracy`: the per-image flag "every named attribute right"; its mean is the accuracy.
    "alignment": RewardSpec(_alignment, summary_keys=("accuracy",)),
    "jpeg_compressibility": RewardSpec(_jpeg_compressibility),
    "jpeg_incompressibility": RewardSpec(_jpeg_incompressibility),
    "aesthetic": RewardSpec(_aesthetic),
    "brightness": RewardSpec(_brightness),
}


def reward_spec(name: str) -> RewardSpec:
    """The spec of the reward ``name``.

    Raises:
        ValueError: if the name is unknown.
    """
    if name not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {name!r}")
    return REWARD_SPECS[name]


def build_reward_fn(name: str, options: RewardOptions | None = None) -> RewardFn:
    """The reward function ``name`` (``alignment``, ``jpeg_compressibility``, ...).

    Raises:
        ValueError: if the name is unknown.
    """
    return reward_spec(name).build(options or RewardOptions())
