"""The codecs and model packs as the page shows them: DiffVC's pack status in the header, the pack picker and its
summary line, the Codecs tab's table; and loading the pack before the first request."""

from __future__ import annotations

import logging
from pathlib import Path

from app.handlers.workspace import StudioConfig, UserError, escape

log = logging.getLogger(__name__)


class CodecInfo:
    """What the registry and the installed model packs say, under the studio's configured pack."""

    def __init__(self, config: StudioConfig) -> None:
        self.config = config

    def preload(self) -> None:
        """Load DiffVC's model pack now, before any request (the entry point calls this before serving): no two
        requests then race to build it (see `codec.eval.compare.build_under_test`) and the first user waits less."""
        from codec.errors import CodecError
        from codec.eval.compare import CompareSettings, build_under_test

        try:
            build_under_test(CompareSettings(pack=self.config.pack))
        except CodecError as e:  # reported on the page by pack_status
            log.warning("DiffVC model pack not preloaded: %s", e)

    def pack_status(self) -> tuple[bool, str]:
        """(DiffVC usable, a markdown line about the model pack)."""
        from codec.errors import CodecError
        from codec.registry import get_entry, parse_options

        entry = get_entry("diffvc")
        pack = self.config.pack
        try:
            reason = entry.unavailable_reason(parse_options(entry.options_type, {"pack": pack}, "diffvc"))
        except CodecError as e:  # a bad pack setting is reported, not raised, so the page still loads
            reason = str(e)
        if reason:
            return False, (
                f"**DiffVC is off: no model pack could be loaded** ({escape(reason)}). x265, x264 and AV1 "
                "still run. Set `DIFFVC_STUDIO_PACK=random-tiny` for a random-init model (real bitstreams "
                "and timings, no quality), or install a trained pack."
            )
        if pack.startswith("random-"):
            return True, (
                f"DiffVC model pack: `{escape(pack)}`, a **random-init** model: real bitstreams and "
                "timings, but no quality to judge."
            )
        from codec.diffvc.pack import resolve_pack

        folder = resolve_pack(pack or None)
        return True, f"DiffVC model pack: `{escape(folder.name if folder else pack)}`."

    def pack_choices(self) -> tuple[list[tuple[str, str]], str]:
        """The pack picker: ([(label, name)] of every installed pack, `random-tiny` last), and the one chosen first
        (the configured pack, else the default pack, else `random-tiny`)."""
        from codec.diffvc.pack import DEFAULT_PACK_NAME, installed_packs

        packs = installed_packs()
        names = [p.name for p in packs]
        configured = Path(self.config.pack).name if self.config.pack else DEFAULT_PACK_NAME
        first = configured if configured in names else names[0]
        return [(f"{p.name} ({p.preset}, {p.size_mb:g} MB)" if p.path else p.name, p.name) for p in packs], first

    def pack_summary(self, name: str) -> str:
        """A markdown line about an installed pack: preset, size, provenance, the device it would run on, and for a
        `full` pack without a GPU how much work a frame is before anyone waits for it."""
        import torch

        pack = installed_pack(name)
        gpu = torch.cuda.is_available()
        where = "the GPU" if gpu else "this CPU"
        line = f"**{escape(pack.name)}**: {escape(pack.preset)} preset"
        line += f", {pack.size_mb:g} MB" if pack.path else ""
        line += f", runs on {where}. {escape(pack.provenance)}."
        if pack.preset == "full" and not gpu:
            line += (
                " **No GPU here:** the full preset runs Stable Diffusion 2.1's U-Net (866 M parameters) and VAE on the "
                f"CPU, {_unet_evals_per_frame(pack)} U-Net + ControlNet evaluations per P-frame: minutes per "
                "frame. Use a few frames at a small size, or a machine with a GPU."
            )
        return line

    def rows(self) -> list[list[str]]:
        """The Codecs tab: [name, usable or why not (with the pack for those that take one), description]."""
        from codec.errors import CodecError
        from codec.registry import list_codecs, parse_options

        rows = []
        for entry in list_codecs():
            try:
                options = (
                    parse_options(entry.options_type, {"pack": self.config.pack}, entry.name)
                    if entry.takes_pack
                    else None
                )
                reason = entry.unavailable_reason(options)
            except CodecError as e:
                reason = str(e)
            pack = f" (pack {self.config.pack or 'default'})" if entry.takes_pack else ""
            rows.append([entry.name, ("usable" if reason is None else f"unusable: {reason}") + pack, entry.description])
        return rows


def installed_pack(name: str):
    """The installed pack of that name; a name the picker did not offer (a path, say) is refused."""
    from codec.diffvc.pack import installed_packs

    for pack in installed_packs():
        if pack.name == name:
            return pack
    raise UserError(f"no installed model pack is called {name!r}; choose one the list offers")


def _unet_evals_per_frame(pack) -> int:
    import json

    from codec.diffvc.diffusion import num_reuse_steps, num_sampling_steps
    from codec.diffvc.pack import CONFIG_FILE

    diffusion = json.loads((pack.path / CONFIG_FILE).read_text())["diffusion"]
    steps = num_sampling_steps(diffusion["steps"], diffusion["strength"])
    return steps - num_reuse_steps(steps, diffusion["tdir_ratio"])
