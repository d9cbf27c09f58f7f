"""Advantage Weighted Matching written out by hand from `ddpo.core` and the policy boundary.

Advantage Weighted Matching (AWM; Xue et al., 2025, arXiv 2509.25050) is PPO on a likelihood
that needs no sampler: the log-probability of a clean sample ``x_0`` is replaced by the negative
flow-matching error of the policy at a noisy copy of it (`ddpo.core.awm_log_likelihood`,
``-mean((v - (eps - x_0))^2)``), so the images can come from any sampler and nothing is
re-scored step by step. Each epoch samples images, turns each prompt's rewards into advantages,
and, before any update, evaluates the surrogate of each image at a few of the sampler's
timesteps with the weights that sampled (the "old" log-likelihood). Each timestep is then one
optimizer step: PPO's clipped loss of the new surrogate's ratio to the old one
(`ddpo.core.ppo_clip_loss`), plus ``kl_coef`` times the velocity's squared distance to the
reference's (`ddpo.core.awm_kl_penalty`). Nothing here uses `DDPOTrainer`; every step is a
public function or a member of `ddpo.policy.DiffusionPolicy`, so the loop can be changed line by
line::

    python examples/awm.py                                  # ddpo-tiny-shapes-flow, 4 epochs
    python examples/awm.py --epochs 8 --noise_levels 6 --steps 14

The defaults are a CPU-sized run of the authors' SD3.5 recipes (scxue/advantage_weighted_matching,
its ``config/dgx_awm.py`` and ``scripts/train_sd3_awm.py``; read, not copied): PPO clip range 1,
timesteps drawn one per stratum of the sampler's steps after the first (its
``discrete_wo_init``), the regulariser unweighted (its ``kl_weight='Uniform'``) with weight
0.001 (between its recipes' 1e-4 for PickScore and 3e-3 for GenEval and OCR), learning rate
3e-4, gradient norm clipped at 1, LoRA. The surrogate is the paper's uniformly weighted one
(the recipes' ``ghuber`` weighting is `awm_log_likelihood`'s ``weighting="ghuber"``). Each
epoch prints the mean reward of the images it sampled and the mean loss; the history that
``main`` returns also holds ``first_log_ratio``, the largest ``|log ratio|`` at each epoch's
first update (0: the old surrogate is the sampling policy's).
"""

import argparse
import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path

# This script's folder holds ddpo.py: keep it off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from ddpo.adapters import load_policy  # noqa: E402
from ddpo.core import (  # noqa: E402
    awm_kl_penalty,
    awm_log_likelihood,
    group_normalize_advantages,
    ppo_clip_loss,
)
from ddpo.data.shapes import all_prompts  # noqa: E402
from ddpo.rewards.alignment import alignment_reward_fn  # noqa: E402


def stratified_step_indices(
    num_steps: int, count: int, num_samples: int, generator: torch.Generator
) -> torch.Tensor:
    """``count`` sampler-step indices per sample, ``(num_samples, count)``: the steps ``1 ..
    num_steps - 1`` (the first, from pure noise, left out) cut into ``count`` contiguous strata, one
    index drawn uniformly in each, their order shuffled per sample."""
    edges = torch.linspace(1, num_steps, count + 1).floor().long().tolist()
    columns = [
        torch.randint(low, high, (num_samples,), generator=generator)
        for low, high in itertools.pairwise(edges)
    ]
    drawn = torch.stack(columns, dim=1)
    order = torch.stack([torch.randperm(count, generator=generator) for _ in range(num_samples)])
    return drawn.gather(1, order)


