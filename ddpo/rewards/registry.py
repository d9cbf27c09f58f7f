"""Reward functions by name: the ``--reward`` choices of ``ddpo train``.

`RewardName` is the one place the names are spelled; `REWARDS` is derived from it and
`REWARD_SPECS` maps each name to how its reward is built and which of its per-sample metadata
keys a run's summary shows. A reward's module is imported only when it is built (the model-based
rewards pull in transformers or their extras and load weights).

``--reward`` also takes a weighted sum, ``pickscore:1.0,ocr:0.5`` (`parse_reward_spec`): the
rewards are built and summed by `ddpo.rewards.combine.WeightedSumReward`.

`DIFFERENTIABLE_REWARDS` names the rewards that also come in a differentiable form (float images
with gradients in, rewards with gradients out, for reward backpropagation):
``build_reward_fn(name, options, differentiable=True)`` builds it, and raises ValueError naming
each reward of ``name`` that has none (``jpeg_*``, ``ocr``, ``remote``).

`check_reward_weights` checks, before anything loads, that the files of every model-based reward
can be had: in a local folder, in the Hugging Face cache, or (when not offline) on the Hub.

Videos: every image reward is built wrapped in `ddpo.rewards.video.per_frame`, so that it scores
a video ``(batch, frames, 3, H, W)`` frame by frame (`RewardOptions.video_frames`, reduced by
`RewardOptions.video_reduce`) and an image batch as before; a video reward
(`RewardSpec.video`: ``temporal_consistency``) is built as it is and refuses images.
"""

import inspect
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, get_args

__all__ = [
    "DIFFERENTIABLE_REWARDS",
    "MODEL_KEYS",
    "REWARDS",
    "REWARD_SPECS",
    "RewardFn",
    "RewardName",
    "RewardOptions",
    "RewardSpec",
    "RewardWeights",
    "build_reward_fn",
    "check_reward_options",
    "check_reward_weights",
    "is_differentiable",
    "parse_reward_spec",
    "reward_spec",
    "reward_weights",
    "summary_keys_for",
]

RewardName = Literal[
    "alignment",
    "jpeg_compressibility",
    "jpeg_incompressibility",
    "aesthetic",
    "brightness",
    "clip_score",
    "pickscore",
    "hps",
    "image_reward",
    "ocr",
    "temporal_consistency",
    "remote",
]
REWARDS: tuple[RewardName, ...] = get_args(RewardName)

if TYPE_CHECKING:
    from ddpo.rewards.contract import RewardFunction as RewardFn
else:  # the contract's protocol imports torch, which importing the registry must not
    RewardFn = Callable[..., tuple[Any, Any]]
"""A reward function of the reward contract, `ddpo.rewards.contract.RewardFunction` (at run
time a plain callable type, so that importing the registry imports no torch)."""


@dataclass(frozen=True)
class RewardOptions:
    """Settings of the rewards that take any (the others ignore them)."""

    aesthetic_clip_model: str = "openai/clip-vit-large-patch14"
    """CLIP model of the ``aesthetic`` reward (hub id or local folder)."""
    aesthetic_mlp_weights: str = "trl-lib/ddpo-aesthetic-predictor"
    """Aesthetic MLP weights (``.safetensors``/``.pth`` file, folder, or hub repository)."""
    token: str | None = None
    """Hugging Face token for downloads."""
    models: Mapping[str, str] = field(default_factory=dict)
    """Model overrides, ``{key: hub id or local path}``, keys from `MODEL_KEYS`: a reward's
    model (``clip_score``, ``pickscore``, ``hps``, ``image_reward``), PickScore's processor
    (``pickscore_processor``) or a tokenizer (``hps_tokenizer``, ``image_reward_tokenizer``);
    a reward absent here uses its module's default."""
    device: str | None = None
    """Device of the model-based rewards; None: CUDA when available, else CPU (``ocr``: CPU)."""
    batch_size: int = 32
    """Images per forward pass of the model-based rewards."""
    remote_url: str | None = None
    """URL of the reward server of the ``remote`` reward (required for it)."""
    remote_token: str | None = None
    """Bearer token sent to the reward server."""
    remote_timeout: float = 60.0
    """Seconds to wait for the reward server per request."""
    video_frames: str | tuple[int, ...] = "all"
    """Which frames of a video the image rewards score (`ddpo.rewards.video.FrameChoice`):
    ``"all"``, ``"first"``, ``"middle"``, ``"last"`` or frame indices."""
    video_reduce: str = "mean"
    """How a video's per-frame image rewards become its reward: ``"mean"`` or ``"min"``."""


