"""`python -m codec train STAGE ...`: the staged training of DiffVC from the command line.

    python -m codec train flow      --data DIR --out runs/flow                       (SpyNet presets only)
    python -m codec train codec     --data DIR --out runs/codec     [--pack-from runs/flow]
    python -m codec train diffusion --data DIR --out runs/diffusion --pack-from runs/codec
    python -m codec train distill   --data DIR --out runs/distill   --pack-from runs/codec --fresh-diffusion
    python -m codec train finetune  --data DIR --out runs/finetune  --pack-from runs/distill (or runs/diffusion)

Every stage resumes from RUN_DIR/checkpoint.pt when it exists, logs to RUN_DIR/log.csv, draws RUN_DIR/loss.png and
writes RUN_DIR/pack/; `--time-budget MIN` stops it cleanly after MIN minutes. Nothing heavy is imported until the
command runs (`add_train_parser` only builds the parser).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

STAGE_NAMES = ("flow", "codec", "diffusion", "distill", "finetune")
VIMEO_LIST = "sep_trainlist.txt"  # marks a Vimeo-90k septuplet root (`codec.train.data.Vimeo90kSeptuplets`)


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `train` subcommand to the CLI's subparsers; it runs `run_train(args)` (via `args.run`)."""
    p = subparsers.add_parser(
        "train",
        help="train a DiffVC stage (flow, codec, diffusion, distill, finetune) into a model pack",
        description="Train one stage of DiffVC. Stages chain through packs: flow -> codec -> diffusion or "
        "distill -> finetune (--pack-from the previous run). Resumes from OUT/checkpoint.pt.",
    )
    p.add_argument("stage", choices=STAGE_NAMES)
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="training data: a fetched folder (photos/, clips/), a Vimeo-90k septuplet root (sep_trainlist.txt) or a "
        "folder of videos; the flow stage needs photos",
    )
    p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run folder (checkpoint, log, pack)")
    p.add_argument(
        "--pack-from",
        metavar="PACK_OR_RUN",
        help="start from this pack (a folder, a run folder holding pack/, or a pack name)",
    )
    p.add_argument(
        "--preset", choices=("tiny", "full"), help="model preset when starting without --pack-from (default tiny)"
    )
    p.add_argument(
        "--sd-base",
        "--sd-path",
        dest="sd_path",
        metavar="DIR_OR_ID",
        help="full preset: SD-2.1-base, whose vae/ and unet/ (also copied into the ControlNet) are the starting "
        "point without --pack-from: a diffusers folder, or found in $DIFFVC_SD_BASE or the Hugging Face cache; the "
        "pack records its name and VAE hash, never the path. With --pack-from or a resumed run: where the pack's "
        "base is (as $DIFFVC_SD_BASE)",
    )
    p.add_argument("--steps", type=int, help="total steps to reach, across resumes (default: per stage)")
    p.add_argument("--batch", type=int, help="sequences per step and process (default: per stage)")
    p.add_argument("--crop", type=int, default=128, help="square crop size, a multiple of 64 (default 128)")
    p.add_argument("--frames", type=int, default=4, help="frames per training sequence T (default 4)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default: per stage and preset)")
    p.add_argument("--warmup", type=int, default=0, metavar="N", help="raise the lr linearly over the first N steps")
    p.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="packs get an exponential moving average of the weights with this decay (e.g. 0.99; 0: off)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget", type=float, metavar="MIN", help="stop cleanly after MIN minutes of this session")
    p.add_argument("--qp", type=int, help="train at this QP only (default: uniform in 0..63 per sequence)")
    p.add_argument(
        "--perceptual",
        default="dists",
        choices=("dists", "lpips", "dists+lpips"),
        help="finetune: perceptual distance (default dists)",
    )
    p.add_argument("--mse-weight", type=float, default=1.0, help="finetune: weight of the MSE term (default 1)")
    p.add_argument(
        "--grad-steps", type=int, help="finetune/distill: backpropagate through the last K sampler steps only"
    )
    p.add_argument(
        "--unsharp",
        type=float,
        default=0.5,
        metavar="AMOUNT",
        help="distill: the teacher's unsharp-mask amount on the codec's reconstruction (default 0.5)",
    )
    p.add_argument(
        "--intra",
        choices=("learned", "hevc"),
        default="learned",
        help="how each sequence's frame 0 is coded: the learned intra codec (trained) or HEVC-intra, as "
        "the encoder's intra=hevc (default learned)",
    )
    p.add_argument("--intra-qp-offset", type=int, default=0, help="frame 0's QP offset (the encoder's intra_qp_offset)")
    p.add_argument(
        "--flat-quantizer",
        action="store_true",
        help="codec: start the latent codecs of a per-channel pack on one quantization step per QP",
    )
    p.add_argument(
        "--entropy-model",
        choices=("gaussian", "laplace"),
        help="codec: code the latent codecs' y under this distribution from now on (default: the pack's); a "
        "Gaussian pack's scales start scaled for Laplace",
    )
    p.add_argument(
        "--frame-interpolation",
        choices=("bilinear", "bicubic"),  # warp.INTERPOLATIONS (this module imports torch lazily)
        help="codec: warp the reference frame with this interpolation from now on (default: the pack's)",
    )
    p.add_argument(
        "--quantization",
        choices=("noise", "mixed"),  # entropy.TRAINING_QUANTIZATIONS (this module imports torch lazily)
        default="noise",
        help="what the codecs' decoders see in training: y plus uniform noise (default) or y rounded as the coder "
        "rounds it, with a straight-through gradient (mixed; the likelihoods take the noisy y either way)",
    )
    p.add_argument(
        "--fresh-diffusion",
        action="store_true",
        help="diffusion/finetune: keep the pack's codec, start the diffusion stage from random init at the "
        "preset's current configuration (anchored at the reconstruction: diffvc = condlc at step 0)",
    )
    p.add_argument(
        "--unsharp-init",
        type=float,
        default=0.0,
        metavar="AMOUNT",
        help="with --fresh-diffusion: start the stage's anchor filter as an unsharp mask of AMOUNT (default 0: zero)",
    )
    p.add_argument(
        "--anchor-gain",
        action="store_true",
        help="finetune from a pack whose stage has an anchor filter but no QP gain: add the gain (zero at start)",
    )
    p.add_argument("--force", action="store_true", help="flow: train a SpyNet even for a DIS preset (tiny)")
    p.add_argument("--log-every", type=int, default=10, metavar="K")
    p.add_argument("--checkpoint-every", type=int, default=100, metavar="N")
    p.add_argument(
        "--pack-every",
        type=int,
        default=500,
        metavar="N",
        help="also write the pack every N steps (0: only at the end)",
    )
    p.add_argument("--clips", type=int, default=100_000, help="dataset length (distinct clip draws per epoch)")
    p.add_argument(
        "--deform-prob",
        type=float,
        default=0.0,
        metavar="P",
        help="synthetic clips: the share of moving patches that also change shape in place, non-rigid motion "
        "(default 0)",
    )
    p.add_argument(
        "--real-share",
        type=float,
        default=None,
        metavar="W",
        help="a fetched data folder: the share of training clips cut from the real videos of clips/, the rest "
        "synthetic (default 0.2, codec.train.data.DEFAULT_WEIGHTS)",
    )
    p.add_argument("--workers", type=int, default=0, help="data loader processes (default 0)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is faster on a busy CPU)")
    p.add_argument(
        "--mixed-precision",
        default="no",
        choices=("no", "fp16", "bf16"),
        help="accelerate's autocast (bf16 on a CPU too; fp16 needs a GPU); entropy models stay float32 (default no)",
    )
    p.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute the U-Net's, ControlNet's and VAE's activations in the backward pass (the full preset's "
        "memory on a GPU: same gradients, about a third more compute)",
    )
    p.set_defaults(run=run_train)
    return p


