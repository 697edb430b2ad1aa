"""A detector whose scores come from outside the stack: how the LSTM joins the fusion.

Some detectors cannot score a frame on its own: the LSTM autoencoder scores a window of
frames, and does it in batches when frames queue up. The pipeline computes such a score
itself and hands it to the stack through an :class:`ExternalScore` slot, which then goes
through the same conformal calibration and fusion as every other detector. The slot
learns nothing and is ``ready`` once its source says its scores mean something.

>>> import numpy as np
>>> from trajwatch.detectors.stack import DetectorStack, StackConfig
>>> stack = DetectorStack(StackConfig(detectors=("zscore", "lstm")), n_features=2)
>>> slot = stack.detectors[stack.names.index("lstm")]
>>> slot.set(0.3, ready=True)
>>> slot.score_one(np.zeros(2)), slot.ready
(0.3, True)
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
        self._ready = False

    def set(self, score: float, *, ready: bool) -> None:
        """The score of the frame the stack is about to judge (higher is worse)."""
        self.value = score
        self._ready = ready

    @property
    def ready(self) -> bool:
        return self._ready

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
