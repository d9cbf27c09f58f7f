"""Per-prompt reward normalization with a history buffer, as pure state (optax-style) and as the
``PerPromptStatTracker`` class of the reference."""

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch

from ddpo._typing import PerSample
from ddpo.core._broadcast import float_dtype

_STD_EPS = 1e-6  # the reference adds this to the standard deviation


class PerPromptStatState(NamedTuple):
    """Immutable state of the per-prompt statistics.

    Attributes:
        buffer_size: the most rewards kept per prompt (oldest dropped first).
        min_count: below this many rewards in its buffer a prompt uses the batch's statistics.
        buffers: ``((prompt, (reward, ...)), ...)``, oldest reward first, prompts in order of
            first appearance.
    """

    buffer_size: int
    min_count: int
    buffers: tuple[tuple[str, tuple[float, ...]], ...] = ()


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std in float64, shifted by the first value (exact for ties)."""
    shift = values[0]
    centered = [v - shift for v in values]
    offset = math.fsum(centered) / len(values)
    variance = math.fsum((c - offset) ** 2 for c in centered) / len(values)
    return shift + offset, math.sqrt(variance)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_sizes(buffer_size: int, min_count: int) -> None:
    if not _is_int(buffer_size) or not buffer_size >= 1:
        raise ValueError(f"buffer_size must be an int >= 1, got buffer_size={buffer_size!r}")
    if not _is_int(min_count) or not 0 <= min_count <= buffer_size:
        raise ValueError(
            f"min_count must be an int with 0 <= min_count <= buffer_size={buffer_size} "
            f"(a larger one would never use the buffer), got min_count={min_count!r}"
        )


def init_per_prompt_stats(*, buffer_size: int = 16, min_count: int = 16) -> PerPromptStatState:
    """Empty per-prompt statistics.

    Args:
        buffer_size: rewards kept per prompt (reference: 16).
        min_count: rewards a prompt needs before its own statistics are used (reference: 16).

    Returns:
        A :class:`PerPromptStatState` with no prompts.

    Raises:
        ValueError: if ``buffer_size < 1`` or ``min_count`` is not in ``[0, buffer_size]``.
    """
    _check_sizes(buffer_size, min_count)
    return PerPromptStatState(buffer_size=buffer_size, min_count=min_count)


def update_per_prompt_stats(
    state: PerPromptStatState, prompts: Sequence[str], rewards: PerSample
) -> tuple[PerSample, PerPromptStatState]:
    """Add a batch's rewards to their prompts' buffers and normalize them per prompt.

    The per-prompt advantage normalization of DDPO (Black et al., 2023, arXiv 2305.13301,
    Sec. 4.3, as in its reference code): for each prompt ``p`` of the batch, its rewards are first
    appended to ``p``'s buffer (at most ``buffer_size``, oldest dropped), then::

        A_i = (r_i - mean(B)) / (std(B) + 1e-6)

    where ``B`` is ``p``'s buffer if it holds at least ``min_count`` rewards and the whole current
    batch otherwise, and ``std`` is the population standard deviation, computed in float64.

    Args:
        state: the statistics so far.
        prompts: the prompt of each sample, ``batch`` strings.
        rewards: one reward per sample, ``(batch,)``, any float dtype.

    Returns:
        ``(advantages, new_state)``: advantages ``(batch,)`` on ``rewards``' device in float32
        (float64 for float64 rewards), and the new state; ``state`` is left unchanged.

    Raises:
        ValueError: if ``prompts`` is a single string or does not hold one prompt per reward, or
            ``rewards`` is empty.
    """
    if isinstance(prompts, str):
        raise ValueError(f"prompts must be a sequence of str, got the str {prompts!r}")
    if len(prompts) != rewards.shape[0] or rewards.shape[0] == 0:
        raise ValueError(
            f"prompts must give one prompt per reward and the batch must not be empty: got "
            f"{len(prompts)} prompts for rewards of shape {tuple(rewards.shape)}"
        )
    values = rewards.detach().to(torch.float64)
    host: list[float] = values.tolist()

    # 1. Append the current rewards to each prompt's buffer.
    buffers = dict(state.buffers)
    by_prompt: dict[str, list[float]] = {}
    for prompt, reward in zip(prompts, host, strict=True):
        by_prompt.setdefault(prompt, []).append(reward)
    for prompt, new in by_prompt.items():
        buffer = deque(buffers.get(prompt, ()), maxlen=state.buffer_size)
        buffer.extend(new)
        buffers[prompt] = tuple(buffer)

    # 2. Each prompt's statistics: its buffer's, or the batch's when the buffer is short.
    batch_stats = _mean_std(host)
    stats = {
        prompt: _mean_std(buffers[prompt])
        if len(buffers[prompt]) >= state.min_count
        else batch_stats
        for prompt in by_prompt
    }

    # 3. Normalize.
    mean = torch.tensor([stats[p][0] for p in prompts], dtype=torch.float64, device=values.device)
    std = torch.tensor([stats[p][1] for p in prompts], dtype=torch.float64, device=values.device)
    advantages = ((values - mean) / (std + _STD_EPS)).to(float_dtype(rewards))
    return advantages, state._replace(buffers=tuple(buffers.items()))


class PerPromptStatTracker:
    """Per-prompt reward normalization with history, the reference's ``PerPromptStatTracker``.

    A mutable wrapper around :func:`init_per_prompt_stats` and :func:`update_per_prompt_stats`;
    the current pure state is :attr:`state`.

    Args:
        buffer_size: rewards kept per prompt (reference: 16).
        min_count: rewards a prompt needs before its own statistics are used (reference: 16).
    """

    def __init__(self, buffer_size: int = 16, min_count: int = 16) -> None:
        self.state = init_per_prompt_stats(buffer_size=buffer_size, min_count=min_count)

    @property
    def buffer_size(self) -> int:
        """The most rewards kept per prompt."""
        return self.state.buffer_size

    @property
    def min_count(self) -> int:
        """Rewards a prompt needs before its own statistics are used."""
        return self.state.min_count

    def update(self, prompts: Sequence[str], rewards: PerSample | Sequence[float]) -> PerSample:
        """Add rewards and return their per-prompt advantages; see
        :func:`update_per_prompt_stats`.

        Args:
            prompts: the prompt of each sample.
            rewards: a ``(batch,)`` float tensor or a sequence of floats (convert numpy arrays
                with ``torch.from_numpy``).

        Returns:
            Advantages ``(batch,)``.
        """
        if not isinstance(rewards, torch.Tensor):
            rewards = torch.tensor(list(rewards), dtype=torch.float64)
        advantages, self.state = update_per_prompt_stats(self.state, prompts, rewards)
        return advantages

    def get_stats(self) -> dict[str, dict[str, float | int]]:
        """Per prompt: the ``mean``, population ``std`` and ``count`` of its buffer."""
        stats: dict[str, dict[str, float | int]] = {}
        for prompt, buffer in self.state.buffers:
            mean, std = _mean_std(buffer)
            stats[prompt] = {"mean": mean, "std": std, "count": len(buffer)}
        return stats

    def clear(self) -> None:
        """Forget every prompt's history."""
        self.state = self.state._replace(buffers=())

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot: ``buffer_size``, ``min_count`` and ``buffers``."""
        return {
            "buffer_size": self.state.buffer_size,
            "min_count": self.state.min_count,
            "buffers": {prompt: list(buffer) for prompt, buffer in self.state.buffers},
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a snapshot made by :meth:`state_dict`.

        Raises:
            ValueError: if ``state_dict`` misses a key, its sizes differ from this tracker's, or a
                buffer is empty or longer than ``buffer_size`` or holds a non-number.
        """
        missing = {"buffer_size", "min_count", "buffers"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict misses the keys {sorted(missing)}")
        for key in ("buffer_size", "min_count"):
            if state_dict[key] != getattr(self, key):
                raise ValueError(
                    f"state_dict[{key!r}]={state_dict[key]!r} differs from this tracker's "
                    f"{key}={getattr(self, key)!r}"
                )
        buffers: list[tuple[str, tuple[float, ...]]] = []
        for prompt, buffer in dict(state_dict["buffers"]).items():
            if not isinstance(prompt, str) or not 1 <= len(buffer) <= self.buffer_size:
                raise ValueError(
                    f"state_dict['buffers'] entry {prompt!r} must be a str key with 1 to "
                    f"buffer_size={self.buffer_size} rewards, got {len(buffer)}"
                )
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in buffer):
                raise ValueError(f"state_dict['buffers'][{prompt!r}] holds a non-number")
            buffers.append((prompt, tuple(float(v) for v in buffer)))
        self.state = self.state._replace(buffers=tuple(buffers))
