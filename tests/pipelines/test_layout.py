"""The structure the README's layout section promises, checked on the source."""

import ast
from pathlib import Path

import pytest

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


def _modules():
    return sorted(p for p in PIPELINES.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_function_in_pipelines_is_over_80_lines():
    long = [
        f"{path.relative_to(PIPELINES.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in _modules()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 80
    ]
    assert not long, "split these into named parts: " + "; ".join(long)


@pytest.mark.parametrize("path", sorted((PIPELINES / "steps").glob("*.py")), ids=lambda p: p.name)
def test_no_step_imports_another_step(path):
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "pipelines.steps":
                imported |= {alias.name for alias in node.names}
            elif node.module.startswith("pipelines.steps."):
                imported.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.Import):
            imported |= {a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith("pipelines.steps.")}
    assert not imported - {path.stem}, f"{path.name} imports step(s) {sorted(imported)}: share a helper module instead"


def test_pipelines_has_the_folders_the_readme_names():
    readme = (PIPELINES.parent / "README.md").read_text(encoding="utf-8")
    for folder in ("steps", "data", "model", "io"):
        assert (PIPELINES / folder / "__init__.py").is_file()
        for module in sorted((PIPELINES / folder).glob("*.py")):
            if module.stem != "__init__":
                assert f"`{module.stem}`" in readme, (
                    f"README's layout section does not name pipelines/{folder}/{module.name}"
                )
