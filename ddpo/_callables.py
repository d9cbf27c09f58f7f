"""Helpers about the user's callables in general (reward, prompt and hook functions alike)."""

from typing import Any

__all__ = ["callable_name"]


def callable_name(fn: Any) -> str:
    """A readable name of a function or callable object, for error messages."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return str(name or type(fn).__qualname__)