MODEL_KEYS: tuple[str, ...] = (
    "clip_score",
    "pickscore",
    "pickscore_processor",
    "hps",
    "hps_tokenizer",
    "image_reward",
    "image_reward_tokenizer",
    "temporal_consistency",
)
"""The keys of `RewardOptions.models` (``temporal_consistency``: a CLIP model for its features,
pixel features without one)."""


class RewardSpec(NamedTuple):
    """How a named reward is built, and what a run's summary shows of it."""

    build: Callable[[RewardOptions], RewardFn]
    summary_keys: tuple[str, ...] = ()
    """Per-sample reward-metadata keys (values in [0, 1]) whose epoch means (``<key>_mean``)
    the run's closing table and reward curve show; every numeric key's mean is logged anyway."""
    differentiable: Callable[[RewardOptions], RewardFn] | None = None
    """How its differentiable form is built (gradients from the rewards to float images), or
    None where it has none."""
    video: bool = False
    """It scores videos itself (refusing images); the others are image rewards, built wrapped in
    `ddpo.rewards.video.per_frame`."""


def _alignment(options: RewardOptions) -> RewardFn:
    from ddpo.rewards.alignment import alignment_reward_fn

    return alignment_reward_fn


def _differentiable_alignment(options: RewardOptions) -> RewardFn:
    from ddpo.rewards.alignment import differentiable_alignment_reward_fn

    return differentiable_alignment_reward_fn


def _jpeg_compressibility(options: RewardOptions) -> RewardFn:
    from ddpo.rewards.jpeg import jpeg_compressibility

    return jpeg_compressibility


def _jpeg_incompressibility(options: RewardOptions) -> RewardFn:
    from ddpo.rewards.jpeg import jpeg_incompressibility

    return jpeg_incompressibility


def _aesthetic(options: RewardOptions, **extra: Any) -> RewardFn:
    from ddpo.rewards.aesthetic import aesthetic_score

    return aesthetic_score(
        options.aesthetic_clip_model, options.aesthetic_mlp_weights, token=options.token, **extra
    )


def _brightness(options: RewardOptions) -> RewardFn:
    from ddpo.rewards.brightness import brightness

    return brightness


def _model_kwargs(options: RewardOptions) -> dict[str, Any]:
    return {"device": options.device, "batch_size": options.batch_size, "token": options.token}


def _model_args(options: RewardOptions, key: str) -> tuple[str, ...]:
    return (options.models[key],) if key in options.models else ()


def _clip_score(options: RewardOptions, **extra: Any) -> RewardFn:
    from ddpo.rewards.clip_score import clip_score_reward

    kwargs = _model_kwargs(options) | extra
    return clip_score_reward(*_model_args(options, "clip_score"), **kwargs)


def _pickscore(options: RewardOptions, **extra: Any) -> RewardFn:
    from ddpo.rewards.pickscore import pickscore_reward

    kwargs = _model_kwargs(options) | extra
    if "pickscore_processor" in options.models:
        kwargs["processor"] = options.models["pickscore_processor"]
    return pickscore_reward(*_model_args(options, "pickscore"), **kwargs)


def _tokenizer_kwargs(options: RewardOptions, key: str) -> dict[str, Any]:
    return {"tokenizer": options.models[key]} if key in options.models else {}


def _hps(options: RewardOptions, **extra: Any) -> RewardFn:
    from ddpo.rewards.hps import hps_reward

    kwargs = _model_kwargs(options) | _tokenizer_kwargs(options, "hps_tokenizer") | extra
    return hps_reward(*_model_args(options, "hps"), **kwargs)


