"""Shared helpers for the core tests: the TRL reference fixtures and a random DDIM step."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="session")
def trl_reference() -> dict[str, Any]:
    """``trl_reference.json``: outputs of TRL 0.11.4 (see ``tests/fixtures/README.md``)."""
    return json.loads((FIXTURES / "trl_reference.json").read_text())


@pytest.fixture(scope="session")
def trl_ddim_tensors() -> dict[str, torch.Tensor]:
    """``trl_ddim_logprob.safetensors``: the four DDIM cases' tensors, keyed ``<case>.<name>``."""
    return load_file(FIXTURES / "trl_ddim_logprob.safetensors")
