"""Training clips for the tiny DiffVC pack: synthetic camera motion over photographs, real videos, Vimeo-90k.

Every dataset yields a dict:

    frames      float32 [T, 3, H, W], RGB in [0, 1], H = W = crop (a multiple of 64)
    flow        float32 [T-1, 2, H, W], pixels, channel 0 = x: the exact backward flow from frame i+1 to frame i,
                so `codec.diffvc.warp.warp(frames[i], flow[i]) ~= frames[i+1]` where `flow_valid` holds
                (synthetic clips only; absent for real video)
    flow_valid  bool [T-1, 1, H, W]: where the pixel of frame i+1 is visible in frame i (inside the crop, not
                occluded or uncovered by a moving patch, off the anti-aliased patch edges); with `flow` only

Samples are deterministic: item `index` draws everything from `numpy.random.default_rng(seed + index)`, so the
same (seed, index) gives the same clip in any worker and any epoch. Each dataset is a fixed-length map-style
`torch.utils.data.Dataset`; `collate_clips` batches samples with and without flow together, and
`single_thread_worker` is the `worker_init_fn` for a DataLoader with workers (each caches its own decoded data).

Sources (DESIGN.md section 6; fetched by `python -m codec.train.fetch DATA_DIR`):
* `SyntheticMotionClips`: a photograph seen through a moving camera (pan, zoom, rotation composed as one affine
  per frame) with up to three independently moving patches on top; ground-truth flow from the affines.
* `VideoFolderClips`: random windows and crops of real videos, decoded once through `codec.video.read_video`.
* `Vimeo90kSeptuplets`: `sequences/xxxxx/yyyy/im1.png..im7.png` listed in `sep_trainlist.txt`.
* `mixed_dataset`: synthetic clips over DATA_DIR/photos plus DATA_DIR/clips; never DATA_DIR/eval-clips.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from codec.errors import CodecError
from codec.train.fetch import (
    CLIPS_DIR,
    EVAL_CLIP_FINGERPRINTS,
    EVAL_CLIPS_DIR,
    PHOTO_SUFFIXES,
    PHOTOS_DIR,
    VIDEO_SUFFIXES,
)
from codec.video import VideoLimits, read_video
from codec.weights import sha256_file

log = logging.getLogger(__name__)

MAX_SYNTHETIC_FRAMES = 16  # a camera path this long still fits a 720-px photo at 128-px crops
CROP_MULTIPLE = 64
PHOTO_LIMITS = VideoLimits(max_width=16384, max_height=16384, max_frames=1)
HELD_OUT_FRACTION = 0.05
ALPHA_EPS = 1e-3  # a patch alpha below this is "absent", above 1 - this "opaque", for flow_valid


def single_thread_worker(worker_id: int = 0) -> None:
    """`DataLoader(worker_init_fn=...)`: one OpenCV and one torch thread per loader worker (workers give the
    parallelism; the defaults would oversubscribe the cores)."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def check_clip_shape(num_frames: int, crop: int, max_frames: int | None = None) -> None:
    """Raise ValueError unless 2 <= num_frames (<= max_frames) and crop is a positive multiple of 64."""
    if num_frames < 2 or (max_frames is not None and num_frames > max_frames):
        raise ValueError(f"num_frames must be in 2..{max_frames or 'N'}, got {num_frames}")
    if crop <= 0 or crop % CROP_MULTIPLE:
        raise ValueError(f"crop must be a positive multiple of {CROP_MULTIPLE}, got {crop}")