def _image_reward(options: RewardOptions, **extra: Any) -> RewardFn:
    from ddpo.rewards.image_reward import image_reward

    kwargs = _model_kwargs(options) | _tokenizer_kwargs(options, "image_reward_tokenizer")
    kwargs |= extra
    return image_reward(*_model_args(options, "image_reward"), **kwargs)


def _ocr(options: RewardOptions) -> RewardFn:
    from ddpo.rewards.ocr import ocr_reward

    return ocr_reward(device=options.device)


def _temporal_consistency(options: RewardOptions, **extra: Any) -> RewardFn:
    from ddpo.rewards.video import temporal_consistency

    kwargs = _model_kwargs(options) | extra
    return temporal_consistency(*_model_args(options, "temporal_consistency"), **kwargs)


def _remote(options: RewardOptions) -> RewardFn:
    if not options.remote_url:
        raise ValueError(_REMOTE_URL_MISSING)
    from ddpo.rewards.remote import RemoteReward

    return RemoteReward(
        options.remote_url, timeout=options.remote_timeout, token=options.remote_token
    )


_REMOTE_URL_MISSING = (
    "the 'remote' reward needs the reward server's URL: set --remote_reward_url "
    "(RewardOptions.remote_url)"
)


#: Each name of `REWARDS` with its spec (``tests/rewards/test_registry.py`` checks they match).
REWARD_SPECS: dict[RewardName, RewardSpec] = {
    # `accuracy`: the per-image flag "every named attribute right"; its mean is the accuracy.
    # Its differentiable form's metadata also holds the exact reward (`exact`) and `accuracy`.
    "alignment": RewardSpec(
        _alignment, summary_keys=("accuracy",), differentiable=_differentiable_alignment
    ),
    "jpeg_compressibility": RewardSpec(_jpeg_compressibility),
    "jpeg_incompressibility": RewardSpec(_jpeg_incompressibility),
    "aesthetic": RewardSpec(_aesthetic, differentiable=partial(_aesthetic, differentiable=True)),
    "brightness": RewardSpec(_brightness, differentiable=_brightness),  # differentiable as it is
    "clip_score": RewardSpec(_clip_score, differentiable=partial(_clip_score, differentiable=True)),
    "pickscore": RewardSpec(_pickscore, differentiable=partial(_pickscore, differentiable=True)),
    "hps": RewardSpec(_hps, differentiable=partial(_hps, differentiable=True)),
    "image_reward": RewardSpec(
        _image_reward, differentiable=partial(_image_reward, differentiable=True)
    ),
    "ocr": RewardSpec(_ocr),
    # `min_similarity`: the least similar pair of consecutive frames of each video.
    "temporal_consistency": RewardSpec(
        _temporal_consistency,
        differentiable=partial(_temporal_consistency, differentiable=True),
        video=True,
    ),
    "remote": RewardSpec(_remote),
}


DIFFERENTIABLE_REWARDS: tuple[RewardName, ...] = tuple(
    name for name in REWARDS if REWARD_SPECS[name].differentiable is not None
)
"""The rewards with a differentiable form: alignment, aesthetic, brightness, clip_score,
pickscore, hps, image_reward, temporal_consistency (not the JPEG sizes, ocr, remote)."""


def is_differentiable(name: str) -> bool:
    """Whether the reward ``name`` has a differentiable form (a weighted sum: all its terms).

    Raises:
        ValueError: as `parse_reward_spec`.
    """
    return all(term in DIFFERENTIABLE_REWARDS for term, _ in parse_reward_spec(name))


def reward_spec(name: str) -> RewardSpec:
    """The spec of the reward ``name``.

    Raises:
        ValueError: if the name is unknown.
    """
    if name not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {name!r}")
    return REWARD_SPECS[name]