def run_train(args: argparse.Namespace) -> int:
    import torch

    from codec.errors import CodecError
    from codec.train.loop import CHECKPOINT_FILE, LoopSettings, checkpoint_config, run_stage
    from codec.train.stages import STAGES, StageOptions, uses_spynet

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.crop < 64 or args.crop % 64:
        raise CodecError(f"--crop must be a positive multiple of 64 (the motion codec works at 1/64), got {args.crop}")
    if args.frames < 2:
        raise CodecError(f"--frames must be >= 2 (an I-frame and at least one P-frame), got {args.frames}")
    if args.quantization != "noise" and args.stage != "codec":
        raise CodecError(f"--quantization trains the codecs' decoders: stage codec only, not {args.stage}")
    if args.unsharp_init and not args.fresh_diffusion:
        raise CodecError("--unsharp-init sets the start of a new diffusion stage: it needs --fresh-diffusion")
    if args.sd_path:
        use_base(args.sd_path)
    defaults = STAGES[args.stage].defaults
    start_config = checkpoint_config(args.out / CHECKPOINT_FILE) or start_model_config(args)
    if args.stage == "flow" and not uses_spynet(start_config) and not args.force:
        print(
            f"the {start_config.preset} preset estimates flow with OpenCV's DIS, which has nothing to train; "
            "skipping the flow stage (--force trains a SpyNet to compare with DIS)"
        )
        return 0
    settings = LoopSettings(
        out=args.out,
        steps=args.steps if args.steps is not None else defaults.steps,
        batch=args.batch or defaults.batch,
        lr=args.lr or defaults.lr(start_config.preset),
        seed=args.seed,
        time_budget_min=args.time_budget,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        pack_every=args.pack_every,
        workers=args.workers,
        mixed_precision=args.mixed_precision,
        source=str(args.data),
        warmup=args.warmup,
        ema=args.ema,
    )
    options = StageOptions(
        qp=args.qp,
        perceptual=args.perceptual,
        mse_weight=args.mse_weight,
        grad_steps=args.grad_steps,
        unsharp=args.unsharp,
        intra=args.intra,
        intra_qp_offset=args.intra_qp_offset,
        gradient_checkpointing=args.gradient_checkpointing,
        quantization=args.quantization,
    )
    dataset = make_dataset(
        args.stage, args.data, args.frames, args.crop, args.seed, args.clips, args.deform_prob, args.real_share
    )
    record = {
        "from": start_source(args),
        "crop": args.crop,
        "frames": args.frames,
        "intra": args.intra,
        "intra_qp_offset": args.intra_qp_offset,
        "fresh_diffusion": args.fresh_diffusion,
        **({"unsharp_init": args.unsharp_init} if args.unsharp_init else {}),
        **({"unsharp": args.unsharp} if args.stage == "distill" else {}),
        **({"entropy_model": args.entropy_model} if args.entropy_model else {}),
        **({"frame_interpolation": args.frame_interpolation} if args.frame_interpolation else {}),
        **({"quantization": args.quantization} if args.quantization != "noise" else {}),
        **({"deform_prob": args.deform_prob} if args.deform_prob else {}),
        **({"real_share": args.real_share} if args.real_share is not None else {}),
    }
    from codec.train import data

    result = run_stage(
        args.stage,
        lambda: start_model(args),
        dataset,
        settings,
        options,
        record,
        collate_fn=data.collate_clips,
        worker_init_fn=data.single_thread_worker,
    )
    why = "" if result.stopped_by == "steps" else f" (stopped by {result.stopped_by})"
    sha = f" ({result.pack.sha256[:16]})" if result.pack else ""
    print(
        f"{args.stage}: step {result.step}, {result.seconds / 60:.1f} min of training{why}; "
        f"pack {args.out / 'pack'}{sha}"
    )
    return 0


