"""Does the diffusion stage use its QP prompt? (issue [2.2], item 3)

    python -m tools.qpp_check [--spec diffvc] [--qp 32] [--prompts 0 63] [--frames 16]

Codes Big Buck Bunny (256x144) with the spec's DiffVC at `--qp`, once with the true QP prompt and once with each
wrong one. With `reference=codec` (the default) the latent codec's chain, and so the rate, is the same whatever the
prompt: only the frames the diffusion stage shows differ. Prints PSNR, LPIPS and DISTS of each against the source,
beside condlc's (the stage off). A stage that uses its prompt is worse with a wrong one. With `filter=auto` the
stream's filter level is the one the encoder picks with the true prompt, kept for the wrong ones (each prompt
searching its own would hide what the prompt does).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from codec.diffvc.codec import NeuralOptions
from codec.diffvc.model import FrameCoder
from codec.metrics import compute_metrics
from codec.registry import get_codec, parse_spec
from codec.video import Video, read_video

CLIP = Path(__file__).resolve().parents[1] / "assets" / "clips" / "bigbuckbunny.mp4"


class PromptedFrameCoder(FrameCoder):
    """A FrameCoder whose diffusion stage is prompted with a fixed QP instead of each frame's."""

    def __init__(self, *args, prompt: int | None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.prompt = prompt

    def _generate(self, latent_hat, contexts, flow_hat, frame_type, qp, index):
        return super()._generate(
            latent_hat, contexts, flow_hat, frame_type, qp if self.prompt is None else self.prompt, index
        )


def code(spec: str, video: Video, qp: int, prompt: int | None) -> Video:
    """The frames `spec` shows for `video` at `qp`, its diffusion stage prompted with `prompt` (None: each frame's
    own QP): the codec's own encoder, with a `PromptedFrameCoder`."""
    codec = get_codec(spec)

    class Prompted(type(codec)):
        def frame_coder(self, model, plan, timer, device, also_show=()):
            return PromptedFrameCoder(model, plan, timer, also_show=also_show, prompt=prompt)

    return Prompted(codec.options).encode(video, qp).reconstruction


def condlc_twin(spec: str) -> str:
    """`spec`'s latent codec alone: condlc with the options the two codecs share (the stage's dropped)."""
    _, options = parse_spec(spec)
    shared = {f.name for f in dataclasses.fields(NeuralOptions)}
    return ":".join(["condlc", *(f"{k}={v}" for k, v in options.items() if k in shared)])


def with_filter(spec: str, gain: float) -> str:
    """`spec` with its stage filter set to `gain` (replacing any `filter=` it has)."""
    name, options = parse_spec(spec)
    return ":".join([name, *(f"{k}={v}" for k, v in {**options, "filter": f"{gain:g}"}.items())])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.qpp_check", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="diffvc")
    parser.add_argument("--qp", type=int, default=32)
    parser.add_argument("--prompts", type=int, nargs="+", default=[0, 63])
    parser.add_argument("--frames", type=int, default=16)
    args = parser.parse_args(argv)
    video = read_video(CLIP, frames=args.frames, size=(256, 144))
    if parse_spec(args.spec)[1].get("filter") == "auto":  # the level the encoder picks with the true prompt, kept
        args.spec = with_filter(args.spec, get_codec(args.spec).encode(video, args.qp).params["filter_gain"])
    condlc = get_codec(condlc_twin(args.spec)).encode(video, args.qp)
    runs = {
        "condlc (stage off)": condlc.reconstruction,
        f"QP prompt {args.qp} (true)": code(args.spec, video, args.qp, None),
    }
    for prompt in args.prompts:
        runs[f"QP prompt {prompt} (wrong)"] = code(args.spec, video, args.qp, prompt)
    print(f"| {args.spec} at QP {args.qp}, BBB 256x144, {args.frames} frames | PSNR | LPIPS | DISTS |")
    print("| --- | --- | --- | --- |")
    for name, shown in runs.items():
        m = compute_metrics(video, shown, ["psnr", "lpips", "dists"])
        print(f"| {name} | {m['psnr'].mean():.3f} | {m['lpips'].mean():.4f} | {m['dists'].mean():.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