def parse_reward_spec(text: str) -> list[tuple[RewardName, float]]:
    """The terms of a ``--reward`` value: a name (``pickscore``) or a weighted sum
    (``pickscore:1.0,ocr:0.5``; a bare name in a sum has weight 1).

    Returns:
        ``[(name, weight), ...]`` in the order given.

    Raises:
        ValueError: naming ``--reward`` and the bad part: empty value or term, unknown name
            (listing the choices), a weight that is not a finite number or is 0 (the term
            would train nothing), a name given twice.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"--reward must name a reward or a weighted sum of them, got {text!r}")
    terms: list[tuple[RewardName, float]] = []
    for part in text.split(","):
        name, sep, weight_text = (p.strip() for p in part.partition(":"))
        if not name:
            raise ValueError(f"--reward {text!r}: empty term {part!r} (expected name[:weight])")
        if name not in REWARDS:
            raise ValueError(
                f"--reward {text!r}: each reward must be one of {REWARDS}, got {name!r}"
            )
        weight = 1.0
        if sep:
            try:
                weight = float(weight_text)
            except ValueError:
                weight = math.nan
            if not math.isfinite(weight):
                raise ValueError(
                    f"--reward {text!r}: the weight of {name!r} must be a finite number, "
                    f"got {weight_text!r}"
                )
            if weight == 0:
                raise ValueError(
                    f"--reward {text!r}: the weight of {name!r} is 0, and a term of weight 0 "
                    f"trains on nothing; drop the term {part.strip()!r}"
                )
        if any(name == seen for seen, _ in terms):
            raise ValueError(f"--reward {text!r}: reward {name!r} is named twice")
        terms.append((name, weight))
    return terms


def check_reward_options(text: str, options: RewardOptions) -> list[tuple[RewardName, float]]:
    """Check ``--reward`` (`parse_reward_spec`) and the options its rewards need, before
    anything loads.

    Returns:
        The parsed terms.

    Raises:
        ValueError: naming the flag: a bad ``--reward``, an unknown ``--reward_model`` key, a
            batch size that is not positive, a timeout that is not a positive finite number, or
            ``remote`` without ``--remote_reward_url``.
    """
    terms = parse_reward_spec(text)
    unknown = sorted(set(options.models) - set(MODEL_KEYS))
    if unknown:
        raise ValueError(f"--reward_model: unknown keys {unknown}; the keys are {MODEL_KEYS}")
    batch_size = options.batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"--reward_batch_size must be a positive int, got {batch_size!r}")
    timeout = options.remote_timeout
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"--remote_reward_timeout must be positive and finite, got {timeout}")
    if any(name == "remote" for name, _ in terms) and not options.remote_url:
        raise ValueError(_REMOTE_URL_MISSING)
    return terms


def summary_keys_for(text: str) -> tuple[str, ...]:
    """The summary keys of a ``--reward`` value: a plain reward's `RewardSpec.summary_keys`;
    for a sum, each term's unweighted values (key ``name``) and each term's own summary keys
    (``name/key``), as `ddpo.rewards.combine.WeightedSumReward` reports them.

    Raises:
        ValueError: as `parse_reward_spec`.
    """
    terms = parse_reward_spec(text)
    if _is_plain(terms):
        return REWARD_SPECS[terms[0][0]].summary_keys
    names = tuple(name for name, _ in terms)
    nested = tuple(f"{n}/{k}" for n in names for k in REWARD_SPECS[n].summary_keys)
    return names + nested


def _is_plain(terms: list[tuple[RewardName, float]]) -> bool:
    return len(terms) == 1 and terms[0][1] == 1.0


def build_reward_fn(
    name: str, options: RewardOptions | None = None, *, differentiable: bool = False
) -> RewardFn:
    """The reward function of a ``--reward`` value: one name (``alignment``, ``pickscore``, ...)
    gives that reward; a weighted sum (``pickscore:1.0,ocr:0.5``) a
    `ddpo.rewards.combine.WeightedSumReward` of them (one term of weight 1 is the plain reward).
    With ``differentiable``, each reward's differentiable form (`DIFFERENTIABLE_REWARDS`): float
    images in, rewards with their gradients out (the sum stays differentiable). Every image
    reward comes wrapped in `ddpo.rewards.video.per_frame` (videos scored frame by frame,
    images passed through; see the module docstring).

    Raises:
        ValueError: for a bad value or option (`check_reward_options`, ``video_frames``,
            ``video_reduce``), or, with ``differentiable``, naming the rewards without a
            differentiable form; before anything loads.
        ImportError: naming the extra to install when a reward's packages are missing.
    """
    options = options or RewardOptions()
    terms = check_reward_options(name, options)
    if differentiable:
        missing = [n for n, _ in terms if n not in DIFFERENTIABLE_REWARDS]
        if missing:
            raise ValueError(
                f"reward {name!r}: {missing} have no differentiable form (differentiable=True); "
                f"the differentiable rewards are {DIFFERENTIABLE_REWARDS}"
            )

    from ddpo.rewards.video import check_frame_choice, check_reduction, per_frame

    frames = check_frame_choice(options.video_frames, argument="video_frames")
    reduce = check_reduction(options.video_reduce, argument="video_reduce")

    def build(reward: RewardName) -> RewardFn:
        spec = REWARD_SPECS[reward]
        builder = spec.differentiable if differentiable else spec.build
        assert builder is not None  # checked above
        built = builder(options)
        return built if spec.video else per_frame(built, frames=frames, reduce=reduce)

    if _is_plain(terms):
        return build(terms[0][0])
    from ddpo.rewards.combine import WeightedSumReward

    # The cheap checks first: a reward server is asked before any reward model loads.
    built = {n: build(n) for n, _ in sorted(terms, key=_loads_a_model)}
    return WeightedSumReward({n: (built[n], w) for n, w in terms})


def _loads_a_model(term: tuple[str, float]) -> bool:
    return term[0] != "remote"


# ---------------------------------------------------------------------------------------------
# Where the model-based rewards' files come from, checked before anything loads

_CLIP_MODEL_FILES: tuple[tuple[str, ...], ...] = (
    ("config.json",),
    ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"),
)
_CLIP_TOKENIZER_FILES: tuple[tuple[str, ...], ...] = (("tokenizer.json", "vocab.json"),)


class RewardWeights(NamedTuple):
    """The files a model-based reward loads from one source (a hub id or a local path)."""

    reward: RewardName
    flag: str
    """How a ``ddpo train`` user passes a local copy instead, e.g. ``--reward_model hps PATH``."""
    source: str
    files: tuple[tuple[str, ...], ...]
    """Every entry: one of these file names must be there."""
    single_file: bool = False
    """The source may be the first entry's file itself (the other entries lie beside it)."""


