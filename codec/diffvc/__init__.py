"""DiffVC (Ma & Chen, arXiv 2501.13528): a diffusion-based perceptual neural video codec.

Submodules: `entropy` (the learned entropy models shared by the motion, intra and contextual latent codecs),
`diffusion` (the conditional diffusion stage with QP prompting and TDIR). Import them directly; this package
file imports nothing so that importing one part never loads the others (and registering the codecs loads no torch).
"""

QP_MIN, QP_MAX = 0, 63  # DiffVC's QP range, HEVC-like: larger = coarser quantization = fewer bits
