"""Metrics and their offline weights: layout and values of the converted VGG16, and metric behaviour."""

from __future__ import annotations

import copy
import io
import pickle

import lpips
import numpy as np
import pytest
import torch
from conftest import EXAMPLE_CLIP
from torchvision.models import vgg16

from codec.errors import CodecError
from codec.metrics import (
    OfflineLPIPS,
    _vgg16_features,
    compute_metrics,
    load_metric_models,
    luma,
    perceptual_model,
    psnr,
    shared_stems,
    vgg16_features,
)
from codec.video import Video, frames_to_tensor, read_video
from codec.weights import _NumpyOnlyUnpickler, load_metric_weights, metric_weight_files, prepare_metric_weights

# torchvision's published VGG16 (VGG16_Weights.IMAGENET1K_V1): features[0].weight[0, 0], the first filter's red plane.
TORCHVISION_VGG16_CONV1_FILTER0_RED = [
    [-0.5537, 0.1427, 0.5290],
    [-0.5831, 0.3566, 0.7657],
    [-0.6902, -0.0480, 0.4841],
]


@pytest.fixture(scope="module")
def weights():
    w = load_metric_weights()
    assert w is not None, f"metric weights not prepared: {metric_weight_files().verify()}"
    return w


@pytest.fixture(scope="module")
def frames() -> Video:
    return read_video(EXAMPLE_CLIP, start=40, frames=2, size=(256, 144))


def test_converted_vgg16_has_torchvisions_layout(weights):
    reference = vgg16(weights=None).features.state_dict()
    converted = {k.removeprefix("features."): v for k, v in weights["vgg16"].items()}
    assert converted.keys() == reference.keys()
    for key, tensor in reference.items():
        assert converted[key].shape == tensor.shape and converted[key].dtype == tensor.dtype, key


def test_converted_vgg16_has_torchvisions_values(weights):
    first = weights["vgg16"]["features.0.weight"]
    assert torch.allclose(first[0, 0], torch.tensor(TORCHVISION_VGG16_CONV1_FILTER0_RED), atol=1e-4)
    # the transposition is right only if every filter is (out, in, kh, kw): the red plane above pins it
    assert first.shape == (64, 3, 3, 3)


def test_vgg16_features_are_torchvisions_network_with_the_weights_given(weights):
    reference = vgg16(weights=None).features
    reference.load_state_dict({k.removeprefix("features."): v for k, v in weights["vgg16"].items()})
    ours = vgg16_features(weights["vgg16"])
    assert str(ours) == str(reference)
    x = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))


def test_metric_models_load_once_ahead_of_their_first_use():
    load_metric_models(["lpips", "dists", "tlp"])
    built = perceptual_model.cache_info().currsize
    load_metric_models(["lpips", "dists", "tlp"])
    compute_metrics(*[Video(np.full((2, 32, 32, 3), v, np.uint8), 25.0) for v in (100, 110)], ["lpips", "dists"])
    assert perceptual_model.cache_info().currsize == built >= 2


def test_prepare_is_idempotent_and_manifest_verifies():
    files = metric_weight_files()
    before = [p.stat().st_mtime_ns for p in files.files()]
    prepare_metric_weights()
    assert [p.stat().st_mtime_ns for p in files.files()] == before
    assert files.verify() is None


def test_weight_unpickler_refuses_code():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        _NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()


def test_missing_weights_offline_give_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFVC_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(
        torch.hub, "load_state_dict_from_url", lambda *a, **k: (_ for _ in ()).throw(OSError("network is unreachable"))
    )
    perceptual_model.cache_clear()
    try:
        with pytest.raises(CodecError, match="python -m codec.weights prepare"):
            perceptual_model("lpips")
    finally:
        perceptual_model.cache_clear()


def test_piq_lpips_matches_the_reference_lpips_implementation(weights, frames):
    """piq's LPIPS with our weights == the `lpips` package's LPIPS-VGG v0.1 with the same VGG16."""
    reference = lpips.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False).eval()
    slices = [(1, range(0, 4)), (2, range(4, 9)), (3, range(9, 16)), (4, range(16, 23)), (5, range(23, 30))]
    state = {}
    for slice_no, indices in slices:
        for i in indices:
            for part in ("weight", "bias"):
                if f"features.{i}.{part}" in weights["vgg16"]:
                    state[f"slice{slice_no}.{i}.{part}"] = weights["vgg16"][f"features.{i}.{part}"]
    reference.net.load_state_dict(state)
    x = torch.from_numpy(frames.frames).permute(0, 3, 1, 2).float() / 255
    y = torch.roll(x, shifts=3, dims=-1)
    with torch.no_grad():
        expected = reference(x * 2 - 1, y * 2 - 1).flatten()
        ours = OfflineLPIPS(weights["vgg16"], weights["lpips"])(x, y)
    assert torch.allclose(ours, expected, rtol=1e-4, atol=1e-5), (ours, expected)


