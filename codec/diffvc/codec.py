"""DiffVC as a registered `VideoCodec`: GOP structure, the DVC1 bitstream, model packs, timings.

* `diffvc`: the full codec (diffusion stage on, QP prompt, TDIR).
* `condlc`: the baseline neural codec: the same conditional latent codec with the diffusion stage switched off
  *in the loop* (the latent decoder's output is the frame and the next reference), same pack, same rate control.

GOP: frame t is an I-frame when t = 0 or (intra_period > 0 and t % intra_period == 0). A P-frame's QP is the
stream QP plus `qp_offsets[(position in the GOP - 1) % len(qp_offsets)]` (DCVC-DC's hierarchical quality:
e.g. "0,4,2,4"), an I-frame's the stream QP plus `intra_qp_offset` (negative: a finer I-frame, which every P-frame
of its GOP refers to, as HEVC's I-frames at a lower QP), both clipped to 0..63. Each unit carries its QP, so the
decoder needs no options.

A VAE latent space (the `full` preset) codes frames of more than 720p's pixels in overlapping tiles
(`codec.diffvc.latent.VAE_TILING`): the encoder decides (`uses_vae_tiling`) and says so in the header
(`FLAG_VAE_TILED`), and the decoder tiles exactly when the stream says, so both run the same VAE computation.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from codec.bitstream import CODEC_IDS, FORMAT_VERSION, MAGIC, FrameUnit, StreamHeader, read_stream, write_stream
from codec.diffvc import MAX_DEADZONE, QP_MAX, QP_MIN, STREAM_FILTER_GAINS
from codec.diffvc.pack import PackInfo, find_packs, pack_info, resolve_pack
from codec.errors import BitstreamError, CodecError, CodecUnavailableError, SpecError, VideoError
from codec.progress import report_frame
from codec.registry import CodecBase, Encoded, options_dict, register_codec
from codec.video import DEFAULT_LIMITS, Video, crop, frames_to_tensor, pad_to_multiple, tensor_to_frames

if TYPE_CHECKING:
    import torch

    from codec.diffvc.latent import TileGrid
    from codec.diffvc.model import DiffVCModel, SamplingPlan

# Registering and listing these codecs imports no torch and no diffusers (seconds on a CPU): the model, the
# sampler and torch are imported by the functions that run them (`load_model`, `encode`, `decode`).

RANDOM_PACK_PREFIX = "random-"  # pack="random-tiny": random init of a preset (tests, speed), never a real result
FLAG_REUSE_STEP = 1  # header flags: TDIR reuses per-step x0 (else the final latent)
FLAG_REUSE_WARP = 2  # TDIR warps the reused x0 with the decoded flow
FLAG_CODEC_REFERENCE = 4  # the next frame refers to the latent codec's reconstruction; the diffusion output is shown
FLAG_HEVC_INTRA = 8  # I-frames are HEVC-intra pictures (codec.diffvc.hevc_intra)
FLAG_VAE_TILED = 16  # the VAE latent space encodes and decodes in tiles (codec.diffvc.latent.VAE_TILING)
FILTER_LEVEL_SHIFT = 5  # flag bits 5-7: the stream's filter level, an index into STREAM_FILTER_GAINS
FLAG_FILTER_LEVEL = 0b111 << FILTER_LEVEL_SHIFT
FILTER_SEARCH_GAINS = (-1.0, -0.5, 0.0, 0.5)  # the gains `filter=auto` shows a stream at (`DiffVC.encode_with_plan`)
FILTER_SCORE_METRICS = ("lpips", "dists")  # and the metrics it keeps the best by, summed (`filter_score`)
FILTER_SCORE_STEP = 4  # on every 4th P-frame (the metrics, not the codings, cost most of the search)
ENCODER_REVISION = 11  # bump when the encoder's choices change what a stream holds (then cached results are redone)
INTRA_QP_OFFSET = -16  # the default I-frame QP offset (docs/RESULTS.md, "I-frames" and "The I-frame offset")
INTRA_CODER = "hevc"  # the default I-frame coder (docs/RESULTS.md, "I-frames")
DEADZONE = 0.0  # the default latent dead zone (docs/RESULTS.md, "A dead zone")
# One string per frame (a P-frame's: motion flag, MVs, latent); a P-frame of none is skipped (docs/FORMAT.md).
STRINGS_PER_TYPE = {"I": (1,), "P": (0, 1)}


@dataclass(frozen=True)
class NeuralOptions:
    """Options shared by `diffvc` and `condlc`."""

    intra_period: int = 32
    qp_offsets: str = "0"
    intra_qp_offset: int = INTRA_QP_OFFSET
    intra: Literal["learned", "hevc"] = INTRA_CODER  # I-frames: the learned intra codec or HEVC-intra (x265)
    deadzone: float = DEADZONE  # the encoder rounds latents toward their means by this much (`deadzone_rounding`)
    skip: bool = True  # the encoder may skip a P-frame (no strings) where that costs less (`model.prefers_skip`)
    pack: str = ""  # a pack name or folder; "" = the default pack; "random-tiny" = random init
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    compile: bool = False  # torch.compile the U-Net and ControlNet (CUDA; slow first call)

    def __post_init__(self) -> None:
        if self.intra_period != -1 and not 1 <= self.intra_period <= 65535:
            raise ValueError(f"intra_period must be -1 or 1..65535, got {self.intra_period}")
        parse_offsets(self.qp_offsets)
        if self.intra not in ("learned", "hevc"):
            raise ValueError(f"intra must be learned or hevc, got {self.intra!r}")
        if abs(self.intra_qp_offset) > QP_MAX:
            raise ValueError(f"intra_qp_offset must be in [-63, 63], got {self.intra_qp_offset}")
        if not 0.0 <= self.deadzone < MAX_DEADZONE:
            raise ValueError(f"deadzone must be in [0, {MAX_DEADZONE}), got {self.deadzone}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")


@dataclass(frozen=True)
class DiffVCOptions(NeuralOptions):
    """Diffusion options; steps/strength/tdir_ratio <= 0 (or < 0) mean the pack's defaults."""

    tdir: bool = True
    tdir_ratio: float = -1.0
    steps: int = 0
    strength: float = -1.0
    reuse: Literal["final", "step"] = "final"
    reuse_warp: bool = True
    reference: Literal["diffusion", "codec"] = "codec"  # what the next frame refers to (docs/RESULTS.md: measured)
    filter: str = "0"  # the stage's filter gain for the stream: one of STREAM_FILTER_GAINS (-1: stage off), or "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.filter != "auto" and _filter_gain(self.filter) not in STREAM_FILTER_GAINS:
            raise ValueError(f"filter must be auto or one of {', '.join(f'{g:g}' for g in STREAM_FILTER_GAINS)}")
        if self.filter != "auto":  # one spelling per gain ("0.5", ".5", "5e-1"), so one cache key
            object.__setattr__(self, "filter", f"{_filter_gain(self.filter):g}")
        if self.filter == "auto" and self.reference != "codec":
            raise ValueError("filter=auto compares streams of one rate: it needs reference=codec")
        if self.tdir_ratio > 1 or self.strength > 1 or not 0 <= self.steps <= 1000:
            raise ValueError("need tdir_ratio <= 1, strength <= 1 and 0 <= steps <= 1000")
        if self.reference not in ("diffusion", "codec"):
            raise ValueError(f"reference must be diffusion or codec, got {self.reference!r}")


