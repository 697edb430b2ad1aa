"""Nothing in trajwatch unpickles: a scan of the source, and the lint rule that guards it.

Unpickling runs code chosen by whoever wrote the bytes, so a frame, a state file or a
model from elsewhere must never go through it. The scan reads the syntax tree of every
Python file we ship or run (src, benchmarks, scripts, fuzz) and rejects:

- importing pickle, cPickle, _pickle, dill, cloudpickle, joblib, shelve or marshal;
- ``send_pyobj``/``recv_pyobj`` (pyzmq's pickling calls), pandas' ``read_pickle``;
- ``torch.load(...)`` without ``weights_only=True`` (literally True, so it can be read here);
- ``np.load(..., allow_pickle=True)``.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("src", "benchmarks", "scripts", "fuzz")
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve"}
BANNED_MODULES |= {"marshal"}
BANNED_CALLS = {"send_pyobj", "recv_pyobj", "read_pickle", "to_pickle"}


def python_files() -> list[Path]:
    return sorted(p for d in SCANNED if (ROOT / d).is_dir() for p in (ROOT / d).rglob("*.py"))


def _is_true(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def violations(source: str, name: str = "<string>") -> list[str]:
    """Every use of pickle this scan can see in ``source``, as ``name:line: what``."""
    found: list[str] = []
    torch_load = {"torch.load"}  # names under which torch.load is reachable
    numpy_load = {"np.load", "numpy.load"}
    tree = ast.parse(source, name)
    nodes = list(ast.walk(tree))
    for node in nodes:  # first the imports: the names under which the loaders are reachable
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in BANNED_MODULES:
                found.append(f"{name}:{node.lineno}: imports {node.module}")
            for alias in node.names:
                if node.module == "torch" and alias.name == "load":
                    torch_load.add(alias.asname or "load")
                if node.module == "numpy" and alias.name == "load":
                    numpy_load.add(alias.asname or "load")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in BANNED_MODULES:
                    found.append(f"{name}:{node.lineno}: imports {alias.name}")
                if alias.name == "torch" and alias.asname:
                    torch_load.add(f"{alias.asname}.load")
                if alias.name == "numpy" and alias.asname:
                    numpy_load.add(f"{alias.asname}.load")
    for node in nodes:
        if not isinstance(node, ast.Call):
            continue
        called = _dotted(node.func)
        if called.rsplit(".", 1)[-1] in BANNED_CALLS:
            found.append(f"{name}:{node.lineno}: calls {called}")
        elif called in torch_load:
            weights_only = _keyword(node, "weights_only")
            if weights_only is None or not _is_true(weights_only):
                found.append(f"{name}:{node.lineno}: {called} without weights_only=True")
        elif called in numpy_load:
            allow = _keyword(node, "allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and not allow.value):
                found.append(f"{name}:{node.lineno}: {called} with allow_pickle")
        elif called in ("__import__", "importlib.import_module") and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and str(arg.value) in BANNED_MODULES:
                found.append(f"{name}:{node.lineno}: imports {arg.value}")
    return sorted(found, key=lambda v: int(v.split(":")[1]))


def test_the_scan_sees_every_kind_of_pickling() -> None:
    bad = """
import pickle
import dill as d
from joblib import load
import torch
import torch as T
from torch import load as tl
import numpy as np
sock.recv_pyobj()
sock.send_pyobj(x)
torch.load("m.pt")
torch.load("m.pt", weights_only=False)
T.load("m.pt")
tl("m.pt", weights_only=flag)
np.load("a.npy", allow_pickle=True)
__import__("marshal")
"""
    found = violations(bad)
    lines = [int(v.split(":")[1]) for v in found]
    assert lines == [2, 3, 4, 9, 10, 11, 12, 13, 14, 15, 16], found  # all but torch/numpy imports
    good = """
import torch
import numpy as np
torch.load("m.pt", map_location="cpu", weights_only=True)
np.load("a.npz", allow_pickle=False)
np.load("a.npy")
sock.send_multipart(parts)
"""
    assert violations(good) == []


def test_no_pickle_anywhere_in_the_code() -> None:
    files = python_files()
    assert any(p.name == "protocol.py" for p in files)  # the scan really reads src
    found = [v for p in files for v in violations(p.read_text(), str(p.relative_to(ROOT)))]
    assert found == []


def test_the_lint_rule_rejects_pickle(tmp_path: Path) -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed")
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nimport joblib\n\nx = pickle.loads(b'')\n")
    result = subprocess.run(
        [ruff, "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout.count("TID251") == 2, result.stdout
