"""A detector whose scores come from outside the stack: how the LSTM joins the fusion.

Some detectors cannot score a frame on its own: the LSTM autoencoder scores a window of
frames, and does it in batches when frames queue up. The pipeline computes such a score
itself and hands it to the stack through an :class:`ExternalScore` slot, whose score then
becomes a conformal p-value against the slot's calibrator and joins the fusion like every
other detector's. The slot learns nothing and is never ``ready``, so the stack never adds
its scores to that calibrator by itself: what the calibrator holds is the pipeline's
choice (for the LSTM: the model's validation errors and the source's first frames).

>>> import numpy as np
>>> from trajwatch.detectors.stack import DetectorStack, StackConfig
>>> stack = DetectorStack(StackConfig(detectors=("zscore", "lstm")), n_features=2)
>>> slot = stack.detectors[stack.names.index("lstm")]
>>> slot.set(0.3)
>>> slot.score_one(np.zeros(2)), slot.ready
(0.3, False)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from trajwatch.detectors.base import State, register
from trajwatch.detectors.stack import DETECTORS

__all__ = ["EXTERNAL_DETECTORS", "ExternalScore"]

EXTERNAL_DETECTORS = ("lstm",)
"""Stack detector names that are :class:`ExternalScore` slots (fed by the pipeline)."""


@register
class ExternalScore:
    """A slot in the detector stack that returns the last score it was given."""

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, score: float) -> None:
        """The score of the frame the stack is about to judge (higher is worse)."""
        self.value = score

    @property
    def ready(self) -> bool:
        """Always False: the stack leaves this slot's calibration to the pipeline."""
        return False

    def learn_one(self, x: NDArray[np.float64]) -> None:
        """The score's source learns (or not) on its own."""

    def score_one(self, x: NDArray[np.float64]) -> float:
        return self.value

    def get_state(self) -> State:
        return {"type": type(self).__name__}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ExternalScore:
        return cls()


for _name in EXTERNAL_DETECTORS:
    DETECTORS.setdefault(_name, lambda seed: ExternalScore())
