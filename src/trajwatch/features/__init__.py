"""trajwatch.features: the incremental feature engine and its catalogue.

>>> from trajwatch.features import FEATURE_NAMES, FeatureEngine
>>> FeatureEngine().names == FEATURE_NAMES
True

The engine is imported on first use, so ``trajwatch.features.catalogue`` alone does not
load the Numba kernels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trajwatch.features.engine import FEATURE_NAMES, Attribution, FeatureEngine, warmup

__all__ = ["FEATURE_NAMES", "Attribution", "FeatureEngine", "warmup"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from trajwatch.features import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'trajwatch.features' has no attribute {name!r}")
