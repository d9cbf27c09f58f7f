"""Learning benchmark: does training raise the held-out reward, against samples and seconds?

Runs a ``ddpo train`` preset once per seed: ``default`` (DDPO on the packaged
``ddpo-tiny-shapes``, whole UNet) or ``flow_grpo_tiny`` (Flow-GRPO on the packaged
``ddpo-tiny-shapes-flow``, LoRA; ``--flag=--sde_window_size=2`` for its stochastic window), both
with the ``alignment`` reward on a pool of 2 training prompts drawn by the seed, each in its
own process with one thread (``nft_tiny``, ``awm_tiny``, ``dpo_tiny`` and ``draft_tiny``: the
other algorithms on the flow run; ``mixgrpo_tiny``: Flow-GRPO with MixGRPO's sliding window),
with held-out evaluation during training (``DDPOConfig.eval_freq``): the ``shapes_heldout``
captions, which the run never trains on, scored with the run's reward (``eval/reward``, and the
share of images with every attribute right, ``eval/reward/accuracy``), each with a 95 % interval
over prompts. A run that trains on the alignment reward's differentiable form (``draft_tiny``)
is scored with that form, whose metadata also holds the exact alignment reward of the same
images: it is summarised too (``eval/reward/exact``; the plot shows it in place of
``eval/reward``), and the training pool's exact reward is kept beside the trained one. The
policy is also evaluated before its first epoch. Nothing is chosen per seed: every seed draws
its own training pool and its own held-out prompts (in an order seeded by it).

Writes ``learning.json`` (every evaluation of every seed: epoch, samples drawn, training
seconds, the means and intervals), ``learning.png`` (held-out accuracy and reward against
samples drawn and against training seconds, a line per seed) and prints a table: per seed the
change from before training to the end, and across seeds the mean change with a t interval over
the seeds (does the change exceed the seed-to-seed spread?).

    python benchmarks/bench_learning.py --seeds 0 1 2 --out benchmarks/out/learning
    python benchmarks/bench_learning.py --preset flow_grpo_tiny --out benchmarks/out/flow
    python benchmarks/bench_learning.py --preset flow_grpo_tiny --flag=--sde_window_size=2 \
        --out benchmarks/out/flow_window

Training seconds are the epochs' wall time less their evaluation, with one thread per run:
on a machine whose cores are shared they are an upper bound of CPU seconds.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ddpo.evaluation import mean_interval

METRICS = ("eval/reward", "eval/reward/accuracy")
EXACT = "eval/reward/exact"
"""The exact score beside a differentiable reward's (the alignment reward's differentiable form
reports it as metadata, `ddpo.rewards.alignment.differentiable_alignment_reward_fn`)."""


def metrics_of(runs: list[dict[str, Any]]) -> tuple[str, ...]:
    """`METRICS`, and `EXACT` where every evaluation of every run reports it."""
    exact = all(EXACT in point for run in runs for point in run["points"])
    return (*METRICS, EXACT) if exact else METRICS


def _flags(args: argparse.Namespace, seed: int) -> list[str]:
    return [
        f"--preset={args.preset}",
        *args.flag,
        f"--ddpo_config.seed={seed}",
        f"--ddpo_config.output_dir={Path(args.out) / f'seed{seed}'}",
        f"--ddpo_config.num_epochs={args.epochs}",
        f"--ddpo_config.eval_freq={args.eval_every}",
        f"--ddpo_config.eval_num_prompts={args.eval_prompts}",
        f"--ddpo_config.eval_num_steps={args.eval_steps}",
        "--ddpo_config.save_freq=0",
        "--ddpo_config.log_with=None",
    ]


def worker(args: argparse.Namespace) -> None:
    """One seed's run (in its own process): evaluate, train with evaluation, write points."""
    import torch

    torch.set_num_threads(1)
    from ddpo.cli import parse_train_args
    from ddpo.cli_train import setup_train, train_and_report

    seed = args.worker
    setup = setup_train(parse_train_args(_flags(args, seed)))
    trainer = setup.trainer
    start = time.perf_counter()
    before = trainer.evaluate()
    before_s = time.perf_counter() - start
    rows = train_and_report(setup).metrics  # metrics.jsonl with the reward metadata's means
    config = trainer.config
    samples_per_epoch = config.sample_batch_size * config.sample_num_batches_per_epoch
    points = [{"epoch": 0, "samples": 0, "train_s": 0.0, **before}]
    train_s = 0.0
    for row in rows:
        train_s += row["time_epoch_s"] - row.get("time_eval_s", 0.0)
        if "eval/reward" in row:
            evaluated = {k: v for k, v in row.items() if k.startswith("eval/")}
            point = {"epoch": row["epoch"] + 1, "train_s": train_s, **evaluated}
            points.append({**point, "samples": (row["epoch"] + 1) * samples_per_epoch})
    train_rewards = [row["reward_mean"] for row in rows]
    result: dict[str, Any] = {"seed": seed, "points": points, "train_reward_mean": train_rewards}
    if all("exact_mean" in row for row in rows):  # a differentiable reward's exact score
        result["train_exact_reward_mean"] = [row["exact_mean"] for row in rows]
    result["eval_before_s"] = before_s
    (Path(args.out) / f"seed{seed}.json").write_text(json.dumps(result, indent=1))


