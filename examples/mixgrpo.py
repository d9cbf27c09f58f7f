"""MixGRPO's sliding window written out by hand from `ddpo.core` and the policy boundary.

MixGRPO (Li et al., 2025, arXiv 2507.21802) is GRPO on a flow model, Flow-GRPO's SDE step, with
only a window of ``w`` consecutive sampler steps stochastic: the steps before and after it are
the deterministic ODE, and only the window's ``w`` transitions are re-scored and trained, so an
update costs ``w`` denoiser passes per image instead of one per step. The window moves over
training (its ``progressive`` strategy, `ddpo.core.sliding_window_start`): it starts at the
first step and moves ``stride`` steps every ``shift_interval`` iterations, stopping at the last
whole window (or, with ``--roll_back``, starting over), so the early, coarse steps train first
and the late, fine ones later. Each iteration (an epoch here) places the window, samples a few
prompts several times each, turns each prompt's rewards into group-relative advantages, and
takes one PPO step per transition of the window on the policy's re-scored log-probs
(`ddpo.core.ppo_clip_loss`). Nothing here uses `DDPOTrainer` (whose
``sde_window_schedule="sliding"`` is the same schedule); every step is a public function or a
member of `ddpo.policy.DiffusionPolicy` (``window_starts`` and ``set_window_start``, the flow
families' window), so the loop can be changed line by line::

    python examples/mixgrpo.py                       # ddpo-tiny-shapes-flow, 6 epochs
    python examples/mixgrpo.py --epochs 8 --window 1 --stride 1 --shift_interval 2
    python examples/mixgrpo.py --strategy decay --shift_interval 3 \
        --post_window_solver dpmsolver++ --post_window_step_ratio 0.4   # MixGRPO-Flash

The defaults are a CPU-sized run: the packaged tiny flow model with LoRA (rank 8), the
``alignment`` reward, 8 sampler steps with a window of 2, the window moved by its size
(MixGRPO's default stride; ``--stride 1`` is its overlapping ``prog_overlap_step``) every epoch
(MixGRPO's ``iters_per_group`` is 25, `DDPOConfig.sliding_window_shift_interval`'s default),
Flow-GRPO's noise level 0.7, its PPO clip range 1e-4 and advantages clipped at 5, AdamW at
3e-4, gradient norm clipped at 1. Each epoch prints the window's first step, the mean reward
of its images and the mean loss; the history that ``main`` returns also holds
``first_log_ratio``, the largest ``|log ratio|`` at each epoch's first update (0: the re-scored
log-probs are the sampler's), ``grad_norm`` and ``update_norm`` (how far the epoch's updates
moved the adapters).
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
    clip_advantages,
    group_normalize_advantages,
    ppo_clip_loss,
    sliding_window_start,
)
from ddpo.data.shapes import all_prompts  # noqa: E402
from ddpo.rewards.alignment import alignment_reward_fn  # noqa: E402


def main(argv: Sequence[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ddpo-tiny-shapes-flow")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per epoch")
    parser.add_argument("--images_per_prompt", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8, help="sampling steps")
    parser.add_argument("--window", type=int, default=2, help="stochastic (trained) steps")
    parser.add_argument("--shift_interval", type=int, default=1, help="epochs per window position")
    parser.add_argument("--stride", type=int, default=0, help="steps per move (0: --window)")
    parser.add_argument("--roll_back", action="store_true", help="start over past the end")
    parser.add_argument("--strategy", default="progressive",
                        choices=["progressive", "decay", "exp_decay"])  # fmt: skip
    parser.add_argument("--post_window_solver", default="euler", choices=["euler", "dpmsolver++"])
    parser.add_argument("--post_window_step_ratio", type=float, default=1.0)
    parser.add_argument("--noise_level", type=float, default=0.7)
    parser.add_argument("--clip_range", type=float, default=1e-4)
    parser.add_argument("--adv_clip_max", type=float, default=5.0)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 1 <= args.window <= args.steps:
        parser.error(f"--window must be in [1, --steps={args.steps}], got {args.window}")
    stride = args.stride or args.window

    # 1. The policy with a stochastic window of `--window` steps and LoRA adapters to train, the
    #    optimizer, and the first steps the window can take in a rollout of `--steps` steps.
    torch.manual_seed(args.seed)
    policy = load_policy(
        args.model,
        use_lora=True,
        lora_rank=8,
        lora_alpha=16,
        family_options={
            "sde_window_size": args.window,
            "noise_level": args.noise_level,
            # MixGRPO-Flash: DPM-Solver++ and fewer steps after the window
            "post_window_solver": args.post_window_solver,
            "post_window_step_ratio": args.post_window_step_ratio,
        },
    )
    policy.prepare(torch.device("cpu"), gradient_checkpointing=False)
    starts = policy.window_starts(args.steps)
    params = [p for p in policy.denoiser.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(args.seed)
    pool = all_prompts("train")
    history: dict[str, list[float]] = {
        "window_start": [],
        "reward": [],
        "loss": [],
        "approx_kl": [],
        "clip_fraction": [],
        "first_log_ratio": [],
        "grad_norm": [],
        "update_norm": [],
    }

    for epoch in range(args.epochs):
        # 2. Place the window: MixGRPO's progressive schedule picks one of the possible starts.
        offset = sliding_window_start(
            epoch,
            shift_interval=args.shift_interval,
            stride=stride,
            max_start=len(starts) - 1,
            roll_back=args.roll_back,
            strategy=args.strategy,
        )
        policy.set_window_start(starts[offset])
        # 3. Sample a few prompts, each several times: the ODE outside the window, Flow-GRPO's
        #    SDE inside it, whose K transitions (latents, log-probs, schedule rows) are recorded.
        picks = torch.randint(len(pool), (args.prompts,), generator=generator).tolist()
        prompts = [pool[i][0] for i in picks for _ in range(args.images_per_prompt)]
        metadata = [pool[i][1] for i in picks for _ in range(args.images_per_prompt)]
        conditioning = policy.encode(prompts, "")
        with torch.no_grad():
            out = policy.rollout(conditioning, num_steps=args.steps, guidance_scale=1.0,
                                 generator=generator)  # fmt: skip
        rewards, _ = alignment_reward_fn(out.images, prompts, metadata)
        # 4. Each prompt's rewards -> group-relative advantages (GRPO), clipped.
        advantages = group_normalize_advantages(rewards.float(), prompts)
        advantages = clip_advantages(advantages, adv_clip_max=args.adv_clip_max)
        # 5. One PPO step per transition of the window: re-score it with the current weights
        #    (its schedule row, the same for every image) against the log-prob it was sampled
        #    with.
        before = [p.detach().clone() for p in params]
        losses, kls, clipped, norms = [], [], [], []
        for j in range(out.log_probs.shape[1]):
            rows = out.schedule[j].expand(len(prompts), -1)
            score = policy.score(conditioning, out.latents[:, j], out.latents[:, j + 1], rows)
            log_prob = score.log_prob.float()
            ppo = ppo_clip_loss(log_prob, out.log_probs[:, j], advantages,
                                clip_range=args.clip_range)  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            ppo.loss.backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(params, 1.0)))
            optimizer.step()
            losses.append(float(ppo.loss.detach()))
            kls.append(float(ppo.approx_kl))
            clipped.append(float(ppo.clip_fraction))
            if j == 0:  # nothing has changed since sampling: the ratio is 1
                gap = (log_prob.detach() - out.log_probs[:, j].float()).abs().max()
                history["first_log_ratio"].append(float(gap))
        moved = torch.stack([(p.detach() - b).norm() for p, b in zip(params, before, strict=True)])
        # 6. Log: the window's first step as the rollout recorded it.
        history["window_start"].append(float(out.timesteps[0]))
        history["reward"].append(float(rewards.mean()))
        history["loss"].append(sum(losses) / len(losses))
        history["approx_kl"].append(sum(kls) / len(kls))
        history["clip_fraction"].append(sum(clipped) / len(clipped))
        history["grad_norm"].append(sum(norms) / len(norms))
        history["update_norm"].append(float(moved.norm()))
        print(f"epoch {epoch}: window start {int(out.timesteps[0])}, reward "
              f"{history['reward'][-1]:.4f}, loss {history['loss'][-1]:.4g}")  # fmt: skip
    return history


if __name__ == "__main__":
    print(json.dumps(main()))
