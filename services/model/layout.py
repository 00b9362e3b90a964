"""Each autoencoder kind's parameter layout and initial weights, in numpy alone.

The aggregator needs only these (an architecture hash, a parameter count, a seeded starting model) and none of torch,
which is most of a container image. Every parameter is drawn the way torch's default init draws it (``nn.Linear``,
``nn.Conv1d``, ``nn.ConvTranspose1d``: kaiming_uniform_(a=√5) then a bias from U(±1/√fan_in); ``nn.LSTM``: every
tensor from U(±1/√hidden)), from the same MT19937 stream torch seeds and in state_dict order, so a federation starts
from the model a worker would build with that seed (tests/model/test_layout.py and tests/model/test_kinds.py hold them
equal).

The kinds (``model.kind``): ``dense`` (fully connected, over any model input), ``conv1d`` and ``lstm`` (over raw
windows: the input is ``window`` rows of ``channels`` values, oldest first, see services/data/windows.make_windows).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np

SEED_LIMIT = 2**32  # torch keeps the low 32 bits of a manual seed; numpy's legacy MT19937 takes exactly those
KINDS = ("dense", "conv1d", "lstm")
_KAIMING_GAIN = math.sqrt(2.0 / (1 + math.sqrt(5) ** 2))  # torch.nn.init.calculate_gain("leaky_relu", √5)

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Architecture:
    """One autoencoder: its kind, its input width and the kind's size parameters (the others stay empty)."""

    kind: str
    width: int  # values per model input
    hidden: tuple[int, ...] = ()  # dense: hidden layer sizes
    channels: int = 0  # conv1d / lstm: values per row (width = window × channels)
    conv_channels: tuple[int, ...] = ()  # conv1d: channels of each stride-2 encoder layer (the decoder mirrors them)
    kernel: int = 0  # conv1d: kernel length (odd)
    lstm_hidden: int = 0  # lstm: state size of the encoder and decoder LSTMs

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; known: {KINDS}")
        if self.kind != "dense" and (self.channels < 1 or self.width % self.channels):
            raise ValueError(f"a {self.kind} model reads raw windows: width {self.width} must be a multiple of its "
                             f"{self.channels} channels")
        if self.kind == "conv1d" and (not self.conv_channels or self.kernel % 2 == 0 or self.window < self.kernel):
            raise ValueError(f"conv1d needs channels and an odd kernel no longer than the window (window "
                             f"{self.window}, kernel {self.kernel}, channels {list(self.conv_channels)})")
        if self.kind == "lstm" and self.lstm_hidden < 1:
            raise ValueError("an lstm model needs a state size >= 1")

    @classmethod
    def dense(cls, width: int, hidden) -> "Architecture":
        return cls("dense", int(width), tuple(int(h) for h in hidden))

    @classmethod
    def from_settings(cls, settings) -> "Architecture":
        """From config: ``settings.input_width``, the model section and the model channels."""
        model = settings.model
        if model.kind == "dense":
            return cls.dense(settings.input_width, model.hidden)
        channels = len(settings.data.model_columns)
        return cls.raw(model.kind, settings.data.window, channels, model)

    @classmethod
    def raw(cls, kind: str, window: int, channels: int, model) -> "Architecture":
        """A conv1d or lstm model over raw windows; ``model`` is config's model section (ModelSettings)."""
        if kind == "conv1d":
            return cls(kind, window * channels, channels=channels, conv_channels=tuple(model.conv1d.channels),
                       kernel=model.conv1d.kernel)
        if kind == "lstm":
            return cls(kind, window * channels, channels=channels, lstm_hidden=model.lstm.hidden)
        raise ValueError(f"unknown model kind {kind!r}; known: {KINDS}")

    @property
    def window(self) -> int:
        return self.width // self.channels if self.channels else 1

    def conv_lengths(self) -> list[int]:
        """conv1d: the sequence length after each stride-2 encoder layer (padding kernel // 2): ⌈length / 2⌉."""
        lengths = [self.window]
        for _ in self.conv_channels:
            lengths.append((lengths[-1] - 1) // 2 + 1)
        return lengths

    def output_paddings(self) -> list[int]:
        """conv1d: per decoder layer (deepest first), the ConvTranspose1d output_padding that restores the length
        its encoder layer received: 2·L − 1 + p = the previous length."""
        lengths = self.conv_lengths()
        return [lengths[i] - (2 * lengths[i + 1] - 1) for i in reversed(range(len(self.conv_channels)))]

    # -- parameters ------------------------------------------------------------------------------------------------
    def parameters(self) -> list[tuple[str, Shape, float]]:
        """(name, shape, bound of torch's default uniform init) in the torch module's state_dict order."""
        if self.kind == "dense":
            sizes = [self.width, *self.hidden, self.width]
            out: list[tuple[str, Shape, float]] = []
            for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):  # Linear at even indices, ReLU between
                # (a narrow bottleneck's is nn.Identity: no parameters, the indices stay)
                out += _affine(f"{2 * i}", (n_out, n_in))
            return out
        if self.kind == "conv1d":
            c, k, chans = self.channels, self.kernel, list(self.conv_channels)
            out = []
            for i, (n_in, n_out) in enumerate(zip([c, *chans], chans)):  # Conv1d + ReLU pairs
                out += _affine(f"encoder.{2 * i}", (n_out, n_in, k))
            ups = [(chans[i], chans[i - 1] if i else chans[0]) for i in reversed(range(len(chans)))]
            for i, (n_in, n_out) in enumerate(ups):  # ConvTranspose1d + ReLU pairs: weight is (in, out, k)
                out += _affine(f"decoder.{2 * i}", (n_in, n_out, k), transposed=True)
            return out + _affine(f"decoder.{2 * len(ups)}", (c, chans[0], k))  # Conv1d back to the channels, linear
        if self.kind == "lstm":
            h, c = self.lstm_hidden, self.channels
            out = []
            for name, n_in in (("encoder", c), ("decoder", h)):
                bound = 1 / math.sqrt(h)
                out += [(f"{name}.weight_ih_l0", (4 * h, n_in), bound), (f"{name}.weight_hh_l0", (4 * h, h), bound),
                        (f"{name}.bias_ih_l0", (4 * h,), bound), (f"{name}.bias_hh_l0", (4 * h,), bound)]
            return out + _affine("output", (c, h))
        raise ValueError(f"unknown model kind {self.kind!r}; known: {KINDS}")

    def shapes(self) -> list[tuple[str, Shape]]:
        return [(name, shape) for name, shape, _ in self.parameters()]

    @property
    def n_params(self) -> int:
        return sum(math.prod(shape) for _, shape in self.shapes())

    @property
    def bottleneck(self) -> int | None:
        """dense: the index of the hidden layer without a ReLU after it (``linear_layer``), or None."""
        return linear_layer(self.hidden) if self.kind == "dense" else None

    @property
    def spec_hash(self) -> str:
        """Identifies the architecture: a worker whose config builds another model must not join the federation.
        The kind and width are in it because shapes alone do not fix the computation (a conv window's length), and
        so is which dense layer is linear (a narrow bottleneck's: ``linear_layer``)."""
        described = {"kind": self.kind, "width": self.width, "shapes": self.shapes()}
        if self.bottleneck is not None:  # (a model with ReLUs throughout keeps the hash it always had)
            described["linear_bottleneck"] = self.bottleneck
        return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:16]

    def initial_weights(self, seed: int) -> np.ndarray:
        """The flat float32 vector of the freshly built autoencoder torch seeds with ``seed``.

        Each value takes the low 24 bits of one 32-bit MT19937 output as u ∈ [0, 1) and computes lo + u·(hi − lo)
        in double with float32 bounds, rounding once to float32, as torch's CPU ``uniform_`` does.
        """
        if not 0 <= seed < SEED_LIMIT:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
        rng = np.random.RandomState(seed)
        parts = []
        for _, shape, bound in self.parameters():
            u = (rng.randint(0, 2**32, size=math.prod(shape), dtype=np.uint64) & (2**24 - 1)) * 2.0**-24
            lo, hi = float(np.float32(-bound)), float(np.float32(bound))
            parts.append((u * (hi - lo) + lo).astype(np.float32))
        return np.concatenate(parts)


