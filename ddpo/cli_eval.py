"""``ddpo eval``: score a model's images of held-out prompts, and compare it with its base
(parsed by :mod:`ddpo.cli`; the work is `ddpo.evaluation.evaluate`).

``ddpo eval --model logs/run/final --base ddpo-tiny-shapes`` draws the same images (same prompts,
same initial noise) from both models, scores them with the prompt set's reward, and prints each
metric's mean over prompts with its 95 % interval, the paired difference, and whether the
difference is larger than its interval. It writes ``report.json`` and ``grid.png`` (the first
images of each model, captioned with prompt and reward) into ``--out``.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["DEFAULT_REWARDS", "EvalArgs", "check_eval_values", "load_evaluation", "run_eval"]

#: The reward each named prompt set is scored with when ``--reward`` is not given.
DEFAULT_REWARDS: dict[str, str] = {"shapes_heldout": "alignment", "text_rendering_heldout": "ocr"}


@dataclass
class EvalArgs:
    """Score a model's images of held-out prompts with rewards, each reward's mean over prompts
    with a 95 % confidence interval; with ``--base``, compare the model with another one (its
    base) prompt by prompt on the same initial noise."""

    model: str
    """Model folder (e.g. ``<output_dir>/final``), built-in name or hub id, of any family
    ``ddpo train`` trains (read from its ``model_index.json``)."""
    base: str | None = None
    """Another model (e.g. the one the run fine-tuned) evaluated on the same prompts and noise;
    the report says whether each difference is larger than its interval."""
    prompts: str = "shapes_heldout"
    """A named prompt set (``shapes_heldout``: the tiny shapes models' held-out captions;
    ``text_rendering_heldout``: quoted words for the ``ocr`` reward) or a text file with one
    prompt per line."""
    num_prompts: int | None = None
    """Only the first prompts (a named set: in its order shuffled by ``--seed``); None: all."""
    images_per_prompt: int = 1
    """Images drawn per prompt (averaged per prompt)."""
    reward: list[str] = field(default_factory=list)
    """Rewards, each a name or a weighted sum as ``ddpo train --reward`` takes it (default: the
    named set's reward, ``alignment`` or ``ocr``)."""
    sampler: Literal["deterministic", "policy"] = "deterministic"
    """``deterministic``: the family's deterministic sampler (DDIM at eta 0, the flow ODE);
    ``policy``: the stochastic sampler a run trains."""
    num_inference_steps: int = 20
    """Sampling steps."""
    guidance_scale: float = 5.0
    """Guidance weight (1: none)."""
    seed: int = 0
    """Seeds the initial noise of every image (and a named set's order)."""
    batch_size: int = 8
    """Images per sampling call."""
    out: str = "eval"
    """Folder for ``report.json`` and ``grid.png`` (created if needed)."""
    grid_images: int = 16
    """Images of each model in ``grid.png`` (0: no grid)."""
    verbose: bool = False
    """Show the libraries' loading progress bars and messages."""

    def __post_init__(self) -> None:
        check_eval_values(self)


def check_eval_values(args: EvalArgs) -> None:
    """Check the values of ``args``; cheap, nothing loads.

    Raises:
        ValueError: naming the flag and its value.
    """
    from ddpo.evaluation import EVAL_PROMPT_SETS, eval_prompts

    for name in ("images_per_prompt", "num_inference_steps", "batch_size"):
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if args.num_prompts is not None and args.num_prompts < 1:
        raise ValueError(f"num_prompts must be positive or None, got {args.num_prompts}")
    if args.grid_images < 0:
        raise ValueError(f"grid_images must be >= 0, got {args.grid_images}")
    if not math.isfinite(args.guidance_scale) or args.guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {args.guidance_scale}")
    if args.prompts not in EVAL_PROMPT_SETS and not Path(args.prompts).is_file():
        raise ValueError(
            f"prompts must be one of {EVAL_PROMPT_SETS} or a text file, got {args.prompts!r} "
            "(no such file)"
        )
    if args.prompts in EVAL_PROMPT_SETS and args.num_prompts is not None:
        eval_prompts(args.prompts, args.num_prompts)  # ValueError naming the count and the set
    if not args.reward and args.prompts not in DEFAULT_REWARDS:
        raise ValueError(f"reward: name at least one reward for the prompt file {args.prompts!r}")


def _prompts(args: EvalArgs) -> str | list[str]:
    if args.prompts in DEFAULT_REWARDS:
        return args.prompts
    lines = Path(args.prompts).read_text().splitlines()
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ValueError(f"prompts file {args.prompts!r} has no prompt")
    return prompts


@dataclass
class _Loaded:
    rewards: dict[str, Any]
    policies: dict[str, Any]
    prompts: str | list[str]


def load_evaluation(args: EvalArgs) -> _Loaded:
    """Check the arguments, build the rewards, then load the model(s).

    Everything this raises is a bad flag, path or setting (`ddpo.cli.main` reports it in a line).
    """
    from ddpo.cli_checks import check_writable_folder
    from ddpo.rewards.registry import build_reward_fn

    check_eval_values(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out {str(out)!r} is a file, not a folder; choose another --out")
    check_writable_folder(out, flag="--out")
    if (out / "report.json").exists():
        raise FileExistsError(
            f"out {str(out)!r} already holds a report.json; choose another --out (nothing is "
            "overwritten)"
        )
    prompts = _prompts(args)
    names = args.reward or [DEFAULT_REWARDS[args.prompts]]
    rewards = {name: build_reward_fn(name) for name in names}
    from ddpo.adapters import load_policy  # diffusers: after the cheap checks

    policies = {"model": load_policy(args.model, use_lora=True)}
    if args.base is not None:
        policies["base"] = load_policy(args.base, use_lora=True)
    for policy in policies.values():
        if hasattr(policy, "set_progress_bar_config"):
            policy.set_progress_bar_config(disable=True)
    return _Loaded(rewards, policies, prompts)


def run_eval(args: EvalArgs, loaded: _Loaded | None = None) -> dict[str, Any]:
    """Run ``ddpo eval``: evaluate the model (and the base), write ``report.json`` and
    ``grid.png`` into ``--out``, print the table; returns the report's JSON."""
    from ddpo.evaluation import compare, evaluate

    loaded = loaded or load_evaluation(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        role: evaluate(
            policy,
            loaded.prompts,
            loaded.rewards,
            num_prompts=args.num_prompts,
            images_per_prompt=args.images_per_prompt,
            num_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            sampler=args.sampler,
            seed=args.seed,
            batch_size=args.batch_size,
            keep_images=args.grid_images,
        )
        for role, policy in loaded.policies.items()
    }
    document: dict[str, Any] = {
        role: {"name": getattr(args, role), **result.report.to_json()}
        for role, result in results.items()
    }
    if "base" in results:
        differences = compare(results["model"].report, results["base"].report)
        document["difference"] = {name: d.to_json() for name, d in differences.items()}
    (out / "report.json").write_text(json.dumps(document, indent=2) + "\n")
    if args.grid_images:
        _write_grid(results, out / "grid.png")
    print(format_table(document))
    return document


def _write_grid(results: dict[str, Any], path: Path) -> None:
    import torch

    from ddpo.image_grid import image_grid

    images, captions = [], []
    for role, result in results.items():
        images.append(result.images)
        captions += [
            f"{role}: {p} ({r:.3f})" for p, r in zip(result.prompts, result.rewards, strict=True)
        ]
    grid = torch.cat(images)
    # a row per role: each prompt's image side by side, or (videos) a strip per row
    columns = max(1, min(8, len(results["model"].prompts))) if grid.ndim == 4 else 1
    image_grid(grid, captions, columns=columns).save(path)


def format_table(document: dict[str, Any]) -> str:
    """The report as a text table: each metric's mean [95 % interval], and with a base, its
    mean, the difference and whether the difference is larger than its interval."""

    def cell(value: dict[str, Any]) -> str:
        return f"{value['mean']:.4f} [{value['low']:.4f}, {value['high']:.4f}]"

    model = document["model"]
    settings = model["settings"]
    lines = [
        f"{settings['num_prompts']} prompts ({settings['prompt_set'] or 'from a file'}), "
        f"{settings['images_per_prompt']} image(s) each, {settings['sampler']} sampler, "
        f"{settings['num_steps']} steps, guidance {settings['guidance_scale']}, seed "
        f"{settings['seed']}; means over prompts with 95 % intervals"
    ]
    for name, value in model["metrics"].items():
        row = f"  {name}: {model['name']} {cell(value)}"
        if "difference" in document and name in document["difference"]:
            diff = document["difference"][name]
            verdict = "larger than its interval" if diff["significant"] else "within its interval"
            row += (
                f" | {document['base']['name']} {cell(document['base']['metrics'][name])}"
                f" | difference {diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}],"
                f" {verdict}"
            )
        lines.append(row)
    return "\n".join(lines)