def _filter_gain(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_offsets(text: str) -> tuple[int, ...]:
    try:
        offsets = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"qp_offsets must be comma-separated integers, got {text!r}") from None
    if not offsets or any(abs(v) > QP_MAX for v in offsets):
        raise ValueError(f"qp_offsets must be integers in [-63, 63], got {text!r}")
    return offsets


def frame_type(index: int, intra_period: int) -> str:
    return "I" if index == 0 or (intra_period > 0 and index % intra_period == 0) else "P"


def frame_qp(qp: int, index: int, intra_period: int, offsets: tuple[int, ...], intra_offset: int = 0) -> int:
    position = index % intra_period if intra_period > 0 else index
    offset = intra_offset if position == 0 else offsets[(position - 1) % len(offsets)]
    return min(QP_MAX, max(QP_MIN, qp + offset))


def pick_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CodecUnavailableError("device cuda asked for, but no CUDA device is available")
    return torch.device(name)


def _pack_key(pack: str) -> str:
    """One spelling per pack folder, so that `load_model` loads it once whether it is named by default (""), by name
    (the app's pack picker) or by path: the folder's absolute path. Random packs, and names that find no folder (for
    `load_model` to refuse), as given."""
    if pack.startswith(RANDOM_PACK_PREFIX):
        return pack
    try:
        folder = resolve_pack(pack or None)
    except CodecError:
        return pack
    return str(folder.resolve()) if folder is not None else pack


