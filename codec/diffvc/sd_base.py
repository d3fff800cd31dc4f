"""Stable Diffusion 2.1-base, the `full` preset's pretrained VAE and U-Net, found where users keep it.

A base is named, never stored as a path: packs record `LatentSpaceConfig.base_model` (a Hugging Face id) and the
sha256 of the VAE weights they were trained with, and every machine finds its own copy (`find_base`):
1. a diffusers folder given directly (`model_index.json`, `vae/`, `unet/`, `scheduler/`, as `save_pretrained` writes);
2. `$DIFFVC_SD_BASE`, such a folder;
3. the Hugging Face cache (`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`), the id's newest snapshot;
4. the hub itself when online (`HF_HUB_OFFLINE` unset), downloaded into that cache.
A pack whose recorded VAE hash differs from the base found refuses to load: its streams would decode to garbage.

Loading is strict on what changes the computation and tolerant of what does not (`INERT_UNET_KEYS`: the
nominal sample size, attention upcasting, diffusers' bookkeeping).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from codec.errors import CodecError

if TYPE_CHECKING:
    import torch

SD21_BASE = "stabilityai/stable-diffusion-2-1-base"
BASE_ENV = "DIFFVC_SD_BASE"
# U-Net config keys that do not change what the network computes: the nominal training resolution (the U-Net is
# fully convolutional) and diffusers' own bookkeeping
INERT_UNET_KEYS = frozenset(
    {"sample_size", "_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"}
)


def is_diffusers_folder(path: Path) -> bool:
    """A pipeline folder, or one holding at least a VAE or a U-Net as `save_pretrained` writes them."""
    return any((path / part).is_file() for part in ("model_index.json", "vae/config.json", "unet/config.json"))


def hub_cache_dirs() -> list[Path]:
    """Where the Hugging Face hub keeps downloads, in its own order of precedence."""
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    dirs.append(Path.home() / ".cache" / "huggingface" / "hub")
    return dirs


def cached_snapshot(model_id: str) -> Path | None:
    """The newest snapshot of `model_id` in a Hugging Face cache that holds a diffusers folder, if any."""
    for root in hub_cache_dirs():
        snapshots = root / f"models--{model_id.replace('/', '--')}" / "snapshots"
        if snapshots.is_dir():
            found = [s for s in snapshots.iterdir() if is_diffusers_folder(s)]
            if found:
                return max(found, key=lambda s: s.stat().st_mtime)
    return None


def find_base(name_or_path: str | os.PathLike = SD21_BASE) -> Path:
    """The local diffusers folder of a base model (module docstring's order); CodecError saying where it looked."""
    path = Path(name_or_path)
    if is_diffusers_folder(path):
        return path
    env = os.environ.get(BASE_ENV)
    if env and is_diffusers_folder(Path(env)):
        return Path(env)
    model_id = str(name_or_path)
    snapshot = cached_snapshot(model_id)
    if snapshot is not None:
        return snapshot
    if not os.environ.get("HF_HUB_OFFLINE") and "/" in model_id and not path.exists():
        try:
            from huggingface_hub import snapshot_download

            return Path(
                snapshot_download(model_id, allow_patterns=["model_index.json", "vae/*", "unet/*", "scheduler/*"])
            )
        except Exception as e:  # no network, no such repo, no access: say so, with where we looked
            reason = f"; downloading it failed ({str(e).splitlines()[0][:120]})"
    else:
        reason = " (offline: not downloaded)"
    looked = [str(path), f"${BASE_ENV}={env or '(unset)'}", *(str(d) for d in hub_cache_dirs())]
    raise CodecError(
        f"Stable Diffusion base {model_id!r} not found: looked in {', '.join(looked)}{reason}. Point {BASE_ENV} at "
        "a diffusers folder (model_index.json, vae/, unet/, scheduler/)"
    )


def state_sha256(module: torch.nn.Module) -> str:
    """sha256 of a module's state: every tensor's name, dtype, shape and bytes, in name order."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_part(folder: Path, model_class: type, subfolder: str) -> torch.nn.Module:
    """One part of a base (`vae`, `unet`) from its diffusers folder, never from the network; CodecError if absent."""
    try:
        return model_class.from_pretrained(folder, subfolder=subfolder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise CodecError(
            f"cannot load a Stable Diffusion {subfolder} from {folder}/{subfolder}: {str(e).splitlines()[0]}"
        ) from None


def check_base_weights(part: torch.nn.Module, recorded: str | None, where: Path) -> None:
    """CodecError when a pack recorded other weights for this part of its base than the ones found (hashed only
    when the pack recorded a hash)."""
    found = state_sha256(part) if recorded else None
    if recorded and found != recorded:
        raise CodecError(
            f"the model pack was trained on a base with weights sha256 {recorded[:16]}..., but the one at {where} "
            f"has {found[:16]}...: its streams would not decode. Install the base the pack names."
        )


def computation_mismatches(ours: dict, theirs: dict) -> dict:
    """U-Net settings that differ and change the computation: {key: (ours, theirs)}; inert keys are ignored.
    `theirs` is a loaded model's config (diffusers fills in its defaults), so a key it lacks is a real difference."""
    normalise = lambda v: tuple(v) if isinstance(v, list | tuple) else v  # noqa: E731
    return {
        k: (v, theirs.get(k))
        for k, v in ours.items()
        if k not in INERT_UNET_KEYS and normalise(v) != normalise(theirs.get(k))
    }


def base_unet_config(folder: Path) -> dict:
    """The U-Net config (`unet/config.json`) of a base's diffusers folder; CodecError when it has none."""
    import json

    path = Path(folder) / "unet" / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CodecError(f"no Stable Diffusion U-Net config at {path}: {e}") from None
