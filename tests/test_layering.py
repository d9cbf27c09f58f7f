"""The layering rule: ``ddpo.core`` imports only torch, jaxtyping, the standard library and
itself (plus ``ddpo._typing``), and importing it pulls in none of the heavy libraries."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import ddpo.core

CORE = Path(ddpo.core.__file__).parent
ALLOWED_THIRD_PARTY = {"torch", "jaxtyping"}
ALLOWED_OWN = ("ddpo.core", "ddpo._typing")
HEAVY = ("diffusers", "transformers", "peft", "accelerate")


def _imports(path: Path) -> list[str]:
    """Absolute module names imported by a file (relative imports resolved in ``ddpo.core``)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = "ddpo.core" if path.parent == CORE else "ddpo.core." + path.parent.name
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names.append(f"{base}.{node.module}" if node.module else base)
            else:
                names.append(node.module or "")
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
    assert [n for n in _imports(fake) if not _allowed(n)] == ["numpy", "diffusers"]


def test_importing_core_loads_no_heavy_library() -> None:
    code = (
        "import json, sys; import ddpo.core; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