@functools.lru_cache(maxsize=4)
def load_model(pack: str, device: str, compile: bool = False) -> tuple[DiffVCModel, PackInfo]:
    """The model of a pack on a device, loaded once per process (packs are read-only).

    On CUDA the diffusion stage gets the fast path: SDPA attention, channels-last weights, optionally
    torch.compile; it runs under bf16 autocast (`_autocast_dtype`) while entropy coding stays float32.
    """
    import torch

    from codec.diffvc.config import PRESETS
    from codec.diffvc.diffusion import prepare_for_inference
    from codec.diffvc.model import DiffVCModel, instrument_entropy_timing

    if pack.startswith(RANDOM_PACK_PREFIX):
        preset = pack.removeprefix(RANDOM_PACK_PREFIX)
        if preset not in PRESETS:
            raise CodecError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        model, info = DiffVCModel.random(PRESETS[preset](), seed=0, name=pack)
    else:
        folder = resolve_pack(pack or None)
        if folder is None:
            raise CodecUnavailableError("no DiffVC model pack found (train one: python -m codec train, issue [3/5])")
        model, info = DiffVCModel.from_pack(folder)
    model = model.to(device)
    if torch.device(device).type == "cuda":
        prepare_for_inference(model.diffusion, device, channels_last=True, compile=compile)
    instrument_entropy_timing(model)
    return model, info


