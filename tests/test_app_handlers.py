"""The app's handlers without a server: requests in, views out; sessions, downloads, errors, the blind test."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLE_CLIP, moving_clip

from app.feedback import error_message
from app.handlers import (
    ChartRequest,
    ClipRequest,
    CompareRequest,
    CurveRequest,
    FrameRequest,
    PairRequest,
    SessionState,
    Studio,
    StudioConfig,
    SweepRequest,
    UserError,
    VoteRequest,
)
from codec.video import write_video


def make_studio(tmp_path, pack="random-tiny") -> Studio:
    return Studio.open(
        StudioConfig(
            pack=pack,
            results_dir=tmp_path / "comparisons",
            sessions_dir=tmp_path / "sessions",
            eval_cache=tmp_path / "eval-cache",
            db_path=tmp_path / "blind.sqlite",
            example_clip=EXAMPLE_CLIP,
        )
    )


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """One comparison at the defaults (DiffVC, TDIR off, x265 matched, condlc) of a 4-frame clip, shared below."""
    tmp = tmp_path_factory.mktemp("studio")
    clip = write_video(moving_clip(frames=6, height=48, width=64), tmp / "upload.mp4", crf=4)
    studio = make_studio(tmp)
    state = SessionState()
    request = CompareRequest(ClipRequest(str(clip), 1, 4, 256), qp=32, metrics=("psnr", "ms_ssim"))
    view = studio.compare.run(request, state, "session-1")
    return studio, state, view, clip


def test_compare_view_has_every_part(ran):
    studio, state, view, _ = ran
    assert state.comparisons == [view.key]
    assert list(view.table["codec"]) == ["DiffVC (TDIR on)", "DiffVC (TDIR off)", "x265", "condlc"]
    assert view.wipe == ("condlc", "diffvc")  # the first look: what the diffusion stage does
    assert all(0 < c < 1 for c in view.zoom_centre)
    assert {"bytes", "bpp", "kbps", "PSNR-RGB", "MS-SSIM", "enc fps", "dec fps", "U-Net evals"} <= set(view.table)
    assert view.table["kbps"].notna().all() and (view.table["bytes"] > 0).all()
    assert "TDIR on against off" in view.tdir and view.frames == 4
    names = sorted(p.rsplit("/", 1)[1] for p in view.files)
    assert names == sorted(
        [
            "diffvc.dvc",
            "diffvc.mp4",
            "diffvc-tdir-off.dvc",
            "diffvc-tdir-off.mp4",
            "x265.hevc",
            "x265.mp4",
            "condlc.dvc",
            "condlc.mp4",
            "results.csv",
            "results.json",
        ]
    )
    root = studio.config.results_dir.resolve()
    assert all(p.startswith(str(root)) for p in view.files)  # downloads only from the app's own folder
    assert "upload" not in " ".join(view.files)  # the uploaded file's name never becomes a path


def test_frame_view_images(ran):
    studio, state, view, _ = ran
    frame = studio.compare.frame_view(
        FrameRequest(view.key, 2, "original", "x265", "diffvc", zoom=4, cx=0.9, cy=0.1), state
    )
    left, right = frame.wipe
    assert left.shape == right.shape == (48, 64, 3) and not np.array_equal(left, right)
    assert frame.side_by_side.ndim == 3 and frame.zoom.ndim == 3 and frame.heatmap.shape[2] == 3
    assert "Frame 2" in frame.caption
    far = studio.compare.frame_view(FrameRequest(view.key, 99), state)  # clamped to the last frame
    assert "Frame 3" in far.caption


def test_the_views_read_the_comparison_from_memory(ran, monkeypatch):
    """After the run, the frame viewer, the per-frame chart and the blind pair read the comparison the handler kept:
    neither comparison.json nor frames.npz is read back from its folder."""
    from codec.eval.compare import Comparison

    studio, state, view, _ = ran
    monkeypatch.setattr(Comparison, "load", lambda folder: pytest.fail("comparison.json was read back"))
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("frames.npz was read back"))
    assert "Frame 1" in studio.compare.frame_view(FrameRequest(view.key, 1), state).caption
    figure = studio.compare.per_frame_figure(ChartRequest(view.key, "psnr"), state)
    assert len(figure.data) == 2 * (len(view.codecs) - 1)  # the metric and the bits of each codec
    assert studio.blind.new_pair(PairRequest(), state).a is not None


def test_a_session_sees_only_its_own_comparisons(ran):
    studio, _, view, _ = ran
    with pytest.raises(UserError):
        studio.compare.frame_view(FrameRequest(view.key), SessionState())
    with pytest.raises(UserError):
        studio.blind.new_pair(PairRequest(), SessionState())


def test_second_run_comes_from_the_cache(ran):
    studio, _, view, clip = ran
    state = SessionState()
    again = studio.compare.run(
        CompareRequest(ClipRequest(str(clip), 1, 4, 256), qp=32, metrics=("psnr", "ms_ssim")), state, "session-2"
    )
    assert again.key == view.key and "from the cache" in again.status


def test_blind_pair_hides_names_until_the_vote(ran):
    studio, state, _, _ = ran
    view = studio.blind.new_pair(PairRequest(show_reference=True), state)
    assert view.a.shape == view.b.shape == view.reference.shape
    assert "DiffVC" not in view.status and "x265" not in view.status
    pair = state.pair
    reveal = studio.blind.vote(VoteRequest("A", "tester", "sharper"), state, "session-1")
    assert pair.label_a.replace("(", "\\(") in reveal or pair.label_a in reveal
    assert state.pair is None
    with pytest.raises(UserError):
        studio.blind.vote(VoteRequest("A", "tester"), state, "session-1")  # one vote per pair
    table = studio.blind.results()
    assert table["votes"].sum() >= 1
    assert studio.blind.export_votes("session-1").endswith("blind-votes.csv")


def test_bad_input_gives_a_clear_line(tmp_path):
    studio = make_studio(tmp_path)
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video at all")
    for clip in (
        ClipRequest(None),
        ClipRequest(str(junk)),
        ClipRequest(str(EXAMPLE_CLIP), frames=0),
        ClipRequest(str(EXAMPLE_CLIP), start=10**6, frames=2),
    ):
        with pytest.raises(Exception) as caught:
            studio.compare.run(CompareRequest(clip), SessionState(), "s")
        message = error_message(caught.value)
        assert message.startswith("**Cannot run this:**") and "Traceback" not in message
    assert "went wrong inside the app" in error_message(RuntimeError("boom"))


def test_missing_pack_is_reported_and_anchors_still_run(tmp_path):
    studio = make_studio(tmp_path, pack="no-such-pack")
    usable, text = studio.codecs.pack_status()
    assert not usable and "DiffVC is off" in text
    rows = {row[0]: row[1] for row in studio.codecs.rows()}
    assert rows["x265"] == "usable" and rows["diffvc"].startswith("unusable")
    clip = write_video(moving_clip(frames=2), tmp_path / "c.mp4", crf=4)
    view = studio.compare.run(CompareRequest(ClipRequest(str(clip), 0, 2, 256), metrics=("psnr",)), SessionState(), "s")
    assert list(view.table["codec"]) == ["x265"] and "DiffVC did not run" in view.status


def test_sweep_writes_report_and_bd_rate(tmp_path):
    studio = make_studio(tmp_path)
    clip = write_video(moving_clip(frames=2), tmp_path / "c.mp4", crf=4)
    state = SessionState()
    request = SweepRequest(
        ClipRequest(str(clip), 0, 2, 256), codecs=("x264", "x265"), anchor_qps="22,27,32,37", metrics=("psnr",)
    )
    view = studio.sweep.run(request, state, "s")
    assert list(view.bd_table["test"]) == ["x264"]  # against x265, the first
    # beside BD-rate: x264's bits relative to x265's at equal quality, read off x265's curve, with how many points
    bits = view.bd_table["bits vs x265 at equal quality (x)"]
    assert 0.5 < bits.iloc[0] < 2 and "test points within the anchor's quality range" in view.bd_table["note"][0]
    assert any(p.endswith("report.html") for p in view.files) and len(view.results) == 8
    figure = studio.sweep.figure(CurveRequest("psnr"), state)
    assert [len(trace.x) for trace in figure.data] == [4, 4]  # the rows read back from results.json
    with pytest.raises(UserError):
        studio.sweep.run(SweepRequest(request.clip, anchor_qps="a, b"), state, "s")
    results = Path(state.sweep_dir) / "results.json"
    untyped = [{k: v for k, v in row.items() if k != "schema"} for row in json.loads(results.read_text())]
    results.write_text(json.dumps(untyped))  # a sweep written before the rows had a schema
    with pytest.raises(UserError, match="older version"):
        studio.sweep.figure(CurveRequest("psnr"), state)


def test_the_sweep_gives_diffvc_the_stage_filter_chosen(tmp_path):
    """The RD tab's "sharpening, per stream" reaches DiffVC's sweep (the codec that has the option) and no other."""
    studio = make_studio(tmp_path)
    request = SweepRequest(ClipRequest("c.mp4", 0, 2, 256), codecs=("x265", "diffvc", "condlc"), filter="auto")
    plans = {plan.name: plan.options for plan in studio.sweep._plans(request)}
    assert plans["diffvc"]["filter"] == "auto" and "filter" not in plans["condlc"] and "filter" not in plans["x265"]
    assert studio.sweep._plans(replace(request, filter="-1"))[1].options["filter"] == "-1"


def test_default_anchor_qps_span_the_neural_codecs_quality(tmp_path):
    """x265 at the tab's default QPs reaches from below 26 to above 38 dB, where the neural codecs' points lie, so
    their bits at equal quality can be read off its curve."""
    studio = make_studio(tmp_path)
    clip = write_video(moving_clip(frames=2), tmp_path / "c.mp4", crf=4)
    view = studio.sweep.run(
        SweepRequest(ClipRequest(str(clip), 0, 2, 256), codecs=("x265",), metrics=("psnr",)), SessionState(), "s"
    )
    assert view.results["psnr"].min() < 26 and view.results["psnr"].max() > 38
    assert view.bd_table["note"][0] == "BD-rate needs at least two codecs."


def test_stop_ends_a_run_at_its_next_step(tmp_path):
    studio = make_studio(tmp_path)
    clip = write_video(moving_clip(frames=3), tmp_path / "c.mp4", crf=4)
    steps = []

    def progress(fraction, desc=""):
        steps.append(desc)
        studio.compare.stop("s")  # the Stop button, pressed while the run is going

    with pytest.raises(Exception) as caught:
        studio.compare.run(
            CompareRequest(ClipRequest(str(clip), 0, 3, 256), metrics=("psnr",)), SessionState(), "s", progress
        )
    assert error_message(caught.value).startswith("**Stopped.**") and len(steps) == 1
    assert not any((tmp_path / "comparisons").iterdir())


def test_the_zoom_first_looks_where_the_texture_is():
    from app.views import textured_zoom_centre

    frame = np.full((144, 256, 3), 128, np.uint8)
    frame[90:130, 180:240] = np.random.default_rng(0).integers(0, 255, (40, 60, 3))  # texture, bottom right
    cx, cy = textured_zoom_centre(frame, 4.0)
    assert 180 / 256 <= cx <= 240 / 256 and 90 / 144 <= cy <= 130 / 144


def test_an_upload_the_browser_cannot_play_gets_a_first_frame_preview(tmp_path):
    import av

    studio = make_studio(tmp_path)
    clip = moving_clip(frames=3, height=48, width=64)
    playable = write_video(clip, tmp_path / "clip.mp4", crf=4)
    assert studio.compare.clip_preview(str(playable)) == (None, "")
    mjpeg = tmp_path / "clip.avi"
    with av.open(str(mjpeg), "w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        for frame in clip.frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frame, note = studio.compare.clip_preview(str(mjpeg))
    assert frame.shape == (48, 64, 3) and "mjpeg in avi" in note and "first frame" in note
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"RIFF" + bytes(100))
    assert studio.compare.clip_preview(str(junk)) == (None, "")  # not a video: the run says so, with its reason


def test_the_pack_picker_lists_installed_packs_and_runs_the_one_chosen(tmp_path, monkeypatch):
    """A pack dropped into the packs directory is offered with its preset, size and provenance; the comparison runs
    the chosen one; a name the picker did not offer (a path, say) is refused; a `full` pack on a CPU says what a
    frame costs before anything runs."""

    import torch

    from codec.diffvc.config import tiny_config
    from codec.diffvc.model import DiffVCModel
    from codec.diffvc.pack import write_pack

    model, _ = DiffVCModel.random(tiny_config(), seed=1)
    packs = tmp_path / "packs"
    write_pack(packs / "my-pack", model.config.to_dict(), model.trainable_state(), "# my-pack\n\nTrained on X. More.\n")
    (packs / "big").mkdir()
    (packs / "big" / "config.json").write_text(
        json.dumps({"preset": "full", "diffusion": {"steps": 50, "strength": 0.5, "tdir_ratio": 0.5}})
    )
    (packs / "big" / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv("DIFFVC_PACKS", str(packs))
    studio = make_studio(tmp_path)
    choices, first = studio.codecs.pack_choices()
    assert [name for _, name in choices] == ["big", "my-pack", "diffvc-tiny", "random-tiny"] and first == "random-tiny"
    summary = studio.codecs.pack_summary("my-pack")
    assert "tiny preset" in summary and "Trained on X" in summary and " MB" in summary
    if not torch.cuda.is_available():
        assert "No GPU here" in studio.codecs.pack_summary("big") and "13 U-Net" in studio.codecs.pack_summary("big")
        assert "No GPU" not in summary
    with pytest.raises(UserError, match="no installed model pack"):
        studio.codecs.pack_summary(str(packs / "my-pack"))

    clip = write_video(moving_clip(frames=3, height=48, width=64), tmp_path / "clip.mp4", crf=4)
    request = CompareRequest(ClipRequest(str(clip), 0, 2, 256), anchors=(), metrics=("psnr",), pack="my-pack")
    view = studio.compare.run(request, SessionState(), "s")
    results = next(p for p in view.files if p.endswith("results.json"))
    rows = json.loads(Path(results).read_text())
    assert {row["options"]["pack"] for row in rows if row["codec"] == "diffvc"} == {"my-pack"}
    with pytest.raises(UserError):
        studio.compare.run(replace(request, pack="../packs/my-pack"), SessionState(), "s")


def test_the_results_table_says_how_strongly_the_stage_restored():
    """`stage_filter`: the stream's filter level in words, "(auto)" where the encoder chose it; blank for anchors."""
    from types import SimpleNamespace

    from app.views import stage_filter

    def row(gain, option="0", steps=4):
        params = {"steps": steps} if gain is None else {"filter_gain": gain, "steps": steps}
        return SimpleNamespace(params=params, options={"filter": option})

    assert [stage_filter(row(g)) for g in (0.0, -1.0, 0.5, -0.25)] == ["as trained", "off", "1.5x", "0.75x"]
    assert stage_filter(row(0.5, "auto")) == "1.5x (auto)"
    assert stage_filter(row(None)) == stage_filter(row(0.0, steps=0)) == ""  # an anchor; condlc
