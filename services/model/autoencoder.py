"""The autoencoders a node trains (dense, 1-D convolutional, LSTM), and their flat float32 weight vector (what
crosses the wire).

Every kind takes and returns 2-D (batch, width) tensors: the convolutional and LSTM models reshape a flattened raw
window to (batch, window, channels) inside ``forward``, so scoring, ONNX export and serving are the same for all.
Parameter names, shapes and init order are those of services/model/layout.Architecture (tests hold them equal).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from services.model.layout import Architecture


class ConvAutoencoder(nn.Module):
    """Stride-2 Conv1d encoder layers (ReLU), mirrored ConvTranspose1d decoder layers (ReLU), then a linear Conv1d
    back to the sensor channels: the window's length halves per layer, which is the bottleneck."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.window, self.channels = arch.window, arch.channels
        k, pad, chans = arch.kernel, arch.kernel // 2, list(arch.conv_channels)
        encoder: list[nn.Module] = []
        for n_in, n_out in zip([arch.channels, *chans], chans):
            encoder += [nn.Conv1d(n_in, n_out, k, stride=2, padding=pad), nn.ReLU()]
        decoder: list[nn.Module] = []
        ups = [(chans[i], chans[i - 1] if i else chans[0]) for i in reversed(range(len(chans)))]
        for (n_in, n_out), extra in zip(ups, arch.output_paddings()):
            decoder += [nn.ConvTranspose1d(n_in, n_out, k, stride=2, padding=pad, output_padding=extra), nn.ReLU()]
        decoder.append(nn.Conv1d(chans[0], arch.channels, k, padding=pad))
        self.encoder, self.decoder = nn.Sequential(*encoder), nn.Sequential(*decoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sequence = x.reshape(-1, self.window, self.channels).transpose(1, 2)  # (batch, channels, window)
        return self.decoder(self.encoder(sequence)).transpose(1, 2).reshape(-1, self.window * self.channels)


class LstmAutoencoder(nn.Module):
    """An LSTM reads the window into its last hidden state; a second LSTM unrolls that state over the window's
    length and a Linear layer turns each step back into a row."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.window, self.channels = arch.window, arch.channels
        self.encoder = nn.LSTM(arch.channels, arch.lstm_hidden, batch_first=True)
        self.decoder = nn.LSTM(arch.lstm_hidden, arch.lstm_hidden, batch_first=True)
        self.output = nn.Linear(arch.lstm_hidden, arch.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sequence = x.reshape(-1, self.window, self.channels)
        _, (state, _) = self.encoder(sequence)  # state: (1, batch, hidden)
        repeated = state.transpose(0, 1).repeat(1, self.window, 1)  # (batch, window, hidden), batch-size free
        steps, _ = self.decoder(repeated)
        return self.output(steps).reshape(-1, self.window * self.channels)


def build_autoencoder(arch, hidden: list[int] | None = None, seed: int | None = None) -> nn.Module:
    """The torch model of an ``Architecture`` (or of anything with an ``architecture``, e.g. a DetectorSpec), or of
    a dense one given as ``(input_width, hidden)``. Dense: input → hidden… → input, ReLU inside except after a
    narrow bottleneck (layout.linear_layer), linear output (inputs are standard-scaled, so unbounded)."""
    if isinstance(arch, int):
        arch = Architecture.dense(arch, hidden)
    arch = getattr(arch, "architecture", arch)
    if seed is not None:
        torch.manual_seed(seed)
    if arch.kind == "conv1d":
        return ConvAutoencoder(arch)
    if arch.kind == "lstm":
        return LstmAutoencoder(arch)
    sizes = [arch.width, *arch.hidden, arch.width]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.Identity() if i == arch.bottleneck else nn.ReLU())  # layout.linear_layer
    return nn.Sequential(*layers)


def get_flat_weights(model: nn.Module) -> np.ndarray:
    """All parameters in state_dict order as one float32 vector."""
    return np.concatenate([t.detach().cpu().numpy().ravel() for t in model.state_dict().values()]).astype(np.float32)


def set_flat_weights(model: nn.Module, flat: np.ndarray) -> None:
    state = model.state_dict()
    expected = sum(t.numel() for t in state.values())
    if flat.size != expected:
        raise ValueError(f"weight vector has {flat.size} values, the model has {expected}")
    offset = 0
    for name, tensor in state.items():
        n = tensor.numel()
        state[name] = torch.from_numpy(np.array(flat[offset:offset + n], dtype=np.float32).reshape(tensor.shape))
        offset += n
    model.load_state_dict(state)