# --------------------------------------------------------------------------------------------------------------
# The starting model
# --------------------------------------------------------------------------------------------------------------


def resolve_start_pack(name: str) -> Path:
    """A pack folder from --pack-from: a pack folder, a run folder holding pack/, or a pack name."""
    from codec.diffvc.pack import CONFIG_FILE, resolve_pack

    path = Path(name)
    if (path / "pack" / CONFIG_FILE).is_file():
        return path / "pack"
    return resolve_pack(name)


def start_model_config(args: argparse.Namespace):
    """The config the run would start from (without building the model): the pack's or the preset's."""
    import json

    from codec.diffvc.config import DiffVCConfig, full_config, tiny_config
    from codec.diffvc.pack import CONFIG_FILE
    from codec.errors import CodecError
    from codec.train.stages import preset_diffusion

    if args.pack_from:
        config = DiffVCConfig.from_dict(json.loads((resolve_start_pack(args.pack_from) / CONFIG_FILE).read_text()))
        if args.preset and args.preset != config.preset:
            raise CodecError(f"--preset {args.preset} contradicts the pack's preset {config.preset}")
        return preset_diffusion(config) if args.fresh_diffusion else config
    if args.preset == "full":
        from codec.diffvc.sd_base import SD21_BASE

        return full_config(SD21_BASE if args.sd_path else None)
    return tiny_config()


