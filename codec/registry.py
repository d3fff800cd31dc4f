"""The one codec contract and the registry every caller goes through (app, CLI, evaluation engine, tests).

A codec is a class with a frozen `Options` dataclass, registered once by name, that says what the rest of the
project needs to know about it (`CodecBase`: QP scale, kind, file suffix, bitstream syntax, whether it takes a model
pack); the app, the evaluation engine, the fuzzer and the CLI derive every list of codecs from the registry:

    @register_codec("x265", "HEVC through libx265 (PyAV)")
    class X265(FFmpegCodec): ...

    codec = get_codec("x265:preset=veryslow:rc=crf")   # a spec: name, then option=value pairs
    encoded = codec.encode(video, qp=32)
    video2 = codec.decode(encoded.bitstream)
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from codec.errors import BitstreamError, CodecUnavailableError, SpecError
from codec.video import Video


@dataclass
class Encoded:
    """What `VideoCodec.encode` returns.

    bitstream: the bytes whose length is the rate (for anchors the elementary stream, for DVC1 the whole file).
    reconstruction: the encoder-side decoded video, same size as the input.
    frame_bits: bits spent on each frame, in display order. frame_types: "I" or "P" (or "B") per frame.
    timings: seconds per stage of the encoder (e.g. motion, latent, entropy, diffusion, vae); may be empty.
    params: every parameter the codec ran with, recorded with the result.
    stats: other measured counts, e.g. unet_evals or a likelihood-estimated bpp (labelled as such).
    """

    bitstream: bytes
    reconstruction: Video
    frame_bits: list[int]
    frame_types: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def num_bytes(self) -> int:
        return len(self.bitstream)

    def bpp(self, video: Video) -> float:
        """Bits per pixel from the real bytes, over the original (unpadded) size of `video`."""
        return 8 * len(self.bitstream) / video.num_pixels


@runtime_checkable
class VideoCodec(Protocol):
    """Every codec: DiffVC, its baseline, x265, x264, AV1. Larger QP = fewer bits, as in HEVC."""

    name: str
    qp_range: tuple[int, int]  # inclusive

    def encode(self, video: Video, qp: int, **options: Any) -> Encoded: ...

    def decode(self, bitstream: bytes) -> Video: ...


@dataclass(frozen=True)
class CodecEntry:
    """A registered codec: its class, a one-line description, and a check for whether it can run here; what the
    class declares about itself (`CodecBase`) is read through it."""

    name: str
    cls: type
    description: str

    @property
    def options_type(self) -> type:
        return self.cls.Options

    @property
    def kind(self) -> str:
        return self.cls.kind

    @property
    def suffix(self) -> str:
        return self.cls.suffix

    @property
    def bitstream_syntax(self) -> str:
        return self.cls.bitstream_syntax

    @property
    def takes_pack(self) -> bool:
        return self.cls.takes_pack

    @property
    def under_test(self) -> bool:
        return self.cls.under_test

    @property
    def rate_of_under_test(self) -> bool:
        return self.cls.rate_of_under_test

    @property
    def qp_range(self) -> tuple[int, int]:
        return self.cls.qp_range

    def has_option(self, name: str) -> bool:
        return any(f.name == name for f in dataclasses.fields(self.options_type))

    def unavailable_reason(self, options: Any = None) -> str | None:
        """None when the codec can run on this machine with `options` (default: its defaults), else why not."""
        check: Callable[[Any], str | None] | None = getattr(self.cls, "unavailable_reason", None)
        return check(options if options is not None else self.options_type()) if check else None


_REGISTRY: dict[str, CodecEntry] = {}


def register_codec(name: str, description: str) -> Callable[[type], type]:
    """Class decorator: register a codec class (with a nested frozen `Options` dataclass) under `name`."""

    def decorate(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"codec {name!r} is registered twice")
        if not dataclasses.is_dataclass(getattr(cls, "Options", None)):
            raise TypeError(f"{cls.__name__} needs a nested dataclass `Options`")
        missing = [a for a in DECLARED if not hasattr(cls, a)]
        if missing or cls.kind not in KINDS:
            raise TypeError(
                f"{cls.__name__} must declare {', '.join(DECLARED)} (kind one of {KINDS}); missing {missing or 'none'}"
            )
        cls.name = name
        _REGISTRY[name] = CodecEntry(name, cls, description)
        return cls

    return decorate


PLUGINS_ENV = "DIFFVC_STUDIO_CODECS"  # comma-separated modules that register more codecs (e.g. a VVC anchor)


def _load_builtin_codecs() -> None:
    """Import the modules that register the built-in codecs, then those named in $DIFFVC_STUDIO_CODECS (each a
    module that applies `register_codec`; inherited by the fuzzer's and the server's worker processes).
    Idempotent; light: no weights are loaded."""
    import codec.baselines  # noqa: F401
    import codec.diffvc.codec  # noqa: F401

    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise SpecError(f"${PLUGINS_ENV} names {module!r}, which cannot be imported: {e}") from None


def list_codecs() -> list[CodecEntry]:
    _load_builtin_codecs()
    return list(_REGISTRY.values())


def codec_names(kind: str | None = None) -> tuple[str, ...]:
    """Registered codec names (of one kind, "anchor" or "neural"), in registration order."""
    return tuple(e.name for e in list_codecs() if kind is None or e.kind == kind)


def comparison_anchors() -> tuple[str, ...]:
    """What a codec under test is compared with: every other codec, the classical anchors first."""
    entries = [e for e in list_codecs() if not e.under_test]
    return tuple(e.name for e in sorted(entries, key=lambda e: e.kind != "anchor"))


def detect_codec(bitstream: bytes) -> str:
    """The name of the registered codec whose `recognizes(bitstream)` accepts these bytes (its first bytes)."""
    for entry in list_codecs():
        recognizes = getattr(entry.cls, "recognizes", None)
        if recognizes is not None and recognizes(bitstream):
            return entry.name
    raise BitstreamError("not a bitstream of any known codec (give the codec explicitly, e.g. --codec x265)")


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """'x265:preset=veryslow:rc=crf' -> ('x265', {'preset': 'veryslow', 'rc': 'crf'})."""
    name, *pairs = spec.strip().split(":")
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SpecError(f"codec spec {spec!r}: expected option=value, got {pair!r}")
        options[key.strip()] = value.strip()
    return name.strip(), options


def get_codec(spec: str, **overrides: Any) -> VideoCodec:
    """Build a codec from a spec string; keyword overrides win over options in the spec.

    Raises SpecError for an unknown codec, option or value, CodecUnavailableError when it cannot run here.
    """
    name, options = parse_spec(spec)
    options.update(overrides)
    entry = get_entry(name)
    parsed = parse_options(entry.options_type, options, name)
    reason = entry.unavailable_reason(parsed)
    if reason:
        raise CodecUnavailableError(f"codec {name!r} cannot run here: {reason}")
    return entry.cls(parsed)


def get_entry(name: str) -> CodecEntry:
    _load_builtin_codecs()
    if name not in _REGISTRY:
        raise SpecError(f"unknown codec {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def parse_options(options_type: type, values: dict[str, Any], codec_name: str = "") -> Any:
    """Build an Options dataclass from strings (or values), converting each by its annotated type."""
    hints = typing.get_type_hints(options_type)
    known = {f.name for f in dataclasses.fields(options_type)}
    kwargs = {}
    for key, raw in values.items():
        if key not in known:
            raise SpecError(f"codec {codec_name!r} has no option {key!r}; options: {', '.join(sorted(known))}")
        kwargs[key] = _convert(raw, hints[key], f"{codec_name}:{key}")
    try:
        return options_type(**kwargs)
    except (ValueError, TypeError) as e:
        raise SpecError(f"codec {codec_name!r}: {e}") from None


_TRUE = {"1", "true", "on", "yes"}
_FALSE = {"0", "false", "off", "no"}


def _convert(raw: Any, hint: Any, where: str) -> Any:
    if not isinstance(raw, str):
        return raw
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        for choice in choices:
            if raw == str(choice):
                return choice
        raise SpecError(f"{where} must be one of {', '.join(map(str, choices))}, got {raw!r}")
    try:
        if hint is bool:
            if raw.lower() in _TRUE | _FALSE:
                return raw.lower() in _TRUE
            raise ValueError
        if hint in (int, float, str):
            return hint(raw)
    except ValueError:
        raise SpecError(f"{where} must be {hint.__name__}, got {raw!r}") from None
    return raw


def options_dict(options: Any) -> dict[str, Any]:
    """The recorded form of an Options dataclass."""
    return dataclasses.asdict(options)


KINDS = ("anchor", "neural")
DECLARED = ("qp_range", "kind", "suffix", "bitstream_syntax", "takes_pack", "under_test", "rate_of_under_test")


class CodecBase:
    """Shared plumbing for registered codecs: the options object and how it is recorded, and what every codec
    declares about itself for the rest of the project (`DECLARED`, checked at registration):

    qp_range: inclusive, larger = fewer bits. kind: "anchor" (a classical codec to compare with) or "neural".
    suffix: the file suffix of its bitstream (".hevc"). bitstream_syntax: how the fuzzer reads its streams
    ("hevc", "h264", "av1", "dvc1"; "opaque": damaged bytes only, no structure-aware mutation). takes_pack: whether
    its options name a model pack (`pack`). under_test: the codec the studio exists to show (DiffVC); every other
    codec is an anchor of its comparisons. rate_of_under_test: at a QP its stream spends what the codec under test
    spends at that QP with the same pack (condlc: DiffVC's latent codec with the diffusion stage off, DiffVC's own
    reference chain), so a comparison matches its rate by taking DiffVC's QP instead of searching for one.
    """

    name: ClassVar[str]
    qp_range: ClassVar[tuple[int, int]]
    Options: ClassVar[type]
    kind: ClassVar[str]
    suffix: ClassVar[str]
    bitstream_syntax: ClassVar[str] = "opaque"
    takes_pack: ClassVar[bool] = False
    under_test: ClassVar[bool] = False
    rate_of_under_test: ClassVar[bool] = False

    def __init__(self, options: Any | None = None) -> None:
        self.options = options if options is not None else self.Options()

    def check_qp(self, qp: int) -> int:
        lo, hi = self.qp_range
        if not isinstance(qp, int) or not lo <= qp <= hi:
            raise SpecError(f"{self.name}: QP must be an integer in [{lo}, {hi}], got {qp!r}")
        return qp

    def identity(self) -> str:
        """What, beside the options, makes this codec's output what it is (library or model pack version)."""
        return ""
