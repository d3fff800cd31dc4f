"""Variable rate from one model: learned quantization scales per anchor QP, interpolated over QP 0..63.

As in DCVC-DC (Li et al. 2023, `q_encoder`/`q_decoder` rows indexed by QP): a latent is multiplied by an encoder
scale before rounding and by a decoder scale after, per channel. Here `num_anchors` learned rows sit at evenly
spaced QPs over [0, 63] and the scales in between are interpolated linearly in log space, so every integer QP
is a valid operating point. Larger QP = coarser quantization = fewer bits, as in HEVC. The initial scales span
`init_range` (a factor between QP 0 and QP 63: a wide span is what lets the rate cover >10x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from codec.diffvc import QP_MAX, QP_MIN


@dataclass(frozen=True)
class QPScalesConfig:
    channels: int
    num_anchors: int = 4
    init_range: float = 16.0  # encoder scale at QP 0 / encoder scale at QP 63


class QPScales(nn.Module):
    """QP -> (encoder scale, decoder scale), each [N, C, 1, 1], log-linear between `num_anchors` learned rows."""

    def __init__(self, config: QPScalesConfig) -> None:
        super().__init__()
        self.config = config
        span = math.log(config.init_range)
        levels = torch.linspace(span / 2, -span / 2, config.num_anchors)  # QP 0 quantizes finest
        self.log_enc = nn.Parameter(levels[:, None].repeat(1, config.channels).clone())
        self.log_dec = nn.Parameter(-levels[:, None].repeat(1, config.channels).clone())

    def forward(self, qp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """qp: int or float tensor [N] in [0, 63] -> (enc, dec) scales [N, C, 1, 1], float32."""
        position = qp.to(torch.float32).clamp(QP_MIN, QP_MAX) / QP_MAX * (self.config.num_anchors - 1)
        low = position.floor().clamp(max=self.config.num_anchors - 2).long()
        frac = (position - low)[:, None]
        enc = torch.lerp(self.log_enc[low], self.log_enc[low + 1], frac).exp()
        dec = torch.lerp(self.log_dec[low], self.log_dec[low + 1], frac).exp()
        return enc[:, :, None, None], dec[:, :, None, None]


def qp_tensor(qp: int | list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """A QP (or a list, one per batch item) as an int64 tensor [N], checked to lie in 0..63."""
    values = [qp] if isinstance(qp, int) else list(qp)
    if any(not QP_MIN <= int(v) <= QP_MAX for v in values):
        raise ValueError(f"QP must be in [{QP_MIN}, {QP_MAX}], got {values}")
    return torch.tensor(values, dtype=torch.int64, device=device)
