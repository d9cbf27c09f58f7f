"""Time DDPO epochs of the tiny random model, per phase (sample, reward, train), on CPU or GPU.

Usage: ``python benchmarks/trainer_epoch.py [--epochs 3] [--threads 1] [--steps 10]
[--sample-batch 8] [--batches 2] [--train-batch 4] [--full-unet] [--device cpu|cuda]``.
Prints one JSON line per epoch with the trainer's own timings (``time_*_s`` from
``metrics.jsonl``) and a summary line with the median epoch time.
"""

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ddpo import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline


def brightness(images: torch.Tensor, prompts: Any, metadata: Any) -> tuple[torch.Tensor, dict]:
    return images.mean(dim=(1, 2, 3)), {}


def prompt_fn() -> tuple[str, dict[str, Any]]:
    return random.choice(["a red circle", "a blue square", "a green star"]), {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sample-batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--full-unet", action="store_true")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        config = DDPOConfig(
            num_epochs=args.epochs,
            sample_num_steps=args.steps,
            sample_batch_size=args.sample_batch,
            sample_num_batches_per_epoch=args.batches,
            train_batch_size=args.train_batch,
            save_freq=0,
            mixed_precision="no",
            output_dir=str(out),
            accelerator_kwargs={"cpu": args.device == "cpu"},
        )
        pipeline = DefaultDDPOStableDiffusionPipeline(
            "ddpo-tiny-random", use_lora=not args.full_unet
        )
        start = time.perf_counter()
        trainer = DDPOTrainer(config, brightness, prompt_fn, pipeline)
        setup = time.perf_counter() - start
        trainer.train()
        trainer.close()
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        print(json.dumps({k: round(v, 4) for k, v in row.items() if k.startswith("time_")}))
    summary = {
        "setup_s": round(setup, 3),
        "median_epoch_s": round(statistics.median(r["time_epoch_s"] for r in rows), 3),
        "samples_per_epoch": rows[0]["num_samples"],
        "device": str(trainer.accelerator.device),
        "threads": args.threads,
        "lora": not args.full_unet,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
