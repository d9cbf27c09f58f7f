"""What every test shares: a private cache of the built-in tiny models for the session."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private cache folder for this session's tiny models."""
    return tmp_path_factory.mktemp("ddpo-cache")


@pytest.fixture(scope="session", autouse=True)
def _private_model_cache(tiny_cache: Path) -> Iterator[None]:
    """Built-in model names (``ddpo-tiny-random``, ...) build into the session's folder, not the
    user's ``~/.cache/ddpo``: a test writes nothing outside its temporary folders, and each model
    is built once per session (subprocesses inherit the variable)."""
    before = os.environ.get("DDPO_CACHE_DIR")
    os.environ["DDPO_CACHE_DIR"] = str(tiny_cache)
    yield
    if before is None:
        del os.environ["DDPO_CACHE_DIR"]
    else:
        os.environ["DDPO_CACHE_DIR"] = before
