"""`evaluate`: score a policy's images of a prompt set with any rewards, per prompt, with 95 %
confidence intervals; `compare`: a fine-tuned evaluation against its base, prompt by prompt.

Image ``j`` of prompt ``i`` starts from the initial noise of its own generator, seeded by
``(seed, i, j)``: two evaluations with the same arguments (a fine-tuned model and its base) draw
each image from the same noise, so their per-prompt values pair up. The samplers:

- ``"deterministic"``: the family's deterministic sampler (DDIM at ``eta=0``, the flow ODE), the
  policy's optional ``deterministic_images`` (`ddpo.policy.PolicyOptions`); the images depend
  only on the model and the initial noise;
- ``"policy"``: the policy's own sampler, :meth:`~ddpo.policy.DiffusionPolicy.rollout` (the
  stochastic sampler a run trains), its step noise seeded by ``(seed, batch)``, so it also
  depends on ``batch_size``.

A reward's rewards are its metric under its name; each per-image number in a dict it returns as
metadata (the ``alignment`` reward's ``accuracy``, ...) is one more, ``<name>/<key>``.
"""

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from ddpo._seeds import derive_seed
from ddpo._typing import no_type_check
from ddpo.evaluation.prompt_sets import eval_prompts
from ddpo.evaluation.stats import Difference, Interval, mean_interval, paired_difference
from ddpo.policy import policy_option
from ddpo.rewards.contract import RewardFunction, check_rewards

__all__ = ["EvalReport", "EvalResult", "Sampler", "compare", "evaluate"]

Sampler = Literal["deterministic", "policy"]
SAMPLERS: tuple[Sampler, ...] = get_args(Sampler)
_STEP_NOISE_STREAM = 1 << 30  # a key no prompt index reaches: the rollout's step noise


@dataclass
class EvalReport:
    """What `evaluate` measured: each metric's mean over prompts with its 95 % interval
    (``metrics``), each prompt's value (``per_prompt``, in the order of ``prompts``) and the
    settings that drew the images."""

    prompts: list[str]
    metrics: dict[str, Interval]
    per_prompt: dict[str, list[float]]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "metrics": {name: value.to_json() for name, value in self.metrics.items()},
            "prompts": self.prompts,
            "per_prompt": self.per_prompt,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "EvalReport":
        return cls(
            prompts=list(data["prompts"]),
            metrics={k: Interval.from_json(v) for k, v in data["metrics"].items()},
            per_prompt={k: [float(x) for x in v] for k, v in data["per_prompt"].items()},
            settings=dict(data.get("settings", {})),
        )

    def save(self, path: str | Path) -> Path:
        """Write the report as JSON to ``path``; returns the path."""
        target = Path(path)
        target.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return target

    @classmethod
    def load(cls, path: str | Path) -> "EvalReport":
        return cls.from_json(json.loads(Path(path).read_text()))


@dataclass
class EvalResult:
    """`evaluate`'s report, and the first images it drew (for a grid) with their prompts and
    first reward's values."""

    report: EvalReport
    images: Tensor
    prompts: list[str]
    rewards: list[float]


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _resolve_prompts(
    prompts: str | Sequence[str | tuple[str, Any]], num_prompts: int | None, seed: int
) -> tuple[list[tuple[str, Any]], str | None]:
    if isinstance(prompts, str):
        return eval_prompts(prompts, num_prompts, seed=seed), prompts
    pairs = [(p, {}) if isinstance(p, str) else (str(p[0]), p[1]) for p in prompts]
    if not pairs:
        raise ValueError("prompts must not be empty")
    if num_prompts is not None:
        _check_positive("num_prompts", num_prompts)
        pairs = pairs[:num_prompts]
    return pairs, None


def _per_image_numbers(info: Any, batch: int) -> dict[str, list[float]]:
    """The per-image numbers of a reward's metadata dict (one real per image)."""
    found: dict[str, list[float]] = {}
    if not isinstance(info, Mapping):
        return found
    for key, value in info.items():
        if isinstance(value, Tensor):
            if value.dim() != 1 or value.numel() != batch or value.is_complex():
                continue
            values = [float(v) for v in value.detach().cpu().double()]
        elif isinstance(value, list | tuple) and len(value) == batch:
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
                continue
            values = [float(v) for v in value]
        else:
            continue
        if all(math.isfinite(v) for v in values):
            found[str(key)] = values
    return found