def main(argv: Sequence[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ddpo-tiny-shapes-flow")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per epoch")
    parser.add_argument("--images_per_prompt", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="sampling steps")
    parser.add_argument(
        "--noise_levels", type=int, default=3, help="sampler timesteps each image trains at"
    )
    parser.add_argument("--clip_range", type=float, default=1.0)
    parser.add_argument("--kl_coef", type=float, default=0.001)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 1 <= args.noise_levels <= args.steps - 1:
        parser.error(
            f"--noise_levels must be in [1, --steps - 1 = {args.steps - 1}] (the steps after "
            f"the first), got {args.noise_levels}"
        )

    # 1. The policy, LoRA adapters to train, the optimizer, and the timesteps a rollout of
    #    `--steps` steps visits (where the images train).
    torch.manual_seed(args.seed)
    policy = load_policy(args.model, use_lora=True, lora_rank=8, lora_alpha=16)
    policy.prepare(torch.device("cpu"), gradient_checkpointing=False)
    timesteps = policy.sampling_timesteps(args.steps)
    params = [p for p in policy.denoiser.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(args.seed)
    pool = all_prompts("train")
    history: dict[str, list[float]] = {"reward": [], "loss": [], "first_log_ratio": []}

    for epoch in range(args.epochs):
        # 2. Sample clean images of a few prompts, each several times, and reward them. Any
        #    sampler works (the surrogate needs only the final latents): here the policy's own.
        picks = torch.randint(len(pool), (args.prompts,), generator=generator).tolist()
        prompts = [pool[i][0] for i in picks for _ in range(args.images_per_prompt)]
        metadata = [pool[i][1] for i in picks for _ in range(args.images_per_prompt)]
        conditioning = policy.encode(prompts, "")
        with torch.no_grad():
            out = policy.rollout(conditioning, num_steps=args.steps, guidance_scale=1.0,
                                 generator=generator)  # fmt: skip
        x0 = out.final_latents if out.final_latents is not None else out.latents[:, -1]
        rewards, _ = alignment_reward_fn(out.images, prompts, metadata)
        # 3. Each prompt's rewards -> advantages.
        advantages = group_normalize_advantages(rewards.float(), prompts)
        # 4. Each image's timesteps (one per stratum of the steps after the first) and noise,
        #    the noisy latents and the training targets there (a flow model's: eps - x_0).
        steps = stratified_step_indices(args.steps, args.noise_levels, len(prompts), generator)
        points = []
        for j in range(args.noise_levels):
            t = timesteps[steps[:, j]]
            noise = torch.randn(x0.shape, generator=generator)
            x_t = policy.add_noise(x0, noise, t)
            target = policy.training_target(x0, noise, t)
            points.append((t, t / policy.num_train_timesteps, x_t, target))
        # 5. The old surrogate: every point's, with the weights that sampled, before any update.
        with torch.no_grad():
            old = [
                awm_log_likelihood(policy.predict(conditioning, x_t, t), target, sigma)
                for t, sigma, x_t, target in points
            ]
        # 6. One optimizer step per timestep: PPO's clipped loss of the surrogate's ratio, plus
        #    the velocity's distance to the reference's.
        losses = []
        for j, (t, sigma, x_t, target) in enumerate(points):
            velocity = policy.predict(conditioning, x_t, t)
            log_likelihood = awm_log_likelihood(velocity, target, sigma)
            ppo = ppo_clip_loss(
                log_likelihood, old[j], advantages.double(), clip_range=args.clip_range
            )
            with torch.no_grad(), policy.reference_policy():
                reference = policy.predict(conditioning, x_t, t)
            kl = awm_kl_penalty(velocity, reference, sigma, weighting="uniform").mean()
            loss = ppo.loss.float() + args.kl_coef * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            if j == 0:  # nothing has changed since the old surrogate: the ratio is 1
                gap = (log_likelihood.detach() - old[j]).abs().max()
                history["first_log_ratio"].append(float(gap))
        history["reward"].append(float(rewards.mean()))
        history["loss"].append(sum(losses) / len(losses))
        print(f"epoch {epoch}: reward {history['reward'][-1]:.4f}, loss {history['loss'][-1]:.4f}")
    return history


if __name__ == "__main__":
    print(json.dumps(main()))