def _run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", str(seed), "--out", args.out]
    cmd += ["--epochs", str(args.epochs), "--eval-every", str(args.eval_every)]
    cmd += ["--eval-prompts", str(args.eval_prompts), "--eval-steps", str(args.eval_steps)]
    cmd += ["--preset", args.preset, *(f"--flag={flag}" for flag in args.flag)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = Path(args.out) / f"seed{seed}.log"
    with log.open("w") as handle:
        done = subprocess.run(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"seed {seed} failed (exit {done.returncode}); see {log}")
    result: dict[str, Any] = json.loads((Path(args.out) / f"seed{seed}.json").read_text())
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per seed, the change of each metric from before training to the last evaluation, whether
    it exceeds the last evaluation's own interval; across seeds, the mean change with a t
    interval over the seeds."""
    summary: dict[str, Any] = {"per_seed": [], "across_seeds": {}}
    metrics = metrics_of(runs)
    for run in runs:
        first, last = run["points"][0], run["points"][-1]
        entry: dict[str, Any] = {"seed": run["seed"]}
        for metric in metrics:
            change = last[metric] - first[metric]
            half = (last[f"{metric}_high"] - last[f"{metric}_low"]) / 2
            entry[metric] = {
                "before": first[metric], "after": last[metric], "change": change,
                "after_half_width": half, "beyond_interval": abs(change) > half,
            }  # fmt: skip
        summary["per_seed"].append(entry)
    for metric in metrics:
        changes = [entry[metric]["change"] for entry in summary["per_seed"]]
        interval = mean_interval(changes)  # Student's t over the seeds
        low, high = interval.low, interval.high
        summary["across_seeds"][metric] = {
            "mean_change": interval.mean, "low": low, "high": high,
            "exceeds_seed_spread": len(changes) > 1 and (low > 0 or high < 0),
        }  # fmt: skip
    return summary


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    """Four panels: held-out accuracy and reward (rows; the exact reward where the runs report
    `EXACT`) against samples drawn and training seconds (columns); a line per seed, with the
    interval of each evaluation as a bar."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    width, height, margin = 520, 360, 48
    image = Image.new("RGB", (2 * width, 2 * height), "white")
    draw = ImageDraw.Draw(image)
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    reward = EXACT if EXACT in metrics_of(runs) else "eval/reward"
    panels = [(x, y) for y in ("eval/reward/accuracy", reward) for x in ("samples", "train_s")]
    for index, (x_key, y_key) in enumerate(panels):
        left, top = (index % 2) * width, (index // 2) * height
        xs = [p[x_key] for run in runs for p in run["points"]]
        lows = [p[f"{y_key}_low"] for run in runs for p in run["points"]]
        highs = [p[f"{y_key}_high"] for run in runs for p in run["points"]]
        x0, x1 = 0.0, max(xs) or 1.0
        y0, y1 = min(lows), max(highs)
        y0, y1 = (y0 - 0.05, y1 + 0.05) if y1 - y0 < 1e-9 else (y0, y1)

        def px(x: float, y: float, left: int = left, top: int = top, x0: float = x0,
               x1: float = x1, y0: float = y0, y1: float = y1) -> tuple[float, float]:  # fmt: skip
            u = left + margin + (width - 2 * margin) * (x - x0) / (x1 - x0)
            v = top + height - margin - (height - 2 * margin) * (y - y0) / (y1 - y0)
            return u, v

        (a, b), (c, d) = px(x0, y0), px(x1, y1)
        draw.rectangle([a, d, c, b], outline="black")  # PIL wants the top-left corner first
        label = f"held-out {'exact reward' if y_key == EXACT else y_key.split('/')[-1]} vs {x_key}"
        draw.text((left + margin, top + 8), label, "black", font)
        bottom = top + height - margin + 6
        draw.text((left + margin, bottom), f"{x0:g}", "black", font)
        draw.text((left + width - margin - 40, bottom), f"{x1:g}", "black", font)
        draw.text((left + 4, top + height - margin - 10), f"{y0:.3f}", "black", font)
        draw.text((left + 4, top + margin - 4), f"{y1:.3f}", "black", font)
        for number, run in enumerate(runs):
            colour = colours[number % len(colours)]
            line = [px(p[x_key], p[y_key]) for p in run["points"]]
            draw.line(line, fill=colour, width=2)
            for p in run["points"]:
                high, low = px(p[x_key], p[f"{y_key}_high"]), px(p[x_key], p[f"{y_key}_low"])
                draw.line([high, low], fill=colour, width=1)
            draw.text((left + width - margin - 60, top + margin + 12 * number),
                      f"seed {run['seed']}", colour, font)  # fmt: skip
    image.save(path)


def table(summary: dict[str, Any]) -> str:
    lines = ["metric | seed | before | after | change | after's 95 % half-width | beyond it"]
    for entry in summary["per_seed"]:
        for metric in summary["across_seeds"]:
            m = entry[metric]
            lines.append(
                f"{metric} | {entry['seed']} | {m['before']:.4f} | {m['after']:.4f} | "
                f"{m['change']:+.4f} | {m['after_half_width']:.4f} | {m['beyond_interval']}"
            )
    for metric, m in summary["across_seeds"].items():
        lines.append(
            f"{metric} | mean over seeds | | | {m['mean_change']:+.4f} "
            f"[{m['low']:+.4f}, {m['high']:+.4f}] | | exceeds the seed spread: "
            f"{m['exceeds_seed_spread']}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--preset", default="default", help="ddpo train's preset: default (DDPO on "
        "ddpo-tiny-shapes), flow_grpo_tiny (Flow-GRPO on ddpo-tiny-shapes-flow), or nft_tiny, "
        "awm_tiny, dpo_tiny, draft_tiny (DiffusionNFT, AWM, Diffusion-DPO, DRaFT-1 on the same "
        "run), mixgrpo_tiny (Flow-GRPO with MixGRPO's sliding window of 2 steps)"
    )  # fmt: skip
    parser.add_argument(
        "--flag", action="append", default=[], help="one more ddpo train flag, as "
        "--flag=--sde_window_size=2 (repeatable)"
    )  # fmt: skip
    parser.add_argument("--epochs", type=int, default=18, help="the presets' 18")
    parser.add_argument("--eval-every", type=int, default=3, help="epochs between evaluations")
    parser.add_argument("--eval-prompts", type=int, default=48, help="held-out prompts")
    parser.add_argument("--eval-steps", type=int, default=0, help="0: the training steps")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once (1 thread each)")
    parser.add_argument("--out", default="benchmarks/out/learning")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    taken = [out / f"seed{s}" for s in args.seeds if (out / f"seed{s}").exists()]
    if taken:
        parser.error(f"--out {out} already holds {[str(t) for t in taken]}; choose another")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(lambda seed: _run_seed(args, seed), args.seeds))
    summary = summarize(runs)
    settings = {k: v for k, v in vars(args).items() if k != "worker"}
    result = {"settings": settings, "runs": runs, "summary": summary}
    (out / "learning.json").write_text(json.dumps(result, indent=1))
    plot(runs, out / "learning.png")
    print(table(summary))


if __name__ == "__main__":
    main()
