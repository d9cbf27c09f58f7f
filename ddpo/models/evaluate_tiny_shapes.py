"""Measure the tiny shapes model: held-out alignment accuracy, and a sample grid PNG.

Uses stock diffusers (``StableDiffusionPipeline`` for ``ddpo-tiny-shapes``, DDIM;
``StableDiffusion3Pipeline`` for ``ddpo-tiny-shapes-flow``, the flow ODE) and the programmatic
alignment reward::

    python -m ddpo.models.evaluate_tiny_shapes --grid docs/tiny_shapes_samples.png
    python -m ddpo.models.evaluate_tiny_shapes --model ddpo-tiny-shapes-flow --steps 20

``--sampler policy`` draws the images with the DDPO policy's own sampler instead (the rollout a
run trains: DDIM at ``--eta`` for ``ddpo-tiny-shapes``, Flow-GRPO's SDE at noise level 0.7 for
``ddpo-tiny-shapes-flow``).

prints a JSON report: accuracy on held-out prompts (every named attribute right), per-attribute
accuracies, the same images scored against shuffled prompts (what a model that ignores its
prompt would get), and the analytic chance level.
"""

import argparse
import inspect
import json
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddpo.adapters.sd3.text import sd3_max_sequence_length
from ddpo.data.shapes import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, Metadata, all_prompts
from ddpo.rewards.alignment import alignment_scores


def load_pipeline(path: str | Path | None = None) -> Any:
    """Load a tiny shapes model with stock diffusers (the pipeline class its folder names),
    float32, CPU: ``None`` or ``"ddpo-tiny-shapes"`` (packaged), ``"ddpo-tiny-shapes-flow"``
    (packaged) or a folder."""
    from diffusers import DiffusionPipeline

    from ddpo.adapters import resolve_pretrained

    folder = resolve_pretrained(path or "ddpo-tiny-shapes")
    pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(
    pipe: Any,
    prompts: Sequence[str],
    *,
    seed: int = 0,
    num_inference_steps: int = 20,
    guidance_scale: float = 3.0,
    eta: float = 0.0,
    batch_size: int = 32,
) -> Tensor:
    """Images ``(len(prompts), 3, 64, 64)`` in [0, 1] for ``prompts``, deterministic from seed.

    ``eta`` is DDIM's (an SD pipeline's); an SD3 pipeline integrates the flow ODE, with its T5
    prompt padded to the T5 tokenizer's ``model_max_length`` (at most diffusers' 256)."""
    if not prompts:
        raise ValueError("prompts must not be empty")
    takes = inspect.signature(pipe.__call__).parameters
    extra: dict[str, Any] = {"eta": eta} if "eta" in takes else {}
    if "max_sequence_length" in takes and getattr(pipe, "tokenizer_3", None) is not None:
        extra = {"max_sequence_length": sd3_max_sequence_length(pipe.tokenizer_3)}
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    for start in range(0, len(prompts), batch_size):
        out = pipe(
            list(prompts[start : start + batch_size]),
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            **extra,
            output_type="pt",
        )
        chunks.append(out.images.float().clamp(0, 1))
    return torch.cat(chunks)


def heldout_prompts(n: int, *, seed: int = 0) -> list[tuple[str, Metadata]]:
    """``n`` held-out prompts (cycling through a seeded permutation of the split)."""
    pool = all_prompts("heldout")
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
    return [pool[order[i % len(pool)]] for i in range(n)]


def chance_accuracy(metadata: Sequence[Metadata]) -> float:
    """Mean probability of a fully correct image when each attribute is drawn uniformly."""
    total = 0.0
    for meta in metadata:
        p = 1.0 / (len(COLOURS) * len(SHAPES))
        if meta["position"] is not None:
            p /= len(POSITIONS)
        if meta["background"] is not None:
            p /= len(BACKGROUNDS) - 1
        total += p
    return total / len(metadata)


def evaluate(
    pipe: Any, *, n: int = 96, seed: int = 0, **sampling: Any
) -> tuple[dict[str, float], Tensor, list[str]]:
    """Held-out alignment metrics of ``pipe``; also returns the images and their prompts."""
    pairs = heldout_prompts(n, seed=seed)
    prompts = [p for p, _ in pairs]
    metas = [m for _, m in pairs]
    images = generate(pipe, prompts, seed=seed, **sampling)
    scores = alignment_scores(images, metas)
    shuffled = [metas[(i + 1) % n] for i in range(n)]
    shuffled_scores = alignment_scores(images, shuffled)
    report = {
        "n": float(n),
        "accuracy": float(scores.correct.float().mean()),
        "colour_shape_accuracy": float(
            (scores.colour_correct & scores.shape_correct).float().mean()
        ),
        "colour_accuracy": float(scores.colour_correct.float().mean()),
        "shape_accuracy": float(scores.shape_correct.float().mean()),
        "position_accuracy": float(scores.position_correct.float().mean()),
        "background_accuracy": float(scores.background_correct.float().mean()),
        "reward_mean": float(scores.reward.mean()),
        "shuffled_accuracy": float(shuffled_scores.correct.float().mean()),
        "shuffled_reward_mean": float(shuffled_scores.reward.mean()),
        "chance_accuracy": chance_accuracy(metas),
        "chance_colour_shape_accuracy": 1.0 / (len(COLOURS) * len(SHAPES)),
    }
    return report, images, prompts


def save_grid(
    images: Tensor, prompts: Sequence[str], path: str | Path, *, columns: int = 8, scale: int = 2
) -> Path:
    """Write a PNG grid of ``images`` with each caption under its image."""
    from PIL import Image, ImageDraw

    n, _, h, w = images.shape
    rows = -(-n // columns)
    cell_w, cell_h, text_h = w * scale, h * scale, 38
    grid = Image.new("RGB", (columns * cell_w, rows * (cell_h + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        x, y = (i % columns) * cell_w, (i // columns) * (cell_h + text_h)
        tile = Image.fromarray(pixels[i]).resize((cell_w, cell_h), Image.Resampling.NEAREST)
        grid.paste(tile, (x, y))
        text = "\n".join(textwrap.wrap(prompts[i].removeprefix("a ").removeprefix("an "), 24))
        draw.multiline_text((x + 2, y + cell_h + 1), text, fill=(0, 0, 0), spacing=0)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out, optimize=True)
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: print the held-out report as JSON; optionally write a sample grid."""
    parser = argparse.ArgumentParser(description="Evaluate the tiny shapes model.")
    parser.add_argument(
        "--model",
        default=None,
        help="ddpo-tiny-shapes (default), ddpo-tiny-shapes-flow, or a pipeline folder",
    )
    parser.add_argument("--n", type=int, default=96, help="number of held-out prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--eta", type=float, default=0.0)
    parser.add_argument(
        "--sampler",
        choices=("stock", "policy"),
        default="stock",
        help="stock diffusers' deterministic sampler, or the DDPO policy's rollout",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grid", default=None, help="write a sample grid PNG here")
    parser.add_argument("--grid-size", type=int, default=32, help="images in the grid")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.sampler == "policy":
        from ddpo.adapters.families import load_policy

        pipe = load_policy(args.model or "ddpo-tiny-shapes")
    else:
        pipe = load_pipeline(args.model)
    report, images, prompts = evaluate(
        pipe,
        n=args.n,
        seed=args.seed,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        eta=args.eta,
    )
    print(json.dumps(report, indent=2))
    if args.grid is not None:
        k = min(args.grid_size, len(prompts))
        print(f"grid: {save_grid(images[:k], prompts[:k], args.grid)}")


if __name__ == "__main__":
    main()
