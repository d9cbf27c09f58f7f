"""What every test shares: one thread per test process, the number of parallel test processes
that ``-n auto`` starts, and one temporary cache of the built-in tiny models for the session."""

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Variables that size the thread pools of torch's OpenMP/MKL backends and of BLAS; set before
# torch is imported, they hold in this process and in every subprocess a test starts.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def pytest_configure(config: pytest.Config) -> None:
    """One intra-op thread per test process (and per subprocess a test starts): the tiny models
    gain nothing from more, and with several test processes on a shared machine more threads
    than cores only contend (on a busy 2-core machine an epoch ran 10 times slower)."""
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    if "torch" in sys.modules:  # imported already (by a plugin): set its pool directly
        sys.modules["torch"].set_num_threads(1)


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask, capped by a cgroup v2 CPU
    quota where one is set (a container's ``--cpus``), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``pytest -n auto`` starts one test process per usable core (pytest-xdist's own count asks
    psutil for the machine's physical cores, which ignores the affinity mask and quotas);
    ``PYTEST_XDIST_AUTO_NUM_WORKERS`` still overrides it."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # pytest-xdist's own implementation reads it
    return usable_cores()


# The modules that take longest (seconds of one process, measured on a 2-core machine), run
# first: pytest-xdist hands modules out in collection order (``--no-loadscope-reorder`` in
# ``noxfile.py``), so that the long ones start while the short ones can still fill the other
# processes' time, instead of one long module running alone at the end. A module missing from
# the list only runs in its collection order.
LONGEST_FIRST = (
    "tests/trainer/test_speed.py",  # compiles SD's blocks once, then reuses them (about 120 s)
    "tests/cli/test_cli_run.py",
    "tests/trainer/test_scale_out.py",
    "tests/benchmarks/test_bench_ablation.py",
    "tests/benchmarks/test_bench_smoke.py",
    "tests/trainer/test_faults.py",
    "tests/trainer/test_trainer.py",
    "tests/trainer/test_graph_breaks.py",
    "tests/models/test_tiny_shapes_model.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The modules of `LONGEST_FIRST` first, in its order; each module's tests keep theirs."""
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's cache folder for the built-in tiny models.

    Under pytest-xdist every test process gets a base temporary folder of its own inside the
    run's, so the processes share the run's folder (the parent of theirs) and each model is built
    once per run. Building needs no lock: the library writes a model into a temporary sibling
    folder and renames it into place, so a process never sees half a model, and when two build
    the same model at once (a fraction of a second each) the second rename fails and its copy is
    discarded.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # one process (no -n)
        return tmp_path_factory.mktemp("ddpo-cache")
    folder = tmp_path_factory.getbasetemp().parent / "ddpo-cache"
    folder.mkdir(exist_ok=True)
    return folder


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