def _affine(prefix: str, weight_shape: Shape, transposed: bool = False) -> list[tuple[str, Shape, float]]:
    """A Linear / Conv weight and its bias with torch's bounds; fan_in = shape[1] × kernel (for a ConvTranspose1d,
    whose weight is (in, out, kernel), that is out × kernel, and the bias has ``out`` values)."""
    fan_in = weight_shape[1] * math.prod(weight_shape[2:])
    weight_bound = math.sqrt(3.0) * (_KAIMING_GAIN / math.sqrt(fan_in))
    bias = weight_shape[1] if transposed else weight_shape[0]
    return [(f"{prefix}.weight", weight_shape, weight_bound), (f"{prefix}.bias", (bias,), 1 / math.sqrt(fan_in))]


LINEAR_BOTTLENECK_MAX = 2  # units


def linear_layer(hidden) -> int | None:
    """The dense hidden layer without a ReLU after it: the bottleneck (the first narrowest layer) when it has at most
    ``LINEAR_BOTTLENECK_MAX`` units, else none. A ReLU there can die (a unit whose input stays negative passes
    nothing, and no gradient revives it): with 1 or 2 units one dead unit halves the code or silences it, a detector
    that fails by the luck of its initialisation. It happened in 2 of 12 trainings of 2-unit bottlenecks on generated
    narrow devices, never with a linear one; the pooled held-out ranking of the federated detectors stayed the same
    (docs/quality.md "Model shape"). From 3 units on a dead unit costs less, and models keep the ReLU they had."""
    hidden = list(hidden)
    narrowest = min(hidden)
    return hidden.index(narrowest) if narrowest <= LINEAR_BOTTLENECK_MAX else None


# -- the dense kind, by width and hidden sizes (callers that predate the kinds) ------------------------------------
def layer_sizes(input_width: int, hidden: list[int]) -> list[int]:
    """input → hidden… → input."""
    return [input_width, *hidden, input_width]


def parameter_shapes(input_width: int, hidden: list[int]) -> list[tuple[str, Shape]]:
    return Architecture.dense(input_width, hidden).shapes()


def spec_hash(input_width: int, hidden: list[int]) -> str:
    return Architecture.dense(input_width, hidden).spec_hash


def count_parameters(input_width: int, hidden: list[int]) -> int:
    return Architecture.dense(input_width, hidden).n_params


def initial_weights(input_width: int, hidden: list[int], seed: int) -> np.ndarray:
    return Architecture.dense(input_width, hidden).initial_weights(seed)
