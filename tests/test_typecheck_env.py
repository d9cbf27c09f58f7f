"""``DDPO_TYPECHECK=1`` turns runtime shape checks on for users; they are off by default."""

import os
import subprocess
import sys

import pytest

# ratio of a (3,) and a (1,) tensor: broadcasts silently unless shapes are checked.
CODE = """
import torch
from ddpo.core import ppo_clip_loss
try:
    ppo_clip_loss(torch.zeros(3), torch.zeros(1), torch.zeros(3), clip_range=0.1)
except TypeError as error:
    print("raised", type(error).__module__, type(error).__name__)
else:
    print("no error")
"""


def _run(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "DDPO_TYPECHECK"}
    if env_value is not None:
        env["DDPO_TYPECHECK"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("value", ["1", "true"])
def test_env_var_turns_shape_checks_on(value: str) -> None:
    assert _run(value) == "raised jaxtyping TypeCheckError"


@pytest.mark.parametrize("value", [None, "0"])
def test_shape_checks_are_off_by_default(value: str | None) -> None:
    assert _run(value) == "no error"
