"""The layering rules: ``ddpo.core`` imports only torch, jaxtyping, the standard library and
itself (plus ``ddpo._typing``), and importing it pulls in none of the heavy libraries; imports
between the layers point one way (no import loop): the library never imports the scripts that
train or evaluate the packaged model, nor the CLI, and the trainer no concrete model family."""

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


def _module_name(path: Path) -> str:
    """``ddpo.core.ddim`` for ``.../ddpo/core/ddim.py``; a package's ``__init__`` names it."""
    if not path.is_relative_to(PACKAGE):
        return path.stem  # a file outside the package (the checker's own tests)
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[str]:
    """Absolute module names imported by a file, anywhere in it (relative imports resolved).

    ``from a import b`` counts as importing both ``a`` and ``a.b`` (``b`` may be a module).
    """
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
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
SCRIPTS = ("ddpo.models.train_tiny_shapes", "ddpo.models.evaluate_tiny_shapes", "ddpo.cli")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "adapters": SCRIPTS,
    "trainer": (*SCRIPTS, "ddpo.adapters.sd.policy"),  # the boundary's types, no concrete family
    "core": SCRIPTS,
    "rewards": SCRIPTS,
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
def test_library_never_imports_the_scripts_above_it(layer: str, path: Path) -> None:
    names = _imports(path) + _named_modules(path)
    bad = sorted({n for n in names for m in FORBIDDEN[layer] if _within(n, m)})
    assert not bad, f"ddpo/{layer}/{path.name} imports {bad}: imports must point one way"


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
