"""The layers the DiffVC parts are built from (latent codecs, motion codec, temporal contexts), and the helpers that
initialise them and read their configs back from JSON."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

NEGATIVE_SLOPE = 0.1  # LeakyReLU slope used throughout (DCVC-DC's choice)


def conv(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Conv2d:
    """A 'same' convolution (padding k // 2); stride 2 halves H and W (even sizes)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)


def act() -> nn.LeakyReLU:
    return nn.LeakyReLU(NEGATIVE_SLOPE)


class ResidualBlock(nn.Module):
    """x + conv(act(conv(act(x)))): two 3x3 convolutions, [N, C, H, W] -> [N, C, H, W] (He et al. 2016)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(act(), conv(channels, channels), act(), conv(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class SubpelUpsample(nn.Sequential):
    """x2 upsampling by sub-pixel convolution (Shi et al. 2016; DCVC's `subpel_conv3x3`):
    [N, C_in, H, W] -> [N, C_out, 2H, 2W]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(conv(in_channels, out_channels * 4, kernel_size), nn.PixelShuffle(2))


def init_variance_preserving(module: nn.Module) -> None:
    """He-normal weights (fan-in, LeakyReLU slope 0.1) and zero biases for every convolution of `module`.

    PyTorch's default initialization shrinks activations by about 3x per layer, so a randomly initialized codec's y
    would be far below the quantization step (every symbol 0, whatever the QP); with this one, y starts at about
    the input's magnitude and the QP scales act from the first step (He et al. 2015).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=NEGATIVE_SLOPE, nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def config_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Inverse of `dataclasses.asdict` for the flat configs of this package (a JSON round trip turns tuples into
    lists). Unknown fields raise ValueError."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def last_convolution(module: nn.Module) -> nn.Conv2d:
    """The last convolution in `module`, in registration order (the one that makes its output)."""
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)][-1]


def zero_last_convolution(module: nn.Module) -> None:
    """Zero the weights and bias of the last convolution in `module` (its output starts at exactly 0)."""
    last = last_convolution(module)
    nn.init.zeros_(last.weight)
    if last.bias is not None:
        nn.init.zeros_(last.bias)
