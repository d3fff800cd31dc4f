"""Model packs: a folder with `config.json`, `model.safetensors` and a README (provenance, data, results).

A pack's hash is the sha256 of its config and weights; its first 8 bytes go into every DVC1 header, so a
stream decoded with another pack fails with a clear error instead of garbage. Weights may be stored in fp16 to
keep the pack small; they are loaded as float32 (both sides load the same values, so coding stays exact).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from codec.errors import CodecError

if TYPE_CHECKING:  # torch loads only when tensors are (de)serialized: finding packs stays light
    import torch

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PACK_NAME = "diffvc-tiny"


@dataclass(frozen=True)
class PackInfo:
    """Where a pack came from and its identity."""

    name: str
    path: Path | None  # None for an in-memory (random-init) model
    sha256: str

    @property
    def hash_prefix(self) -> bytes:
        return bytes.fromhex(self.sha256[:16])


def pack_search_paths() -> list[Path]:
    """Where packs are looked for: $DIFFVC_PACKS (colon-separated), assets/models, the user cache."""
    extra = [Path(p) for p in os.environ.get("DIFFVC_PACKS", "").split(":") if p]
    from codec.weights import cache_root

    return [*extra, REPO_ROOT / "assets" / "models", cache_root() / "packs"]


def find_packs() -> list[Path]:
    """Every folder holding a pack config and weights, in search order."""
    found = []
    for root in pack_search_paths():
        if root.is_dir():
            found += [d for d in sorted(root.iterdir()) if (d / CONFIG_FILE).is_file() and (d / WEIGHTS_FILE).is_file()]
    return found


@dataclass(frozen=True)
class InstalledPack:
    """A pack a user can choose: its name (what `pack=` takes), folder, preset, size and where it came from."""

    name: str
    path: Path | None  # None for a random-init model
    preset: str
    size_mb: float
    provenance: str  # the first sentence of its README; "random init" for a random-init model


RANDOM_TINY = InstalledPack("random-tiny", None, "tiny", 0.0, "random init (real bitstreams and timings, no quality)")


def installed_packs() -> list[InstalledPack]:
    """Every pack on the search path (the first of each name, as `resolve_pack` finds it), then `random-tiny`.
    A folder whose config cannot be read is left out: the picker lists what can run."""
    packs: dict[str, InstalledPack] = {}
    for folder in find_packs():
        if folder.name in packs:
            continue
        try:
            preset = json.loads((folder / CONFIG_FILE).read_text()).get("preset", "?")
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 2**20
        except (OSError, ValueError, AttributeError):
            continue
        packs[folder.name] = InstalledPack(folder.name, folder, str(preset), round(size, 1), _provenance(folder))
    return [*packs.values(), RANDOM_TINY]


def _provenance(folder: Path) -> str:
    """The README's first paragraph of prose, cut at its first sentence (at most 200 characters)."""
    try:
        text = (folder / "README.md").read_text(errors="replace")
    except OSError:
        return "no README"
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    prose = next((p for p in paragraphs if p and not p.startswith(("#", "|", "```"))), "")
    first = prose.split(". ")[0].rstrip(".")
    return (first[:197] + "...") if len(first) > 200 else first or "no description"


def resolve_pack(name_or_path: str | None) -> Path | None:
    """A pack folder from a name (found on the search path) or a path; None when no name is given and none exists."""
    if name_or_path is None:
        name_or_path = DEFAULT_PACK_NAME
        packs = [p for p in find_packs() if p.name == name_or_path]
        return packs[0] if packs else None
    path = Path(name_or_path)
    if (path / CONFIG_FILE).is_file():
        return path
    for pack in find_packs():
        if pack.name == name_or_path:
            return pack
    raise CodecError(f"model pack {name_or_path!r} not found (looked in {', '.join(map(str, pack_search_paths()))})")


def content_hash(config_bytes: bytes, weight_bytes: bytes) -> str:
    h = hashlib.sha256()
    for part in (config_bytes, weight_bytes):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def serialize(config: dict, state: dict[str, torch.Tensor], half: bool = True) -> tuple[bytes, bytes]:
    """(config.json bytes, safetensors bytes) for a config dict and a state dict (floats to fp16 if `half`)."""
    from safetensors.torch import save

    tensors = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous() for k, v in state.items()
    }
    return json.dumps(config, indent=1, sort_keys=True).encode(), save(tensors)


def deserialize(weight_bytes: bytes) -> dict[str, torch.Tensor]:
    """safetensors bytes -> state dict with floating tensors as float32."""
    from safetensors.torch import load

    return {k: (v.float() if v.is_floating_point() else v) for k, v in load(weight_bytes).items()}


def write_pack(folder: Path, config: dict, state: dict[str, torch.Tensor], readme: str) -> PackInfo:
    folder.mkdir(parents=True, exist_ok=True)
    config_bytes, weight_bytes = serialize(config, state)
    (folder / CONFIG_FILE).write_bytes(config_bytes)
    (folder / WEIGHTS_FILE).write_bytes(weight_bytes)
    (folder / "README.md").write_text(readme)
    return PackInfo(folder.name, folder, content_hash(config_bytes, weight_bytes))


def read_pack(folder: Path) -> tuple[dict, dict[str, torch.Tensor], PackInfo]:
    """(config dict, state dict, info) of a pack folder; CodecError when it is incomplete or damaged."""
    try:
        config_bytes = (folder / CONFIG_FILE).read_bytes()
        weight_bytes = (folder / WEIGHTS_FILE).read_bytes()
        config = json.loads(config_bytes)
        state = deserialize(weight_bytes)
    except (OSError, ValueError) as e:
        raise CodecError(f"model pack {folder} cannot be read: {e}") from None
    except Exception as e:  # safetensors raises its own error type on damaged files
        raise CodecError(f"model pack {folder} is damaged: {e}") from None
    return config, state, PackInfo(folder.name, folder, content_hash(config_bytes, weight_bytes))


def pack_info(folder: Path) -> PackInfo:
    """A pack folder's identity from its files' bytes, without building the model."""
    try:
        return PackInfo(
            folder.name, folder, content_hash((folder / CONFIG_FILE).read_bytes(), (folder / WEIGHTS_FILE).read_bytes())
        )
    except OSError as e:
        raise CodecError(f"model pack {folder} cannot be read: {e}") from None


def in_memory_info(name: str, config: dict, state: dict[str, torch.Tensor]) -> PackInfo:
    """The identity a random-init (unsaved) model would have as a pack: same hashing, no folder."""
    config_bytes, weight_bytes = serialize(config, state)
    return PackInfo(name, None, content_hash(config_bytes, weight_bytes))