def _frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] or float [T, H, W, 3] in [0, 1] -> float32 [T, 3, H, W] in [0, 1]."""
    if frames.dtype == np.uint8:
        frames = frames.astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2), dtype=np.float32))


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _refuse_eval_clips(path: Path) -> None:
    if EVAL_CLIPS_DIR in Path(path).resolve().parts:
        raise CodecError(f"{path} is under {EVAL_CLIPS_DIR}/: evaluation clips are never training data")


class SeededClips(Dataset):
    """A fixed-length dataset whose item `index` is `self.sample(default_rng(seed + index))`."""

    def __init__(self, seed: int, length: int) -> None:
        if length <= 0:
            raise ValueError(f"length must be positive, got {length}")
        self.seed = int(seed)
        self.length = int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return self.sample(np.random.default_rng(self.seed + index))

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError


# --- synthetic motion over photographs -------------------------------------------------------------------


@dataclass(frozen=True)
class MotionRanges:
    """How much a synthetic clip moves. Pixels are output (crop) pixels; rates are per frame."""

    max_pan: float = 8.0  # camera speed, px/frame
    pan_jitter: float = 1.0  # std of the per-frame change of the camera velocity, px/frame
    still_prob: float = 0.1  # probability of a camera that does not pan
    static_prob: float = 0.25  # probability of a static camera (no pan, zoom or rotation): a tripod shot,
    # whose patches are each still with probability 1/2 (a still clip when all are)
    max_zoom: float = 0.03  # |log scale change| per frame (3 %)
    zoom_prob: float = 0.5
    max_rotation: float = 2.0  # degrees per frame
    rotation_prob: float = 0.5
    max_patches: int = 3  # 0..max_patches independently moving patches, uniformly
    patch_size: tuple[float, float] = (0.15, 0.45)  # patch side, as a fraction of the crop
    patch_max_speed: float = 8.0  # patch speed relative to the frame, px/frame
    deform_prob: float = 0.0  # probability that a patch also changes shape in place (non-rigid motion)
    max_deform: float = 3.0  # a deforming patch's largest displacement from its rest shape, px
    scale_range: tuple[float, float] = (0.75, 4.0)  # photo pixels per output pixel (log-uniform; > 1: downscaled)

    def __post_init__(self) -> None:
        if not 0.0 <= self.deform_prob <= 1.0:
            raise ValueError(f"deform_prob must be in [0, 1], got {self.deform_prob}")


@dataclass(frozen=True, eq=False)
class MovingPatch:
    """A patch composited over the frames: texture float32 [h, w, 3] in [0, 1], mask float32 [h, w] in [0, 1],
    positions float64 [T, 2]: the (x, y) of its top-left corner in output pixels, per frame; deform None (rigid)
    or float32 [T, h, w, 2]: per frame, where each patch pixel samples its texture and mask, as an offset in
    pixels (a non-rigid patch, whose texture and outline change shape in place)."""

    texture: np.ndarray
    mask: np.ndarray
    positions: np.ndarray
    deform: np.ndarray | None = None

    def at(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """The texture and mask as frame t shows them."""
        if self.deform is None:
            return self.texture, self.mask
        h, w = self.mask.shape
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        map_x, map_y = xs + self.deform[t, ..., 0], ys + self.deform[t, ..., 1]
        texture = cv2.remap(self.texture, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        mask = cv2.remap(self.mask, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        return texture, mask


def camera_affine(center: Sequence[float], scale: float, angle_deg: float, crop: int) -> np.ndarray:
    """float64 [2, 3] mapping an output pixel p (x, y, 1) to world pixels: center + scale * R(angle) (p - p0),
    p0 = the crop's centre. scale > 1 sees more of the world (zoomed out)."""
    a = math.radians(angle_deg)
    rot = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    p0 = np.full(2, (crop - 1) / 2.0)
    return np.concatenate([rot, (np.asarray(center, np.float64) - rot @ p0)[:, None]], axis=1)


def _to3x3(affine: np.ndarray) -> np.ndarray:
    return np.vstack([affine, [0.0, 0.0, 1.0]])