def start_source(args: argparse.Namespace) -> str:
    if not args.pack_from:
        if args.preset == "full" and args.sd_path:
            # the base by name (its VAE's hash is in latent_space), not by this machine's path
            return f"the VAE and U-Net of the Stable Diffusion base (--sd-base), the rest random (seed {args.seed})"
        return f"random init ({args.preset or 'tiny'} preset, seed {args.seed})"
    from codec.diffvc.pack import CONFIG_FILE, WEIGHTS_FILE, content_hash

    folder = resolve_start_pack(args.pack_from)
    digest = content_hash((folder / CONFIG_FILE).read_bytes(), (folder / WEIGHTS_FILE).read_bytes())
    return f"{folder} ({digest[:16]})"


def start_model(args: argparse.Namespace):
    """The model the stage starts from when there is no checkpoint (a SpyNet is added for `flow --force`)."""
    from codec.diffvc.model import DiffVCModel
    from codec.train.stages import (
        with_anchor_gain,
        with_entropy_model,
        with_flat_quantizer,
        with_frame_interpolation,
        with_fresh_diffusion,
        with_spynet,
    )

    if args.pack_from:
        model, _ = DiffVCModel.from_pack(resolve_start_pack(args.pack_from))
        if args.flat_quantizer:
            model = with_flat_quantizer(model)
        if args.fresh_diffusion:
            model = with_fresh_diffusion(model, args.unsharp_init)
        if args.anchor_gain:
            model = with_anchor_gain(model)
    elif args.preset == "full" and args.sd_path:
        model = full_model_from_base(args.sd_path)
    else:
        model = DiffVCModel(start_model_config(args))
    if args.entropy_model:
        model = with_entropy_model(model, args.entropy_model)
    if args.frame_interpolation:
        model = with_frame_interpolation(model, args.frame_interpolation)
    return with_spynet(model) if args.stage == "flow" else model


def use_base(base: str) -> Path:
    """Make `base` (a folder or a name `find_base` resolves) the Stable Diffusion base this process finds by the
    name packs record ($DIFFVC_SD_BASE): a `full` run's checkpoint and --pack-from packs load their VAE from it."""
    import os

    from codec.diffvc.sd_base import BASE_ENV, find_base

    folder = find_base(base)
    os.environ[BASE_ENV] = str(folder)
    return folder


