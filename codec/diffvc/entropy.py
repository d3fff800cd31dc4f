"""Learned entropy models shared by every part of DiffVC: a factorized prior and a Gaussian conditional (or its
Laplace variant, `LaplaceConditional`, where a pack asks for it).

Both follow the hyperprior design of Ballé et al., "Variational image compression with a scale hyperprior"
(ICLR 2018), as CompressAI (Bégaint et al. 2020) packages it: `forward` returns the quantized tensor and its
likelihoods (additive uniform noise in training, rounding in evaluation), `compress` returns bytes and
`decompress` inverts it exactly. The coding is ours, on constriction's ANS coder (`stream.stack.AnsCoder`),
because CompressAI's wheel pins numpy < 2.

**Exact decoding (docs/DESIGN.md, section 4).** ANS desynchronizes on the smallest difference between the
encoder's and the decoder's models, so no symbol's model depends on a float computed at coding time:

* Every symbol is coded with a *categorical* model chosen by an integer index (the channel for the factorized
  prior, the scale-table entry for the Gaussian). The tables are integer frequencies, computed once in float64 on
  the CPU and kept as buffers, so they travel in the model pack and both sides use the same integers.
* The Gaussian's scales become the index of a fixed log-spaced scale table (CompressAI's `get_scale_table`, 0.11 ..
  256, the smallest entry >= the scale) of 256 levels: CompressAI's 64 (13 % apart) cost 3-5 % of the real rate of a
  sparse P-frame, whose mostly-zero symbols have scales near the bound, measured. Its means are rounded to a grid of
  1/64 before anything uses them; the symbol is round(y - mean_q) and the reconstruction is symbol + mean_q, so the
  mean never enters a symbol's model. Noise in the predicted means or scales that does not cross a grid or table
  boundary changes nothing, bit for bit. Crossings need the noise to straddle a boundary; measured for noise of 1e-6
  (absolute on means, relative on scales), about one element in 19 000 for a mean (that element's reconstruction
  moves by 1/64; decoding stays in step) and one in 90 000 for a scale with 64 levels, about 4x as often with 256
  (that symbol's model changes and decoding
  desynchronizes, which `decompress` reports as a `BitstreamError` or, rarely, as wrong values). Both sides must
  therefore still compute means and scales the same way; the grid and the table make the rare slip local or
  detectable.
* One function, `GaussianConditional._coding_params`, turns (means, scales) into (mean_q, indexes) for the
  evaluation-mode forward, `compress` and `decompress` alike: float32 contiguous tensors and exact operations
  only (rounding to a power-of-two grid, comparisons), so its result does not depend on the device; the coding
  paths run it on the CPU.

**Escapes.** Each table covers the symbols inside the model's 1e-9 tails and has one more symbol, the escape.
A value outside the support is coded as the escape followed by its overflow, bypass-coded with uniform models
(a 6-bit head: bit length and sign; then the remaining bits in chunks of at most 16), as CompressAI does. So any
value codes exactly, at a cost that only matters if it is frequent. Values are first clamped to
+-MAX_ABS_SYMBOL (2**30) around the mean or median, in `forward` as well, so `decompress(compress(x))` always
equals the evaluation-mode `forward`; non-finite inputs raise `ValueError`.

**String layout.** One string holds optional one-bit *flags* (uniform), then one or more *segments* (a tensor
each, e.g. a codec's z then its y: `encode_segments`, `SegmentReader`): the 32-bit words of one ANS stack,
little-endian. Decoding order: the flags, then for each segment in turn, its symbols grouped by model index
(ascending; inside a group, in C order of the tensor), then its escapes' payloads in the same order; after the
last segment a 16-bit end marker (0xD1A5). The string leaves out the zero high bytes of its last word
(constriction's last word is never zero, so the decoder restores them by padding to a whole word): rates count
whole bytes, not words. A string with no symbols is empty. One string per frame spends the marker and the ANS
coder's final state once, not once per tensor or codec (about 3.5 bytes each: 5-10 % of a P-frame at the lowest
rates).
`decompress` raises `BitstreamError` when constriction rejects the words, a decoded value is out of range, the
end marker is wrong (an ANS decoder that runs out of words silently returns zeros, so this is how a short
string shows) or words are left over after it. Damage is caught with high probability, not certainty: the
container's CRCs (codec/bitstream.py) are the first line of defence.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property, wraps
from statistics import NormalDist
from typing import Any

import constriction
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codec.diffvc import MAX_DEADZONE
from codec.errors import BitstreamError
from codec.scoped import scoped

__all__ = [
    "ENTROPY_MODELS",
    "FactorizedPrior",
    "GaussianConditional",
    "LaplaceConditional",
    "CodingTables",
    "bits_from_likelihoods",
    "deadzone_rounding",
    "decode_indexed",
    "encode_indexed",
    "get_scale_table",
    "quantize_symbols",
    "use_training_quantization",
]

SCALE_BOUND = 0.11  # smallest Gaussian scale (CompressAI's SCALES_MIN); units of the latent's quantization step
LAPLACE_SCALE_BOUND = 0.06  # smallest Laplace b: certain zeros cost 4e-4 bits (see LaplaceConditional)
SCALE_TABLE = (0.11, 256.0, 256)  # min, max, levels of the log-spaced scale table (CompressAI's: 64 levels)
LIKELIHOOD_BOUND = 1e-9  # likelihoods are bounded below so that -log2 stays finite (<= 29.9 bits)
TAIL_MASS = 1e-9  # probability left outside a table's support, carried by its escape symbol
MEAN_STEP = 1.0 / 64  # grid of the Gaussian means before coding; a power of two, so rounding to it is exact
PROB_PRECISION = 24  # every frequency table sums to 2**24 (constriction's default model precision)
MAX_ABS_SYMBOL = 2**30  # values are clamped to +-2**30 around their mean/median before coding
MAX_HALF_SUPPORT = 2048  # the factorized prior's table spans at most 2 * 2048 + 1 values around the median
END_MARKER = 0xD1A5  # 16-bit value decoded last from every non-empty string
END_MARKER_BITS = 16  # its cost, coded uniform: counted in the estimate, as a flag's 1 bit is
ESCAPE_CHUNK_BITS = 16  # overflow bits are bypass-coded in chunks of at most this many bits


# --------------------------------------------------------------------------------------------------------------
# Helpers shared by both models
# --------------------------------------------------------------------------------------------------------------


class _LowerBound(torch.autograd.Function):
    """max(x, bound) whose gradient still flows where x < bound if it pushes x up (CompressAI's LowerBound)."""

    @staticmethod
    def forward(ctx, x: Tensor, bound: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        passes = (x >= ctx.bound) | (grad < 0)
        return grad * passes.to(grad.dtype), None


def lower_bound(x: Tensor, bound: float) -> Tensor:
    """Elementwise max(x, bound) with a gradient that lets values below the bound recover (see `_LowerBound`)."""
    return _LowerBound.apply(x, bound)


def in_float32(forward: Callable[..., Any]) -> Callable[..., Any]:
    """An entropy model's `forward` in float32 whatever the autocast around it: tensor arguments widened, autocast
    off on their device. Under bf16 mixed precision (8 significant bits) the likelihoods, and so the rate the
    training minimises, would otherwise be rounded by up to 0.4 % each, and lose more where CDF values are
    subtracted; float32 inputs outside autocast, as in coding, are unchanged."""

    @wraps(forward)
    def wrapped(self, *args: Any, **kwargs: Any) -> Any:
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
        device_type = tensors[0].device.type if tensors else "cpu"
        widen = lambda a: a.float() if isinstance(a, Tensor) and a.is_floating_point() else a  # noqa: E731
        off = (
            torch.autocast(device_type, enabled=False)
            if torch.amp.is_autocast_available(device_type)
            else nullcontext()
        )
        with off:
            return forward(self, *(widen(a) for a in args), **{k: widen(v) for k, v in kwargs.items()})

    return wrapped


def bits_from_likelihoods(likelihoods: Tensor) -> Tensor:
    """Estimated size in bits, sum(-log2 p), of the symbols whose likelihoods are given; a 0-dim tensor.

    This is the training rate and the labelled "estimated bits"; real rates come from `len(compress(...))`.
    """
    return -torch.log2(likelihoods).sum()


def uniform_bits(strings: Sequence[bytes], flags: int = 0) -> int:
    """The bits of `strings` that are coded uniform, not by a learned model: each non-empty string's end marker
    and `flags` one-bit flags (in the strings that carry them). Estimates (sum of -log2 p) add them, so that
    real / estimated measures the coder alone: its final state and its tables' rounding."""
    return sum(END_MARKER_BITS for s in strings if s) + flags


def get_scale_table(
    min_scale: float = SCALE_TABLE[0], max_scale: float = SCALE_TABLE[1], levels: int = SCALE_TABLE[2]
) -> Tensor:
    """The log-spaced Gaussian scales the coder may use (CompressAI's `get_scale_table`): float64 [levels]."""
    return torch.exp(torch.linspace(math.log(min_scale), math.log(max_scale), levels, dtype=torch.float64))


def quantize_symbols(x: Tensor, center: Tensor, deadzone: float = 0.0) -> Tensor:
    """round(x - center) clamped to +-MAX_ABS_SYMBOL: the integer symbols (as float32) that get coded.

    x: float tensor; center: broadcastable to x (medians or grid-rounded means). One float32 subtraction, a
    rounding and a clamp, which every IEEE device computes identically, so the result does not depend on it.
    deadzone in [0, 1/2): r = x - center rounds toward zero instead, sign(r) floor(|r| + 1/2 - deadzone) (HEVC's
    rounding offset 1/2 - deadzone), so |r| < 1/2 + deadzone gives 0; exact operations too.
    """
    residual = x.float() - center
    if deadzone:
        rounded = torch.sign(residual) * torch.floor(residual.abs() + (0.5 - deadzone))
    else:
        rounded = torch.round(residual)
    return rounded.clamp_(-MAX_ABS_SYMBOL, MAX_ABS_SYMBOL)


_DEADZONE: contextvars.ContextVar[float] = contextvars.ContextVar("deadzone", default=0.0)


@contextlib.contextmanager
def deadzone_rounding(deadzone: float) -> Iterator[None]:
    """Inside the block, the conditional models (`GaussianConditional`, `LaplaceConditional`) code y with a dead
    zone: `quantize_symbols(y, mean_q, deadzone)` in the evaluation-mode forward and in `segment` alike, so the
    encoder's reconstruction is still what the decoder reads. An encoder's choice, as HEVC encoders' rounding
    offsets are: the decoder reads symbols and never knows it. Training and the factorized prior (z) are unchanged.
    The codec wraps a whole stream's encoding in it (`NeuralOptions.deadzone`; docs/RESULTS.md, "A dead zone")."""
    if not 0.0 <= deadzone < MAX_DEADZONE:
        raise ValueError(f"deadzone must be in [0, {MAX_DEADZONE}), got {deadzone}")
    with scoped(_DEADZONE, float(deadzone)):
        yield


Region = tuple[int, int] | None  # (rows, cols) of a latent's top-left area that is coded; None: all of it


def in_region(x: Tensor, region: Region) -> Tensor:
    """The coded part x[..., :rows, :cols] of a tensor [N, C, H, W] (x itself when region is None)."""
    return x if region is None else x[..., : region[0], : region[1]]


def outside_region(x: Tensor, region: Region) -> Tensor:
    """A bool mask of x's shape, True where an element lies outside `region` (the padding): such elements are not
    coded, they take symbol 0 (their mean or median) on both sides and cost no bits (docs/FORMAT.md, version 2)."""
    mask = torch.zeros(x.shape[-2:], dtype=torch.bool, device=x.device)
    if region is not None:
        mask[region[0] :, :] = True
        mask[:, region[1] :] = True
    return mask.expand(x.shape)


def _fill_region(values: np.ndarray, shape: Sequence[int], region: Region) -> np.ndarray:
    """Decoded symbols of the coded region -> int64 symbols of the whole `shape`, 0 outside the region."""
    if region is None:
        return values
    out = np.zeros(tuple(shape), np.int64)
    out[..., : region[0], : region[1]] = values.reshape(
        *shape[:-2], min(region[0], shape[-2]), min(region[1], shape[-1])
    )
    return out.ravel()


def _to_cpu_float32(x: Tensor) -> Tensor:
    """x detached, on the CPU, float32, contiguous: the one layout the coding paths compute in."""
    return x.detach().to(device="cpu", dtype=torch.float32).contiguous()


def _check_finite(name: str, x: Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} has non-finite values; only finite tensors can be entropy coded")


# --------------------------------------------------------------------------------------------------------------
# Integer frequency tables and the ANS coding of indexed symbols
# --------------------------------------------------------------------------------------------------------------


def quantize_pmf(probabilities: np.ndarray, precision: int = PROB_PRECISION) -> np.ndarray:
    """Integer frequencies for a probability vector: int64 [n], each >= 1, summing to 2**precision.

    Every entry gets 1, the rest of the budget is shared in proportion to the probabilities (floor, then the
    leftover units to the largest fractional parts, ties to the lower index). Deterministic for a given input.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    budget = (1 << precision) - p.size
    if budget < 0 or not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError("probabilities must be finite, non-negative, not all zero, and fewer than 2**precision")
    scaled = p / p.sum() * budget
    freqs = np.floor(scaled).astype(np.int64)
    leftover = budget - int(freqs.sum())
    freqs[np.argsort(-(scaled - freqs), kind="stable")[:leftover]] += 1
    return freqs + 1


@dataclass(frozen=True)
class CodingTables:
    """Categorical models for ANS coding, one per model index t; ragged rows stored one after the other.

    frequencies: int64 [sum(lengths + 1)]. Row t has lengths[t] regular symbols, standing for the values
        offsets[t] .. offsets[t] + lengths[t] - 1, then the escape symbol; entries >= 1, rows sum to 2**24.
    lengths: int64 [T], >= 1. offsets: int64 [T], the value of each row's first symbol.
    """

    frequencies: np.ndarray
    lengths: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        """Reject inconsistent tables (e.g. from a damaged model pack) before constriction sees them."""
        lengths = self.lengths
        if (
            lengths.ndim != 1
            or lengths.shape != self.offsets.shape
            or lengths.size == 0
            or lengths.min() < 1
            or lengths.max() >= 1 << PROB_PRECISION
            or np.abs(self.offsets).max() >= 1 << PROB_PRECISION
            or self.frequencies.shape != (int((lengths + 1).sum()),)
            or self.frequencies.min() < 1
        ):
            raise ValueError("inconsistent entropy coding tables (lengths, offsets and frequencies do not agree)")

    @classmethod
    def from_pmfs(cls, pmfs: Sequence[np.ndarray], tails: Sequence[float], offsets: Sequence[int]) -> CodingTables:
        """Quantize per-index pmfs (float64 [lengths[t]]) and tail masses (the escape's probability) to a table."""
        rows = [quantize_pmf(np.append(np.asarray(pmf, np.float64), tail)) for pmf, tail in zip(pmfs, tails)]
        return cls(
            frequencies=np.concatenate(rows),
            lengths=np.array([row.size - 1 for row in rows], dtype=np.int64),
            offsets=np.asarray(offsets, dtype=np.int64),
        )

    @cached_property
    def models(self) -> list[constriction.stream.model.Categorical]:
        """constriction's categorical model for each index, built from the integer frequencies."""
        ends = np.cumsum(self.lengths + 1)
        starts = ends - (self.lengths + 1)
        return [
            constriction.stream.model.Categorical(self.frequencies[s:e].astype(np.float64), perfect=False)
            for s, e in zip(starts, ends)
        ]


def _decode_order(indexes: np.ndarray, num_tables: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions sorted by model index (stable) and the group bounds: order [N], bounds [T + 1]."""
    narrow = indexes.astype(np.int16) if num_tables <= np.iinfo(np.int16).max else indexes
    order = np.argsort(narrow, kind="stable")  # radix sort for 16-bit keys: ~15x faster than for int64
    bounds = np.concatenate([[0], np.cumsum(np.bincount(indexes, minlength=num_tables))])
    return order, bounds


def _encode_escapes(coder: constriction.stream.stack.AnsCoder, excess: np.ndarray) -> None:
    """Push the overflows of escaped symbols (int64 [K]; >= 0 above the support, < 0 below) for `_decode_escapes`.

    Each is a head (2 * bit length of the magnitude + sign, 6 bits) and the magnitude's bits below its leading
    one in a low chunk (<= 16 bits) and a high chunk (<= 14 bits), all uniform. Pushed last-decoded first.
    """
    sign = (excess < 0).astype(np.int64)
    magnitude = np.where(sign == 1, -excess - 1, excess)
    nbits = np.frexp(magnitude.astype(np.float64))[1].astype(np.int64)  # bit length; exact below 2**53
    rest = magnitude - np.where(nbits > 0, np.left_shift(1, np.maximum(nbits - 1, 0)), 0)
    low_bits, high_bits = _chunk_bits(nbits)
    uniform = constriction.stream.model.Uniform()
    has_high, has_low = high_bits > 0, low_bits > 0
    _push_uniform(coder, np.right_shift(rest, ESCAPE_CHUNK_BITS)[has_high], high_bits[has_high])
    _push_uniform(coder, (rest & ((1 << ESCAPE_CHUNK_BITS) - 1))[has_low], low_bits[has_low])
    coder.encode_reverse((2 * nbits + sign).astype(np.int32), uniform, np.full(excess.size, 64, np.int32))


def _decode_escapes(coder: constriction.stream.stack.AnsCoder, count: int) -> np.ndarray:
    """Pop `count` overflows pushed by `_encode_escapes`: int64 [count]."""
    uniform = constriction.stream.model.Uniform()
    head = coder.decode(uniform, np.full(count, 64, np.int32)).astype(np.int64)
    nbits, sign = head >> 1, head & 1
    low_bits, high_bits = _chunk_bits(nbits)
    rest = np.zeros(count, np.int64)
    rest[low_bits > 0] = _pop_uniform(coder, low_bits[low_bits > 0])
    rest[high_bits > 0] += np.left_shift(_pop_uniform(coder, high_bits[high_bits > 0]), ESCAPE_CHUNK_BITS)
    magnitude = np.where(nbits > 0, np.left_shift(1, np.maximum(nbits - 1, 0)) + rest, 0)
    return np.where(sign == 1, -magnitude - 1, magnitude)


def _chunk_bits(nbits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bits below the leading one, split into the low chunk (<= 16) and the high chunk: two int64 arrays."""
    below = np.maximum(nbits - 1, 0)
    low = np.minimum(below, ESCAPE_CHUNK_BITS)
    return low, below - low


def _push_uniform(coder: constriction.stream.stack.AnsCoder, values: np.ndarray, bits: np.ndarray) -> None:
    if values.size:
        sizes = np.left_shift(1, bits).astype(np.int32)
        coder.encode_reverse(values.astype(np.int32), constriction.stream.model.Uniform(), sizes)


def _pop_uniform(coder: constriction.stream.stack.AnsCoder, bits: np.ndarray) -> np.ndarray:
    if not bits.size:
        return np.zeros(0, np.int64)
    sizes = np.left_shift(1, bits).astype(np.int32)
    return coder.decode(constriction.stream.model.Uniform(), sizes).astype(np.int64)


Segment = tuple[np.ndarray, np.ndarray, "CodingTables"]  # (values int64 [N], model indexes int64 [N], tables)


def _check_segment(values: np.ndarray, indexes: np.ndarray, tables: CodingTables) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.int64).ravel()
    indexes = np.asarray(indexes, dtype=np.int64).ravel()
    if values.shape != indexes.shape or (values.size and np.abs(values).max() > MAX_ABS_SYMBOL):
        raise ValueError(f"need as many indexes as values, and values within +-{MAX_ABS_SYMBOL}")
    if indexes.size and (indexes.min() < 0 or indexes.max() >= tables.lengths.size):
        raise ValueError(f"model indexes must lie in 0 .. {tables.lengths.size - 1}")
    return values, indexes


def _push_segment(
    coder: constriction.stream.stack.AnsCoder, values: np.ndarray, indexes: np.ndarray, tables: CodingTables
) -> None:
    """Push one segment so that `_pop_segment` decodes it: symbols by model index, then the escapes."""
    raw = values - tables.offsets[indexes]
    lengths = tables.lengths[indexes]
    escaped = (raw < 0) | (raw >= lengths)
    symbols = np.where(escaped, lengths, raw).astype(np.int32)
    order, bounds = _decode_order(indexes, tables.lengths.size)
    escaped_in_order = order[escaped[order]]
    _encode_escapes(coder, np.where(raw < 0, raw, raw - lengths)[escaped_in_order])
    for t in reversed(range(tables.lengths.size)):
        group = order[bounds[t] : bounds[t + 1]]
        if group.size:
            coder.encode_reverse(symbols[group], tables.models[t])


def encode_segments(segments: Sequence[Segment], flags: Sequence[bool] = ()) -> bytes:
    """ANS-code flags (one bit each, uniform) and segments (values, indexes, tables) into one string, decoded in
    that order by `SegmentReader`; the module docstring gives the layout. Each value is coded with the categorical
    model tables.models[indexes[i]]; values within +-MAX_ABS_SYMBOL (those outside a table's support are escaped).
    Returns bytes (without the last word's zero high bytes); empty iff there is no flag and no value at all."""
    checked = [(*_check_segment(v, i, t), t) for v, i, t in segments]
    if not flags and not any(values.size for values, _, _ in checked):
        return b""
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(END_MARKER, constriction.stream.model.Uniform(1 << 16))
    for values, indexes, tables in reversed(checked):
        if values.size:
            _push_segment(coder, values, indexes, tables)
    if flags:
        coder.encode_reverse(np.array(flags, np.int32), constriction.stream.model.Uniform(2))
    return coder.get_compressed().astype("<u4").tobytes().rstrip(b"\0")  # the last word's zero high bytes


class SegmentReader:
    """Decodes the segments of one `encode_segments` string in order: `read` each, then `finish`.

    Every failure is a BitstreamError: constriction rejecting the words, a value out of range, a wrong end
    marker (an ANS decoder that runs out of words silently returns zeros: a short string shows this way), words
    left after it, or data where no symbol is expected.
    """

    def __init__(self, data: bytes) -> None:
        if data and data[-1] == 0:
            raise BitstreamError("entropy-coded string ends in a zero byte; it is damaged")
        self._coder = None
        if data:
            data = data + bytes(-len(data) % 4)  # the zero high bytes of the last word, left out by the encoder
            try:
                self._coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
            except Exception as err:  # constriction rejects the words (e.g. a trailing zero word)
                raise BitstreamError(f"entropy-coded string is damaged ({err})") from err
        self._symbols = 0

    def read_flag(self) -> bool:
        """The next flag (written by `encode_segments(..., flags)`, decoded before the segments)."""
        if self._coder is None:
            raise BitstreamError("entropy-coded string is empty where a flag was expected")
        self._symbols += 1
        try:
            return bool(self._coder.decode(constriction.stream.model.Uniform(2)))
        except Exception as err:
            raise BitstreamError(f"entropy-coded string is damaged ({err})") from err

    def read(self, indexes: np.ndarray, tables: CodingTables) -> np.ndarray:
        """The int64 [N] values of the next segment, given its model indexes (int64 [N]) and tables."""
        indexes = np.asarray(indexes, dtype=np.int64).ravel()
        if indexes.size == 0:
            return np.zeros(0, np.int64)
        if self._coder is None:
            raise BitstreamError("entropy-coded string is empty where symbols were expected")
        self._symbols += indexes.size
        try:
            raw = _pop_segment(self._coder, indexes, tables)
        except BitstreamError:
            raise
        except Exception as err:  # constriction rejects the words (e.g. a trailing zero word)
            raise BitstreamError(f"entropy-coded string is damaged ({err})") from err
        values = raw + tables.offsets[indexes]
        if np.abs(values).max() > MAX_ABS_SYMBOL:
            raise BitstreamError("entropy-coded string decodes to values out of range; it is damaged")
        return values

    def finish(self) -> None:
        """Check the end marker and that nothing follows it."""
        if self._coder is None:
            return
        if not self._symbols:
            raise BitstreamError("entropy-coded string has data where no symbol was expected")
        try:
            marker = self._coder.decode(constriction.stream.model.Uniform(1 << 16))
        except Exception as err:
            raise BitstreamError(f"entropy-coded string is damaged ({err})") from err
        if marker != END_MARKER:
            raise BitstreamError("entropy-coded string ends without its marker; it is truncated or damaged")
        if not self._coder.is_empty():
            raise BitstreamError("entropy-coded string has data left after its last symbol; it is damaged")


def encode_indexed(values: np.ndarray, indexes: np.ndarray, tables: CodingTables) -> bytes:
    """One segment as a string: `encode_segments([(values, indexes, tables)])`."""
    return encode_segments([(values, indexes, tables)])


def decode_indexed(data: bytes, indexes: np.ndarray, tables: CodingTables) -> np.ndarray:
    """Invert `encode_indexed`: the int64 [N] values, given the same indexes and tables (BitstreamError if the
    string cannot be what `encode_indexed` made for N = indexes.size symbols)."""
    reader = SegmentReader(data)
    values = reader.read(indexes, tables)
    reader.finish()
    return values


def _pop_segment(coder: constriction.stream.stack.AnsCoder, indexes: np.ndarray, tables: CodingTables) -> np.ndarray:
    """Symbols of one segment relative to each table's offset (escapes resolved): int64 [N]."""
    order, bounds = _decode_order(indexes, tables.lengths.size)
    raw = np.empty(indexes.size, np.int64)
    for t in range(tables.lengths.size):
        group = order[bounds[t] : bounds[t + 1]]
        if group.size:
            raw[group] = coder.decode(tables.models[t], group.size)
    lengths = tables.lengths[indexes]
    escaped_in_order = order[(raw == lengths)[order]]
    excess = _decode_escapes(coder, escaped_in_order.size)
    raw[escaped_in_order] = np.where(excess < 0, excess, lengths[escaped_in_order] + excess)
    return raw


# --------------------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------------------


class _TabledEntropyModel(nn.Module):
    """Base of the entropy models: keeps the `CodingTables` as integer buffers, so they travel in the state dict.

    Buffers `_frequencies`, `_lengths`, `_offsets` (int32) mirror `CodingTables`; their sizes depend on the model,
    so loading a state dict resizes them first (as CompressAI does for its quantized CDFs).
    """

    _TABLE_BUFFERS = ("_frequencies", "_lengths", "_offsets")

    def __init__(self, likelihood_bound: float) -> None:
        super().__init__()
        self.likelihood_bound = float(likelihood_bound)
        for name in self._TABLE_BUFFERS:
            self.register_buffer(name, torch.zeros(0, dtype=torch.int32))
        self._tables_cache: tuple[bytes, CodingTables] | None = None

    def _store_tables(self, tables: CodingTables) -> None:
        for name in self._TABLE_BUFFERS:
            array = getattr(tables, name.lstrip("_"))
            buffer = getattr(self, name)
            setattr(self, name, torch.from_numpy(array.astype(np.int32)).to(buffer.device))

    @property
    def has_tables(self) -> bool:
        """Whether `update()` has filled the tables (a model built from a config has none)."""
        return self._lengths.numel() > 0

    def coding_tables(self) -> CodingTables:
        """The current tables as numpy arrays; cached, and rebuilt whenever the buffers' contents change."""
        arrays = [getattr(self, name).cpu().numpy().astype(np.int64) for name in self._TABLE_BUFFERS]
        if arrays[1].size == 0:
            raise RuntimeError(f"{type(self).__name__} has no coding tables: call update() after training")
        key = b"".join(a.tobytes() for a in arrays)
        if self._tables_cache is None or self._tables_cache[0] != key:
            self._tables_cache = (key, CodingTables(*arrays))
        return self._tables_cache[1]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for name in self._TABLE_BUFFERS:
            if prefix + name in state_dict:
                buffer = getattr(self, name)
                setattr(
                    self, name, torch.zeros_like(state_dict[prefix + name], dtype=buffer.dtype, device=buffer.device)
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class FactorizedPrior(_TabledEntropyModel):
    """Per-channel learned density for hyper-latents z (a.k.a. EntropyBottleneck).

    Source: Ballé et al., "Variational image compression with a scale hyperprior" (ICLR 2018), appendix 6.1: the
    cumulative density c(x) = sigmoid(f(x)) of each channel is a small monotone network f (softplus matrices,
    tanh gates, `filters` hidden widths); the likelihood of a quantized value is c(x + 1/2) - c(x - 1/2).
    CompressAI's `EntropyBottleneck` is the reference layout (filters (3, 3, 3), init_scale 10).

    Difference from CompressAI: the quantiles that set each channel's median and table support are not learned
    through an auxiliary loss; `update()` finds them by bisection on the (monotone) learned CDF, so training needs
    no second optimizer. Call `update()` after training or changing the weights; it sets `medians` (rounding
    centres) and the integer coding tables, both saved in the state dict.

    Shapes: z is [N, C, *spatial] (typically [N, C, H, W]), C = `channels`; values in latent units (the
    quantization step is 1). Likelihoods have z's shape, in (0, 1], bounded below by 1e-9.
    """

    def __init__(
        self,
        channels: int,
        filters: Sequence[int] = (3, 3, 3),
        init_scale: float = 10.0,
        tail_mass: float = TAIL_MASS,
        likelihood_bound: float = LIKELIHOOD_BOUND,
    ) -> None:
        super().__init__(likelihood_bound)
        self.channels = int(channels)
        self.tail_mass = float(tail_mass)
        widths = (1, *filters, 1)
        scale = init_scale ** (1 / (len(widths) - 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(widths) - 1):
            init = math.log(math.expm1(1 / scale / widths[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, widths[i + 1], widths[i]), init)))
            self.biases.append(nn.Parameter(torch.empty(channels, widths[i + 1], 1).uniform_(-0.5, 0.5)))
            if i < len(widths) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, widths[i + 1], 1)))
        self.register_buffer("medians", torch.zeros(channels))

    # -- the density ------------------------------------------------------------------------------------------

    def _logits_cumulative(self, x: Tensor) -> Tensor:
        """f(x), the logit of the CDF, per channel: x [C, 1, M] -> [C, 1, M], in x's dtype and device."""
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases)):
            x = torch.matmul(F.softplus(matrix.to(x)), x) + bias.to(x)
            if i < len(self.factors):
                x = x + torch.tanh(self.factors[i].to(x)) * torch.tanh(x)
        return x

    def _likelihood(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(c(x + 1/2) - c(x - 1/2), f(x - 1/2), f(x + 1/2)) for x [C, 1, M], computed in the accurate tail.

        The sigmoid difference is taken on the side where both sigmoids are small (CompressAI's trick); the sign
        is never 0 (CompressAI's `-sign(lower + upper)` is 0 when the bin is centred on the median of an odd
        density, e.g. at initialization, and then gives likelihood 0).
        """
        lower = self._logits_cumulative(x - 0.5)
        upper = self._logits_cumulative(x + 0.5)
        sign = torch.where(lower + upper > 0, -1.0, 1.0).to(x).detach()
        return (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs(), lower, upper

    def _centers(self, ndim: int, medians: Tensor | None = None) -> Tensor:
        """The medians shaped [1, C, 1, ...] to broadcast against a z of `ndim` dimensions."""
        medians = self.medians if medians is None else medians
        return medians.view(1, -1, *([1] * (ndim - 2)))

    @in_float32
    def forward(self, z: Tensor, training: bool | None = None, region: Region = None) -> tuple[Tensor, Tensor]:
        """z [N, C, *spatial] -> (z_hat, likelihoods), both z's shape, float32.

        training (default: the module's mode): z_hat = z + U(-1/2, 1/2) noise; otherwise
        z_hat = round(z - medians) + medians, exactly what `decompress(compress(z, region), shape, region)`
        returns: outside `region` ([N, C, H, W] only) the median, with likelihood 1 (not coded).
        """
        training = self.training if training is None else training
        if training:
            z_hat = z + torch.empty_like(z).uniform_(-0.5, 0.5)
        else:
            centers = self._centers(z.dim())
            z_hat = quantize_symbols(z, centers) + centers
        per_channel = z_hat.transpose(0, 1).reshape(self.channels, 1, -1)
        likelihood = lower_bound(self._likelihood(per_channel)[0], self.likelihood_bound)
        likelihood = likelihood.reshape(z_hat.transpose(0, 1).shape).transpose(0, 1)
        if region is not None and not training:
            outside = outside_region(z_hat, region)
            z_hat = torch.where(outside, self._centers(z.dim()).expand_as(z_hat), z_hat)
            likelihood = likelihood.masked_fill(outside, 1.0)
        return z_hat, likelihood

    # -- tables -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _quantiles(self) -> Tensor:
        """Per channel, where the learned CDF is tail_mass/2, 1/2 and 1 - tail_mass/2: float64 [C, 3] on the CPU."""
        limit = math.log(2 / self.tail_mass - 1)
        target = torch.tensor([-limit, 0.0, limit], dtype=torch.float64).expand(self.channels, 3)

        def logits(x: Tensor) -> Tensor:
            return self._logits_cumulative(x.unsqueeze(1)).squeeze(1)

        lo = torch.full_like(target, -1.0)
        hi = torch.full_like(target, 1.0)
        for _ in range(64):  # f is increasing and unbounded both ways: doubling brackets every target
            lo = torch.where(logits(lo) > target, lo * 2, lo)
            hi = torch.where(logits(hi) < target, hi * 2, hi)
        for _ in range(64):
            mid = (lo + hi) / 2
            below = logits(mid) < target
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (lo + hi) / 2

    @torch.no_grad()
    def update(self) -> None:
        """Recompute `medians` and the integer coding tables from the current weights (float64, on the CPU).

        Channel c's table covers the values v = -minima[c] .. maxima[c] (coded as round(z - median)), the
        integers that lie within the 1e-9 tails of the learned density, at most 2048 on each side.
        """
        quantiles = self._quantiles()
        if not bool(torch.isfinite(quantiles).all()):
            raise ValueError("the learned density has non-finite quantiles; its weights are broken")
        medians = quantiles[:, 1].float().double()  # the float32 median used for rounding, widened
        minima = torch.ceil(medians - quantiles[:, 0]).clamp(0, MAX_HALF_SUPPORT).long()
        maxima = torch.ceil(quantiles[:, 2] - medians).clamp(0, MAX_HALF_SUPPORT).long()
        lengths = minima + maxima + 1
        samples = medians[:, None] - minima[:, None] + torch.arange(int(lengths.max()), dtype=torch.float64)
        pmf, lower, upper = self._likelihood(samples.unsqueeze(1))
        last = upper[:, 0].gather(1, (lengths - 1)[:, None])[:, 0]
        tails = torch.sigmoid(lower[:, 0, 0]) + torch.sigmoid(-last)
        pmfs = [pmf[c, 0, : lengths[c]].numpy() for c in range(self.channels)]
        self._store_tables(CodingTables.from_pmfs(pmfs, tails.tolist(), (-minima).tolist()))
        self.medians.copy_(medians.float())

    # -- coding ---------------------------------------------------------------------------------------------

    def _indexes(self, shape: Sequence[int]) -> np.ndarray:
        """Model index (the channel) of every element of a tensor of `shape`, C order: int64 [prod(shape)]."""
        if len(shape) < 2 or shape[1] != self.channels or min(shape) < 0:
            raise ValueError(f"expected a shape [N, {self.channels}, ...], got {tuple(shape)}")
        view = np.arange(self.channels, dtype=np.int64).reshape(1, -1, *([1] * (len(shape) - 2)))
        return np.broadcast_to(view, tuple(shape)).ravel()

    def segment(self, z: Tensor, region: Region = None) -> Segment:
        """The symbols round(z - medians) of z [N, C, *spatial] (any device), within `region` if given (then z is
        [N, C, H, W]), with their model indexes and tables: what `compress` codes, for `encode_segments`."""
        z = in_region(_to_cpu_float32(z), region)
        indexes = self._indexes(z.shape)
        _check_finite("z", z)
        symbols = quantize_symbols(z, self._centers(z.dim(), self.medians.cpu()))
        return symbols.numpy().astype(np.int64), indexes, self.coding_tables()

    def compress(self, z: Tensor, region: Region = None) -> bytes:
        """Entropy-code `segment(z, region)` alone: one string (bytes)."""
        return encode_segments([self.segment(z, region)])

    def read(self, reader: SegmentReader, shape: Sequence[int], region: Region = None) -> Tensor:
        """Decode the next segment of `reader` as z_hat [shape] float32 (the median outside `region`), on the
        module's device."""
        shape = tuple(int(s) for s in shape)
        coded = shape if region is None else (*shape[:-2], min(region[0], shape[-2]), min(region[1], shape[-1]))
        values = _fill_region(reader.read(self._indexes(coded), self.coding_tables()), shape, region)
        medians = self.medians.cpu()
        z_hat = torch.from_numpy(values.astype(np.float32)).reshape(shape) + self._centers(len(shape), medians)
        return z_hat.to(self.medians.device)

    def decompress(self, data: bytes, shape: Sequence[int], region: Region = None) -> Tensor:
        """Invert `compress`: z_hat [shape] float32 (the median outside `region`), on the module's device;
        BitstreamError if `data` is damaged."""
        reader = SegmentReader(bytes(data))
        z_hat = self.read(reader, shape, region)
        reader.finish()
        return z_hat


class GaussianConditional(_TabledEntropyModel):
    """Gaussian entropy model for latents y with predicted means and scales (a hyperprior / context model).

    Source: Ballé et al., "Variational image compression with a scale hyperprior" (ICLR 2018), with the mean
    of Minnen et al. 2018; the layout of CompressAI's `GaussianConditional`: the likelihood of a quantized value
    is the N(mean, scale) density integrated over its unit bin, scales bounded below by 0.11, likelihoods by
    1e-9, and coding with one table per entry of a log-spaced scale table (256 levels, 0.11 .. 256).

    Shapes: y, means, scales all [N, C, H, W] (any equal shapes); latent units (quantization step 1). Means are
    rounded to a 1/64 grid before coding and in the evaluation-mode forward (see the module docstring).
    """

    min_scale = SCALE_BOUND  # the default scale bound, and where the default scale table starts
    # What the decoder side of training sees (the likelihoods always take y + U(-1/2, 1/2)): "noise", the same noisy
    # y (Ballé et al. 2017); "mixed", y rounded as the coder rounds it, round(y - mean_q) + mean_q, with a
    # straight-through gradient (Minnen & Singh 2020; ELIC's "mixed quantization"). Set by training, not stored.
    # Only y's: the hyper-latent z (`FactorizedPrior`) trains on noise either way.
    training_quantization: str = "noise"

    def __init__(
        self,
        scale_table: Sequence[float] | Tensor | None = None,
        scale_bound: float | None = None,
        tail_mass: float = TAIL_MASS,
        likelihood_bound: float = LIKELIHOOD_BOUND,
        mean_step: float = MEAN_STEP,
    ) -> None:
        super().__init__(likelihood_bound)
        if math.frexp(mean_step)[0] != 0.5:
            raise ValueError(f"mean_step must be a power of two so that rounding to it is exact, got {mean_step}")
        self.scale_bound = float(self.min_scale if scale_bound is None else scale_bound)
        self.tail_mass = float(tail_mass)
        self.mean_step = float(mean_step)
        table = self.default_scale_table() if scale_table is None else torch.as_tensor(scale_table, dtype=torch.float64)
        self.register_buffer("scale_table", table.float())
        self._store_tables(self._tables(self.scale_table.double()))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = prefix + "scale_table"
        if key in state_dict and state_dict[key].shape != self.scale_table.shape:  # a pack's own table size
            self.scale_table = torch.zeros_like(
                state_dict[key], dtype=self.scale_table.dtype, device=self.scale_table.device
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def default_scale_table(cls) -> Tensor:
        """The scale table a model of this distribution codes with unless its pack stores another: from its
        `min_scale` up."""
        return get_scale_table(min_scale=cls.min_scale)

    @torch.no_grad()
    def use_scale_table(self, table: Tensor) -> None:
        """Code with this scale table (float [levels], increasing) from now on: rebuilds the coding tables. A pack
        stores its table, so packs made with another one keep decoding their streams."""
        table = torch.as_tensor(table, dtype=torch.float64)
        if table.numel() == self.scale_table.numel() and torch.equal(table.float(), self.scale_table.cpu()):
            return
        self.scale_table = table.float().to(self.scale_table.device)
        self._store_tables(self._tables(table))

    @staticmethod
    def _cdf(x: Tensor) -> Tensor:
        """The distribution's CDF at unit scale."""
        return _std_cdf(x)

    def _tail_multiplier(self) -> float:
        """c / s such that the mass beyond +-c is the tail mass (about 6.1 for 1e-9)."""
        return -NormalDist().inv_cdf(self.tail_mass / 2)

    def _tables(self, scales: Tensor) -> CodingTables:
        """One table per scale s: values -c .. c with c = ceil(s * `_tail_multiplier`) (the 1e-9 tails), zero
        mean, float64."""
        multiplier = self._tail_multiplier()
        pmfs, tails, offsets = [], [], []
        for scale in scales.tolist():
            center = math.ceil(scale * multiplier)
            values = torch.arange(-center, center + 1, dtype=torch.float64).abs()
            pmfs.append((self._cdf((0.5 - values) / scale) - self._cdf((-0.5 - values) / scale)).numpy())
            tails.append(2 * float(self._cdf(torch.tensor((-0.5 - center) / scale, dtype=torch.float64))))
            offsets.append(-center)
        return CodingTables.from_pmfs(pmfs, tails, offsets)

    def _coding_params(self, means: Tensor, scales: Tensor) -> tuple[Tensor, Tensor]:
        """(mean_q, indexes): means rounded to the 1/64 grid (float32) and scale-table indexes (int64).

        The one place where the coder's parameters are computed, for `forward` (evaluation), `compress` and
        `decompress`: float32, contiguous, exact operations only (round to a power-of-two grid, comparisons), so
        the result depends on the inputs alone, whatever the device. Index = the smallest table entry >= scale
        (the last entry for larger scales), as in CompressAI's `build_indexes`.
        """
        scales = scales.detach().float().contiguous()
        indexes = torch.bucketize(scales, self._index_boundaries().to(scales.device))
        return self._mean_grid(means), indexes

    def _mean_grid(self, means: Tensor) -> Tensor:
        """The means rounded to the 1/64 grid (float32, contiguous, no gradient): the centres the coder rounds y
        around (`_coding_params`, and training's "mixed" quantization)."""
        return torch.round(means.detach().float().contiguous() / self.mean_step) * self.mean_step

    def _index_boundaries(self) -> Tensor:
        """Scales above boundary i take table entry i + 1: the entries themselves, so a scale codes with the
        smallest entry >= it (CompressAI's rule; a Gaussian's cost barely moves with its scale near a zero)."""
        return self.scale_table[:-1]

    def likelihood(self, y_hat: Tensor, means: Tensor, scales: Tensor) -> Tensor:
        """P(y_hat's unit bin) under the distribution (N or Laplace) of `means` and max(scales, the scale bound),
        bounded below by 1e-9; y_hat's shape."""
        scales = lower_bound(scales, self.scale_bound)
        distance = (y_hat - means).abs()
        upper = self._cdf((0.5 - distance) / scales)
        lower = self._cdf((-0.5 - distance) / scales)
        return lower_bound(upper - lower, self.likelihood_bound)

    @in_float32
    def forward(
        self, y: Tensor, means: Tensor, scales: Tensor, training: bool | None = None, region: Region = None
    ) -> tuple[Tensor, Tensor]:
        """(y_hat, likelihoods), both y's shape.

        training (default: the module's mode): the likelihoods of y + U(-1/2, 1/2) noise, and y_hat that noisy y or,
        with `training_quantization` "mixed", the evaluation's rounding with y's gradient passed straight through
        (over the whole tensor: training codes no region);
        otherwise y_hat = round(y - mean_q) + mean_q (mean_q: means on the 1/64 grid; rounded with a dead zone inside
        `deadzone_rounding`), exactly what
        `decompress(compress(y, means, scales, region), means, scales, region)` returns: outside `region` mean_q,
        with likelihood 1 (not coded).
        """
        training = self.training if training is None else training
        if training:
            noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
            likelihood = self.likelihood(noisy, means, scales)
            if self.training_quantization == "noise":
                return noisy, likelihood
            mean_q = self._mean_grid(means)
            return y + (quantize_symbols(y, mean_q) + mean_q - y).detach(), likelihood
        mean_q, _ = self._coding_params(means, scales)
        symbols = quantize_symbols(y, mean_q, _DEADZONE.get())
        likelihood = self.likelihood(symbols + mean_q, means, scales)
        if region is not None:
            outside = outside_region(y, region)
            symbols = symbols.masked_fill(outside, 0.0)
            likelihood = likelihood.masked_fill(outside, 1.0)
        return symbols + mean_q, likelihood

    def _cpu_params(self, means: Tensor, scales: Tensor) -> tuple[Tensor, Tensor]:
        if means.shape != scales.shape:
            raise ValueError(f"means {tuple(means.shape)} and scales {tuple(scales.shape)} differ in shape")
        means, scales = _to_cpu_float32(means), _to_cpu_float32(scales)
        _check_finite("means", means)
        _check_finite("scales", scales)
        return self._coding_params(means, scales)

    def segment(self, y: Tensor, means: Tensor, scales: Tensor, region: Region = None) -> Segment:
        """The symbols round(y - mean_q) within `region` if given (y [N, C, H, W]), each with the table of its scale
        index: what `compress` codes, for `encode_segments`."""
        if y.shape != means.shape:
            raise ValueError(f"y {tuple(y.shape)} and means {tuple(means.shape)} differ in shape")
        mean_q, indexes = self._cpu_params(means, scales)
        y = _to_cpu_float32(y)
        _check_finite("y", y)
        symbols = in_region(quantize_symbols(y, mean_q, _DEADZONE.get()), region)
        return symbols.numpy().astype(np.int64), in_region(indexes, region).numpy(), self.coding_tables()

    def compress(self, y: Tensor, means: Tensor, scales: Tensor, region: Region = None) -> bytes:
        """Entropy-code `segment(y, means, scales, region)` alone: one string (bytes)."""
        return encode_segments([self.segment(y, means, scales, region)])

    def read(self, reader: SegmentReader, means: Tensor, scales: Tensor, region: Region = None) -> Tensor:
        """Decode the next segment of `reader` as y_hat (means' shape, float32, on means' device; mean_q outside
        `region`)."""
        mean_q, indexes = self._cpu_params(means, scales)
        coded = reader.read(in_region(indexes, region).contiguous().numpy(), self.coding_tables())
        values = _fill_region(coded, mean_q.shape, region)
        y_hat = torch.from_numpy(values.astype(np.float32)).reshape(mean_q.shape) + mean_q
        return y_hat.to(means.device)

    def decompress(self, data: bytes, means: Tensor, scales: Tensor, region: Region = None) -> Tensor:
        """Invert `compress`: y_hat (means' shape, float32, on means' device; mean_q outside `region`);
        BitstreamError if damaged."""
        reader = SegmentReader(bytes(data))
        y_hat = self.read(reader, means, scales, region)
        reader.finish()
        return y_hat


class LaplaceConditional(GaussianConditional):
    """`GaussianConditional` with a Laplace distribution: the likelihood of a quantized value is the Laplace(mean, b)
    density integrated over its unit bin, b = the predicted scale, as the DCVC family (Li et al. 2021-2023) models
    its latents. Its sharper peak and heavier tails fit a sparse residual better (docs/RESULTS.md). Its scales are
    bounded below by `LAPLACE_SCALE_BOUND` and its scale table starts there: at the Gaussian's 0.11 a certain zero
    would cost 0.015 bits (exp(-0.5 / b) of the mass lies off the zero bin), against 5e-6 bits for the Gaussian.
    Same coding and shapes."""

    min_scale = LAPLACE_SCALE_BOUND

    @staticmethod
    def _cdf(x: Tensor) -> Tensor:
        return _laplace_cdf(x)

    def _tail_multiplier(self) -> float:
        return -math.log(self.tail_mass)  # P(|x| > c) = exp(-c / b)

    def _index_boundaries(self) -> Tensor:
        """The geometric midpoints of neighbouring entries: a scale codes with the nearest entry (in log). A certain
        zero's cost under a Laplace, about exp(-0.5 / b), grows fast with b, so rounding every scale up, as the
        Gaussian's tables do, made the real bits of sparse frames exceed the likelihoods' estimate by 1.5 % more."""
        table = self.scale_table.double()
        return torch.sqrt(table[:-1] * table[1:]).float()


ENTROPY_MODELS: dict[str, type[GaussianConditional]] = {"gaussian": GaussianConditional, "laplace": LaplaceConditional}


def _std_cdf(x: Tensor) -> Tensor:
    """Standard normal CDF, accurate in the lower tail."""
    return 0.5 * torch.erfc(-x / math.sqrt(2))


def _laplace_cdf(x: Tensor) -> Tensor:
    """Laplace(0, 1) CDF, accurate in both tails (no exp of a positive number, so finite gradients)."""
    half_tail = 0.5 * torch.exp(-x.abs())
    return torch.where(x < 0, half_tail, 1 - half_tail)


TRAINING_QUANTIZATIONS = ("noise", "mixed")  # `GaussianConditional.training_quantization`


def use_training_quantization(module: nn.Module, quantization: str) -> None:
    """Set `training_quantization` of every conditional entropy model in `module` ("noise" or "mixed")."""
    if quantization not in TRAINING_QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(TRAINING_QUANTIZATIONS)}, got {quantization!r}")
    for m in module.modules():
        if isinstance(m, GaussianConditional):
            m.training_quantization = quantization
