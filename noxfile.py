"""Development sessions: tests, lint, typecheck, bench and demo (`nox -s NAME`).

torch is installed first from ``DDPO_TORCH`` (default ``torch==2.13.0``, the CPU build that this
project's machines keep on disk); ``pyproject.toml`` itself only asks for a version range.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint", "typecheck"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
TORCH = os.environ.get("DDPO_TORCH", "torch==2.13.0")


def _install(session: nox.Session, *groups: str) -> None:
    session.install("--upgrade", "pip")
    session.install(TORCH)
    requirements = [r for g in groups for r in nox.project.dependency_groups(PYPROJECT, g)]
    session.install("-e", ".", *requirements)


# The reward models' original packages, which tests/rewards/originals.py runs in a subprocess to
# compare our rewards with. They go into a folder of their own, never into the session's
# environment: torchvision's registry build cannot load beside the CPU torch, and transformers
# imports any torchvision it finds.
REFERENCE_PACKAGES = (
    "torchvision==0.28.0",
    "open-clip-torch==3.3.0",
    "hpsv2==1.2.0",
    "image-reward==1.5",
    "torchmetrics==1.9.0",
    "lightning-utilities==0.15.3",
    "einops==0.8.2",
    "timm==0.6.13",
)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (runtime shape checks on); extra arguments go to pytest."""
    _install(session, "test")
    reference = os.path.join(session.virtualenv.location, "reference-packages")
    session.install("--no-deps", "--upgrade", "--target", reference, *REFERENCE_PACKAGES)
    # One test process per usable core (tests/conftest.py counts them and gives each one
    # thread), each module's tests in one process, so that a module-scoped fixture (a training
    # run, a benchmark, a subprocess several tests read) is computed once (--dist loadscope),
    # handed out in collection order, which puts the longest modules first (tests/conftest.py);
    # the 25 slowest tests are listed. Arguments after `--` override these (`-n 0`: one process).
    session.run(
        "pytest",
        "-n",
        "auto",
        "--dist",
        "loadscope",
        "--no-loadscope-reorder",
        "--durations=25",
        *session.posargs,
        env={"DDPO_REFERENCE_PACKAGES": reference, "OMP_NUM_THREADS": "1"},
    )


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and common bugs with ruff."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", "ddpo", "tests", "benchmarks", "examples", "noxfile.py")
    session.run(
        "ruff", "format", "--check", "ddpo", "tests", "benchmarks", "examples", "noxfile.py"
    )


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the package with mypy in strict mode."""
    _install(session, "typecheck")
    session.run("mypy", *session.posargs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Run the benchmarks (CPU preset by default); extra arguments go to benchmarks/run.py."""
    _install(session, "bench")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session(default=False)
def learning(session: nox.Session) -> None:
    """The learning benchmark (benchmarks/bench_learning.py): held-out reward of the default
    run against samples and seconds, over seeds; extra arguments go to it."""
    _install(session, "bench")
    session.run("python", "benchmarks/bench_learning.py", *session.posargs)


FLOW_DEMO = (
    "--preset=flow_grpo_tiny",
    "--sde_window_size=2",
    "--ddpo_config.log_with=None",
    "--ddpo_config.save_freq=0",
)
"""``nox -s demo -- flow``: Flow-GRPO-Fast (a stochastic window of 2 of the 10 steps) on
``ddpo-tiny-shapes-flow``, the preset's 18 epochs of 128 images (README, "Quick start")."""

FLOW_DEMO_EVAL = ("--num_prompts=48", "--num_inference_steps=10", "--guidance_scale=1")
"""The held-out evaluation after the flow demo: 48 ``shapes_heldout`` captions, the ODE at the
run's 10 steps and guidance 1, the fine-tuned model against its base on the same noise."""


@nox.session(default=False)
def demo(session: nox.Session) -> None:
    """Run the default DDPO training job (`ddpo train`); extra arguments go to the CLI.

    ``nox -s demo -- flow [flags]``: Flow-GRPO on ``ddpo-tiny-shapes-flow`` instead (extra
    flags go to ``ddpo train``), then ``ddpo eval`` of its ``final/`` against the base model on
    held-out prompts (the base's figures are the "before")."""
    _install(session)
    if session.posargs[:1] != ["flow"]:
        session.run("ddpo", "train", *session.posargs)
        return
    run = Path("logs") / time.strftime("flow_demo_%Y%m%d_%H%M%S")
    session.run("ddpo", "train", *FLOW_DEMO, f"--ddpo_config.output_dir={run}",
                *session.posargs[1:])  # fmt: skip
    session.run("ddpo", "eval", f"--model={run / 'final'}", "--base=ddpo-tiny-shapes-flow",
                f"--out={run / 'eval'}", *FLOW_DEMO_EVAL)  # fmt: skip