class NeuralCodecBase(CodecBase):
    """The sequence codec shared by `diffvc` and `condlc`: GOP, DVC1 stream, DPB, timing."""

    qp_range: ClassVar[tuple[int, int]] = (QP_MIN, QP_MAX)
    kind, suffix, bitstream_syntax, takes_pack = "neural", ".dvc", "dvc1", True
    has_diffusion: ClassVar[bool] = False  # whether streams of this codec may declare a diffusion stage
    defined_flags: ClassVar[int] = FLAG_HEVC_INTRA | FLAG_VAE_TILED  # the header flag bits it defines; others: refused

    @classmethod
    def unavailable_reason(cls, options: NeuralOptions) -> str | None:
        """None when the pack the options name can be found (a random-init pack always can)."""
        if options.pack.startswith(RANDOM_PACK_PREFIX):
            return None
        try:
            found = resolve_pack(options.pack or None)
        except CodecError as e:
            return str(e)
        return None if found else "no model pack installed (pack=random-tiny runs a random-init model)"

    @classmethod
    def recognizes(cls, bitstream: bytes) -> bool:
        if bitstream[:4] != MAGIC or len(bitstream) < 6:
            return False
        return bitstream[5] == CODEC_IDS[cls.name]

    def _model(self) -> tuple[DiffVCModel, PackInfo, torch.device]:
        device = pick_device(self.options.device)
        model, info = load_model(_pack_key(self.options.pack), str(device), self.options.compile)
        return model, info, device

    def identity(self) -> str:
        """The pack, the format and the encoder's decisions: cached results of an older encoder are not reused."""
        return f"{self._model()[1].sha256} DVC1 v{FORMAT_VERSION} encoder {ENCODER_REVISION}"

    def sampling_plan(self, model: DiffVCModel) -> SamplingPlan:
        from codec.diffvc.model import SamplingPlan

        return SamplingPlan(0, 0.0, 0, "final", False, self.options.seed, hevc_intra=self.options.intra == "hevc")

    # --- encoder --------------------------------------------------------------------------------------

    def frame_coder(self, model, plan, timer, device: torch.device, also_show: Sequence[SamplingPlan] = ()):
        """The `FrameCoder` that codes one stream (the encoder's; a subclass may change how frames are generated,
        as tools.qpp_check prompts the diffusion stage with another QP)."""
        from codec.diffvc.model import FrameCoder

        return FrameCoder(model, plan, timer, _autocast_dtype(device), also_show)

    def encode(self, video: Video, qp: int, **overrides: Any) -> Encoded:
        """Encode `video` at `qp` (0..63; larger = fewer bits) into one DVC1 stream."""
        qp = self.check_qp(qp)
        model = self._model()[0]
        plan = self.sampling_plan(model)
        try:  # the decoder refuses such a stream (a schedule past the pack's noise schedule): never write one
            _check_schedule(model, plan)
        except BitstreamError as e:
            raise SpecError(f"{self.name}: {e}") from None
        return self.encode_with_plan(video, qp, plan)

    def encode_with_plan(self, video: Video, qp: int, plan: SamplingPlan) -> Encoded:
        """`video` coded at `qp` with `plan` (a codec with a diffusion stage also picks its filter level)."""
        return self._encode(video, qp, plan)

    def _encode(self, video: Video, qp: int, plan: SamplingPlan) -> Encoded:
        """`video` coded at `qp` with `plan` into one DVC1 stream."""
        return self._encode_levels(video, qp, plan, ())[0]

    def _encode_levels(self, video: Video, qp: int, plan: SamplingPlan, also_levels: Sequence[int]) -> list[Encoded]:
        """`video` coded at `qp` with `plan` into one DVC1 stream, then the same coding's stream at each filter
        level of `also_levels` (a `reference=codec` plan: the same strings, each level's own shown frames;
        `FrameCoder.also_show`), in that order. The timings are the whole coding's."""
        from codec.diffvc.config import PAD_MULTIPLE
        from codec.diffvc.entropy import deadzone_rounding
        from codec.diffvc.latent import vae_tiling
        from codec.diffvc.timing import StageTimer, active_timer

        opts = self.options
        model, info, device = self._model()
        tiled = uses_vae_tiling(model, video.width, video.height)
        plans = [plan, *(replace(plan, filter_level=level) for level in also_levels)]
        frames, size_hw = pad_to_multiple(video.frames, PAD_MULTIPLE)
        offsets = parse_offsets(opts.qp_offsets)
        timer = StageTimer(device)
        coder = self.frame_coder(model, plan, timer, device, plans[1:])
        units, estimated = [], []
        recon, evals = [[] for _ in plans], [[] for _ in plans]
        start = time.perf_counter()
        with active_timer(timer), vae_tiling(_tile_grid(tiled)), deadzone_rounding(opts.deadzone):
            for t in range(video.num_frames):
                ftype = frame_type(t, opts.intra_period)
                fqp = frame_qp(qp, t, opts.intra_period, offsets, opts.intra_qp_offset)
                strings, result = coder.encode_frame(
                    frames_to_tensor(frames[t : t + 1], device),
                    ftype,
                    fqp,
                    t,
                    size_hw,
                    intra_qp=qp + opts.intra_qp_offset,
                    allow_skip=opts.skip,
                )
                units.append(FrameUnit(ftype, fqp, tuple(strings)))
                estimated.append(result.estimated_bits)
                for i, shown in enumerate([result, *result.also_shown]):
                    recon[i].append(crop(tensor_to_frames(shown.frame), size_hw)[0])
                    evals[i].append(shown.unet_evals)
                report_frame("encode", t + 1, video.num_frames)
        encode_s = time.perf_counter() - start
        timings = {**timer.as_dict(), "encode": encode_s}
        return [
            self._encoded(video, qp, p, tiled, units, estimated, Video(np.stack(r), video.fps), e, dict(timings))
            for p, r, e in zip(plans, recon, evals, strict=True)
        ]

    def _encoded(
        self,
        video: Video,
        qp: int,
        plan: SamplingPlan,
        tiled: bool,
        units: list[FrameUnit],
        estimated: list[float],
        reconstruction: Video,
        evals: list[int],
        timings: dict[str, float],
    ) -> Encoded:
        """The stream of `units` under `plan`'s header, with what the encoder reports of it."""
        opts = self.options
        _, info, device = self._model()
        bitstream = write_stream(self._header(video, qp, plan, info, tiled), units)
        return Encoded(
            bitstream=bitstream,
            reconstruction=reconstruction,
            frame_bits=[8 * sum(len(s) for s in u.strings) for u in units],
            frame_types=[u.frame_type for u in units],
            timings=timings,
            params={
                **options_dict(opts),
                "qp": qp,
                "pack": info.name,
                "pack_sha256": info.sha256,
                "device": str(device),
                "steps": plan.steps,
                "strength": plan.strength,
                "tdir_k": plan.tdir_k,
                "vae_tiled": tiled,
                "filter_gain": STREAM_FILTER_GAINS[plan.filter_level],
                "header_bytes": len(bitstream) - sum(len(s) for u in units for s in u.strings),
            },
            stats={
                "unet_evals": int(sum(evals)),
                "unet_evals_per_frame": evals,
                "estimated_bits": round(sum(estimated)),
                "estimated_bits_per_frame": [round(b) for b in estimated],
            },
        )

    def _header(self, video: Video, qp: int, plan: SamplingPlan, info: PackInfo, vae_tiled: bool) -> StreamHeader:
        fps = Fraction(video.fps).limit_denominator(1_000_000)
        flags = (
            (FLAG_REUSE_STEP if plan.reuse_source == "step" else 0)
            | (FLAG_REUSE_WARP if plan.reuse_warp else 0)
            | (FLAG_CODEC_REFERENCE if plan.codec_reference else 0)
            | (FLAG_HEVC_INTRA if plan.hevc_intra else 0)
            | (FLAG_VAE_TILED if vae_tiled else 0)
            | plan.filter_level << FILTER_LEVEL_SHIFT
        )
        return StreamHeader(
            codec=self.name,
            width=video.width,
            height=video.height,
            fps_num=fps.numerator,
            fps_den=fps.denominator,
            num_frames=video.num_frames,
            intra_period=self.options.intra_period,
            qp=qp,
            steps=plan.steps,
            tdir_k=plan.tdir_k,
            strength_milli=round(plan.strength * 1000),
            flags=flags,
            seed=plan.seed,
            pack_hash=info.hash_prefix,
        )

    # --- decoder --------------------------------------------------------------------------------------

    def decode(self, bitstream: bytes) -> Video:
        """DVC1 bytes -> the video the encoder reconstructed, bit for bit (same pack, same device)."""
        from codec.diffvc.config import PAD_MULTIPLE
        from codec.diffvc.latent import vae_tiling
        from codec.diffvc.model import FrameCoder, SamplingPlan
        from codec.diffvc.timing import StageTimer

        header, units = read_stream(bitstream)
        model, info, device = self._model()
        self._check_stream(header, info)
        plan = SamplingPlan(
            header.steps,
            header.strength_milli / 1000,
            header.tdir_k,
            "step" if header.flags & FLAG_REUSE_STEP else "final",
            bool(header.flags & FLAG_REUSE_WARP),
            header.seed,
            bool(header.flags & FLAG_CODEC_REFERENCE),
            bool(header.flags & FLAG_HEVC_INTRA),
            (header.flags & FLAG_FILTER_LEVEL) >> FILTER_LEVEL_SHIFT,
        )
        _check_schedule(model, plan)
        size_hw = (header.height, header.width)
        padded_hw = tuple(-(-v // PAD_MULTIPLE) * PAD_MULTIPLE for v in size_hw)
        coder = FrameCoder(model, plan, StageTimer(device), _autocast_dtype(device))
        frames = []
        with vae_tiling(_tile_grid(bool(header.flags & FLAG_VAE_TILED))):
            for t, unit in enumerate(units):
                if len(unit.strings) not in STRINGS_PER_TYPE[unit.frame_type]:
                    raise BitstreamError(f"frame {t}: {unit.frame_type}-frame with {len(unit.strings)} strings")
                try:
                    result = coder.decode_frame(list(unit.strings), unit.frame_type, unit.qp, t, padded_hw, size_hw)
                except (ValueError, RuntimeError) as e:
                    raise BitstreamError(f"frame {t}: cannot be decoded ({e})") from None
                frames.append(crop(tensor_to_frames(result.frame), size_hw)[0])
                report_frame("decode", t + 1, len(units))
        return Video(np.stack(frames), Fraction(header.fps_num, header.fps_den))

    def _check_stream(self, header: StreamHeader, info: PackInfo) -> None:
        if header.codec != self.name:
            raise BitstreamError(f"this is a {header.codec} stream; decode it with codec {header.codec}")
        unknown = header.flags & ~self.defined_flags
        if unknown:
            raise BitstreamError(
                f"header flags {header.flags:#04x} set bits {unknown:#04x} that {self.name} does not define "
                "(stream damaged or written by a newer encoder)"
            )
        if not self.has_diffusion and (header.steps or header.tdir_k or header.strength_milli):
            raise BitstreamError(
                f"a {self.name} stream cannot declare a diffusion stage (steps {header.steps}, tdir_k "
                f"{header.tdir_k}, strength {header.strength_milli / 1000}): stream damaged"
            )
        if header.pack_hash != info.hash_prefix:
            raise BitstreamError(
                f"stream was encoded with model pack {_pack_name(header.pack_hash)}, "
                f"but this decoder has pack {info.name} ({info.hash_prefix.hex()}): decode with pack=<that pack>"
            )
        try:
            DEFAULT_LIMITS.check_size(header.width, header.height)
            DEFAULT_LIMITS.check_count(header.num_frames, header.width, header.height)
        except VideoError as e:
            raise BitstreamError(f"stream declares a video beyond this decoder's limits: {e}") from None


def uses_vae_tiling(model: DiffVCModel, width: int, height: int) -> bool:
    """The encoder's choice, written to the stream (`FLAG_VAE_TILED`): a latent space that tiling changes (a VAE)
    is tiled for pictures of more than `codec.diffvc.latent.TILE_ABOVE_PIXELS` (720p's): 1080p is, 832x480 is not.
    Not a codec option: one would enter every cached result's key (`codec.eval.engine.canonical_spec`)."""
    from codec.diffvc import latent

    return model.latent_space.tileable and width * height > latent.TILE_ABOVE_PIXELS


def _tile_grid(tiled: bool) -> TileGrid | None:
    """The tiles a stream's VAE calls run in: `codec.diffvc.latent.VAE_TILING` when it is tiled, else None."""
    from codec.diffvc import latent

    return latent.VAE_TILING if tiled else None


def _check_schedule(model: DiffVCModel, plan: SamplingPlan) -> None:
    """BitstreamError unless the stream's sampling schedule stays inside the pack's noise schedule.

    The format allows up to 1000 steps, but with SD's "leading" spacing and steps_offset 1 a 1000-step schedule run
    at full strength starts at timestep 1000, one past the end of a 1000-step training schedule (the sampler would
    index past its alphas).
    """
    if not plan.enabled:
        return
    from codec.diffvc.diffusion import sampling_timesteps

    timesteps = sampling_timesteps(model.diffusion.make_scheduler(), plan.steps, plan.strength)
    limit = model.diffusion.config.num_train_timesteps
    if timesteps and max(timesteps) >= limit:
        raise BitstreamError(
            f"the stream's diffusion schedule ({plan.steps} steps at strength {plan.strength}) starts at timestep "
            f"{max(timesteps)}, outside this pack's {limit}-step noise schedule (stream damaged)"
        )


def _pack_name(hash_prefix: bytes) -> str:
    """'<name> (<hash>)' when a pack with that hash is installed, else the hash alone."""
    for name, _, sha in pack_summary():
        if sha.startswith(hash_prefix.hex()):
            return f"{name} ({hash_prefix.hex()})"
    return hash_prefix.hex()


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    import torch

    return torch.bfloat16 if device.type == "cuda" else None


@register_codec("diffvc", "DiffVC: conditional latent coding + ControlNet-guided diffusion, QPP, TDIR")
class DiffVC(NeuralCodecBase):
    Options = DiffVCOptions
    has_diffusion = under_test = True
    defined_flags = (
        FLAG_REUSE_STEP | FLAG_REUSE_WARP | FLAG_CODEC_REFERENCE | FLAG_HEVC_INTRA | FLAG_VAE_TILED | FLAG_FILTER_LEVEL
    )

    def sampling_plan(self, model: DiffVCModel) -> SamplingPlan:
        from codec.diffvc.diffusion import num_reuse_steps, num_sampling_steps
        from codec.diffvc.model import SamplingPlan

        opts, cfg = self.options, model.config.diffusion
        steps = opts.steps or cfg.steps
        strength = opts.strength if opts.strength >= 0 else cfg.strength
        ratio = opts.tdir_ratio if opts.tdir_ratio >= 0 else cfg.tdir_ratio
        k = num_reuse_steps(num_sampling_steps(steps, strength), ratio) if opts.tdir else 0
        return SamplingPlan(
            steps, strength, k, opts.reuse, opts.reuse_warp, opts.seed, opts.reference == "codec", opts.intra == "hevc"
        )

    def encode_with_plan(self, video: Video, qp: int, plan: SamplingPlan) -> Encoded:
        """The stream at the option's filter level; with `filter=auto` the stream coded at each of
        FILTER_SEARCH_GAINS whose P-frames score the lowest LPIPS + DISTS against the source (`filter_score` on
        `scored_frames`), as an encoder searches HEVC's SAO parameters: the encoder sees the source, the decoder
        reads the level. With `reference=codec` the latent codec's chain, so the rate, is the same at every level:
        only the shown frames differ, so the stream is coded once and the diffusion stage run at each level
        (`FrameCoder.also_show`). Costs the stage once per searched level that runs it, and the scoring (the encode
        time reported is the whole search's); a pack whose stage has no anchor filter has nothing to tune (level 0)."""
        if self.options.filter != "auto":
            level = STREAM_FILTER_GAINS.index(_filter_gain(self.options.filter))
            return self._encode(video, qp, replace(plan, filter_level=level))
        if not plan.enabled or not self._model()[0].config.diffusion.anchor_filter:
            return self._encode(video, qp, plan)
        start = time.perf_counter()
        levels = [STREAM_FILTER_GAINS.index(gain) for gain in FILTER_SEARCH_GAINS]
        codings = self._encode_levels(video, qp, replace(plan, filter_level=levels[0]), levels[1:])
        scored = scored_frames(video.num_frames)
        source = Video(video.frames[scored], video.fps)  # one array: its features are computed once
        scores = [filter_score(source, Video(c.reconstruction.frames[scored], video.fps)) for c in codings]
        best = codings[int(np.argmin(scores))]
        best.timings["encode"] = time.perf_counter() - start  # the search's: the coding, every level's stage, scoring
        return best


@register_codec("condlc", "baseline neural codec: DiffVC's conditional latent codec, diffusion stage off in the loop")
class CondLC(NeuralCodecBase):
    Options = NeuralOptions
    rate_of_under_test = True  # DiffVC's own stream without the diffusion stage (reference=codec, the default)


def scored_frames(num_frames: int) -> list[int]:
    """The frames `filter=auto` scores: every FILTER_SCORE_STEP-th P-frame from the first (frame 0 alone in a
    1-frame clip)."""
    return list(range(1, num_frames, FILTER_SCORE_STEP)) or [0]


def filter_score(source: Video, shown: Video) -> float:
    """LPIPS + DISTS (the stage's fine-tuning objective) of `shown` against `source`, averaged over the frames."""
    from codec.metrics import compute_metrics

    values = compute_metrics(source, shown, list(FILTER_SCORE_METRICS))
    return sum(float(values[m].mean()) for m in FILTER_SCORE_METRICS)


def pack_summary() -> list[tuple[str, Path, str]]:
    """(name, folder, sha256) of every pack found; for `python -m codec info`."""
    out = []
    for folder in find_packs():
        try:
            info = pack_info(folder)
            out.append((info.name, folder, info.sha256))
        except CodecError as e:
            out.append((folder.name, folder, f"unreadable: {e}"))
    return out
