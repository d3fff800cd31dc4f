"""What a decoder may do with a damaged stream, and the verdict on what it did.

Allowed: raise a clear error (`codec.errors.CodecError` or a subclass: BitstreamError, VideoError), or return
frames of the size the stream declares, within the time limit and the memory bound. The declared size is:

* DVC1: the header's width and height, and exactly num_frames frames (docs/FORMAT.md);
* H.264 / HEVC: the size hint when the stream has one before its first picture (codec/baselines/ffmpeg.py), else
  the cropped size of one of the stream's sequence parameter sets;
* AV1: the size hint, else at most the maximum frame size of one of its sequence headers (a frame header may code
  a smaller frame).

A DVC1 stream must also be rejected when it sets what its codec does not define (FORMAT.md: "the codec must reject
a stream that sets a bit it does not know"): header flag bits other than the codec's, and for `condlc`, whose
diffusion stage is off, any diffusion parameter (steps, TDIR K, strength) or flag.

Outcomes: "error" and "decoded" are allowed; "decoded_unchecked" is a decoded Annex-B/OBU stream in which no
parameter set could be parsed (only the frame count and type were checked). Every other outcome is a finding:
"exception" (another exception type), "crash", "timeout", "memory" (peak memory above the bound, or an
allocation failure), "wrong_shape" (frames of another size, count or type than declared), "accepted_invalid"
(decoded what the format says must be rejected).
"""

from __future__ import annotations

import re

from codec.baselines.ffmpeg import SIZE_HINT_UUID
from codec.bitstream import read_header
from codec.diffvc.codec import CondLC, DiffVC
from codec.errors import CodecError
from codec.fuzz.mutate import SYNTAXES, StreamSample, stream_syntax
from codec.fuzz.sandbox import SandboxResult

__all__ = ["ALLOWED", "FINDINGS", "allocation_failed", "judge"]

ALLOWED = ("error", "decoded", "decoded_unchecked")
FINDINGS = ("exception", "crash", "timeout", "memory", "wrong_shape", "accepted_invalid")
DVC1_FLAGS = {"diffvc": DiffVC.defined_flags, "condlc": CondLC.defined_flags}
_ALLOCATION = re.compile(r"can't allocate|cannot allocate|out of memory|std::bad_alloc|\[Errno 12\]", re.IGNORECASE)


def allocation_failed(result: SandboxResult) -> bool:
    """Whether the call ended with an allocation failure (which the sandbox's address-space cap may have caused)."""
    return result.status == "raised" and (
        "MemoryError" in result.error_type or bool(_ALLOCATION.search(result.error_message))
    )


def judge(
    codec: str, data: bytes, result: SandboxResult, memory_mb: float, retry: SandboxResult | None = None
) -> tuple[str, str]:
    """(outcome, why) for the decode of `data` by `codec` that ended as `result`; memory_mb: the bound.

    An allocation failure is a "memory" finding unless `retry`, the same decode under a larger address-space cap,
    failed the same way within the bound: then the decoder refused the allocation itself (libavcodec answers
    ENOMEM for a picture over its max_pixels or a buffer over its own allocation limit) and it is a clear error.
    """
    if result.status == "timeout":
        return "timeout", f"killed after {result.seconds:.1f} s"
    if result.status == "crash":
        return "crash", f"child died (signal {result.signal})" if result.signal else "child exited without a result"
    if result.memory_mb > memory_mb:
        return "memory", f"peak memory {result.memory_mb:.0f} MiB above the worker, bound {memory_mb} MiB"
    if result.status == "raised":
        own_refusal = (
            retry is not None and retry.status == "raised" and retry.error_message == result.error_message
            and retry.memory_mb <= memory_mb
        )  # fmt: skip
        if allocation_failed(result) and not own_refusal:
            return "memory", f"{result.error_type}: {result.error_message[:200]}"
        if result.codec_error:
            return "error", result.error_type.rsplit(".", 1)[-1]
        return "exception", f"{result.error_type}: {result.error_message[:300]}"
    value = result.value or {}
    if value.get("dtype") != "uint8" or len(value.get("shape", ())) != 4 or value["shape"][3] != 3:
        return "wrong_shape", f"returned {value}"
    syntax = stream_syntax(codec)
    if syntax == "opaque":
        return "decoded_unchecked", "a stream of opaque syntax: no declared size to check the frames against"
    if syntax == "dvc1":
        return _judge_dvc1(codec, data, value["shape"])
    return _judge_elementary(codec, data, value["shape"])


def _judge_dvc1(codec: str, data: bytes, shape: list[int]) -> tuple[str, str]:
    try:
        header, _ = read_header(data)
    except CodecError as e:
        return "accepted_invalid", f"decoded a stream whose header does not read: {e}"
    expected = [header.num_frames, header.height, header.width, 3]
    if shape != expected:
        return "wrong_shape", f"frames {shape}, the header declares {expected}"
    if header.codec != codec:
        return "accepted_invalid", f"{codec} decoded a {header.codec} stream"
    unknown = header.flags & ~DVC1_FLAGS[codec]
    if unknown:
        return "accepted_invalid", f"flags {header.flags:#04x} set bits {unknown:#04x} that {codec} does not define"
    if codec == "condlc" and (header.steps or header.tdir_k or header.strength_milli):
        return "accepted_invalid", (
            f"condlc (no diffusion) decoded a stream declaring steps {header.steps}, tdir_k {header.tdir_k}, "
            f"strength {header.strength_milli / 1000}"
        )
    return "decoded", ""


def _size_hint(sample: StreamSample) -> tuple[int, int] | None:
    """The size hint before the first picture, as the decoder reads it (the first one found), or None."""
    syntax = SYNTAXES[sample.syntax]
    for unit in sample.units:
        if syntax.is_picture(unit):
            return None
        uuid, payload = syntax.read_user_data(unit) or (b"", b"")
        if uuid == SIZE_HINT_UUID:
            m = re.fullmatch(rb"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})", payload)
            return (int(m[1]), int(m[2])) if m else None
    return None


def _judge_elementary(codec: str, data: bytes, shape: list[int]) -> tuple[str, str]:
    sample = StreamSample(codec, data)
    height, width = shape[1], shape[2]
    hint = _size_hint(sample)
    if hint is not None:
        if (width, height) != hint:
            return "wrong_shape", f"frames {width}x{height}, the size hint says {hint[0]}x{hint[1]}"
        return "decoded", ""
    sets = [ps for _, ps in sample.param_sets]
    if not sets:
        return "decoded_unchecked", "no parameter set parsed"
    for ps in sets:
        if (ps.exact and (width, height) == ps.size) or (not ps.exact and width <= ps.size[0] and height <= ps.size[1]):
            return "decoded", ""
    declared = ", ".join(f"{w}x{h}" for w, h in {ps.size for ps in sets})
    return "wrong_shape", f"frames {width}x{height}, the parameter sets declare {declared}"