@no_type_check  # it checks its arguments itself, naming each
@torch.no_grad()
def evaluate(
    policy: Any,
    prompts: str | Sequence[str | tuple[str, Any]],
    rewards: Mapping[str, RewardFunction],
    *,
    num_prompts: int | None = None,
    images_per_prompt: int = 1,
    num_steps: int = 20,
    guidance_scale: float = 5.0,
    sampler: Sampler = "deterministic",
    negative_prompt: str = "",
    seed: int = 0,
    batch_size: int = 8,
    keep_images: int = 0,
) -> EvalResult:
    """Draw ``images_per_prompt`` images of each prompt with ``policy`` and score them with each
    of ``rewards``.

    Args:
        policy: a `ddpo.policy.DiffusionPolicy` (a ``DefaultDDPO...Pipeline``).
        prompts: a named set of `ddpo.evaluation.EVAL_PROMPT_SETS` (its metadata reaches the
            rewards), or prompts (strings, or ``(prompt, metadata)`` pairs).
        rewards: reward functions by name (`ddpo.rewards.contract`).
        num_prompts: the first prompts only (a named set: in its seeded order).
        sampler: ``"deterministic"`` or ``"policy"`` (see the module docstring).
        seed: seeds the initial noise (and a named set's order).
        batch_size: images per sampling call.
        keep_images: how many of the first images `EvalResult.images` keeps (for a grid).

    Returns:
        The report (each metric's mean over prompts with its 95 % interval) and the kept images.

    Raises:
        ValueError: naming the argument and its value, before any image is drawn.
    """
    if not rewards:
        raise ValueError("rewards must name at least one reward function")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    for name, value in (
        ("images_per_prompt", images_per_prompt),
        ("num_steps", num_steps),
        ("batch_size", batch_size),
    ):
        _check_positive(name, value)
    if isinstance(keep_images, bool) or not isinstance(keep_images, int) or keep_images < 0:
        raise ValueError(f"keep_images must be an int >= 0, got {keep_images!r}")
    if not (isinstance(guidance_scale, int | float) and math.isfinite(guidance_scale)):
        raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
    pairs, set_name = _resolve_prompts(prompts, num_prompts, seed)
    policy.check_num_steps(num_steps)
    deterministic = policy_option(policy, "deterministic_images")
    if sampler == "deterministic" and deterministic is None:
        raise ValueError(
            f"sampler='deterministic': {type(policy).__name__} has no deterministic sampler "
            "(deterministic_images); use sampler='policy'"
        )

    items = [(i, j) for i in range(len(pairs)) for j in range(images_per_prompt)]
    sums: dict[str, list[float]] = {}
    counts: dict[str, int] = {}  # images each column was reported for
    kept: list[Tensor] = []
    kept_rewards: list[float] = []
    first = next(iter(rewards))
    for batch_index, start in enumerate(range(0, len(items), batch_size)):
        chunk = items[start : start + batch_size]
        texts = [pairs[i][0] for i, _ in chunk]
        metadata = tuple(pairs[i][1] for i, _ in chunk)
        generators = [torch.Generator().manual_seed(derive_seed(seed, i, j)) for i, j in chunk]
        if sampler == "deterministic":
            images = deterministic(
                texts,
                negative_prompt=negative_prompt,
                num_steps=num_steps,
                guidance_scale=float(guidance_scale),
                generators=generators,
            )
        else:
            step_noise = derive_seed(seed, _STEP_NOISE_STREAM, batch_index)
            out = policy.rollout(
                policy.encode(texts, negative_prompt),
                num_steps=num_steps,
                guidance_scale=float(guidance_scale),
                generator=torch.Generator().manual_seed(step_noise),
                initial_noise_generators=generators,
            )
            images = out.images
        images = images.detach().float().cpu()
        for name, reward_fn in rewards.items():
            result = reward_fn(images, tuple(texts), metadata)
            values, info = check_rewards(result, reward_fn, batch_size=len(chunk), offset=start)
            columns = {name: values.tolist()}
            columns |= {f"{name}/{k}": v for k, v in _per_image_numbers(info, len(chunk)).items()}
            for column, per_image in columns.items():
                sums.setdefault(column, [0.0] * len(pairs))
                counts[column] = counts.get(column, 0) + len(chunk)
                for (i, _), value in zip(chunk, per_image, strict=True):
                    sums[column][i] += value
            if name == first and len(kept) < keep_images:
                room = keep_images - len(kept)
                kept.extend(images[:room])
                kept_rewards.extend(values.tolist()[:room])
    # A metadata number some batches lacked would be averaged over too few images: dropped.
    complete = {k: total for k, total in sums.items() if counts[k] == len(items)}
    per_prompt = {k: [v / images_per_prompt for v in total] for k, total in complete.items()}
    report = EvalReport(
        prompts=[p for p, _ in pairs],
        metrics={name: mean_interval(values) for name, values in per_prompt.items()},
        per_prompt=per_prompt,
        settings={
            "prompt_set": set_name,
            "num_prompts": len(pairs),
            "images_per_prompt": images_per_prompt,
            "num_steps": num_steps,
            "guidance_scale": float(guidance_scale),
            "sampler": sampler,
            "negative_prompt": negative_prompt,
            "seed": seed,
            "batch_size": batch_size,
            "rewards": list(rewards),
        },
    )
    kept_prompts = [pairs[i][0] for i, _ in items[: len(kept)]]
    empty = torch.empty(0, 3, 1, 1)
    return EvalResult(report, torch.stack(kept) if kept else empty, kept_prompts, kept_rewards)


def compare(report: EvalReport, base: EvalReport) -> dict[str, Difference]:
    """Each metric of both reports, ``report - base`` prompt by prompt (a paired t interval),
    with whether the difference is larger than its interval (`Difference.significant`).

    Raises:
        ValueError: if the reports scored other prompts, or were drawn with other settings
            than the model (the pairing would mean nothing).
    """
    if report.prompts != base.prompts:
        raise ValueError("compare needs two evaluations of the same prompts in the same order")
    keys = ("images_per_prompt", "num_steps", "guidance_scale", "sampler", "seed", "batch_size")
    changed = {k: (report.settings.get(k), base.settings.get(k)) for k in keys}
    changed = {k: v for k, v in changed.items() if v[0] != v[1]}
    if changed:
        raise ValueError(f"compare needs evaluations with the same settings; differing: {changed}")
    shared = [name for name in report.per_prompt if name in base.per_prompt]
    return {n: paired_difference(report.per_prompt[n], base.per_prompt[n]) for n in shared}
