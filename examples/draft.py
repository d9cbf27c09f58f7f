"""Reward backpropagation (DRaFT-K and AlignProp) written out by hand from the policy boundary.

DRaFT (Clark et al., 2023, arXiv 2309.17400) fine-tunes a diffusion model by differentiating a
reward through the sampler: the images are sampled without gradients up to the last ``K``
steps, those steps keep their graph (each denoiser call checkpointed), the decoder turns the
final latents into images, a differentiable reward scores them, and the optimizer descends
``-mean(reward)``. AlignProp (Prabhudesai et al., 2023, arXiv 2310.03739) draws ``K`` at random
per batch. Nothing here uses `DDPOTrainer`; every step is a public function or a member of
`ddpo.policy.DiffusionPolicy` (``rollout(..., grad_steps=K)``), so the loop can be changed line
by line::

    python examples/draft.py                      # ddpo-tiny-shapes-flow, brightness, 4 epochs
    python examples/draft.py --k 2 --alignprop --reward aesthetic

The defaults are CPU-sized: the packaged tiny flow model with LoRA (rank 8), the differentiable
``brightness`` reward (any of `ddpo.rewards.registry.DIFFERENTIABLE_REWARDS` works where its
model can be loaded), ``K = 1`` (DRaFT-1, the paper's best trade-off), AdamW at 1e-3. Each epoch
prints the mean reward of its images and the gradient norm that reached the adapters.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

# This script's folder holds ddpo.py: keep it off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from ddpo.adapters import load_policy  # noqa: E402
from ddpo.data.shapes import all_prompts  # noqa: E402
from ddpo.rewards.registry import build_reward_fn  # noqa: E402


def main(argv: Sequence[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ddpo-tiny-shapes-flow")
    parser.add_argument("--reward", default="brightness")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4, help="images per optimizer step")
    parser.add_argument("--steps", type=int, default=6, help="sampling steps")
    parser.add_argument("--k", type=int, default=1, help="last steps backpropagated through")
    parser.add_argument("--alignprop", action="store_true", help="draw K in [1, --k] per batch")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 1 <= args.k <= args.steps:
        parser.error(f"--k must be in [1, --steps={args.steps}], got {args.k}")

    # 1. The policy with LoRA adapters to train, the differentiable reward, the optimizer.
    torch.manual_seed(args.seed)
    policy = load_policy(args.model, use_lora=True, lora_rank=8, lora_alpha=16)
    policy.prepare(torch.device("cpu"), gradient_checkpointing=False)
    reward_fn = build_reward_fn(args.reward, differentiable=True)
    params = [p for p in policy.denoiser.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(args.seed)
    pool = all_prompts("train")
    history: dict[str, list[float]] = {"reward": [], "grad_norm": [], "k": []}

    for epoch in range(args.epochs):
        # 2. Prompts, and K: fixed (DRaFT-K) or drawn (AlignProp).
        picks = torch.randint(len(pool), (args.batch,), generator=generator).tolist()
        prompts = [pool[i][0] for i in picks]
        k = args.k
        if args.alignprop:
            k = int(torch.randint(1, args.k + 1, (1,), generator=generator))
        # 3. Sample with gradients through the last K steps and the decoder; the reward of the
        #    images, differentiated back to the adapters.
        out = policy.rollout(policy.encode(prompts, ""), num_steps=args.steps,
                             guidance_scale=1.0, generator=generator, grad_steps=k)  # fmt: skip
        rewards, _ = reward_fn(out.images, tuple(prompts), tuple({} for _ in prompts))
        loss = -rewards.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        history["reward"].append(float(rewards.detach().mean()))
        history["grad_norm"].append(float(grad_norm))
        history["k"].append(float(k))
        print(f"epoch {epoch}: reward {history['reward'][-1]:.4f}, K {k}, "
              f"gradient norm {history['grad_norm'][-1]:.3g}")  # fmt: skip
    return history


if __name__ == "__main__":
    print(json.dumps(main()))
