"""What a context model could save on condlc's P-frame latent, measured before building one (issue [2.1], item 2).

    python -m tools.context_gain [--spec condlc] [--qps 8 32] [--frames 32]

Decodes each evaluation clip's stream (Big Buck Bunny 256x144, carphone; 32 frames, intra period 32) and keeps,
for every P-frame, the latent's symbols (quantized DCT coefficients of the motion-compensated residual: channel =
colour * 64 + u * 8 + v) with the model's Gaussian means and scales. It prints:

* how the model's bits split into significance (zero or not: -log2 p(0) or -log2 (1 - p(0))) and magnitudes;
* what significance would cost under the empirical frequencies of a few contexts, as a share of all the latent's
  bits: the model's own p(0) in 10 bins (recalibration alone), then crossed with a checkerboard context (a
  second-pass symbol sees how many of its 4 first-pass neighbours in its channel are non-zero; He et al. 2021) or
  with a channel context (a coefficient of frequency u + v > 2 sees how many of its block's 18 low-frequency
  coefficients are non-zero; ELIC-like grouping);
* with `--calibration`, the model's p(0) in bins against the zeros' frequency, and the model bits of the same
  symbols under a Gaussian or a Laplace whose scales are the model's times a factor (each bounded below as its
  entropy model codes: 0.11, 0.06), relative to the model's own.

The frequencies are fitted on the symbols they are scored on, with at most 50 contexts over 10^6 or more symbols:
an estimate, slightly optimistic, of what a learned context model could take, not a coded result.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np
import torch

from codec.diffvc.entropy import ENTROPY_MODELS, bits_from_likelihoods
from codec.diffvc.latent_codec import ContextualLatentCodec
from codec.registry import get_codec
from codec.video import read_video
from tools.coding_efficiency import CLIPS

P0_BINS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
LOW_FREQUENCY = 2  # u + v at most this: the "first group" of the channel context


def decoded_symbols(spec: str, clip, qp: int) -> tuple[np.ndarray, ...]:
    """(symbols, p(0), likelihoods, means, scales) of every P-frame's latent as the decoder reads them: [T, C, H, W]
    each, float64."""
    frames: list[tuple[np.ndarray, ...]] = []
    codec = get_codec(spec)
    stream = codec.encode(clip, qp).bitstream
    model = codec._model()[0]
    latent_codec = next(m for m in model.modules() if isinstance(m, ContextualLatentCodec))
    read = latent_codec.gaussian.read

    def reading(reader, means, scales, region):
        y_hat = read(reader, means, scales, region)
        mean_q, _ = latent_codec.gaussian._coding_params(means, scales)
        h, w = region if region else y_hat.shape[-2:]
        crop = (0, slice(None), slice(0, h), slice(0, w))
        symbols = (y_hat - mean_q).round()[crop]
        p0 = latent_codec.gaussian.likelihood(mean_q, means, scales)[crop]
        likelihood = latent_codec.gaussian.likelihood(y_hat, means, scales)[crop]
        parts = (symbols, p0, likelihood, (y_hat - means)[crop], scales[crop])
        frames.append(tuple(t.double().numpy() for t in parts))
        return y_hat

    latent_codec.gaussian.read = reading
    try:
        codec.decode(stream)
    finally:
        del latent_codec.gaussian.read
    return tuple(np.stack(parts) for parts in zip(*frames))  # type: ignore[return-value]


def empirical_bits(significant: np.ndarray, context: np.ndarray) -> float:
    """Bits of the zero / non-zero outcomes `significant` coded with their frequency in each `context`."""
    counts = np.zeros((int(context.max()) + 1, 2))
    np.add.at(counts, (context, significant.astype(int)), 1)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(counts > 0, np.log2(counts / np.maximum(totals, 1)), 0.0)
    return float(-(counts * logs).sum())


def context_report(symbols: np.ndarray, p0: np.ndarray, likelihood: np.ndarray, *_: np.ndarray) -> dict[str, float]:
    """The shares of the latent's model bits (percent) described in the module docstring."""
    significant = symbols != 0
    total = float(-np.log2(likelihood).sum())
    model_significance = -np.where(significant, np.log2(np.clip(1 - p0, 1e-12, 1)), np.log2(p0))
    p0_bin = np.digitize(p0, P0_BINS)
    padded = np.pad(significant, ((0, 0), (0, 0), (1, 1), (1, 1))).astype(int)
    neighbours = padded[:, :, :-2, 1:-1] + padded[:, :, 2:, 1:-1] + padded[:, :, 1:-1, :-2] + padded[:, :, 1:-1, 2:]
    rows, cols = np.indices(symbols.shape[-2:])
    second_pass = np.broadcast_to(((rows + cols) % 2 == 1)[None, None], symbols.shape)
    channel = np.arange(symbols.shape[1])
    low = (channel % 64) // 8 + channel % 8 <= LOW_FREQUENCY
    low_count = np.broadcast_to(np.clip(significant[:, low].sum(axis=1, keepdims=True), 0, 3), symbols.shape)
    high = np.broadcast_to(~low[None, :, None, None], symbols.shape)

    def saving(mask: np.ndarray, context: np.ndarray) -> float:
        before = float(model_significance[mask].sum())
        return 100 * (before - empirical_bits(significant[mask], context[mask])) / total

    everywhere = np.ones(symbols.shape, dtype=bool)
    return {
        "non-zero symbols": 100 * float(significant.mean()),
        "significance share": 100 * float(model_significance.sum()) / total,
        "recalibrated p(0)": saving(everywhere, p0_bin),
        "checkerboard": saving(second_pass, p0_bin * 5 + neighbours) + saving(~second_pass, p0_bin),
        "low-frequency count": saving(high, p0_bin * 4 + low_count) + saving(~high, p0_bin),
    }


