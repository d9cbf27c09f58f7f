"""Reward backpropagation: peak memory of one DRaFT-K step against K.

For each ``K`` a fresh process loads the model with LoRA (rank 8), then measures one optimizer
step of `ddpo.objectives.RewardBackprop`'s work inside `harness.measure_peak` (CUDA max
allocated, or the CPU peak resident set reset at the step's start): a rollout of
``--steps`` steps whose last ``K`` keep their graph (each denoiser call checkpointed), the
decoding, the differentiable ``brightness`` reward, the backward pass and AdamW. On the CPU
the figure includes the process (model, Python); the step's growth over its start is the part
that depends on ``K``.

    python benchmarks/bench_backprop_memory.py --model ddpo-tiny-shapes --ks 1 2 4 8
    # on a GPU, the published SD 1.5 and SDXL architectures with random weights
    # (random_models.py; the issue's budget: SD 1.5 with LoRA under 10 GB at K = 1)
    python benchmarks/bench_backprop_memory.py --model sd15 --device cuda --dtype bfloat16 \
        --ks 1 2 4 --steps 50 --batch 1
    python benchmarks/bench_backprop_memory.py --model sdxl --device cuda --dtype bfloat16 \
        --ks 1 2 4 --steps 50 --batch 1

``--model sd15`` or ``sdxl`` builds that folder once (`random_models.MODEL_FOLDERS`).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import random_models


def worker(
    model: str, k: int, steps: int, batch: int, device: str, dtype: str, resolution: int | None
) -> dict[str, Any]:
    import harness
    import torch

    from ddpo.adapters import load_policy
    from ddpo.rewards.registry import build_reward_fn

    torch.set_num_threads(1)
    torch.manual_seed(0)
    policy = load_policy(model, use_lora=True, lora_rank=8, lora_alpha=8,
                         torch_dtype=getattr(torch, dtype), resolution=resolution)  # fmt: skip
    policy.prepare(torch.device(device), gradient_checkpointing=False)
    params = [p for p in policy.denoiser.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    reward = build_reward_fn("brightness", differentiable=True)
    conditioning = policy.encode(["a red circle"] * batch, "")
    generator = torch.Generator().manual_seed(0)
    with harness.measure_peak(torch.device(device)) as peak:
        out = policy.rollout(conditioning, num_steps=steps, guidance_scale=1.0,
                             generator=generator, grad_steps=k)  # fmt: skip
        rewards, _ = reward(out.images, ("a red circle",) * batch, ({},) * batch)
        (-rewards.mean()).backward()
        optimizer.step()
    return {"model": model, "k": k, "steps": steps, "batch": batch, "dtype": dtype,
            "resolution": resolution, "peak_mib": peak.peak_mib, "start_mib": peak.start_mib,
            "kind": peak.kind}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ddpo-tiny-shapes")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--resolution", type=int, default=None, help="image side (the model's)")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.model, args.worker, args.steps, args.batch, args.device,
                                args.dtype, args.resolution)))  # fmt: skip
        return
    if args.model in random_models.MODEL_FOLDERS:  # built once, before the workers
        args.model = str(random_models.MODEL_FOLDERS[args.model]())
    rows = []
    size = ["--resolution", str(args.resolution)] if args.resolution else []
    for k in args.ks:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(k),
                   "--model", args.model, "--steps", str(args.steps), "--batch",
                   str(args.batch), "--device", args.device, "--dtype", args.dtype,
                   *size]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"| model | K | peak MiB | step's growth MiB | ({rows[0]['kind']}) |")
    print("|---|---|---|---|---|")
    for row in rows:
        growth = row["peak_mib"] - row["start_mib"]
        print(f"| {row['model']} | {row['k']} | {row['peak_mib']:.0f} | {growth:.0f} | |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
