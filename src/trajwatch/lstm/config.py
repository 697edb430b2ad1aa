"""What a training run needs to know: architecture, optimiser, split, calibration, seed.

Kept apart from the training code so that the command line can show the defaults
without importing torch.

>>> TrainConfig().window, TrainConfig(seed=3).seed
(50, 3)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
    """Architecture, optimiser, split, calibration and seed of one training run."""

    window: int = 50
    hidden: int = 32
    latent: int = 8
    batch_size: int = 64
    max_epochs: int = 60
    patience: int = 6
    """Epochs without a validation improvement (relative ``min_delta``) before stopping."""
    min_delta: float = 1e-3
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    """Share of each run (its end) held out for validation and calibration."""
    stride: int = 1
    """Frames between the starts of consecutive training windows."""
    alpha: float = 1e-3
    """Calibrated false-alarm rate per window: the threshold is the (1 - alpha) quantile."""
    margin: float = 1.0
    """Factor on the calibrated quantile (above 1 for a model used on unseen systems)."""
    scaling: str = "reference"
    """``"reference"``: standardise with the training data's mean and spread (for judging
    runs of the trained system); ``"stream"``: each run by its own first
    ``scaling_frames`` frames (for systems the model was not trained on)."""
    scaling_frames: int = 100
    scaling_skip: int = 50
    """Stream scaling ignores a run's first frames, where the feature engine's window
    statistics are still filling up (its window, 50 frames by default)."""
    floor_fraction: float = 0.25
    """Stream scaling: floor on a feature's spread, as a share of its median training spread."""
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.window < 2 or self.hidden < 1 or self.latent < 1 or self.batch_size < 1:
            raise ValueError("window must be >= 2; hidden, latent and batch_size >= 1")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), not {self.val_fraction}")
        if self.scaling not in ("reference", "stream"):
            raise ValueError(f"scaling must be 'reference' or 'stream', not {self.scaling!r}")
        if self.scaling_frames < 2 or self.scaling_skip < 0 or self.floor_fraction <= 0:
            raise ValueError("need scaling_frames >= 2, scaling_skip >= 0, floor_fraction > 0")
        if self.stride < 1 or self.max_epochs < 1 or self.patience < 1:
            raise ValueError("stride, max_epochs and patience must be at least 1")
