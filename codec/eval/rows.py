"""One evaluation result, typed: `ResultRow`, what `engine.measure` finds for one (codec, QP) on one clip.

A row has one JSON form, `to_dict` / `from_dict` (the cache, results.json, comparison.json, the app), and one CSV
form, `csv_record` (a line of results.csv). Both keep the columns the untyped rows had: each metric is a key of its
own after `bpp`, per-frame bits and metric values sit under "per_frame", options and encoder stage timings are
flattened into `opt_*` and `t_*` columns in CSV. The JSON form carries `ROW_SCHEMA_VERSION` ("schema");
`from_dict` refuses a row of another version (and the untyped rows of version 1, which had no "schema"), so a
stored row is measured again rather than misread.

Metric values are a mapping keyed by the names in `codec.metrics.METRIC_TABLE`: a metric added to the table is in
every row, its JSON and its CSV with nothing to change here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from codec.errors import RowSchemaError
from codec.metrics import metric_names

ROW_SCHEMA_VERSION = 2  # 1: the untyped dicts (no "schema" key); 2: ResultRow
COMPARISON_FIELDS = ("label", "role", "sha256")  # a comparison's; left out of JSON and CSV where not set


@dataclass(frozen=True)
class ResultRow:
    """One (codec spec, QP) measured on one clip. Rates come from the bitstream's bytes, quality from the decoder's
    output, times in seconds of wall clock (encode and decode apart, after a warm-up)."""

    codec: str  # the registered codec's name
    spec: str  # the spec as asked for (a comparison's: the run's label)
    canonical_spec: str  # the name with every option, sorted: one per configuration
    qp: int
    frames: int
    width: int  # pixels, of the clip as coded
    height: int
    bytes: int  # of the bitstream
    bpp: float  # 8 * bytes / (frames * width * height)
    metrics: Mapping[str, float | None]  # every metric of METRIC_TABLE -> its mean over frames; None: not measured
    enc_s: float  # the codec's own encoder time where it reports one, else the wall time of encode
    dec_s: float
    enc_fps: float | None  # frames / enc_s; None when a time was 0
    dec_fps: float | None
    recon_match: bool  # the decoder's output equals the encoder's reconstruction, to the bit
    frame_types: str  # "I", "P" (or "B") per frame in display order, e.g. "IPPP"
    options: Mapping[str, Any]  # every option of the codec, defaults included
    params: Mapping[str, Any]  # every parameter the codec ran with (`Encoded.params`)
    timings: Mapping[str, float]  # seconds per encoder stage (`Encoded.timings`); may be empty
    unet_evals: int | None  # U-Net evaluations of the diffusion stage (neural codecs)
    real_over_estimated: float | None  # real bits over bits estimated from the likelihoods (neural codecs)
    stats: Mapping[str, Any]  # the codec's other counts (`Encoded.stats`)
    identity: str  # what besides the options makes the output what it is: library or model pack version
    device: str  # where the metrics ran
    frame_bits: tuple[int, ...]  # bits of each frame, display order
    per_frame: Mapping[str, tuple[float, ...]]  # each measured metric -> its value per frame
    created: str  # ISO 8601, UTC, seconds
    source: str = ""  # the clip's name in reports (file name)
    start: int = 0  # the first frame's index in the source
    clip_hash: str = ""  # `Video.content_hash` of the clip
    label: str | None = None  # a comparison's run: its label,
    role: str | None = None  # its role ("diffvc", "contrast" or "anchor")
    sha256: str | None = None  # and its bitstream's SHA-256

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON: "schema" first, then the fields in order, the metrics spread after `bpp`, frame bits
        under "per_frame" as "bits"; the comparison's fields only where set."""
        out: dict[str, Any] = {"schema": ROW_SCHEMA_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "metrics":
                out.update(value)
            elif f.name == "per_frame":
                out["per_frame"] = {"bits": list(self.frame_bits), **{m: list(v) for m, v in value.items()}}
            elif f.name != "frame_bits" and not (f.name in COMPARISON_FIELDS and value is None):
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResultRow:
        """The row `to_dict` made. Raises RowSchemaError on a row of another schema version, an unknown key or a
        missing field."""
        _check_schema(data)
        names = metric_names()
        plain = {f.name for f in fields(cls)} - {"metrics", "frame_bits", "per_frame"}
        unknown = sorted(set(data) - plain - set(names) - {"schema", "per_frame"})
        if unknown:
            raise RowSchemaError(f"not a result row of schema {ROW_SCHEMA_VERSION}: unknown key(s) {unknown}")
        try:
            per_frame = dict(data["per_frame"])
            frame_bits = tuple(per_frame.pop("bits"))
            return cls(
                **{k: v for k, v in data.items() if k in plain},
                metrics={m: data.get(m) for m in names},
                frame_bits=frame_bits,
                per_frame={m: tuple(v) for m, v in per_frame.items()},
            )
        except (KeyError, TypeError) as e:
            raise RowSchemaError(f"not a result row of schema {ROW_SCHEMA_VERSION}: {e}") from None

    def csv_record(self) -> dict[str, Any]:
        """The row as a line of results.csv: every scalar of `to_dict` but "schema", then `opt_*` options, `t_*`
        stage timings and the scalar stats whose names are not columns already."""
        record = {k: v for k, v in self.to_dict().items() if k != "schema" and not isinstance(v, (dict, list))}
        record.update({f"opt_{k}": v for k, v in self.options.items()})
        record.update({f"t_{k}": v for k, v in self.timings.items()})
        record.update({k: v for k, v in self.stats.items() if k not in record and not isinstance(v, (dict, list))})
        return record


def _check_schema(data: Any) -> None:
    if not isinstance(data, Mapping):
        raise RowSchemaError(f"not a result row: a {type(data).__name__}")
    version = data.get("schema", 1)
    if version != ROW_SCHEMA_VERSION:
        raise RowSchemaError(
            f"a result row of schema {version}; this version reads schema {ROW_SCHEMA_VERSION} only: measure it again"
        )


def csv_first_columns() -> list[str]:
    """The results table's leading columns, every metric of the table among them."""
    return [
        "codec",
        "spec",
        "qp",
        "frames",
        "width",
        "height",
        "bytes",
        "bpp",
        *metric_names(),
        "enc_s",
        "dec_s",
        "enc_fps",
        "dec_fps",
    ]
