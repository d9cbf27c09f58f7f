"""Time a full sampling pass of the tiny model: 8 images x 20 DDIM steps with guidance, 64x64.

Run: ``python benchmarks/tiny_sampling.py [--threads N] [--repeats R]``. Prints the model's
parameter count, its size on disk and the best / median wall time of the repeats.
"""

import argparse
import statistics
import time

import torch

from ddpo.adapters import DefaultDDPOStableDiffusionPipeline, tiny_pipeline_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    folder = tiny_pipeline_path()
    pipe = DefaultDDPOStableDiffusionPipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    params = sum(
        p.numel() for m in (pipe.unet, pipe.vae, pipe.text_encoder) for n, p in m.named_parameters()
        if "lora_" not in n
    )  # fmt: skip
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    prompts = ["a photo of a red circle"] * args.images
    times = []
    for seed in range(args.repeats + 1):
        start = time.perf_counter()
        pipe(prompts, num_inference_steps=args.steps, guidance_scale=5.0,
             generator=torch.Generator().manual_seed(seed))  # fmt: skip
        times.append(time.perf_counter() - start)
    times = times[1:]  # the first call warms up
    print(f"tiny model: {params:,} parameters, {size / 1e6:.1f} MB on disk ({folder})")
    print(
        f"{args.images} images x {args.steps} steps, guidance on, {args.threads} thread(s): "
        f"best {min(times):.2f} s, median {statistics.median(times):.2f} s"
    )


if __name__ == "__main__":
    main()
