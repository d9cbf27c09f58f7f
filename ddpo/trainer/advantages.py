"""Phase 2 of an epoch: the epoch's rewards (gathered from every process) become advantages, and
(``train_drop_zero_advantages``) the samples whose advantage is 0 leave the epoch's training."""

import torch

from ddpo.core import (
    PerPromptStatTracker,
    clip_advantages,
    group_normalize_advantages,
    normalize_advantages,
)


def compute_advantages(
    rewards: torch.Tensor,
    prompts: list[str] | None,
    *,
    mode: str,
    stat_tracker: PerPromptStatTracker | None,
    clip: float,
) -> torch.Tensor:
    """Advantages of ``rewards`` by ``mode``, clipped to ``[-clip, clip]``.

    Args:
        rewards: every process's rewards of the epoch, ``(samples,)``.
        prompts: their prompts (not needed for ``"global"``).
        mode: ``"global"``, ``"per_prompt"`` (with ``stat_tracker``), ``"group"`` or
            ``"group_global"`` (`DDPOConfig.resolved_advantage_mode`).
        stat_tracker: the per-prompt tracker, updated in place (``"per_prompt"`` only).
        clip: ``train_adv_clip_max``.
    """
    if mode == "global":
        advantages = normalize_advantages(rewards)
    else:
        if prompts is None:
            raise ValueError(f"advantage mode {mode!r} needs the prompts")
        if mode == "per_prompt":
            if stat_tracker is None:
                raise ValueError("advantage mode 'per_prompt' needs a PerPromptStatTracker")
            advantages = torch.as_tensor(stat_tracker.update(prompts, rewards), dtype=torch.float32)
        else:
            if len(set(prompts)) == len(prompts):
                raise ValueError(
                    f"advantage_mode={mode!r} normalises within the samples of each prompt, but "
                    f"each of the epoch's {len(prompts)} prompts appears once, so every "
                    "advantage would be 0 and nothing would train: repeat each prompt in the "
                    "epoch (e.g. `ddpo train --prompt_repeats 4`, or a prompt function that "
                    "returns each prompt several times) or set advantage_mode='global'"
                )
            advantages = group_normalize_advantages(
                rewards, prompts, std="global" if mode == "group_global" else "group"
            )
    return clip_advantages(advantages.float(), adv_clip_max=clip)


ZERO_ADVANTAGE_STREAM = 7
"""The seed stream (`ddpo.trainer.rollout.derive_seed`) of the zero-advantage samples kept to
fill the micro-batches (the rollout's streams are 1 to 3)."""


def kept_rows(
    advantages: torch.Tensor, *, num_batches: int, generator: torch.Generator
) -> torch.Tensor:
    """The samples a process trains with ``train_drop_zero_advantages``, in sampling order.

    Flow-GRPO's rule (``scripts/train_sd3.py``): every sample whose advantage is not 0, then
    zero-advantage samples drawn at random (here with ``generator``, so resumes are exact) until
    their number is a multiple of ``num_batches`` (at least ``num_batches``), the process's
    micro-batches per inner epoch, which it keeps: the micro-batches get smaller, not fewer, so
    every process runs the same backward passes and optimizer steps.

    Args:
        advantages: the process's advantages, ``(samples,)``; ``samples`` is a multiple of
            ``num_batches``.
        num_batches: the process's training micro-batches per inner epoch.
        generator: a CPU generator for the zero-advantage samples that fill up.

    Returns:
        Indices into ``advantages``, ascending, ``(kept,)`` int64 on the CPU.
    """
    keep = advantages.detach().cpu() != 0
    kept = int(keep.sum())
    missing = num_batches - kept % num_batches if kept % num_batches or kept == 0 else 0
    zero_rows = torch.nonzero(~keep).flatten()
    if missing:
        keep[zero_rows[torch.randperm(len(zero_rows), generator=generator)[:missing]]] = True
    return torch.nonzero(keep).flatten()


def num_dropped(advantages_all: torch.Tensor, *, num_processes: int, num_batches: int) -> int:
    """How many of the epoch's samples (all processes) `kept_rows` leaves out: per process, the
    zero-advantage samples not drawn to fill its micro-batches (a count, not which ones)."""
    dropped = 0
    for advantages in advantages_all.reshape(num_processes, -1):
        kept = int((advantages != 0).sum())
        filled = (
            kept
            if kept % num_batches == 0 and kept > 0
            else kept + (num_batches - kept % num_batches)
        )
        dropped += int(advantages.numel()) - filled
    return dropped


__all__ = ["ZERO_ADVANTAGE_STREAM", "compute_advantages", "kept_rows", "num_dropped"]