def full_model_from_base(base: str):
    """A `full` model on SD-2.1-base: its VAE and U-Net (and the ControlNet copied from it) from `base` (a folder
    or a name `find_base` resolves), the rest random; the config names the base and records its VAE's hash and
    latent scaling factor (0.18215 for SD-2.1). The U-Net's shape is the base's own (`full_diffusion_config(unet=
    ...)`): SD-2.1-base's, or a scaled-down SD-style base's (the CPU smoke test's)."""
    from dataclasses import replace

    from codec.diffvc.config import full_config
    from codec.diffvc.diffusion import full_diffusion_config
    from codec.diffvc.model import DiffVCModel
    from codec.diffvc.sd_base import SD21_BASE, base_unet_config, state_sha256

    folder = use_base(base)  # this process finds the base the run names by its name
    config = full_config(SD21_BASE)
    diffusion = full_diffusion_config(config.context.channels[0], unet=base_unet_config(folder))
    model = DiffVCModel(replace(config, diffusion=diffusion))
    model.diffusion.load_sd_unet(folder)
    vae = model.latent_space.vae
    latent = replace(
        model.config.latent_space,
        vae_sha256=state_sha256(vae),
        scaling_factor=float(vae.config.get("scaling_factor", model.config.latent_space.scaling_factor)),
    )
    model.config = replace(model.config, latent_space=latent)
    model.latent_space.config = latent
    return model


# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------


def make_dataset(
    stage: str,
    data_dir: Path,
    frames: int,
    crop: int,
    seed: int,
    length: int,
    deform_prob: float = 0.0,
    real_share: float | None = None,
):
    """The stage's dataset from `codec.train.data`, by what `data_dir` holds (`deform_prob`: the share of the
    synthetic clips' patches that change shape in place, `MotionRanges.deform_prob`; `real_share`: the share of a
    fetched folder's clips cut from its real videos, None for `data.DEFAULT_WEIGHTS`):

    * `flow`: synthetic motion clips (exact flow) over the training photos of DATA_DIR/photos, else over every photo
      under the folder (a Vimeo-90k root's frames serve as photos too);
    * a Vimeo-90k septuplet root (`sep_trainlist.txt`, `sequences/`): its septuplets (T <= 7; one item per listed
      septuplet, `length` unused);
    * a fetched data folder (`photos/` and/or `clips/`): the mixed dataset (photos turned into clips, real videos);
    * any other folder: random windows and crops of the videos under it.
    """
    from codec.errors import CodecError
    from codec.train import data
    from codec.train.fetch import CLIPS_DIR, PHOTOS_DIR

    if not data_dir.is_dir():
        raise CodecError(f"--data {data_dir}: no such folder")
    try:
        if stage == "flow":
            photos = data.split_photos(data.list_photos(data_dir / PHOTOS_DIR))[0] or data.list_photos(data_dir)
            if not photos:
                raise CodecError(f"the flow stage needs photos (for synthetic clips with exact flow) under {data_dir}")
            return data.SyntheticMotionClips(photos, frames, crop, seed, length)
        if (data_dir / VIMEO_LIST).is_file():
            return data.Vimeo90kSeptuplets(data_dir, VIMEO_LIST, frames, crop, seed)
        if (data_dir / PHOTOS_DIR).is_dir() or (data_dir / CLIPS_DIR).is_dir():
            motion = data.MotionRanges(deform_prob=deform_prob)
            weights = None
            if real_share is not None:
                if not 0.0 <= real_share <= 1.0:
                    raise CodecError(f"--real-share must be within 0..1, got {real_share}")
                weights = {"synthetic": 1.0 - real_share, "clips": real_share}
            return data.mixed_dataset(data_dir, frames, crop, seed, length, weights, motion=motion)
        if not data.list_videos(data_dir):
            raise CodecError(
                f"no training data in {data_dir}: expected photos/ and clips/ (python -m codec.train.fetch DIR), a "
                f"Vimeo-90k septuplet root ({VIMEO_LIST}, sequences/) or a folder of videos"
            )
        return data.VideoFolderClips(data_dir, frames, crop, seed, length)
    except ValueError as e:  # a shape the source cannot give (e.g. T > 7 from septuplets)
        raise CodecError(f"--data {data_dir}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m codec.train.cli STAGE ...`) until `codec/__main__.py` wires the subcommand."""
    parser = argparse.ArgumentParser(prog="python -m codec")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", *(argv if argv is not None else sys.argv[1:])])
    from codec.errors import CodecError

    try:
        return args.run(args)
    except CodecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
