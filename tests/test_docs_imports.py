"""Every import the README and docs show in their Python examples works as written."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _imports() -> list[tuple[str, str, str]]:
    """(page, module, name) of each ``from trajwatch... import name`` in a python block."""
    found = []
    for page in PAGES:
        for block in _BLOCK.findall(page.read_text(encoding="utf-8")):
            try:
                tree = ast.parse(block)
            except SyntaxError:  # a fragment (a session transcript, "..."): its lines alone
                tree = ast.parse("\n".join(
                    line for line in block.splitlines() if line.startswith(("from ", "import "))
                ))  # fmt: skip
            for node in ast.walk(tree):
                if not isinstance(node, ast.ImportFrom):
                    continue
                module = node.module or ""
                if module.startswith("trajwatch"):
                    found += [(page.name, module, alias.name) for alias in node.names]
    return found


IMPORTS = _imports()


def test_the_docs_show_imports() -> None:
    assert len(IMPORTS) >= 10  # the extraction itself works


@pytest.mark.parametrize(("page", "module", "name"), IMPORTS)
def test_a_documented_import_works(page: str, module: str, name: str) -> None:
    assert hasattr(importlib.import_module(module), name), f"{page}: from {module} import {name}"
