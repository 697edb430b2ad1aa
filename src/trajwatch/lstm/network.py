"""The LSTM autoencoder network: a window of feature vectors in, its reconstruction out.

An LSTM encoder reads the window and its last hidden state is squeezed into a small latent
vector; the latent is repeated once per time step and an LSTM decoder unrolls it back into
a window of the same shape. What the latent cannot hold (the unusual) is reconstructed
badly, which is what the detector scores.

>>> import torch
>>> net = LSTMAutoencoder(n_features=4, hidden=16, latent=4)
>>> net(torch.zeros(2, 50, 4)).shape
torch.Size([2, 50, 4])
>>> sorted(net.config())
['hidden', 'latent', 'n_features']
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LSTMAutoencoder", "masked_errors"]


class LSTMAutoencoder(nn.Module):
    """1-layer LSTM encoder -> linear latent -> 1-layer LSTM decoder -> linear read-out."""

    def __init__(self, n_features: int, hidden: int = 32, latent: int = 8) -> None:
        super().__init__()
        if min(n_features, hidden, latent) < 1:
            raise ValueError("n_features, hidden and latent must be positive")
        self.n_features = n_features
        self.hidden = hidden
        self.latent = latent
        self.encoder = nn.LSTM(n_features, hidden, batch_first=True)
        self.to_latent = nn.Linear(hidden, latent)
        self.decoder = nn.LSTM(latent, hidden, batch_first=True)
        self.readout = nn.Linear(hidden, n_features)

    def config(self) -> dict[str, int]:
        """The constructor's arguments, as plain data for the model file."""
        return {"n_features": self.n_features, "hidden": self.hidden, "latent": self.latent}

    def forward(self, windows: Tensor) -> Tensor:
        """``(batch, window, n_features)`` standardised windows -> their reconstruction."""
        _, (h, _) = self.encoder(windows)
        z = self.to_latent(h[-1])
        decoded, _ = self.decoder(z.unsqueeze(1).expand(-1, windows.shape[1], -1))
        out: Tensor = self.readout(decoded)
        return out


def masked_errors(
    windows: Tensor, mask: Tensor, reconstruction: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-window score, per-feature error and per-feature mean residual, over available entries.

    ``mask`` is True where a feature was available. The score is the mean squared error over
    the available (time, feature) entries of each window (NaN if none are); the per-feature
    error is the mean squared error of each feature over the window's available steps, and
    the residual its mean signed error (input - reconstruction), both NaN where a feature
    was never available in the window.
    """
    weight = mask.to(windows.dtype)
    residual = (windows - reconstruction) * weight
    squared = residual * residual
    per_step = weight.sum(dim=1)
    nan = torch.tensor(float("nan"), dtype=windows.dtype)
    feature_error = torch.where(per_step > 0, squared.sum(dim=1) / per_step, nan)
    feature_residual = torch.where(per_step > 0, residual.sum(dim=1) / per_step, nan)
    total = per_step.sum(dim=1)
    score = torch.where(total > 0, squared.sum(dim=(1, 2)) / total, nan)
    return score, feature_error, feature_residual
