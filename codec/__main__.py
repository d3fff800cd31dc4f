"""Command line: `python -m codec {eval,encode,decode,speed,train,fuzz,info} ...`.

Errors a user can cause (bad file, bad spec, damaged bitstream) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from codec.errors import CodecError

EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.run(args)
    except CodecError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not the user's fault: one line unless --debug
        if args.debug:
            raise
        print(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m codec", description="DiffVC Studio codec library")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="rate-distortion sweep of codecs over QPs on one clip")
    ev.add_argument("input", type=Path)
    ev.add_argument(
        "--codecs",
        nargs="+",
        required=True,
        metavar="SPEC",
        help="codec specs, e.g. x265 x265:preset=veryslow av1; BD-rate and bits at equal quality are against the first",
    )
    ev.add_argument("--qps", nargs="+", type=int, required=True, metavar="Q")
    ev.add_argument(
        "--qps-for",
        action="append",
        default=[],
        metavar="SPEC=Q,Q,...",
        help="QPs of one of the --codecs specs (codecs' QP scales differ: x265 0..51, DiffVC 0..63)",
    )
    _add_clip_args(ev)
    ev.add_argument(
        "--metrics",
        nargs="+",
        metavar="M",
        help="metrics to compute, by name (default: every metric "
        "of codec.metrics.METRIC_TABLE; a wrong name lists them)",
    )
    ev.add_argument("--out", type=Path, help="output folder (default out/eval-<clip>)")
    _add_job_args(ev)
    ev.set_defaults(run=_cmd_eval)

    bench = sub.add_parser(
        "bench",
        help="every sequence of a folder under one set of test conditions: BD-rates per sequence, class and overall",
    )
    bench.add_argument("folder", type=Path, help="sequences (y4m, raw .yuv named with their size, mp4, ...)")
    bench.add_argument(
        "--codecs", nargs="+", required=True, metavar="SPEC", help="codec specs; the first is the anchor"
    )
    bench.add_argument("--qps", nargs="+", type=int, required=True, metavar="Q")
    bench.add_argument("--qps-for", action="append", default=[], metavar="SPEC=Q,Q,...", help="one spec's own QPs")
    bench.add_argument("--frames", type=int, default=96, help="the first N frames of each sequence (default 96)")
    bench.add_argument("--intra-period", type=int, default=32, help="every codec's intra period (default 32)")
    bench.add_argument("--size", help="resize every sequence to WIDTHxHEIGHT (default: native size)")
    bench.add_argument("--metrics", nargs="+", metavar="M", help="metrics by name (default: every metric)")
    bench.add_argument("--out", type=Path, help="output folder (default out/bench-<folder>)")
    _add_job_args(bench)
    bench.set_defaults(run=_cmd_bench)

    enc = sub.add_parser("encode", help="encode a clip to a bitstream file")
    enc.add_argument("input", type=Path)
    enc.add_argument("-o", "--output", type=Path, required=True)
    enc.add_argument("--codec", default="x265", metavar="SPEC")
    enc.add_argument("--qp", type=int, required=True)
    _add_clip_args(enc)
    enc.add_argument("--recon", type=Path, help="also write the encoder-side reconstruction (.y4m or .mp4)")
    enc.set_defaults(run=_cmd_encode)

    dec = sub.add_parser("decode", help="decode a bitstream file to .mp4 or .y4m")
    dec.add_argument("input", type=Path)
    dec.add_argument("-o", "--output", type=Path, required=True)
    dec.add_argument("--codec", metavar="SPEC", help="codec spec (default: recognised from the stream)")
    dec.set_defaults(run=_cmd_decode)

    sp = sub.add_parser("speed", help="DiffVC time per frame and per stage, TDIR on and off")
    sp.add_argument("--preset", choices=["tiny", "full"], default="tiny")
    sp.add_argument("--random-init", action="store_true", help="a random-init model of the preset (no pack needed)")
    sp.add_argument("--pack", help="a model pack (default: the installed pack of the preset)")
    sp.add_argument("--size", default="256x256", help="WIDTHxHEIGHT of the synthetic clip")
    sp.add_argument("--frames", type=int, default=8)
    sp.add_argument("--device", default="auto")
    sp.add_argument("--steps", type=int, default=0, help="DDIM steps (default: the pack's)")
    sp.add_argument("--tdir", choices=["on", "off", "both"], default="both", help="TDIR settings to time")
    sp.add_argument(
        "--compile", action="store_true", help="torch.compile the U-Net and ControlNet (CUDA; compiled in the warm-up)"
    )
    sp.add_argument("--warmup", type=int, default=3, help="frames of the warm-up clip coded before each timing")
    sp.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure N times, TDIR on and off in turn first, and report each TDIR time ratio and their median",
    )
    sp.add_argument(
        "--intra", choices=["auto", "hevc", "learned"], default="auto", help="I-frames (auto: hevc where PyAV is)"
    )
    sp.set_defaults(run=_cmd_speed)

    from codec.train.cli import add_train_parser

    add_train_parser(sub)

    fz = sub.add_parser("fuzz", help="feed every decoder damaged streams: each must fail cleanly or decode validly")
    fz.add_argument("--mutations", type=int, default=10_000, help="damaged streams, spread over codecs and kinds")
    fz.add_argument("--seed", type=int, default=0)
    fz.add_argument("--codecs", nargs="+", metavar="NAME", help="subset of the registered codecs (default: all)")
    fz.add_argument("--workers", type=int, default=2, help="decoding processes")
    fz.add_argument(
        "--timeout",
        type=float,
        default=20.0,
        help="seconds per decode, plus --eval-time per U-Net evaluation a DVC1 stream declares",
    )
    fz.add_argument("--eval-time", type=float, default=0.25)
    fz.add_argument("--memory-mb", type=int, default=1024, help="bound on a decode's memory growth")
    fz.add_argument("--corpus", choices=["full", "quick"], default="full")
    fz.add_argument("--max-steps", type=int, default=1000, help="largest diffusion step count a header edit writes")
    fz.add_argument("--pack", default="random-tiny", help="DiffVC model pack (default: a random-init tiny model)")
    fz.add_argument("--out", type=Path, default=Path("out/fuzz"), help="summary.json and findings/ go here")
    fz.set_defaults(run=_cmd_fuzz)

    info = sub.add_parser("info", help="codecs usable here, model packs, metric weights, device")
    info.set_defaults(run=_cmd_info)
    return parser


def _add_job_args(p: argparse.ArgumentParser) -> None:
    """Where evaluation jobs run and what they reuse (eval and bench)."""
    p.add_argument("--cache", type=Path, help="result cache folder (default under ~/.cache/diffvc-studio)")
    p.add_argument("--force", action="store_true", help="recompute cached results")
    p.add_argument("--device", default="cpu", help="metric and neural-codec device (cpu, cuda)")
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run the jobs on a Ray cluster: an address, auto (the running one) or local (start one here)",
    )


def _add_clip_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, help="number of frames (default: all)")
    p.add_argument("--start", type=int, default=0, help="first frame index")
    p.add_argument("--size", help="resize to WIDTHxHEIGHT")


def _read_clip(args: argparse.Namespace):
    from codec.video import parse_size, read_video

    return read_video(args.input, start=args.start, frames=args.frames, size=parse_size(args.size))


def _cmd_eval(args: argparse.Namespace) -> int:
    from codec.eval import EvalRequest, evaluate
    from codec.eval.report import bd_rate_table, results_frame, write_results
    from codec.metrics import metric_names
    from codec.progress import job_bar
    from codec.weights import cache_root

    video = _read_clip(args)
    _check_metric_sizes(args.metrics or metric_names(), video)
    qps_by_spec = _qps_by_spec(args.qps_for, args.codecs)
    request = EvalRequest(
        video=video,
        specs=args.codecs,
        qps=sorted(set(args.qps)),
        qps_by_spec=qps_by_spec,
        source=args.input.name,
        start=args.start,
        metrics=tuple(args.metrics or metric_names()),
        device=args.device,
        cache_dir=args.cache or cache_root() / "eval-cache",
        force=args.force,
    )
    with job_bar() as progress:
        rows = evaluate(request, progress, _runner(args))
    out = args.out or Path("out") / f"eval-{args.input.stem}"
    paths = write_results(rows, out)
    frame = results_frame(rows)
    columns = ["spec", "qp", "bpp", *request.metrics, "enc_fps", "dec_fps"]
    if "real_over_estimated" in frame and frame["real_over_estimated"].notna().any():
        columns.append("real_over_estimated")  # real bits / bits estimated from the likelihoods (neural codecs)
    print(frame[columns].to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-"))
    table = bd_rate_table(rows, request.metrics)
    if len(table):
        print(f"\nBD-rate (%) against {args.codecs[0]}:")
        pivot = table.pivot(index="test", columns="metric", values="bd_rate_pct")
        print(pivot.to_string(float_format=lambda v: f"{v:+.2f}", na_rep="n/a"))
        print(
            f"\nBits relative to {args.codecs[0]} at equal quality (x; geometric mean over the test points "
            "within its quality range, read off its curve):"
        )
        pivot = table.pivot(index="test", columns="metric", values="bits_vs_anchor")
        print(pivot.to_string(float_format=lambda v: f"{v:.2f}", na_rep="n/a"))
        for _, r in table.iterrows():
            print(f"  {r['test']} / {r['metric']}: {r['bits_vs_anchor_note']}")
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from codec.eval.bench import BenchConditions, find_sequences, run_bench, write_bench
    from codec.metrics import get_metric
    from codec.progress import job_bar
    from codec.video import parse_size
    from codec.weights import cache_root

    for name in args.metrics or []:
        get_metric(name)  # a wrong name fails before any job runs
    sequences = find_sequences(args.folder)
    conditions = BenchConditions(frames=args.frames, intra_period=args.intra_period, size=parse_size(args.size))
    print(f"{len(sequences)} sequences: {', '.join(s.name for s in sequences)}", file=sys.stderr)
    with job_bar() as progress:
        result = run_bench(
            sequences,
            args.codecs,
            sorted(set(args.qps)),
            _qps_by_spec(args.qps_for, args.codecs),
            conditions,
            args.metrics,
            args.cache or cache_root() / "eval-cache",
            progress,
            args.device,
            args.force,
            _runner(args),
        )
    out = args.out or Path("out") / f"bench-{args.folder.resolve().name}"
    paths = write_bench(result, out, args.codecs[0], conditions)
    print(paths["report"].read_text())
    print(f"wrote {out}/: one folder per sequence, {', '.join(p.name for p in paths.values())}")
    return 0


def _runner(args: argparse.Namespace):
    """Where evaluation jobs run: on Ray (`--ray`), or here (`codec.eval.engine.LocalRunner`), in two one-thread lanes
    where the second core is only partly busy (`codec.threads.cores_for_job`), else in turn."""
    if args.ray:
        from codec.eval.cluster import RayRunner

        return RayRunner(args.ray)
    import torch

    from codec.eval.engine import LocalRunner
    from codec.threads import busy_cores_elsewhere, cores_for_job

    cores = cores_for_job(os.cpu_count() or 1, busy_cores_elsewhere())
    if cores.lanes > 1:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), cores.threads)))
    return LocalRunner(cores.lanes)


def _check_metric_sizes(metrics, video) -> None:
    """A clear error, not a failure deep in a network, for a metric the clip is too small for."""
    from codec.metrics import metrics_for_size

    kept, notes = metrics_for_size(metrics, video.width, video.height)
    if notes:
        raise CodecError(f"{notes[0]}; pass --metrics {' '.join(kept) or 'psnr'}")


def _qps_by_spec(items: list[str], specs: list[str]) -> dict[str, list[int]]:
    """['diffvc=8,16,24'] -> {'diffvc': [8, 16, 24]}; CodecError for a spec not in --codecs or a bad list."""
    out = {}
    for item in items:
        spec, sep, values = item.rpartition("=")
        try:
            qps = sorted({int(v) for v in values.split(",")})
        except ValueError:
            qps = []
        if not sep or spec not in specs or not qps:
            raise CodecError(f"--qps-for {item!r}: expected SPEC=Q,Q,... with SPEC one of --codecs")
        out[spec] = qps
    return out


def _cmd_encode(args: argparse.Namespace) -> int:
    from codec.registry import get_codec
    from codec.video import write_video

    codec = get_codec(args.codec)
    video = _read_clip(args)
    encoded = codec.encode(video, args.qp)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(encoded.bitstream)
    if args.recon:
        write_video(encoded.reconstruction, args.recon)
    print(
        f"{args.output}: {encoded.num_bytes} bytes, {video.num_frames} frames {video.width}x{video.height}, "
        f"{encoded.bpp(video):.4f} bpp ({codec.name}, QP {args.qp})"
    )
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    from codec.registry import detect_codec, get_codec
    from codec.video import write_video

    if not args.input.is_file():
        raise CodecError(f"{args.input}: no such file")
    data = args.input.read_bytes()
    codec = get_codec(args.codec or detect_codec(data))
    video = codec.decode(data)
    write_video(video, args.output)
    print(f"{args.output}: {video.num_frames} frames {video.width}x{video.height} ({codec.name})")
    return 0


def _cmd_speed(args: argparse.Namespace) -> int:
    import statistics

    from codec.speed import available_intra, device_description, diffusion_time_ratio, format_rows, measure_speed
    from codec.video import parse_size

    pack = f"random-{args.preset}" if args.random_init else (args.pack or "")
    if not pack and args.preset != "tiny":
        raise CodecError("give --pack for the full preset, or --random-init")
    size = parse_size(args.size)
    intra = available_intra() if args.intra == "auto" else args.intra
    extra = f":intra={intra}" + (f":steps={args.steps}" if args.steps else "") + (":compile=on" if args.compile else "")
    tdir = ("on", "off") if args.tdir == "both" else (args.tdir,)
    from codec.progress import frame_bar

    if args.repeat < 1:
        raise CodecError(f"--repeat must be at least 1, got {args.repeat}")
    title = (
        f"DiffVC {args.preset} ({pack or 'default pack'}), {size[0]}x{size[1]}, "
        f"{args.frames} frames, {intra} I-frames, {device_description(args.device)}"
        f"{', compiled' if args.compile else ''}"
    )
    ratios = []
    for i in range(args.repeat):
        order = tdir if i % 2 == 0 else tdir[::-1]  # in turn first: a drifting machine favours neither
        with frame_bar("speed"):
            rows = measure_speed(
                pack, size, args.frames, args.device, extra=extra, tdir=order, warmup_frames=args.warmup
            )
        print(format_rows(rows, title + (f" (measurement {i + 1} of {args.repeat})" if args.repeat > 1 else "")))
        ratio = diffusion_time_ratio(rows)
        if ratio is not None:
            ratios.append(ratio)
    if ratios:
        listed = ", ".join(f"{r:.3f}" for r in ratios)
        print(f"TDIR on / off, diffusion time: {listed} (median {statistics.median(ratios):.3f})")
    return 0


def _cmd_fuzz(args: argparse.Namespace) -> int:
    from codec.fuzz import FuzzConfig, fuzzed_codecs, run_fuzz
    from codec.fuzz.runner import print_progress

    try:
        config = FuzzConfig(
            mutations=args.mutations,
            seed=args.seed,
            codecs=tuple(args.codecs or fuzzed_codecs()),
            workers=args.workers,
            timeout_s=args.timeout,
            eval_s=args.eval_time,
            memory_mb=args.memory_mb,
            pack=args.pack,
            corpus=args.corpus,
            max_steps=args.max_steps,
        )
    except ValueError as e:
        raise CodecError(f"fuzz: {e}") from None
    report = run_fuzz(config, print_progress())
    path = report.write(args.out)
    print(report.table())
    for f in report.findings:
        print(f"finding: case {f['case']} {f['codec']} {f['kind']} ({f['detail']}): {f['outcome']}: {f['why']}")
    print(f"wrote {path}")
    return 1 if report.findings else 0


def _cmd_info(args: argparse.Namespace) -> int:
    import platform

    import av
    import torch

    from codec.metrics import metric_weights_source
    from codec.registry import list_codecs
    from codec.weights import metric_weight_files

    print("codecs:")
    for entry in list_codecs():
        reason = entry.unavailable_reason()
        print(f"  {entry.name:8s} {'usable' if reason is None else 'UNUSABLE: ' + reason:10s}  {entry.description}")
    from codec.diffvc.codec import pack_summary

    packs = pack_summary()
    print("model packs:" + ("" if packs else " none found (DiffVC runs with pack=random-tiny, a random-init model)"))
    for name, folder, sha in packs:
        print(f"  {name:14s} {sha[:16]}  {folder}")
    weights = metric_weight_files()
    problem = weights.verify()
    print(
        f"metric weights: {'OK' if problem is None else problem} ({weights.root}); LPIPS/DISTS use: "
        f"{metric_weights_source()}"
    )
    cuda = torch.cuda.is_available()
    print(
        f"device: {'cuda: ' + torch.cuda.get_device_name(0) if cuda else 'cpu only'} "
        f"(torch {torch.__version__}, {torch.get_num_threads()} threads)"
    )
    print(
        f"versions: python {platform.python_version()}, PyAV {av.__version__}, "
        f"libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
