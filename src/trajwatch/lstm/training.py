"""Fitting an LSTM autoencoder on trusted runs, reproducibly, and calibrating it.

Each input sequence is the feature matrix (frames, features) of one trusted run. The last
``val_fraction`` of every run is held out for validation, so no validation window overlaps
a training window; windows never span two runs. The scaler is fitted on the training
frames only; with ``scaling="stream"`` every run is instead standardised by its own
frames ``scaling_skip`` to ``scaling_skip + scaling_frames``, as a stream will be.
Training uses AdamW on the masked mean squared reconstruction error, shuffled minibatches
from a seeded generator, and stops when the validation loss has not improved for
``patience`` epochs, keeping the best weights.
The errors of every validation window (stride 1) then calibrate the threshold and
p-values (:mod:`trajwatch.lstm.calibration`).
The same data, config and seed (and the same torch build and thread count) give the same
weights.

>>> import numpy as np
>>> X = np.sin(np.arange(400)[:, None] * np.array([[0.1, 0.23]]))
>>> model = train([X], ["a", "b"], TrainConfig(window=20, hidden=8, latent=2, max_epochs=3))
>>> model.window, model.features, len(model.info["history"])
(20, ('a', 'b'), 3)
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from trajwatch import __version__
from trajwatch.frame import Frame
from trajwatch.lstm.calibration import Calibration
from trajwatch.lstm.config import TrainConfig
from trajwatch.lstm.model import LSTMModel
from trajwatch.lstm.network import LSTMAutoencoder
from trajwatch.lstm.scaler import Scaler, StreamScaling
from trajwatch.lstm.scorer import window_errors

__all__ = ["EpochReport", "TrainConfig", "feature_matrix", "train"]


@dataclass(frozen=True)
class EpochReport:
    """What one epoch did; passed to the ``on_epoch`` callback of :func:`train`."""

    epoch: int
    max_epochs: int
    train_loss: float
    val_loss: float
    best_val_loss: float
    improved: bool
    seconds: float


def feature_matrix(frames: Iterable[Frame], engine: object | None = None) -> NDArray[np.float64]:
    """Feature vectors of a run, one row per frame, from a fresh ``FeatureEngine``."""
    from trajwatch.features.engine import FeatureEngine

    fe = FeatureEngine() if engine is None else engine
    assert isinstance(fe, FeatureEngine)
    rows = [fe.update(frame) for frame in frames]
    if not rows:
        return np.zeros((0, len(fe.names)))
    return np.vstack(rows)


class _Windows:
    """Standardised frames of several runs, and the starts of the windows within them."""

    def __init__(
        self, parts: Sequence[tuple[NDArray[np.float32], NDArray[np.bool_]]], window: int,
        stride: int, width: int,
    ) -> None:  # fmt: skip
        starts = []
        offset = 0
        for z, _ in parts:
            if z.shape[0] >= window:
                starts.append(np.arange(offset, offset + z.shape[0] - window + 1, stride))
            offset += z.shape[0]
        self.z = torch.from_numpy(
            np.concatenate([z for z, _ in parts]) if parts else np.zeros((0, width), np.float32)
        )
        self.mask = torch.from_numpy(
            np.concatenate([m for _, m in parts]) if parts else np.zeros((0, width), np.bool_)
        )
        self.starts = torch.from_numpy(
            np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
        )
        self.steps = torch.arange(window)

    def __len__(self) -> int:
        return int(self.starts.numel())

    def batch(self, which: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = (self.starts[which][:, None] + self.steps[None, :]).reshape(-1)
        shape = (which.numel(), self.steps.numel(), self.z.shape[1])
        return self.z[rows].reshape(shape), self.mask[rows].reshape(shape)


def _split(
    sequences: Sequence[NDArray[np.float64]], config: TrainConfig
) -> list[tuple[NDArray[np.float64], NDArray[np.float64] | None]]:
    """Each run as (training part, validation part or None if too short to split)."""
    out: list[tuple[NDArray[np.float64], NDArray[np.float64] | None]] = []
    for X in sequences:
        n_val = math.floor(X.shape[0] * config.val_fraction)
        if n_val >= config.window and X.shape[0] - n_val >= config.window:
            out.append((X[: X.shape[0] - n_val], X[X.shape[0] - n_val :]))
        else:
            out.append((X, None))
    return out


def _loss(net: LSTMAutoencoder, z: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    weight = m.to(z.dtype)
    error = (net(z) - z) * weight
    loss: torch.Tensor = (error * error).sum() / weight.sum().clamp(min=1.0)
    return loss


def _errors(
    net: LSTMAutoencoder, data: _Windows, batch_size: int = 512
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    scores, features = [], []
    with torch.inference_mode():
        for lo in range(0, len(data), batch_size):
            z, m = data.batch(torch.arange(lo, min(lo + batch_size, len(data))))
            s, fe, _ = window_errors(z.numpy(), m.numpy(), net(z).numpy())
            scores.append(s)
            features.append(fe)
    return np.concatenate(scores), np.concatenate(features)


def train(
    sequences: Sequence[NDArray[np.float64]],
    features: Sequence[str],
    config: TrainConfig | None = None,
    *,
    on_epoch: Callable[[EpochReport], None] | None = None,
    sources: Sequence[str] = (),
) -> LSTMModel:
    """Fit, early-stop and calibrate an LSTM autoencoder on the runs in ``sequences``.

    ``features`` names the columns (``FeatureEngine.names``); ``sources`` (e.g. file names)
    are recorded in the model's ``info``. Raises ``ValueError`` if the runs are too short
    for one training and one validation window of ``config.window`` frames.
    """
    config = config or TrainConfig()
    sequences = [np.asarray(X, dtype=np.float64) for X in sequences]
    if any(X.ndim != 2 or X.shape[1] != len(features) for X in sequences):
        raise ValueError(f"every sequence must be (frames, {len(features)}) feature rows")
    runs = _split(sequences, config)
    fit_parts = [fit for fit, _ in runs]
    val_parts = [val for _, val in runs if val is not None]
    if not val_parts:
        raise ValueError(
            f"no run is long enough for a validation split: with window {config.window} and "
            f"val_fraction {config.val_fraction}, a run needs at least "
            f"{math.ceil(config.window / config.val_fraction)} frames"
        )
    scaler = Scaler.fit(np.concatenate(fit_parts))
    policy: StreamScaling | None = None
    scalers = [scaler] * len(runs)
    if config.scaling == "stream":
        span = config.scaling_skip + config.scaling_frames
        if any(fit.shape[0] < span for fit in fit_parts):
            raise ValueError(
                f"stream scaling needs the training part of every run to have at least "
                f"scaling_skip + scaling_frames = {span} frames"
            )
        policy = StreamScaling.from_runs(
            fit_parts, config.scaling_frames, config.floor_fraction, config.scaling_skip
        )
        scalers = [policy.fit(fit, scaler) for fit in fit_parts]
    width = len(features)
    fit = _Windows(
        [s.transform(part) for s, part in zip(scalers, fit_parts, strict=True)],
        config.window, config.stride, width,
    )  # fmt: skip
    val = _Windows(
        [s.transform(val) for s, (_, val) in zip(scalers, runs, strict=True) if val is not None],
        config.window, 1, width,
    )  # fmt: skip

    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            net = LSTMAutoencoder(len(features), config.hidden, config.latent)
        generator = torch.Generator().manual_seed(config.seed)
        optimiser = torch.optim.AdamW(
            net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        net.eval()
        initial = float(np.mean(_errors(net, val)[0]))
        best, best_epoch, best_state = initial, 0, copy.deepcopy(net.state_dict())
        history: list[list[float]] = []
        stale = 0
        for epoch in range(1, config.max_epochs + 1):
            start = time.perf_counter()
            net.train()
            total, batches = 0.0, 0
            order = torch.randperm(len(fit), generator=generator)
            for which in torch.split(order, config.batch_size):
                z, m = fit.batch(which)
                loss = _loss(net, z, m)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimiser.step()
                total += float(loss.detach())
                batches += 1
            net.eval()
            val_loss = float(np.mean(_errors(net, val)[0]))
            improved = val_loss < best * (1 - config.min_delta)
            if improved:
                best, best_epoch, best_state = val_loss, epoch, copy.deepcopy(net.state_dict())
                stale = 0
            else:
                stale += 1
            train_loss = total / max(batches, 1)
            history.append([train_loss, val_loss])
            if on_epoch is not None:
                seconds = time.perf_counter() - start
                report = EpochReport(
                    epoch, config.max_epochs, train_loss, val_loss, best, improved, seconds
                )
                on_epoch(report)
            if stale >= config.patience:
                break
        net.load_state_dict(best_state)
        net.eval()
        errors, feature_errors = _errors(net, val)
    finally:
        torch.set_num_threads(threads)
    calibration = Calibration.from_errors(
        errors, feature_errors, alpha=config.alpha, margin=config.margin
    )
    info = {
        "trained_with": f"trajwatch {__version__}, torch {torch.__version__}",
        "config": asdict(config),
        "sources": [str(s) for s in sources],
        "train_frames": int(sum(p.shape[0] for p in fit_parts)),
        "val_frames": int(sum(p.shape[0] for p in val_parts)),
        "train_windows": len(fit),
        "val_windows": len(val),
        "initial_val_loss": initial,
        "best_val_loss": best,
        "best_epoch": best_epoch,
        "epochs": len(history),
        "history": history,
    }
    return LSTMModel(
        net, scaler, calibration, tuple(features), config.window, info, stream_scaling=policy
    )