def render_clip(
    world: np.ndarray, affines: np.ndarray, patches: Sequence[MovingPatch], crop: int
) -> dict[str, torch.Tensor]:
    """Render T frames of `world` (uint8 [H, W, 3]) seen through `affines` (float64 [T, 2, 3], output pixel ->
    world pixel), with `patches` composited on top in order; return frames, exact backward flow and flow_valid.

    Background flow of frame t+1: A_t^-1 A_{t+1} p - p. Flow of a pixel owned by patch k (alpha > 0.5, top-most):
    positions[t] - positions[t+1], exact for a rigid patch; a deforming patch's pixels are not `flow_valid` (the
    translation is only its motion's mean). Sampling is bilinear (OpenCV, 1/32-pixel coordinate precision).
    """
    t_len = len(affines)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    frames = np.empty((t_len, crop, crop, 3), np.float32)
    alphas = np.zeros((t_len, len(patches), crop, crop), np.float32)
    for t in range(t_len):
        frame = cv2.warpAffine(world, affines[t], (crop, crop), flags=flags, borderMode=cv2.BORDER_REFLECT101)
        frame = frame.astype(np.float32) / 255.0 if frame.dtype == np.uint8 else frame.astype(np.float32)
        for k, patch in enumerate(patches):
            # only the pixels the patch can touch: its box at this position, one pixel wider, inside the crop
            (px, py), (ph, pw) = patch.positions[t], patch.mask.shape
            x0, y0 = max(0, math.floor(px) - 1), max(0, math.floor(py) - 1)
            x1, y1 = min(crop, math.ceil(px + pw) + 1), min(crop, math.ceil(py + ph) + 1)
            if x1 <= x0 or y1 <= y0:
                continue
            shift = np.array([[1.0, 0.0, x0 - px], [0.0, 1.0, y0 - py]])
            box = (x1 - x0, y1 - y0)
            texture, mask = patch.at(t)
            texture = cv2.warpAffine(texture, shift, box, flags=flags, borderMode=cv2.BORDER_REPLICATE)
            alpha = cv2.warpAffine(mask, shift, box, flags=flags, borderMode=cv2.BORDER_CONSTANT)
            under = frame[y0:y1, x0:x1]
            under += alpha[..., None] * (texture - under)
            alphas[t, k, y0:y1, x0:x1] = alpha
        frames[t] = frame

    ys, xs = np.mgrid[0:crop, 0:crop].astype(np.float64)
    flow = np.empty((t_len - 1, 2, crop, crop), np.float32)
    valid = np.empty((t_len - 1, 1, crop, crop), bool)
    for t in range(t_len - 1):
        m = np.linalg.solve(_to3x3(affines[t]), _to3x3(affines[t + 1]))  # frame t+1 pixel -> frame t pixel
        fx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2] - xs
        fy = m[1, 0] * xs + m[1, 1] * ys + m[1, 2] - ys
        owner = np.zeros((crop, crop), np.int64)  # 0: background, k + 1: patch k
        for k, patch in enumerate(patches):
            on = alphas[t + 1, k] > 0.5
            owner[on] = k + 1
            fx[on], fy[on] = patch.positions[t] - patch.positions[t + 1]
        sx, sy = (xs + fx).astype(np.float32), (ys + fy).astype(np.float32)
        ok = (sx >= 0) & (sx <= crop - 1) & (sy >= 0) & (sy <= crop - 1)
        for k in range(len(patches)):
            here = alphas[t + 1, k]
            there = cv2.remap(alphas[t, k], sx, sy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            above = owner <= k  # patch k lies over the owner (or the owner is the background)
            ok &= np.where(above, (here <= ALPHA_EPS) & (there <= ALPHA_EPS), True)
            mine = owner == k + 1
            ok &= np.where(mine, (here >= 1 - ALPHA_EPS) & (there >= 1 - ALPHA_EPS), True)
            if patches[k].deform is not None:
                ok &= ~mine
        flow[t, 0], flow[t, 1] = fx, fy
        valid[t, 0] = ok
    return {
        "frames": _frames_to_tensor(np.clip(frames, 0.0, 1.0)),
        "flow": torch.from_numpy(flow),
        "flow_valid": torch.from_numpy(valid),
    }


def sample_camera(rng: np.random.Generator, num_frames: int, crop: int, ranges: MotionRanges) -> np.ndarray:
    """A camera path in world pixels (world = the photo at output scale), starting centred on (0, 0): [T, 2, 3]."""
    speed = 0.0 if rng.random() < ranges.still_prob else rng.uniform(0.0, ranges.max_pan)
    heading = rng.uniform(0.0, 2 * math.pi)
    velocity = speed * np.array([math.cos(heading), math.sin(heading)])
    zoom_rate = rng.uniform(-ranges.max_zoom, ranges.max_zoom) if rng.random() < ranges.zoom_prob else 0.0
    turn_rate = rng.uniform(-ranges.max_rotation, ranges.max_rotation) if rng.random() < ranges.rotation_prob else 0.0
    center, log_scale, angle = np.zeros(2), 0.0, 0.0
    affines = []
    for _ in range(num_frames):
        affines.append(camera_affine(center, math.exp(log_scale), angle, crop))
        # move the camera by `velocity` output pixels, in its own frame: the content moves by -velocity
        center = center + affines[-1][:, :2] @ velocity
        if speed > 0:
            velocity = velocity * rng.uniform(0.8, 1.2) + rng.normal(0.0, ranges.pan_jitter, 2)
            norm = float(np.linalg.norm(velocity))
            if norm > ranges.max_pan:
                velocity *= ranges.max_pan / norm
        log_scale += float(np.clip(zoom_rate * rng.uniform(0.7, 1.3), -ranges.max_zoom, ranges.max_zoom))
        angle += float(np.clip(turn_rate * rng.uniform(0.7, 1.3), -ranges.max_rotation, ranges.max_rotation))
    return np.stack(affines)


def _crop_bounds(affines: np.ndarray, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) world coordinates of the crop's corners over all frames."""
    corners = np.array([[0, 0, 1], [crop - 1, 0, 1], [0, crop - 1, 1], [crop - 1, crop - 1, 1]], np.float64)
    points = np.concatenate([corners @ a.T for a in affines])
    return points.min(axis=0), points.max(axis=0)


def _resample(region: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 [h, w, 3] to size=(W, H): area averaging when shrinking (no aliasing), bicubic when growing."""
    shrink = size[0] < region.shape[1] or size[1] < region.shape[0]
    return cv2.resize(region, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


class SyntheticMotionClips(SeededClips):
    """Clips with exact ground-truth flow: a photo filmed by a simulated camera, plus moving patches.

    Per sample: a random photo; a camera path of pan (speed up to `max_pan` px/frame, varying), zoom (up to
    `max_zoom` per frame) and rotation (up to `max_rotation` degrees per frame), composed into one affine per frame;
    a random scale (`scale_range` photo pixels per output pixel, mostly downscaling) at which the photo becomes
    the world; 0-`max_patches` patches cut from a photo (this one or another) translating on their own. A share
    (`static_prob`) are tripod shots: the camera still, half of their patches still too.
    Photos are decoded once through `codec.video.read_video` and cached with the short side at most
    `cache_short_side` pixels (about 2.3 MB each at 720).
    """

    def __init__(
        self,
        photo_paths: Sequence[str | Path],
        num_frames: int = 4,
        crop: int = 128,
        seed: int = 0,
        length: int = 10_000,
        motion: MotionRanges | None = None,
        cache_short_side: int = 720,
    ) -> None:
        super().__init__(seed, length)
        check_clip_shape(num_frames, crop, MAX_SYNTHETIC_FRAMES)
        self.photo_paths = [Path(p) for p in photo_paths]
        if not self.photo_paths:
            raise CodecError("SyntheticMotionClips needs at least one photo")
        for path in self.photo_paths:
            _refuse_eval_clips(path)
        self.num_frames = num_frames
        self.crop = crop
        self.motion = motion or MotionRanges()
        self.cache_short_side = cache_short_side
        self._photos: dict[int, np.ndarray] = {}

    def photo(self, i: int) -> np.ndarray:
        """Photo i as uint8 RGB [H, W, 3], short side at most `cache_short_side` (decoded once, then cached)."""
        if i not in self._photos:
            rgb = read_video(self.photo_paths[i], frames=1, limits=PHOTO_LIMITS).frames[0]
            h, w = rgb.shape[:2]
            shrink = self.cache_short_side / min(h, w)
            if shrink < 1:
                rgb = cv2.resize(rgb, (round(w * shrink), round(h * shrink)), interpolation=cv2.INTER_AREA)
            self._photos[i] = np.ascontiguousarray(rgb)
        return self._photos[i]

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        m, crop = self.motion, self.crop
        photo = self.photo(int(rng.integers(len(self.photo_paths))))
        static = rng.random() < m.static_prob
        if static:
            affines = np.repeat(camera_affine(np.zeros(2), 1.0, 0.0, crop)[None], self.num_frames, axis=0)
        else:
            affines = sample_camera(rng, self.num_frames, crop, m)
        world, offset = self._world(rng, photo, affines)
        affines = affines.copy()
        affines[:, :, 2] -= offset
        patches = [
            self._patch(rng, photo, still=static and rng.random() < 0.5)
            for _ in range(int(rng.integers(0, m.max_patches + 1)))
        ]
        return render_clip(world, affines, patches, crop)

    def _world(self, rng: np.random.Generator, photo: np.ndarray, affines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cut and rescale the region of `photo` the camera path sees; return it and its world-space origin."""
        margin = 3
        low, high = _crop_bounds(affines, self.crop)
        low = np.floor(low) - margin
        size = (np.ceil(high) + margin - low).astype(int)  # world pixels (w, h)
        ph, pw = photo.shape[:2]
        scale = _log_uniform(rng, *self.motion.scale_range)
        scale = min(scale, pw / size[0], ph / size[1])  # the whole path must fit in the photo
        region = np.minimum(np.ceil(size * scale).astype(int), [pw, ph])
        x0 = int(rng.integers(0, pw - region[0] + 1))
        y0 = int(rng.integers(0, ph - region[1] + 1))
        world = _resample(photo[y0 : y0 + region[1], x0 : x0 + region[0]], (int(size[0]), int(size[1])))
        return world, low

    def _patch(self, rng: np.random.Generator, photo: np.ndarray, still: bool = False) -> MovingPatch:
        m, crop, t_len = self.motion, self.crop, self.num_frames
        if len(self.photo_paths) > 1 and rng.random() < 0.5:
            photo = self.photo(int(rng.integers(len(self.photo_paths))))
        w, h = (max(4, round(crop * rng.uniform(*m.patch_size))) for _ in range(2))
        ph, pw = photo.shape[:2]
        scale = min(_log_uniform(rng, *m.scale_range), pw / w, ph / h)
        rw, rh = min(pw, math.ceil(w * scale)), min(ph, math.ceil(h * scale))
        x0, y0 = int(rng.integers(0, pw - rw + 1)), int(rng.integers(0, ph - rh + 1))
        texture = _resample(photo[y0 : y0 + rh, x0 : x0 + rw], (w, h)).astype(np.float32) / 255.0
        mask = np.zeros((h, w), np.float32)
        if rng.random() < 0.5:
            mask[:] = 1.0
        else:
            cv2.ellipse(mask, (w // 2, h // 2), (max(1, w // 2 - 1), max(1, h // 2 - 1)), 0.0, 0.0, 360.0, 1.0, -1)
        speed, heading = rng.uniform(0.0, m.patch_max_speed), rng.uniform(0.0, 2 * math.pi)
        velocity = speed * np.array([math.cos(heading), math.sin(heading)])
        start = np.array([rng.uniform(-w / 2, crop - w / 2), rng.uniform(-h / 2, crop - h / 2)])
        steps = np.zeros((t_len - 1, 2)) if still else velocity + rng.normal(0.0, 0.5, (t_len - 1, 2))
        positions = np.concatenate([start[None], start + np.cumsum(steps, axis=0)])
        # drawn only when deforming patches are asked for, so the clips of a rigid MotionRanges stay the same
        deforms = m.deform_prob > 0 and not still and rng.random() < m.deform_prob
        deform = deformation(rng, t_len, (h, w), m.max_deform) if deforms else None
        return MovingPatch(texture, mask, positions, deform)


def deformation(rng: np.random.Generator, num_frames: int, size: tuple[int, int], amplitude: float) -> np.ndarray:
    """A smooth non-rigid motion: float32 [T, h, w, 2] offsets, each component a sum of two travelling waves of
    0.5-1.5 cycles across the patch, moving 0.15-0.6 rad per frame, the largest offset at most `amplitude` px."""
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    t = np.arange(num_frames, dtype=np.float64)[:, None, None]
    offsets = np.zeros((num_frames, h, w, 2))
    for c in range(2):
        for _ in range(2):
            cycles, angle = rng.uniform(0.5, 1.5), rng.uniform(0.0, 2 * math.pi)
            kx, ky = 2 * math.pi * cycles * math.cos(angle) / w, 2 * math.pi * cycles * math.sin(angle) / h
            speed = rng.uniform(0.15, 0.6) * rng.choice((-1.0, 1.0))
            offsets[..., c] += np.sin(kx * xs + ky * ys + rng.uniform(0.0, 2 * math.pi) + speed * t)
    return (offsets * (rng.uniform(0.3, 1.0) * amplitude / 2)).astype(np.float32)


# --- real video --------------------------------------------------------------------------------------------


def _random_window(
    rng: np.random.Generator, frames: np.ndarray, num_frames: int, crop: int, flip: bool
) -> dict[str, torch.Tensor]:
    """A random T-frame window and crop x crop crop of uint8 [N, H, W, 3] frames, mirrored half the time."""
    n, h, w = frames.shape[:3]
    start = int(rng.integers(0, n - num_frames + 1))
    y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    window = frames[start : start + num_frames, y : y + crop, x : x + crop]
    if flip and rng.random() < 0.5:
        window = window[:, :, ::-1]
    return {"frames": _frames_to_tensor(window)}


def list_videos(folder: str | Path) -> list[Path]:
    """Video files under `folder` (recursively, sorted), skipping any eval-clips folder and any file that is one
    of the evaluation clips (recognised by size and sha256) wherever it was copied."""
    folder = Path(folder)
    _refuse_eval_clips(folder)
    eval_sizes = {size for size, _ in EVAL_CLIP_FINGERPRINTS}
    found = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in VIDEO_SUFFIXES or not path.is_file():
            continue
        if EVAL_CLIPS_DIR in path.relative_to(folder).parts:
            continue
        size = path.stat().st_size
        if size in eval_sizes and (size, sha256_file(path)) in EVAL_CLIP_FINGERPRINTS:
            log.warning("%s is an evaluation clip: left out of the training data", path)
            continue
        found.append(path)
    return found


class VideoFolderClips(SeededClips):
    """Random T-frame windows and random crops of the videos in a folder (any format `read_video` reads).

    Each file is decoded once, lazily, at most `max_frames_per_file` frames, resized so its short side is
    within `short_side` = (low, high) (and at least the crop), and kept as uint8. No flow key.
    """

    def __init__(
        self,
        folder: str | Path,
        num_frames: int = 4,
        crop: int = 128,
        seed: int = 0,
        length: int = 10_000,
        short_side: tuple[int, int] = (256, 360),
        max_frames_per_file: int = 300,
        flip: bool = True,
    ) -> None:
        super().__init__(seed, length)
        check_clip_shape(num_frames, crop)
        self.paths = list_videos(folder)
        if not self.paths:
            raise CodecError(f"no video files in {folder}")
        self.num_frames, self.crop, self.flip = num_frames, crop, flip
        self.short_side = short_side
        self.max_frames_per_file = max(max_frames_per_file, num_frames)
        self._frames: dict[int, np.ndarray | None] = {}

    def frames(self, i: int) -> np.ndarray | None:
        """uint8 [N, h, w, 3] of video i at the reduced size, or None where it has fewer than T frames."""
        if i not in self._frames:
            first = read_video(self.paths[i], frames=1).frames[0]
            h, w = first.shape[:2]
            target = max(self.crop, min(max(min(h, w), self.short_side[0]), self.short_side[1]))
            f = target / min(h, w)
            size = (max(self.crop, round(w * f)), max(self.crop, round(h * f)))
            video = read_video(self.paths[i], frames=self.max_frames_per_file, size=size)
            if video.num_frames < self.num_frames:
                log.warning(
                    "%s has %d frames, fewer than %d: skipped", self.paths[i], video.num_frames, self.num_frames
                )
                self._frames[i] = None
            else:
                self._frames[i] = video.frames
        return self._frames[i]

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        order = rng.permutation(len(self.paths))
        for i in order:  # the first usable file in a random order
            frames = self.frames(int(i))
            if frames is not None:
                return _random_window(rng, frames, self.num_frames, self.crop, self.flip)
        raise CodecError(f"no video in {self.paths[0].parent} has {self.num_frames} frames")


class Vimeo90kSeptuplets(SeededClips):
    """Vimeo-90k septuplets: `root/sequences/xxxxx/yyyy/im1.png..im7.png`, listed as `xxxxx/yyyy` in
    `list_file` (default `root/sep_trainlist.txt`). Item i is septuplet i: a random T-frame window of its 7
    frames and a random crop (448x256 frames: crop at most 256). No flow key."""

    SEPTUPLET = 7

    def __init__(
        self,
        root: str | Path,
        list_file: str | Path = "sep_trainlist.txt",
        num_frames: int = 7,
        crop: int = 256,
        seed: int = 0,
        flip: bool = True,
    ) -> None:
        root = Path(root)
        _refuse_eval_clips(root)
        list_path = Path(list_file) if Path(list_file).is_absolute() else root / list_file
        try:
            names = [line.strip() for line in list_path.read_text().splitlines() if line.strip()]
        except OSError as e:
            raise CodecError(f"cannot read the Vimeo-90k list {list_path}: {e}") from None
        if not names:
            raise CodecError(f"{list_path} lists no septuplets")
        super().__init__(seed, len(names))
        check_clip_shape(num_frames, crop, self.SEPTUPLET)
        self.folders = [root / "sequences" / name for name in names]
        self.num_frames, self.crop, self.flip = num_frames, crop, flip

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return self._clip(index, np.random.default_rng(self.seed + index))

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return self._clip(int(rng.integers(self.length)), rng)

    def _clip(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        start = int(rng.integers(0, self.SEPTUPLET - self.num_frames + 1))
        folder = self.folders[index]
        frames = np.stack(
            [read_video(folder / f"im{start + k + 1}.png", frames=1).frames[0] for k in range(self.num_frames)]
        )
        if min(frames.shape[1:3]) < self.crop:
            raise CodecError(f"{folder}: frames of {frames.shape[2]}x{frames.shape[1]} are smaller than the crop")
        return _random_window(rng, frames, self.num_frames, self.crop, self.flip)


# --- the mixed training set of DATA_DIR ----------------------------------------------------------------------


def list_photos(folder: str | Path) -> list[Path]:
    """jpg/png files under `folder`, recursively, sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())


def split_photos(paths: Sequence[Path], held_out_fraction: float = HELD_OUT_FRACTION) -> tuple[list[Path], list[Path]]:
    """(training, held-out) photos: sorted by the sha256 of their content (independent of names and order), the
    last `held_out_fraction` (rounded up; at least one when there are two or more) is held out for validation."""
    ordered = sorted(paths, key=lambda p: (sha256_file(p), str(p)))
    held = 0 if len(ordered) < 2 else max(1, math.ceil(held_out_fraction * len(ordered)))
    return ordered[: len(ordered) - held], ordered[len(ordered) - held :]


def held_out_photos(data_dir: str | Path) -> list[Path]:
    """The validation photos of DATA_DIR/photos: never seen by `mixed_dataset(..., split="train")`."""
    return split_photos(list_photos(Path(data_dir) / PHOTOS_DIR))[1]


class MixedClips(SeededClips):
    """Item i: a source drawn by weight with `default_rng(seed + i)`, then that source's sample from the same rng."""

    def __init__(self, parts: Mapping[str, tuple[SeededClips, float]], seed: int, length: int) -> None:
        super().__init__(seed, length)
        self.parts = {name: ds for name, (ds, weight) in parts.items() if weight > 0}
        if not self.parts:
            raise CodecError("a mixed dataset needs at least one source with a positive weight")
        weights = np.array([parts[name][1] for name in self.parts], np.float64)
        self.probabilities = weights / weights.sum()

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        names = list(self.parts)
        return self.parts[names[int(rng.choice(len(names), p=self.probabilities))]].sample(rng)


DEFAULT_WEIGHTS = {"synthetic": 0.8, "clips": 0.2}


def mixed_dataset(
    data_dir: str | Path,
    num_frames: int = 4,
    crop: int = 128,
    seed: int = 0,
    length: int = 10_000,
    weights: Mapping[str, float] | None = None,
    split: str = "train",
    motion: MotionRanges | None = None,
) -> MixedClips:
    """The training set of a fetched DATA_DIR: synthetic clips over DATA_DIR/photos plus windows of DATA_DIR/clips.

    weights: {"synthetic": w, "clips": w} (default 0.8 / 0.2; a source with no data is dropped).
    split="train" uses all photos but the held-out ones; split="held_out" gives synthetic clips over the held-out
    photos only (no clip is held out). DATA_DIR/eval-clips is never read.
    """
    data_dir = Path(data_dir)
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    unknown = set(weights) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown sources {sorted(unknown)}; use {sorted(DEFAULT_WEIGHTS)}")
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
    train, held = split_photos(list_photos(data_dir / PHOTOS_DIR))
    photos = train if split == "train" else held
    parts: dict[str, tuple[SeededClips, float]] = {}
    if photos and weights.get("synthetic", 0) > 0:
        synthetic = SyntheticMotionClips(photos, num_frames, crop, seed, length, motion)
        parts["synthetic"] = (synthetic, weights["synthetic"])
    clips = data_dir / CLIPS_DIR
    if split == "train" and weights.get("clips", 0) > 0 and clips.is_dir() and list_videos(clips):
        parts["clips"] = (VideoFolderClips(clips, num_frames, crop, seed, length), weights["clips"])
    if not parts:
        raise CodecError(f"no training data in {data_dir} (run: python -m codec.train.fetch {data_dir})")
    return MixedClips(parts, seed, length)


def collate_clips(samples: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Batch samples: frames [B, T, 3, H, W]; where any sample has flow, also flow [B, T-1, 2, H, W] and
    flow_valid [B, T-1, 1, H, W] (zeros / False for samples without flow) and has_flow bool [B]."""
    batch = {"frames": torch.stack([s["frames"] for s in samples])}
    has_flow = [("flow" in s) for s in samples]
    if any(has_flow):
        t, _, h, w = samples[0]["frames"].shape
        zero_flow = torch.zeros(t - 1, 2, h, w)
        no_valid = torch.zeros(t - 1, 1, h, w, dtype=torch.bool)
        batch["flow"] = torch.stack([s.get("flow", zero_flow) for s in samples])
        batch["flow_valid"] = torch.stack([s.get("flow_valid", no_valid) for s in samples])
        batch["has_flow"] = torch.tensor(has_flow)
    return batch
