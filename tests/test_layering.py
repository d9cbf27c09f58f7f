"""The layering rules: ``ddpo.core`` imports only torch, jaxtyping, the standard library and
itself (plus ``ddpo._typing``), and importing it pulls in none of the heavy libraries; imports
between the layers point one way: the library never imports the scripts that train or evaluate
the packaged model, nor the CLI, the trainer no module of ``ddpo.adapters`` (it speaks to models
through ``ddpo.policy``), the rewards nothing of the trainer; and no import cycle exists between
the modules of the package."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import ddpo
import ddpo.core

PACKAGE = Path(ddpo.__file__).parent
CORE = Path(ddpo.core.__file__).parent
ALLOWED_THIRD_PARTY = {"torch", "jaxtyping"}
ALLOWED_OWN = ("ddpo.core", "ddpo._typing")
HEAVY = ("diffusers", "transformers", "peft", "accelerate")
TYPE_CHECKING = ("TYPE_CHECKING", "typing.TYPE_CHECKING")
"""The tests of an ``if`` whose body only type checkers run."""


def _module_name(path: Path, package_dir: Path = PACKAGE) -> str:
    """``ddpo.core.ddim`` for ``.../ddpo/core/ddim.py``; a package's ``__init__`` names it.

    ``package_dir`` is the top package's folder (another one in the checker's own tests).
    """
    if not path.is_relative_to(package_dir):
        return path.stem  # a file outside the package (the checker's own tests)
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, package_dir: Path = PACKAGE, *, type_checking: bool = True) -> list[str]:
    """Absolute module names imported by a file, anywhere in it (relative imports resolved).

    ``from a import b`` counts as importing both ``a`` and ``a.b`` (``b`` may be a module).
    ``type_checking=False`` leaves out what only type checkers import (``if TYPE_CHECKING:``).
    """
    package = _module_name(path, package_dir)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped: set[int] = set()
    if not type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and ast.unparse(node.test) in TYPE_CHECKING:
                skipped |= {id(inner) for child in node.body for inner in ast.walk(child)}
    names = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
    return names


def _allowed(name: str) -> bool:
    top = name.split(".")[0]
    if top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY:
        return True
    return any(name == own or name.startswith(own + ".") for own in ALLOWED_OWN)


MODULES = sorted(CORE.rglob("*.py"))


def test_core_has_modules() -> None:
    names = {p.stem for p in MODULES}
    assert {"ddim", "ppo", "advantages", "per_prompt", "kl", "timesteps"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_core_module_imports_only_allowed_packages(path: Path) -> None:
    bad = [name for name in _imports(path) if not _allowed(name)]
    assert not bad, f"{path.name} imports {bad}; ddpo.core may import only torch, jaxtyping, stdlib"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_core_module_has_no_postponed_annotations(path: Path) -> None:
    """``from __future__ import annotations`` would turn jaxtyping checks off silently."""
    tree = ast.parse(path.read_text())
    futures = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "__future__"
        for alias in node.names
    ]
    assert "annotations" not in futures


def test_the_checker_itself_flags_a_forbidden_import(tmp_path: Path) -> None:
    fake = tmp_path / "bad.py"
    fake.write_text("import numpy\nfrom diffusers import DDIMScheduler\nimport torch\n")
    bad = [n for n in _imports(fake) if not _allowed(n)]
    assert bad == ["numpy", "diffusers", "diffusers.DDIMScheduler"]


def test_importing_core_loads_no_heavy_library() -> None:
    code = (
        "import json, sys; import ddpo.core; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


# The library below the CLI: what the runtime imports. Each layer with the modules of ``ddpo``
# it must never import (a name and everything inside it), so imports point one way only.
SCRIPTS = (
    "ddpo.models.train_tiny_shapes",
    "ddpo.models.train_tiny_shapes_flow",
    "ddpo.models.evaluate_tiny_shapes",
    "ddpo.cli",
)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "adapters": SCRIPTS,
    "trainer": (*SCRIPTS, "ddpo.adapters"),  # the boundary is ddpo.policy, no adapter
    "core": SCRIPTS,
    "rewards": (*SCRIPTS, "ddpo.trainer"),  # the reward contract is ddpo.rewards.contract
    # an objective composes core and the boundary's members: no family, no loop, no reward
    "objectives": (*SCRIPTS, "ddpo.trainer", "ddpo.adapters", "ddpo.rewards"),
    # held-out evaluation samples through the boundary and scores through the reward contract
    "evaluation": (*SCRIPTS, "ddpo.trainer", "ddpo.adapters"),
}
LIBRARY = sorted((layer, path) for layer in FORBIDDEN for path in (PACKAGE / layer).rglob("*.py"))


def _within(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def _named_modules(path: Path) -> list[str]:
    """String constants that name a module of ``ddpo`` (as given to ``importlib``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith("ddpo.")
        and node.value.replace(".", "").replace("_", "").isalnum()
    ]


def test_the_layers_have_modules() -> None:
    found = {layer for layer, _ in LIBRARY}
    assert found == set(FORBIDDEN)
    assert (PACKAGE / "models" / "train_tiny_shapes.py").is_file()  # what the rule is about


@pytest.mark.parametrize(
    ("layer", "path"),
    LIBRARY,
    ids=[f"{layer}/{p.relative_to(PACKAGE / layer)}" for layer, p in LIBRARY],
)
def test_library_never_imports_the_layers_above_it(layer: str, path: Path) -> None:
    bad = _forbidden_imports(layer, path)
    assert not bad, f"ddpo/{layer}/{path.name} imports {bad}: imports must point one way"


