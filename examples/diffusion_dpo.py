"""Online Diffusion-DPO written out by hand from `ddpo.core` and the policy boundary.

Diffusion-DPO (Wallace et al., 2023, arXiv 2311.12908) fine-tunes a diffusion model on
preference pairs without a reward model in the loss: for a preferred image ``w`` and another
``l`` of the same prompt, noised with one noise to one timestep, the trained model should
denoise ``w`` better than ``l`` by more than the frozen reference does
(`ddpo.core.diffusion_dpo_loss`, ``-log sigmoid(-beta/2 [(e_w - e_l) - (e_w_ref - e_l_ref)])``
of the squared errors ``e`` against the training target). The paper trains offline on
Pick-a-Pic's human preferences; here the pairs are made online: each epoch samples every prompt
several times, rewards the images, and pairs each prompt's best image with its worst (a prompt
whose images tie gives no pair). Nothing here uses `DDPOTrainer`; every step is a public
function or a member of `ddpo.policy.DiffusionPolicy`, so the loop can be changed line by line::

    python examples/diffusion_dpo.py                        # ddpo-tiny-shapes-flow, 4 epochs
    python examples/diffusion_dpo.py --epochs 8 --beta 2000

As the authors' ``train.py`` (SalesforceAIResearch/DiffusionDPO; read, not copied): one random
training timestep per pair and one noise shared by its two images, the reference the model
before fine-tuning. Their ``--beta_dpo`` is 5000 for SD 1.5 (2500 for SDXL), at a learning rate
of about 2e-5 (1e-8 scaled by a batch of 2048). The default here is 500: ``beta`` multiplies how
far the model's error difference has moved from the reference's, and with Adam that distance is
set by the learning rate, not by the loss. At this example's 3e-4 (15 times theirs), ``beta``
500 keeps the logits between about 0.1 and 2 over eight default epochs on the tiny flow model,
where 5000 pushes them to 3 to 18 (a saturated sigmoid: the pairs it gets right stop training,
those it gets wrong dominate the loss) and 50 leaves the loss near ``log 2``. The rest is a
CPU-sized run: one optimizer step per epoch on all of its pairs, learning rate 3e-4, gradient
norm clipped at 1, LoRA. Each epoch prints the mean reward of the images it sampled, the loss
and the implicit accuracy (the fraction of pairs whose logit is positive: the model prefers
``w`` more than the reference does).
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
from ddpo.core import diffusion_dpo_loss  # noqa: E402
from ddpo.data.shapes import all_prompts  # noqa: E402
from ddpo.policy import Conditioning  # noqa: E402
from ddpo.rewards.alignment import alignment_reward_fn  # noqa: E402


def best_and_worst(rewards: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group of ``group_size`` consecutive rows, the rows of its highest and lowest reward
    (the first of equal ones); groups whose rewards all tie are left out."""
    groups = rewards.detach().float().reshape(-1, group_size)
    offsets = torch.arange(len(groups)) * group_size
    best, worst = groups.argmax(dim=1), groups.argmin(dim=1)
    keep = groups.max(dim=1).values > groups.min(dim=1).values
    return (offsets + best)[keep], (offsets + worst)[keep]


def main(argv: Sequence[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ddpo-tiny-shapes-flow")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per epoch")
    parser.add_argument("--images_per_prompt", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="sampling steps")
    parser.add_argument("--beta", type=float, default=500.0)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.images_per_prompt < 2:
        parser.error(
            f"--images_per_prompt must be >= 2 to make pairs, got {args.images_per_prompt}"
        )

    # 1. The policy, LoRA adapters to train (the reference is the policy without them), the
    #    optimizer.
    torch.manual_seed(args.seed)
    policy = load_policy(args.model, use_lora=True, lora_rank=8, lora_alpha=16)
    policy.prepare(torch.device("cpu"), gradient_checkpointing=False)
    params = [p for p in policy.denoiser.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(args.seed)
    pool = all_prompts("train")
    history: dict[str, list[float]] = {"reward": [], "loss": [], "implicit_accuracy": []}

    for epoch in range(args.epochs):
        # 2. Sample each of a few prompts several times and reward the images.
        picks = torch.randint(len(pool), (args.prompts,), generator=generator).tolist()
        prompts = [pool[i][0] for i in picks for _ in range(args.images_per_prompt)]
        metadata = [pool[i][1] for i in picks for _ in range(args.images_per_prompt)]
        conditioning = policy.encode(prompts, "")
        with torch.no_grad():
            out = policy.rollout(conditioning, num_steps=args.steps, guidance_scale=1.0,
                                 generator=generator)  # fmt: skip
        x0 = out.final_latents if out.final_latents is not None else out.latents[:, -1]
        rewards, _ = alignment_reward_fn(out.images, prompts, metadata)
        history["reward"].append(float(rewards.mean()))
        # 3. Each prompt's best and worst image: a preference pair (ties give none).
        preferred, other = best_and_worst(rewards, args.images_per_prompt)
        if len(preferred) == 0:
            history["loss"].append(float("nan"))
            history["implicit_accuracy"].append(float("nan"))
            print(f"epoch {epoch}: reward {history['reward'][-1]:.4f}, no pair (all ties)")
            continue
        # 4. One random training timestep per pair and one noise shared by its two images; the
        #    two halves of the batch are the preferred and the other images.
        n = len(preferred)
        t = torch.randint(policy.num_train_timesteps, (n,), generator=generator).float()
        noise = torch.randn((n, *x0.shape[1:]), generator=generator)
        clean = torch.cat([x0[preferred], x0[other]])
        both_noise, both_t = torch.cat([noise, noise]), torch.cat([t, t])
        x_t = policy.add_noise(clean, both_noise, both_t)
        target = policy.training_target(clean, both_noise, both_t)
        pair_conditioning = Conditioning.cat(
            [conditioning.select(preferred), conditioning.select(other)]
        )
        # 5. The trained model's predictions (with gradients) and the reference's; the loss.
        prediction = policy.predict(pair_conditioning, x_t, both_t)
        with torch.no_grad(), policy.reference_policy():
            reference = policy.predict(pair_conditioning, x_t, both_t)
        dpo = diffusion_dpo_loss(
            prediction[:n],
            prediction[n:],
            reference[:n],
            reference[n:],
            target[:n],
            target[n:],
            beta=args.beta,
        )
        loss = dpo.loss.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        history["loss"].append(float(loss.detach()))
        history["implicit_accuracy"].append(float((dpo.logit.detach() > 0).float().mean()))
        print(
            f"epoch {epoch}: reward {history['reward'][-1]:.4f}, loss {history['loss'][-1]:.4f}, "
            f"implicit accuracy {history['implicit_accuracy'][-1]:.2f} ({n} pairs)"
        )
    return history


if __name__ == "__main__":
    print(json.dumps(main()))