def reward_weights(text: str, options: RewardOptions) -> list[RewardWeights]:
    """The sources of the weights, tokenizers and processors of the rewards of a ``--reward``
    value, with the files each must hold (the rewards without model files have none).

    Raises:
        ValueError: as `parse_reward_spec`.
    """
    from ddpo.rewards.clip_score import DEFAULT_CLIP_SCORE_MODEL
    from ddpo.rewards.hps import DEFAULT_HPS_FILENAME, DEFAULT_HPS_REPO, DEFAULT_HPS_TOKENIZER
    from ddpo.rewards.image_reward import (
        CHECKPOINT_FILENAME,
        DEFAULT_IMAGE_REWARD_REPO,
        MED_CONFIG_FILENAME,
        image_reward,
    )
    from ddpo.rewards.pickscore import DEFAULT_PICKSCORE_MODEL, DEFAULT_PICKSCORE_PROCESSOR

    Files = tuple[tuple[str, ...], ...]
    # reward -> its model keys: (key of RewardOptions.models, default source, files, single file)
    keyed: dict[str, list[tuple[str, str, Files, bool]]] = {
        "clip_score": [
            (
                "clip_score",
                DEFAULT_CLIP_SCORE_MODEL,
                _CLIP_MODEL_FILES + _CLIP_TOKENIZER_FILES,
                False,
            )
        ],
        "pickscore": [
            ("pickscore", DEFAULT_PICKSCORE_MODEL, _CLIP_MODEL_FILES, False),
            ("pickscore_processor", DEFAULT_PICKSCORE_PROCESSOR, _CLIP_TOKENIZER_FILES, False),
        ],
        "hps": [
            ("hps", DEFAULT_HPS_REPO, ((DEFAULT_HPS_FILENAME,),), True),
            ("hps_tokenizer", DEFAULT_HPS_TOKENIZER, (("vocab.json",), ("merges.txt",)), False),
        ],
        "image_reward": [
            (
                "image_reward",
                DEFAULT_IMAGE_REWARD_REPO,
                ((CHECKPOINT_FILENAME,), (MED_CONFIG_FILENAME,)),
                True,
            ),
            (
                "image_reward_tokenizer",
                inspect.signature(image_reward).parameters["tokenizer"].default,
                (("vocab.txt",),),
                False,
            ),
        ],
    }
    found: list[RewardWeights] = []
    for name, _ in parse_reward_spec(text):
        if name == "aesthetic":
            clip_flag, mlp_flag = "--aesthetic_clip_model PATH", "--aesthetic_mlp_weights PATH"
            mlp_files = (("aesthetic-model.pth",),)
            found.append(
                RewardWeights(name, clip_flag, options.aesthetic_clip_model, _CLIP_MODEL_FILES)
            )
            found.append(
                RewardWeights(name, mlp_flag, options.aesthetic_mlp_weights, mlp_files, True)
            )
        if name == "temporal_consistency" and name in options.models:  # else pixel features
            flag = f"--reward_model {name} PATH"
            found.append(RewardWeights(name, flag, options.models[name], _CLIP_MODEL_FILES))
        for key, default, files, single_file in keyed.get(name, []):
            source = options.models.get(key, default)
            flag = f"--reward_model {key} PATH"
            found.append(RewardWeights(name, flag, source, files, single_file))
    return found


