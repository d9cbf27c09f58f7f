"""Phase 2 of an epoch: the epoch's rewards (gathered from every process) become advantages."""

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


__all__ = ["compute_advantages"]
