"""Bitstream fuzzing: every codec's decoder against seeded mutations of real streams.

Each damaged stream must decode to a clear error (`codec.errors.CodecError`: BitstreamError, VideoError) or to
frames of the size the stream declares, within a time limit and a memory bound; anything else is a finding
(`codec.fuzz.oracle`). Decodes run in forked children of a worker pool (`codec.fuzz.sandbox`), so a hang, a
crash or a memory blow-up is caught and counted.

    python -m codec fuzz --mutations 10000 --out out/fuzz      # or: make fuzz
    report = run_fuzz(FuzzConfig(mutations=300))                # report.findings, report.summary()

Modules: `mutate` (the kinds of damage, aimed at DVC1 fields and units, Annex-B start codes and SPS sizes, AV1 OBU
sizes and sequence headers), `paramsets` (where the anchors' size fields are), `oracle` (the verdicts),
`sandbox` (one call in a limited child), `runner` (corpus, cases, pool, summary).
"""

from codec.fuzz.mutate import KINDS
from codec.fuzz.runner import FuzzConfig, FuzzReport, fuzzed_codecs, run_fuzz

__all__ = ["KINDS", "FuzzConfig", "FuzzReport", "fuzzed_codecs", "run_fuzz"]
