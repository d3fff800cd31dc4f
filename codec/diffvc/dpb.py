"""The decoded-picture buffer: what a DiffVC decoder keeps between frames (DCVC-DC's explicit DPB, typed).

Encoder and decoder update it through the same decode path, so their buffers hold identical tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class DecodedPictureBuffer:
    """One reference picture and what was decoded with it.

    frame: the previous decoded frame [1, 3, H, W] in [0, 1] (padded size): the motion and context reference.
    feature: the latent decoder's feature of that frame [1, F, H/8, W/8], fused into the temporal contexts.
    y_hat: that frame's quantized latent y (the temporal prior of the next one), or None after an I-frame.
    x0: the diffusion stage's clean-latent prediction(s) of that frame, reused by TDIR: the final latent
        [1, C, H/8, W/8] or the list of per-step predictions; None when the diffusion stage did not run.
    """

    frame: Tensor | None = None
    feature: Tensor | None = None
    y_hat: Tensor | None = None
    x0: Tensor | list[Tensor] | None = None

    @property
    def empty(self) -> bool:
        return self.frame is None

    def push(self, frame: Tensor, feature: Tensor, y_hat: Tensor | None, x0: Tensor | list[Tensor] | None) -> None:
        """Replace the reference with a newly decoded frame."""
        self.frame, self.feature, self.y_hat, self.x0 = frame, feature, y_hat, x0
