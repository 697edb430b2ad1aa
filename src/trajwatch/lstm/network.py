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

from torch import Tensor, nn

__all__ = ["LSTMAutoencoder"]


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
