"""Save and load detector state by path: ``.npz`` (arrays as arrays) or ``.json``.

State is a tree of JSON values and NumPy arrays, with a ``"type"`` key naming a
registered class (:data:`trajwatch.detectors.base.REGISTRY`). In ``.npz`` the tree is
stored as a JSON string under ``__state__`` and each array under its own key; in
``.json`` arrays are written inline as ``{"__array__": {"dtype", "shape", "data"}}``.
Nothing is ever pickled: loading uses ``allow_pickle=False`` and only rebuilds
registered classes.

>>> import numpy as np, os, tempfile
>>> from trajwatch.detectors.zscore import ZScore
>>> det = ZScore()
>>> for v in np.random.default_rng(0).normal(size=(50, 3)):
...     det.learn_one(v)
>>> path = save(det, os.path.join(tempfile.mkdtemp(), "z.npz"))
>>> again = load(path)
>>> again.score_one(np.ones(3)) == det.score_one(np.ones(3))
True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from trajwatch.detectors.base import REGISTRY

__all__ = ["FORMAT", "from_tree", "load", "save", "to_tree"]

FORMAT = "trajwatch-state/1"


def save(obj: Any, path: str | Path) -> Path:
    """Write ``obj.get_state()`` to ``path`` (``.json`` for JSON, else ``.npz``)."""
    path = Path(path)
    tree = {"format": FORMAT, "state": obj.get_state()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(_inline(tree)), encoding="utf-8")
        return path
    arrays: dict[str, np.ndarray] = {}
    skeleton = _extract(tree, arrays, "")
    arrays["__state__"] = np.array(json.dumps(skeleton))
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]
    return path


def load(path: str | Path) -> Any:
    """Rebuild the object saved at ``path``."""
    path = Path(path)
    if path.suffix == ".json":
        tree = _restore_inline(json.loads(path.read_text(encoding="utf-8")))
    else:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        tree = _restore(json.loads(str(arrays.pop("__state__"))), arrays)
    if not isinstance(tree, dict) or tree.get("format") != FORMAT:
        raise ValueError(f"{path} is not a trajwatch state file ({FORMAT})")
    return from_tree(tree["state"])


def to_tree(obj: Any) -> dict[str, Any]:
    """The state of a registered object (its ``get_state()``)."""
    state: dict[str, Any] = obj.get_state()
    return state


def from_tree(tree: dict[str, Any]) -> Any:
    """Rebuild a registered object from its state."""
    name = tree.get("type")
    cls = REGISTRY.get(str(name))
    if cls is None:
        raise ValueError(f"unknown state type {name!r}; known: {sorted(REGISTRY)}")
    return cls.from_state(tree)


def _extract(node: Any, arrays: dict[str, np.ndarray], prefix: str) -> Any:
    if isinstance(node, np.ndarray):
        key = prefix or "root"
        arrays[key] = node
        return {"__array__": key}
    if isinstance(node, dict):
        return {k: _extract(v, arrays, f"{prefix}/{k}") for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_extract(v, arrays, f"{prefix}/{i}") for i, v in enumerate(node)]
    return _plain(node)


def _restore(node: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(node, dict):
        if set(node) == {"__array__"}:
            return arrays[node["__array__"]]
        return {k: _restore(v, arrays) for k, v in node.items()}
    if isinstance(node, list):
        return [_restore(v, arrays) for v in node]
    return node


def _inline(node: Any) -> Any:
    if isinstance(node, np.ndarray):
        return {
            "__array__": {
                "dtype": node.dtype.str,
                "shape": list(node.shape),
                "data": node.ravel().tolist(),
            }
        }
    if isinstance(node, dict):
        return {k: _inline(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_inline(v) for v in node]
    return _plain(node)


def _restore_inline(node: Any) -> Any:
    if isinstance(node, dict):
        if set(node) == {"__array__"}:
            spec = node["__array__"]
            dtype = np.dtype(spec["dtype"])
            if dtype.hasobject:
                raise ValueError("object arrays are not allowed in state files")
            return np.array(spec["data"], dtype=dtype).reshape(spec["shape"])
        return {k: _restore_inline(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_restore_inline(v) for v in node]
    return node


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value