def test_identical_frames(frames):
    m = compute_metrics(frames, frames)
    assert np.all(m["lpips"] < 1e-6) and np.all(m["dists"] < 1e-6)
    assert np.all(m["ms_ssim"] > 0.9999) and np.all(m["psnr"] == 100.0)


def _degrade(video: Video, noise: float = 0.0, blur: int = 0) -> Video:
    x = video.frames.astype(np.float64)
    if blur:
        k = 2 * blur + 1
        x = np.stack(
            [
                np.stack(
                    [
                        np.apply_along_axis(lambda r: np.convolve(r, np.ones(k) / k, "same"), 0, f[..., c])
                        for c in range(3)
                    ],
                    -1,
                )
                for f in x
            ]
        )
    x = x + np.random.default_rng(1).normal(0, noise, x.shape) if noise else x
    return Video(np.clip(np.rint(x), 0, 255).astype(np.uint8), video.fps)


@pytest.mark.parametrize("kind", ["noise", "blur"])
def test_perceptual_metrics_grow_with_distortion(frames, kind):
    levels = [(4, 0), (12, 0), (30, 0)] if kind == "noise" else [(0, 1), (0, 2), (0, 4)]
    results = [compute_metrics(frames, _degrade(frames, n, b)) for n, b in levels]
    for name, sign in (("lpips", 1), ("dists", 1), ("psnr", -1), ("ms_ssim", -1)):
        values = [sign * r[name].mean() for r in results]
        assert values == sorted(values) and len(set(values)) == 3, (name, values)


def test_psnr_y_uses_bt601_luma_and_differs_from_rgb():
    a = np.zeros((1, 8, 8, 3), np.uint8)
    b = a.copy()
    b[..., 2] = 10  # blue only: weight 0.114 in luma
    assert np.isclose(luma(b)[0, 0, 0], 1.14)
    m = compute_metrics(Video(a), Video(b), ["psnr", "psnr_y"])
    assert m["psnr_y"][0] > m["psnr"][0]
    assert np.isclose(m["psnr"][0], 10 * np.log10(255**2 / (100 / 3)))


def test_psnr_is_per_frame():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[1] = 1
    assert list(psnr(a, b)) == [100.0, pytest.approx(48.1308, abs=1e-3)]


def test_ms_ssim_works_on_small_frames():
    small = Video(np.random.default_rng(0).integers(0, 255, (2, 40, 24, 3), dtype=np.uint8))
    assert np.allclose(compute_metrics(small, small, ["ms_ssim"])["ms_ssim"], 1.0)


def test_unknown_metric_and_shape_mismatch(frames):
    with pytest.raises(CodecError, match="unknown metric"):
        compute_metrics(frames, frames, ["vmaf2"])
    with pytest.raises(CodecError, match="cannot compare"):
        compute_metrics(frames, Video(frames.frames[:1]))


def test_reference_features_are_computed_once_per_clip_with_the_same_values():
    """LPIPS and DISTS against one clip reuse the reference's VGG16 features: the values are those of piq's own
    forward (x and y through the network together) to the bit, and the reference runs through it once."""
    from codec.metrics import REFERENCE_FEATURES

    clip = read_video(EXAMPLE_CLIP, start=40, frames=10, size=(256, 144))  # two batches of frames
    distorted = [_degrade(clip, noise=8), _degrade(clip, blur=2)]
    REFERENCE_FEATURES.clear()
    hits, misses = REFERENCE_FEATURES.hits, REFERENCE_FEATURES.misses
    values = [compute_metrics(clip, d, ["lpips", "dists"]) for d in distorted]
    assert (REFERENCE_FEATURES.misses - misses, REFERENCE_FEATURES.hits - hits) == (4, 4)  # 2 metrics x 2 batches
    x, y = frames_to_tensor(distorted[1].frames, "cpu"), frames_to_tensor(clip.frames, "cpu")
    with torch.inference_mode():
        for name in ("lpips", "dists"):
            model = perceptual_model(name)
            full = torch.cat([model(x[:8], y[:8]), model(x[8:], y[8:])]).double().numpy()
            assert np.array_equal(values[1][name], full), name
    copy = Video(clip.frames.copy(), clip.fps)  # another array: its own features, the same values
    again = compute_metrics(copy, distorted[1], ["lpips", "dists"])
    assert all(np.array_equal(again[n], values[1][n]) for n in ("lpips", "dists"))
    assert REFERENCE_FEATURES.misses - misses == 8