SCALE_FACTORS = (0.5, 0.55, 0.6, 0.7071, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5)


def calibration_report(symbols, p0, likelihood, offsets, scales) -> tuple[list[tuple], dict[str, list[float]]]:
    """([(bin's mean p(0), zeros' frequency, symbols)] per p(0) bin, {distribution: [bits relative to the model's
    own, percent, per SCALE_FACTORS]}); `offsets` = y_hat - means."""
    significant = symbols != 0
    p0_bin = np.digitize(p0, P0_BINS)
    bins = [
        (float(p0[p0_bin == k].mean()), 1 - float(significant[p0_bin == k].mean()), int((p0_bin == k).sum()))
        for k in range(len(P0_BINS) + 1)
        if (p0_bin == k).any()
    ]
    own = float(-np.log2(likelihood).sum())
    offsets_t, centre = torch.from_numpy(offsets), torch.zeros(offsets.shape, dtype=torch.float64)
    relative = {}
    for name, model in ENTROPY_MODELS.items():
        likelihoods = (model().likelihood(offsets_t, centre, torch.from_numpy(scales * f)) for f in SCALE_FACTORS)
        relative[name] = [100 * (float(bits_from_likelihoods(p)) / own - 1) for p in likelihoods]
    return bins, relative


def print_calibration(name: str, qp: int, report: tuple[list[tuple], dict[str, list[float]]]) -> None:
    bins, relative = report
    cells = ", ".join(f"{model:.4f} -> {actual:.4f} ({count})" for model, actual, count in bins)
    print(f"\n{name} QP {qp}: p(0) by the model -> zeros' frequency (symbols): {cells}")
    print("| distribution | " + " | ".join(f"x{f:g}" for f in SCALE_FACTORS) + " |")
    print("| --- |" + " --- |" * len(SCALE_FACTORS))
    for model, values in relative.items():
        print(f"| {model} | " + " | ".join(f"{v:+.1f} %" for v in values) + " |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.context_gain", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="condlc")
    parser.add_argument("--qps", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--calibration", action="store_true", help="also the p(0) bins and other distributions")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    columns: list[tuple[str, Callable[[dict], str]]] = [
        ("non-zero symbols", lambda r: f"{r['non-zero symbols']:.2f} %"),
        ("significance, share of the bits", lambda r: f"{r['significance share']:.0f} %"),
        ("saved: p(0) recalibrated", lambda r: f"{r['recalibrated p(0)']:.1f} %"),
        ("saved: + checkerboard", lambda r: f"{r['checkerboard']:.1f} %"),
        ("saved: + low-frequency count", lambda r: f"{r['low-frequency count']:.1f} %"),
    ]
    print("| clip | QP | " + " | ".join(name for name, _ in columns) + " |")
    print("| --- | --- |" + " --- |" * len(columns))
    calibrations = []
    for name, (path, size) in CLIPS.items():
        clip = read_video(path, frames=args.frames, size=size)
        for qp in args.qps:
            decoded = decoded_symbols(args.spec, clip, qp)
            report = context_report(*decoded)
            print(f"| {name} | {qp} | " + " | ".join(cell(report) for _, cell in columns) + " |", flush=True)
            if args.calibration:
                calibrations.append((name, qp, calibration_report(*decoded)))
    for name, qp, report in calibrations:
        print_calibration(name, qp, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
