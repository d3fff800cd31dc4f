"""DiffVC (Ma & Chen, arXiv 2501.13528): a diffusion-based perceptual neural video codec.

Submodules: `entropy` (the learned entropy models shared by the motion, intra and contextual latent codecs),
`diffusion` (the conditional diffusion stage with QP prompting and TDIR). Import them directly; this package
file imports nothing so that importing one part never loads the others (and registering the codecs loads no torch).
"""

QP_MIN, QP_MAX = 0, 63  # DiffVC's QP range, HEVC-like: larger = coarser quantization = fewer bits
MAX_DEADZONE = 0.5  # an encoder's dead zone is in [0, 1/2): at 1/2 a symbol of 1 would need |y - mean| >= 1
# A stream's diffusion-stage filter by level (three bits of DiffVC's header flags, `codec.diffvc.codec`): the anchor
# filter's gain, the stage restoring by (1 + gain); level 0 is the filter as trained (every stream written before
# the bits existed), level 1 (-1) switches the whole stage off for the stream, whose frames are then the latent
# codec's. The encoder picks the level (`DiffVC.encode_with_plan`; docs/RESULTS.md, "A filter strength per stream").
STREAM_FILTER_GAINS: tuple[float, ...] = (0.0, -1.0, -0.75, -0.5, -0.25, 0.25, 0.5, 1.0)
STAGE_OFF_LEVEL = STREAM_FILTER_GAINS.index(-1.0)