def test_lpips_and_dists_run_the_vgg16_stem_once_per_batch_with_the_same_values():
    """LPIPS and DISTS share VGG16's weights and normalisation up to relu1_2: with the reference's features cached,
    a batch of decoded frames goes through conv1_1 once for both metrics, and the values are piq's to the bit."""
    clip = read_video(EXAMPLE_CLIP, start=40, frames=10, size=(256, 144))  # two batches of frames
    distorted = _degrade(clip, noise=8)
    compute_metrics(clip, distorted, ["lpips", "dists"])  # the reference's features cached
    calls = []
    hooks = [
        perceptual_model(n, "cpu").model[0].register_forward_hook(lambda *a: calls.append(1))
        for n in ("lpips", "dists")
    ]
    try:
        values = compute_metrics(clip, distorted, ["lpips", "dists"])
    finally:
        for hook in hooks:
            hook.remove()
    assert len(calls) == 2  # one per batch, not one per batch and metric
    x, y = frames_to_tensor(distorted.frames, "cpu"), frames_to_tensor(clip.frames, "cpu")
    with torch.inference_mode():
        for name in ("lpips", "dists"):
            full = torch.cat([perceptual_model(name)(x[i : i + 8], y[i : i + 8]) for i in (0, 8)]).double().numpy()
            assert np.array_equal(values[name], full), name


def test_a_network_with_another_stem_does_not_take_the_shared_one():
    lpips_model = perceptual_model("lpips")
    other = copy.deepcopy(perceptual_model("dists"))
    with torch.no_grad():
        other.model[2].weight[0, 0, 0, 0] += 0.5  # conv1_2
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode(), shared_stems():
        _vgg16_features(lpips_model, x)
        features = _vgg16_features(other, x)
        assert all(torch.equal(a, b) for a, b in zip(features, other.get_features(x)[1:]))  # [0]: the frames


def test_vmaf_tops_on_identical_clips_falls_with_the_qp_and_neg_refuses_sharpening():
    from codec.registry import get_codec

    clip = read_video(EXAMPLE_CLIP, start=40, frames=6, size=(256, 144))
    same = compute_metrics(clip, clip, ["vmaf", "vmaf_neg"])
    assert np.all(same["vmaf"] > 97) and np.array_equal(same["vmaf"], same["vmaf_neg"])
    x265 = get_codec("x265")
    coded = [compute_metrics(clip, x265.encode(clip, qp).reconstruction, ["vmaf", "vmaf_neg"]) for qp in (22, 37)]
    assert same["vmaf"].mean() > coded[0]["vmaf"].mean() > coded[1]["vmaf"].mean() > 20
    assert all(np.all(c["vmaf_neg"] <= c["vmaf"] + 1e-9) for c in coded)
    blurred = clip.frames.astype(np.float64)
    blurred = (blurred + np.roll(blurred, 1, 2) + np.roll(blurred, -1, 2)) / 3
    sharpened = Video(np.clip(np.rint(clip.frames + 1.5 * (clip.frames - blurred)), 0, 255).astype(np.uint8), clip.fps)
    enhanced = compute_metrics(clip, sharpened, ["vmaf", "vmaf_neg"])
    assert enhanced["vmaf"].mean() > enhanced["vmaf_neg"].mean() + 5  # the gain NEG does not count


def test_tlp_sees_flicker_the_source_does_not_have():
    """tLP: 0 for a copy, small for a constant change of every frame, larger for frames that flicker; equal to
    |LPIPS(d_t, d_t-1) - LPIPS(s_t, s_t-1)| computed directly."""
    clip = read_video(EXAMPLE_CLIP, start=40, frames=10, size=(128, 72))
    assert np.all(compute_metrics(clip, clip, ["tlp"])["tlp"] == 0)
    brighter = clip.frames.astype(np.int16) + 12
    flicker = brighter.copy()
    flicker[::2] -= 12
    shifted = compute_metrics(clip, Video(np.clip(brighter, 0, 255).astype(np.uint8), clip.fps), ["tlp"])["tlp"]
    flickering = Video(np.clip(flicker, 0, 255).astype(np.uint8), clip.fps)
    flickered = compute_metrics(clip, flickering, ["tlp"])["tlp"]
    assert flickered[0] == 0 and flickered[1:].mean() > 3 * shifted[1:].mean()
    model = perceptual_model("lpips")
    with torch.inference_mode():
        d, s = frames_to_tensor(flickering.frames, "cpu"), frames_to_tensor(clip.frames, "cpu")
        direct = (model(d[1:], d[:-1]) - model(s[1:], s[:-1])).abs().double().numpy()
    assert np.allclose(flickered[1:], direct, atol=1e-6)


def test_two_threads_measuring_at_once_get_each_their_own_clips_values(frames):
    """Decoded-frame features are kept per thread: two measurements at once give what each gives alone."""
    import threading

    other = Video(np.ascontiguousarray(frames.frames[:, :, ::-1]), frames.fps)
    shifted = [Video(np.roll(v.frames, 2, axis=2), v.fps) for v in (frames, other)]
    alone = [compute_metrics(r, d, ["lpips", "tlp"]) for r, d in zip((frames, other), shifted, strict=True)]
    together: list = [None, None]

    def measure(i: int) -> None:
        together[i] = compute_metrics((frames, other)[i], shifted[i], ["lpips", "tlp"])

    threads = [threading.Thread(target=measure, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together, strict=True):
        assert all(np.array_equal(a[n], b[n]) for n in a)
