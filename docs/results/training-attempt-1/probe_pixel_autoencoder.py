"""Probe (docs/RESULTS.md, training status): a plain pixel-domain conv autoencoder on the same data, MSE only.

Usage: PYTHONPATH=. python docs/results/training-attempt-1/probe_pixel_autoencoder.py N M SECONDS DOWNSAMPLES
Runs reported: 64 128 150 4 (y at 1/16) and 64 128 150 5 (y at 1/32). Needs the fetched data in /work/data.
"""

import glob
import sys
import time

import torch
from torch import nn

from codec.train.data import SyntheticMotionClips

torch.set_num_threads(1)
photos = sorted(glob.glob("/work/data/photos/*/*.jp*g") + glob.glob("/work/data/photos/*/*.png"))
data = SyntheticMotionClips(photos, num_frames=2, crop=128, seed=0, length=100_000)
n, m, budget, down = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
encoder = [nn.Conv2d(3, n, 5, 2, 2)]
decoder = [nn.ConvTranspose2d(m, n, 5, 2, 2, 1)]
for _ in range(down - 2):
    encoder += [nn.ReLU(), nn.Conv2d(n, n, 5, 2, 2)]
    decoder += [nn.ReLU(), nn.ConvTranspose2d(n, n, 5, 2, 2, 1)]
encoder += [nn.ReLU(), nn.Conv2d(n, m, 5, 2, 2)]
decoder += [nn.ReLU(), nn.ConvTranspose2d(n, 3, 5, 2, 2, 1)]
model = nn.Sequential(*encoder, *decoder)
optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
start, step = time.time(), 0
while time.time() - start < budget:
    x = torch.stack([data[step * 8 + i]["frames"][0] for i in range(8)])
    mse = ((model(x) - x) ** 2).mean()
    optimizer.zero_grad()
    mse.backward()
    optimizer.step()
    step += 1
    if step % 50 == 0:
        print(f"N={n} M={m} 1/{2**down} step {step} {time.time() - start:.0f}s "
              f"psnr {10 * torch.log10(1 / mse).item():.2f}", flush=True)
