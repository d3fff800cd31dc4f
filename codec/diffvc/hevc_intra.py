"""HEVC-intra I-frames inside a DVC1 stream (DESIGN.md section 3 allows it as a switch; issue [2.1], item 5).

The I-frame's one string is an HEVC elementary stream of that single picture (x265, intra only, the anchors' own
encoder and decoder: `codec.baselines.ffmpeg.X265`); both sides decode it with libavcodec, whose output is exact
by the standard, so the encoder's reconstruction is the decoder's. Its latent then goes on exactly as a learned
I-frame's would: the diffusion stage, the DPB (without a DPB feature: the first P-frame's contexts start from the
picture alone, as after any I-frame without one).

QP: DiffVC's QP q stands for the trade-off bpp + lambda(q) * MSE (RGB in [0, 1]; `codec.diffvc.qp.rd_lambda`).
HEVC's encoder minimises SSE + lambda_H * bits on 8-bit samples with lambda_H = 0.85 * 2^((QP - 12) / 3), so the
same trade-off is lambda_H = 255^2 / lambda(q), i.e. QP_H = 12 + 3 log2(255^2 / (0.85 lambda(q))): q 0..63 maps
to HEVC QP 28..49, which measured close to the learned intra codec's quality at the same q. An I-frame's QP is the
stream QP plus `intra_qp_offset`, taken before clamping to 0..63 (the line extended): at stream QP 8 an offset of
-16 asks for q = -8, HEVC QP 25, where the learned codecs would stop at q = 0. The frame unit stores the clamped QP
(the diffusion stage's QP prompt); the HEVC stream carries its own.
"""

from __future__ import annotations

import math

import numpy as np

from codec.errors import BitstreamError, CodecError
from codec.video import Video

HEVC_QP_MAX = 51


def hevc_qp(qp: int) -> int:
    """The HEVC QP of an I-frame coded at DiffVC QP `qp` (any integer: outside 0..63 the trade-off's line is
    extended): the same rate-distortion trade-off (module docstring), in HEVC's 0..51."""
    import torch

    from codec.diffvc.qp import rd_lambda

    lam = float(rd_lambda(torch.tensor([qp]), extrapolate=True).item())
    return int(min(HEVC_QP_MAX, max(0, round(12 + 3 * math.log2(255.0**2 / (0.85 * lam))))))


def _codec():
    from codec.registry import get_codec

    return get_codec("x265:intra_period=1")


def encode_intra(picture: np.ndarray, qp: int) -> tuple[bytes, np.ndarray]:
    """uint8 RGB [H, W, 3] -> (HEVC stream of that one intra picture, its decoded reconstruction uint8 [H, W, 3])."""
    encoded = _codec().encode(Video(picture[None], 25), hevc_qp(qp))
    return encoded.bitstream, encoded.reconstruction.frames[0]


def decode_intra(data: bytes, size_hw: tuple[int, int]) -> np.ndarray:
    """Invert `encode_intra`: uint8 RGB [H, W, 3] of the picture's size; BitstreamError if the string is not one
    HEVC picture of that size."""
    if not data:
        raise BitstreamError("an HEVC I-frame's string is empty")
    try:
        frames = _codec().decode(bytes(data)).frames
    except CodecError as e:
        raise BitstreamError(f"HEVC I-frame: {e}") from None
    if frames.shape[:3] != (1, *size_hw):
        raise BitstreamError(
            f"HEVC I-frame decodes to {frames.shape[0]} picture(s) of {frames.shape[1]}x"
            f"{frames.shape[2]}, not one of {size_hw[0]}x{size_hw[1]}: stream damaged"
        )
    return frames[0]