def _forbidden_imports(layer: str, path: Path) -> list[str]:
    """The modules of ``FORBIDDEN[layer]`` that ``path`` imports or names for importlib."""
    names = _imports(path) + _named_modules(path)
    return sorted({n for n in names for m in FORBIDDEN[layer] if _within(n, m)})


def test_the_checker_flags_the_trainer_importing_an_adapter_and_rewards_the_trainer(
    tmp_path: Path,
) -> None:
    trainer = tmp_path / "trainer.py"
    trainer.write_text(
        "from ddpo.policy import DiffusionPolicy\n"
        "def load():\n    from ddpo.adapters.sd import policy\n"
        "FAMILY = 'ddpo.adapters.flux.policy'\n"
    )
    assert _forbidden_imports("trainer", trainer) == [
        "ddpo.adapters.flux.policy",
        "ddpo.adapters.sd",
        "ddpo.adapters.sd.policy",
    ]
    reward = tmp_path / "reward.py"
    reward.write_text(
        "from ddpo.rewards.contract import check_rewards\nimport ddpo.trainer.contract\n"
    )
    assert _forbidden_imports("rewards", reward) == ["ddpo.trainer.contract"]
    assert _forbidden_imports("trainer", reward) == []  # the trainer may import the rewards


def test_the_packaged_model_package_imports_nothing_of_ddpo() -> None:
    """The registry finds the packaged weights in ``ddpo.models``: that must not import adapters."""
    names = _imports(PACKAGE / "models" / "__init__.py")
    assert not [n for n in names if _within(n, "ddpo")]


def test_the_scripts_import_the_adapters_not_the_reverse() -> None:
    """The training script builds its model with the adapters' builder (one tiny-model builder)."""
    names = _imports(PACKAGE / "models" / "train_tiny_shapes.py")
    assert "ddpo.adapters.sd.tiny.tiny_unet" in names


def test_the_checker_sees_imports_inside_functions_and_importlib_names(tmp_path: Path) -> None:
    fake = tmp_path / "fake.py"
    fake.write_text(
        "def f():\n    from ddpo.models import train_tiny_shapes\nLAZY = {'x': 'ddpo.cli'}\n"
    )
    names = _imports(fake) + _named_modules(fake)
    assert "ddpo.models.train_tiny_shapes" in names and "ddpo.cli" in names


def _import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Each module of the package with the modules of the package it imports when it runs,
    anywhere in it (inside functions too; not under ``if TYPE_CHECKING:``, which never runs).

    A package's ``__init__`` is a module (the package's name); ``from a import b`` imports ``a``,
    and ``a.b`` only when ``a/b.py`` or ``a/b/`` exists (else ``b`` is a name inside ``a``).
    """
    files = sorted(package_dir.rglob("*.py"))
    modules = {_module_name(path, package_dir): path for path in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported = {n for n in _imports(path, package_dir, type_checking=False) if n in modules}
        graph[name] = imported - {name}  # a package's __init__ importing its own names
    return graph


def _import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through each group of modules that import each other (sorted)."""
    # 1. Strongly connected components (Tarjan), iteratively.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    components.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    # 2. In each component of several modules, the shortest cycle through its first module.
    cycles = []
    for component in components:
        if len(component) < 2:
            continue
        start = min(component)
        parent: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in parent:
            following = []
            for node in frontier:
                for child in sorted(graph[node] & component):
                    if child not in parent:
                        parent[child] = node
                        following.append(child)
            frontier = following
        cycle = [start]
        while parent[cycle[-1]] != start:
            cycle.append(parent[cycle[-1]])
        cycles.append([start, *reversed(cycle[1:])])
    return sorted(cycles)


def test_no_import_cycle_between_modules() -> None:
    cycles = _import_cycles(_import_graph(PACKAGE))
    shown = "\n".join(" -> ".join([*cycle, cycle[0]]) for cycle in cycles)
    assert not cycles, f"modules of ddpo that import each other (directly or not):\n{shown}"


def test_the_cycle_checker_finds_cycles_through_lazy_imports_and_packages(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from pkg.sub import helper\n",  # imports pkg.sub, whose helper.py...
        "sub/__init__.py": "",
        "sub/helper.py": "def f():\n    from pkg import name\n",  # ... imports pkg: a cycle
        "a.py": "from pkg import b\n",  # b is a module: a imports pkg.b
        "b.py": "from . import c\nimport json\n",
        "c.py": "def g():\n    import pkg.a\n",  # a lazy import closes a -> b -> c -> a
        "d.py": "from pkg.e import e_name\n",  # e_name is no module: no edge to pkg.e.e_name
        "e.py": "from pkg.d import d_name\nfrom pkg import e\n",  # d <-> e; pkg.e imports itself
        "f.py": "import typing\nif typing.TYPE_CHECKING:\n    from pkg.g import G\n",  # no edge
        "g.py": "from pkg.f import F\n",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    graph = _import_graph(package)
    assert graph["pkg"] == {"pkg.sub", "pkg.sub.helper"} and graph["pkg.sub"] == set()
    assert graph["pkg.b"] == {"pkg", "pkg.c"} and graph["pkg.d"] == {"pkg.e"}
    assert graph["pkg.f"] == set() and graph["pkg.g"] == {"pkg.f"}
    assert _import_cycles(graph) == [
        ["pkg", "pkg.sub.helper"],
        ["pkg.a", "pkg.b", "pkg.c"],
        ["pkg.d", "pkg.e"],
    ]
    (package / "c.py").write_text("import pkg.sub\n")
    (package / "e.py").write_text("X = 1\n")
    assert _import_cycles(_import_graph(package)) == [["pkg", "pkg.sub.helper"]]
