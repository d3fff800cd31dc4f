"""Variable rate from one model: learned quantization scales per anchor QP, interpolated over QP 0..63.

As in DCVC-DC (Li et al. 2023, `q_encoder`/`q_decoder` rows indexed by QP): a latent is multiplied by an encoder
scale before rounding and by a decoder scale after, per channel. Here `num_anchors` learned rows sit at evenly
spaced QPs over [0, 63] and the scales in between are interpolated linearly in log space, so every integer QP
is a valid operating point. Larger QP = coarser quantization = fewer bits, as in HEVC. The initial scales span
`init_range` (a factor between QP 0 and QP 63: a wide span is what lets the rate cover >10x).

`per_channel=False` learns one encoder step per anchor QP, shared by every channel: a flat quantization matrix
(the decoder scales stay per channel: they are reconstruction gains, not steps). For an
orthonormal transform under an MSE loss a uniform step is the right matrix (equal distortion per coefficient,
reverse water-filling), and it cannot drift: per-channel scales trained at the rate-control learning rate ended
with a luma-AC step 14x the DC's at QP 8 (docs/RESULTS.md), a blocky picture for its bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from codec.diffvc import QP_MAX, QP_MIN


@dataclass(frozen=True)
class QPScalesConfig:
    channels: int
    num_anchors: int = 4
    init_range: float = 16.0  # encoder scale at QP 0 / encoder scale at QP 63
    per_channel: bool = True  # False: one step per anchor shared by all channels (a flat quantization matrix)


class QPScales(nn.Module):
    """QP -> (encoder scale, decoder scale), each [N, C, 1, 1], log-linear between `num_anchors` learned rows."""

    def __init__(self, config: QPScalesConfig) -> None:
        super().__init__()
        self.config = config
        span = math.log(config.init_range)
        levels = torch.linspace(span / 2, -span / 2, config.num_anchors)  # QP 0 quantizes finest
        width = config.channels if config.per_channel else 1
        self.log_enc = nn.Parameter(levels[:, None].repeat(1, width).clone())
        self.log_dec = nn.Parameter(-levels[:, None].repeat(1, config.channels).clone())

    def forward(self, qp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """qp: int or float tensor [N] in [0, 63] -> (enc, dec) scales [N, C, 1, 1] (enc [N, 1, 1, 1] if shared),
        float32."""
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


# The rate-distortion trade-off each QP stands for: training's loss and the encoder's mode decisions use it.
LAMBDA_AT_QP_MIN = 2048.0  # QP 0: finest quantization
LAMBDA_AT_QP_MAX = 16.0  # QP 63: coarsest


def rd_lambda(
    qp: Tensor, at_qp0: float = LAMBDA_AT_QP_MIN, at_qp63: float = LAMBDA_AT_QP_MAX, extrapolate: bool = False
) -> Tensor:
    """Lagrange multiplier of the loss ``bpp + lambda * MSE`` (MSE of RGB in [0, 1]) for QP [N] -> float32 [N].
    QPs outside 0..63 are clamped, or with `extrapolate` continue the line (an I-frame's QP plus a negative offset
    below 0: an HEVC I-frame can be finer than the learned codecs' QP 0).

    Log-linear in the QP, from `at_qp0` = 2048 at QP 0 down to `at_qp63` = 16 at QP 63: a factor 128, 1.080 per
    QP step (HEVC's lambda = 0.85 * 2^((QP - 12) / 3) changes 1.26x per step over its 52 QPs).

    Why this span: at the optimum of bpp + lambda * D the R-D slope is -dR/dD = lambda. If the PSNR rises k dB per
    doubling of the rate (about 3 dB for learned image codecs below 1 bpp), D ~ R^(-k/3), hence
    R ~ lambda^(1 / (1 + k/3)), about lambda^0.5. Published models run a little steeper: CompressAI's mean-scale
    hyperprior, lambda * 255^2 from 117 to 3141 (27x), spans about 0.12-0.85 bpp on Kodak (7x), i.e. lambda^0.6.
    So 128x in lambda gives about 11x-18x in rate, the ">= 10x" docs/DESIGN.md asks for (x265 spans 18x); the
    8x of DVC/DCVC's lambdas (256..2048) gives 3-4x, what a prototype here ended with. The top (2048, an image
    codec's ~33 dB) bounds the finest QP; the bottom (16) reaches the very low rates where the diffusion stage
    matters most.
    """
    qp = qp.to(torch.float32)
    position = (qp if extrapolate else qp.clamp(QP_MIN, QP_MAX)) / QP_MAX
    return torch.exp(math.log(at_qp0) + position * (math.log(at_qp63) - math.log(at_qp0)))


@torch.no_grad()
def flatten_log_scales(log_enc: torch.Tensor, log_dec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel log-scale tables [anchors, C] -> (shared encoder table [anchors, 1], decoder table [anchors, C])
    that start a flat quantization matrix from them: each anchor's encoder step is the geometric mean of the
    per-channel ones, and each decoder scale absorbs its channel's change, so the product enc * dec (what the
    synthesis sees of the analysis) is kept and only the quantization noise moves."""
    shared = log_enc.mean(dim=1, keepdim=True)
    return shared, log_dec + log_enc - shared
