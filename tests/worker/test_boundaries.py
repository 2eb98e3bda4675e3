"""The layers import only downwards: the domain (services/, models/) knows
nothing of the worker runtime or the tasks, and the frontend client knows
nothing of vigil at all."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("worker", "tasks", "services", "models", "stack", "cli", "vigil_client")


def imported_roots(folder: Path) -> dict[str, set[str]]:
    """Each file's imported top-level packages that are vigil's own."""
    out: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        roots: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                roots.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots.add(node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = roots & set(OURS)
    return out


@pytest.mark.parametrize(
    ("folder", "allowed"),
    [
        ("services", {"services", "models", "vigil_client"}),
        ("models", {"models"}),
        ("clients/python/vigil_client", {"vigil_client"}),
        ("worker", {"worker", "services", "models", "vigil_client"}),
    ],
)
def test_imports_go_downwards(folder, allowed):
    found = {
        path: sorted(roots - allowed)
        for path, roots in imported_roots(ROOT / folder).items()
        if roots - allowed
    }
    assert found == {}


def test_the_domain_names_no_task():
    """Which task a payload is dead-lettered under is the runtime's call
    (worker/settle.py): no task name appears in services/ code (prose aside)."""
    found = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and node.value.startswith(("vigil.ingest.", "vigil.admin.", "vigil.periodic."))
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
        if "names.INGEST_" in path.read_text() or "names.ADMIN_" in path.read_text():
            found.append(str(path.relative_to(ROOT)))
    assert found == []
