"""DiffusionNFT written out by hand from `ddpo.core` and the policy boundary.

DiffusionNFT (Zheng et al., 2025, arXiv 2509.16117) trains on the forward process: it samples
clean images with any sampler, turns each prompt's rewards into an optimality probability, and
regresses an implicit positive and negative policy onto each image at a few of the sampler's
timesteps, a random choice per image as the authors train (`ddpo.core.nft_clean_loss` on the
clean latents that the predictions imply, `policy.predicted_clean`). The "old" policy in that
loss is a soft copy of the trained weights, moved towards them after each epoch. Nothing here
uses `DDPOTrainer`; every step is a public function or a member of
`ddpo.policy.DiffusionPolicy`, so the loop can be changed line by line::

    python examples/diffusion_nft.py                        # ddpo-tiny-shapes-flow, 4 epochs
    python examples/diffusion_nft.py --epochs 8 --beta 0.1

The defaults are a CPU-sized run of the paper's SD3.5 recipe (its ``config/nft.py``): beta 1,
advantages clipped at 5, the old policy's decay ``min(0.001 s, 0.5)`` after ``s`` optimizer
steps (its ``decay_type=1``, `ddpo.core.nft_old_policy_decay`), LoRA. Each epoch prints the
mean reward of the images it sampled and the mean loss.
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
from ddpo.core import (  # noqa: E402
    ema_step,
    group_normalize_advantages,
    nft_clean_loss,
    nft_old_policy_decay,
    nft_optimality,
)
from ddpo.data.shapes import all_prompts  # noqa: E402
from ddpo.rewards.alignment import alignment_reward_fn  # noqa: E402


def main(argv: Sequence[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ddpo-tiny-shapes-flow")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per epoch")
    parser.add_argument("--images_per_prompt", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="sampling steps (the ODE)")
    parser.add_argument(
        "--noise_levels", type=int, default=2, help="sampler timesteps each image trains at"
    )
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 1 <= args.noise_levels <= args.steps:
        parser.error(
            f"--noise_levels must be in [1, --steps={args.steps}], got {args.noise_levels}"
        )

    # 1. The policy, LoRA adapters to train, the old policy as a copy of their values, the
    #    optimizer, and the timesteps a rollout of `--steps` steps visits (where images train).
    torch.manual_seed(args.seed)
    policy = load_policy(args.model, use_lora=True, lora_rank=8, lora_alpha=16)
    policy.prepare(torch.device("cpu"), gradient_checkpointing=False)
    timesteps = policy.sampling_timesteps(args.steps)
    params = [p for p in policy.denoiser.parameters() if p.requires_grad]
    old = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(args.seed)
    pool = all_prompts("train")
    history: dict[str, list[float]] = {"reward": [], "loss": []}
    optimizer_steps = 0

    def prediction_of(weights: list[torch.Tensor], conditioning, x_t, t):  # type: ignore[no-untyped-def]
        """The policy's prediction with ``weights`` in place of the trained ones (no gradients)."""
        kept = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, w in zip(params, weights, strict=True):
                p.copy_(w)
            out = policy.predict(conditioning, x_t, t)
            for p, k in zip(params, kept, strict=True):
                p.copy_(k)
        return out

    for epoch in range(args.epochs):
        # 2. Sample clean images of a few prompts, each several times, and reward them. Any
        #    sampler works (nothing is re-scored): here the policy's own rollout, Flow-GRPO's SDE
        #    (the paper samples with the ODE; `rollout` is the boundary's sampler that returns
        #    the final latents).
        picks = torch.randint(len(pool), (args.prompts,), generator=generator).tolist()
        prompts = [pool[i][0] for i in picks for _ in range(args.images_per_prompt)]
        metadata = [pool[i][1] for i in picks for _ in range(args.images_per_prompt)]
        conditioning = policy.encode(prompts, "")
        with torch.no_grad():
            out = policy.rollout(conditioning, num_steps=args.steps, guidance_scale=1.0,
                                 generator=generator)  # fmt: skip
        x0 = out.final_latents if out.final_latents is not None else out.latents[:, -1]
        rewards, _ = alignment_reward_fn(out.images, prompts, metadata)
        # 3. Each prompt's rewards -> advantages -> optimality probabilities r in [0, 1].
        advantages = group_normalize_advantages(rewards.float(), prompts)
        optimality = nft_optimality(advantages, adv_clip_max=5.0)
        # 4. Each image trains at the first `--noise_levels` of a random permutation of the
        #    sampler's timesteps, with fresh noise: the NFT loss on the clean latents that the
        #    trained and the old policy's predictions imply.
        order = torch.stack(
            [torch.randperm(args.steps, generator=generator) for _ in range(len(prompts))]
        )
        losses = []
        for j in range(args.noise_levels):
            t = timesteps[order[:, j]]
            noise = torch.randn(x0.shape, generator=generator)
            x_t = policy.add_noise(x0, noise, t)
            old_prediction = prediction_of(old, conditioning, x_t, t)
            prediction = policy.predict(conditioning, x_t, t)
            loss = nft_clean_loss(
                x0,
                policy.predicted_clean(x_t, prediction, t),
                policy.predicted_clean(x_t, old_prediction, t),
                optimality,
                beta=args.beta,
            ).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer_steps += 1
            losses.append(float(loss.detach()))
        # 5. The old policy moves towards the trained weights.
        decay = nft_old_policy_decay(optimizer_steps, decay_type=1)
        old = [ema_step(o, p.detach(), decay=decay) for o, p in zip(old, params, strict=True)]
        history["reward"].append(float(rewards.mean()))
        history["loss"].append(sum(losses) / len(losses))
        print(f"epoch {epoch}: reward {history['reward'][-1]:.4f}, loss {history['loss'][-1]:.4f}")
    return history


if __name__ == "__main__":
    print(json.dumps(main()))
