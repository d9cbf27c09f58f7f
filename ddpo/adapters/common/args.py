"""Argument checks and helpers every model family uses (prompts, sizes, output types, wrapped
modules)."""

from collections.abc import Sequence
from typing import Any

from torch import nn

OUTPUT_TYPES = ("pil", "pt", "np", "latent")


Size = tuple[int, int]
"""``(height, width)`` in pixels."""


def check_size(value: Any, name: str) -> Size | None:
    """``value`` (one int, or ``(height, width)`` of non-negative ints, or ``None``) as a pair.

    Raises:
        ValueError: naming ``name`` and the value.
    """
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        raise ValueError(f"{name} must be (height, width) of non-negative ints, got {value!r}")
    return int(value[0]), int(value[1])


def check_resolution(value: Any) -> Size | None:
    """A pipeline's ``resolution`` argument: ``None`` or a positive multiple of 8 per side.

    Raises:
        ValueError: naming ``resolution`` and the value.
    """
    size = check_size(value, "resolution")
    if size is not None and (min(size) <= 0 or size[0] % 8 or size[1] % 8):
        raise ValueError(f"resolution must be positive multiples of 8, got {value!r}")
    return size


def check_call_size(
    height: Any, width: Any, *, default: Size, multiple: int, why: str = ""
) -> Size:
    """A sampling call's ``height`` and ``width`` in pixels (``None``: the side of ``default``),
    each checked to be a positive int multiple of ``multiple`` before any model work.

    Args:
        height, width: the call's arguments.
        default: the policy's ``(height, width)`` (its resolution).
        multiple: what each side must be a multiple of (the VAE factor, times the patch size
            or the packing where the family has them).
        why: the reason for ``multiple``, appended to the message.

    Raises:
        ValueError: naming ``height`` or ``width`` and the value.
    """
    sides = []
    for name, value, fallback in (("height", height, default[0]), ("width", width, default[1])):
        if value is None:
            sides.append(int(fallback))
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % multiple:
            reason = f" ({why})" if why else ""
            raise ValueError(
                f"{name} must be a positive multiple of {multiple} pixels{reason}, got "
                f"{name}={value!r}"
            )
        sides.append(int(value))
    return sides[0], sides[1]


def check_grad_steps(grad_steps: Any, num_steps: int) -> int:
    """``grad_steps`` of a rollout: an int in ``[0, num_steps]`` (the final steps whose graph is
    kept).

    Raises:
        ValueError: naming ``grad_steps``, its value and ``num_steps``.
    """
    if (
        isinstance(grad_steps, bool)
        or not isinstance(grad_steps, int)
        or not 0 <= grad_steps <= num_steps
    ):
        raise ValueError(
            f"grad_steps must be an int in [0, num_steps={num_steps}] (the final denoising "
            f"steps whose graph is kept), got grad_steps={grad_steps!r}"
        )
    return grad_steps


def check_prompts(prompt: Any, *, name: str = "prompt") -> list[str]:
    """``prompt`` as a list of strings; a single string becomes a one-element list.

    Raises:
        TypeError: if ``prompt`` is neither a string nor a list/tuple of strings (naming it).
    """
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt):
        if not prompt:
            raise ValueError(f"{name} must not be empty, got {prompt!r}")
        return list(prompt)
    bad = [p for p in prompt if not isinstance(p, str)] if isinstance(prompt, (list, tuple)) else []
    detail = f" (non-string items: {bad[:3]!r})" if bad else ""
    raise TypeError(f"{name} must be a string or a list of strings, got {prompt!r}{detail}")


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside DDP/FSDP/``torch.compile`` wrappers."""
    while True:
        if hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        elif hasattr(module, "module") and isinstance(module.module, nn.Module):
            module = module.module
        else:
            return module


def check_one_generator_per_prompt(prompts: Sequence[str], generators: Sequence[Any]) -> None:
    """ValueError unless there is one generator per prompt (``deterministic_images``: image
    ``i``'s initial noise is drawn by ``generators[i]``)."""
    if len(generators) != len(prompts):
        raise ValueError(
            f"deterministic_images needs one generator per prompt, got {len(generators)} "
            f"for {len(prompts)} prompts"
        )
