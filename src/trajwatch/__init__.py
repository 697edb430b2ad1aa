"""trajwatch: real-time anomaly detection for molecular-dynamics simulations."""

from trajwatch.events import Event, FeatureDeviation
from trajwatch.frame import Frame, FrameError

__all__ = ["Event", "FeatureDeviation", "Frame", "FrameError", "__version__"]

__version__ = "0.1.0"