def check_reward_weights(text: str, options: RewardOptions) -> None:
    """Check that the files of every model-based reward of ``text`` can be had, without loading
    them: a local folder (or file) holding them, or a hub repository whose files are in the
    Hugging Face cache or, unless ``HF_HUB_OFFLINE=1``, on the Hub (asked for the files only).

    Raises:
        ValueError: for the first source that cannot provide its files, naming the reward, the
            source, why, and the flag that takes a local copy.
    """
    for weights in reward_weights(text, options):
        problem = _unavailable(weights, options.token)
        if problem is not None:
            raise ValueError(
                f"reward {weights.reward!r}: {weights.source!r} {problem}; pass a local copy "
                f"with {weights.flag}"
            )


def _unavailable(weights: RewardWeights, token: str | None) -> str | None:
    """Why ``weights.source`` cannot provide its files, or None when it can."""
    from huggingface_hub import constants, file_exists, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    path = Path(weights.source).expanduser()
    if path.is_file():
        if not weights.single_file:
            return "is a file, not a folder"
        absent = [g for g in weights.files[1:] if not any((path.parent / f).is_file() for f in g)]
        return f"has no {' or '.join(absent[0])} beside it" if absent else None
    if path.is_dir():
        absent = [g for g in weights.files if not any((path / f).is_file() for f in g)]
        return f"is a folder without {' or '.join(absent[0])}" if absent else None
    offline_env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    offline = offline_env or constants.is_offline_mode()
    for group in weights.files:
        try:
            if any(isinstance(try_to_load_from_cache(weights.source, f), str) for f in group):
                continue
        except HFValidationError:
            return "is no local file or folder (and not a hub id)"
        where = f"is not a local path, and its {' or '.join(group)} is not in the Hugging Face "
        where += f"cache ({constants.HF_HUB_CACHE})"
        if offline:
            return f"{where} while HF_HUB_OFFLINE is set"
        try:
            if not any(file_exists(weights.source, f, token=token) for f in group):
                return f"is not a local path, and the hub repository has no {' or '.join(group)}"
        except Exception as err:  # unreachable, refused, gated: the load would fail the same way
            reason = " ".join(f"{type(err).__name__}: {err}".split())
            return f"{where} nor could the Hugging Face Hub be asked for it ({reason})"
    return None
