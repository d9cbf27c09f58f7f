"""Argument checks and helpers every model family uses (prompts, sizes, output types, wrapped
modules)."""

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
