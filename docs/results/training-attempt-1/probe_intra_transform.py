"""Probe (docs/RESULTS.md, training status): how fast the intra latent codec learns, MSE only, QP 0, no rate.

Usage: PYTHONPATH=. python docs/results/training-attempt-1/probe_intra_transform.py Y_CH SECONDS CH1 CH2 LR [LOSS]
LOSS: "frame" (default: MSE of the clamped decoded frame) or "latent" (MSE of the unclamped latent, / 4).
Runs reported: 128 170 64 96 5e-4; 512 170 96 192 5e-4; 128 150 64 96 2e-3; 128 150 64 96 1e-4;
128 150 64 96 5e-4 latent; 128 150 64 96 1e-3 latent. Needs the fetched data in /work/data.
"""

import glob
import sys
import time

import torch

from codec.diffvc.latent import LatentSpaceConfig, PixelUnshuffleLatent
from codec.diffvc.latent_codec import IntraLatentCodec, IntraLatentCodecConfig
from codec.train.data import SyntheticMotionClips

torch.set_num_threads(1)
photos = sorted(glob.glob("/work/data/photos/*/*.jp*g") + glob.glob("/work/data/photos/*/*.png"))
data = SyntheticMotionClips(photos, num_frames=2, crop=128, seed=0, length=100_000)
space = PixelUnshuffleLatent(LatentSpaceConfig())
y_channels, budget, ch1, ch2, lr = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(
    sys.argv[5])
on_latent = len(sys.argv) > 6 and sys.argv[6] == "latent"
torch.manual_seed(0)
codec = IntraLatentCodec(IntraLatentCodecConfig(y_channels=y_channels, channels=(ch1, ch2))).train()
optimizer = torch.optim.Adam(codec.parameters(), lr=lr)
start, step = time.time(), 0
while time.time() - start < budget:
    x = torch.stack([data[step * 8 + i]["frames"][0] for i in range(8)])
    latent = space.encode(x)
    out = codec(latent, 0)
    mse = ((out.latent_hat - latent) ** 2).mean() / 4 if on_latent else ((space.decode(out.latent_hat) - x) ** 2).mean()
    optimizer.zero_grad()
    mse.backward()
    optimizer.step()
    step += 1
    if step % 50 == 0:
        print(f"y={y_channels} ch=({ch1},{ch2}) lr={lr} step {step} {time.time() - start:.0f}s "
              f"psnr {10 * torch.log10(1 / mse).item():.2f}", flush=True)
