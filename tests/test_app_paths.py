"""Paths: downloads only from the app's own result folders, through every file route Gradio serves; uploaded file
names never become paths; handler inputs that carry keys or session ids cannot leave their folders."""

from __future__ import annotations

import http.client
import importlib.util
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from conftest import REPO

from app.handlers import FrameRequest, SessionState, UserError

_spec = importlib.util.spec_from_file_location("app_entry_paths", REPO / "app.py")
app_entry = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(app_entry)

ROUTES = (
    "/gradio_api/file={p}",
    "/gradio_api/file/{p}",
    "/file={p}",
    "/gradio_api/file={q}",
    "/static/{p}",
    "/assets/{p}",
    "/svelte/{p}",
    "/gradio_api/proxy={p}",
    "/gradio_api/file=file://{p}",
)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data = tmp_path_factory.mktemp("paths-data")
    marker = f"TOPSECRET-{uuid.uuid4()}"
    (data / "secret.txt").write_text(marker)
    allowed = data / "comparisons" / "abcdef0123"
    allowed.mkdir(parents=True)
    (allowed / "results.csv").write_text("ALLOWED-" + marker)
    demo, options = app_entry.create(
        {"DIFFVC_STUDIO_PACK": "random-tiny", "DIFFVC_STUDIO_DATA": str(data), "DIFFVC_STUDIO_MAX_UPLOAD": "1mb"}
    )
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, **options)
    yield demo, data, marker
    demo.close()


def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET with the path sent exactly as written (no client-side normalisation of '..' or encodings)."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read(200_000)
    finally:
        conn.close()


def spellings(target: Path, data: Path) -> list[str]:
    """Ways to name `target`: absolute, through the allowed folder with '..', encoded, doubled, backslashed."""
    inside = data / "comparisons" / "abcdef0123"
    up = "/".join([".."] * len(inside.relative_to("/").parts))
    via_allowed = (
        f"{inside}/../../{target.relative_to(data)}" if target.is_relative_to(data) else f"{inside}/{up}{target}"
    )
    return [
        str(target),
        via_allowed,
        via_allowed.replace("/", "\\"),
        quote(via_allowed, safe=""),
        via_allowed.replace("..", "%2e%2e"),
        via_allowed.replace("..", "%252e%252e"),
        "/" + str(target),
        f"{up}{target}",
        str(target).replace("/", "//"),
    ]


def test_downloads_only_from_the_result_folders(served):
    demo, data, marker = served
    url = demo.local_url
    secrets = {
        data / "secret.txt": marker.encode(),
        data / "blind.sqlite": b"SQLite format 3",
        Path("/etc/passwd"): b"root:",
        REPO / "app.py": b"def create(",
    }
    tried = 0
    for target, content in secrets.items():
        for spelling in spellings(target, data):
            for route in ROUTES:
                path = route.format(p=spelling, q=quote(spelling, safe=""))
                status, body = raw_get(url, path if path.startswith("/") else "/" + path)
                tried += 1
                assert not (status == 200 and content in body), f"{path} served {target}"
    assert tried >= 4 * 9 * len(ROUTES)
    allowed = data / "comparisons" / "abcdef0123" / "results.csv"  # the control: results are downloadable
    status, body = raw_get(url, f"/gradio_api/file={allowed}")
    assert status == 200 and body == b"ALLOWED-" + marker.encode()


@pytest.mark.parametrize(
    "name",
    [
        "../../../evil-{u}.mp4",
        "..\\..\\evil-{u}.mp4",
        "/etc/evil-{u}.mp4",
        "%2e%2e%2fevil-{u}.mp4",
        "evil-{u}.mp4\x00.png",
        "<img src=x>evil-{u}.mp4",
    ],
)
def test_uploaded_names_never_become_paths(served, name):
    demo, data, _ = served
    unique = uuid.uuid4().hex
    name = name.format(u=unique)
    response = httpx.post(
        demo.local_url.rstrip("/") + "/gradio_api/upload",
        files={"files": (name, b"not a video", "video/mp4")},
        timeout=30,
    )
    if response.status_code != 200:  # refusing the name outright is fine too
        return
    (stored,) = response.json()
    stored = Path(stored).resolve()
    from gradio.utils import get_upload_folder

    assert stored.is_relative_to(Path(get_upload_folder()).resolve())
    assert stored.name not in ("", ".", "..") and "/" not in stored.name  # one name inside Gradio's upload folder
    for root in (Path("/etc"), Path(get_upload_folder()).parent, Path(get_upload_folder()).parent.parent, data):
        assert not any(p.name.startswith(f"evil-{unique}") for p in root.glob("*")), root


def test_oversized_upload_is_refused(served):
    demo, _, _ = served
    response = httpx.post(
        demo.local_url.rstrip("/") + "/gradio_api/upload",
        files={"files": ("big.mp4", b"\x00" * (2 * 1024 * 1024), "video/mp4")},
        timeout=60,
    )
    assert response.status_code == 413 and "1" in response.text


def test_handler_inputs_cannot_leave_their_folders(tmp_path):
    from test_app_handlers import make_studio

    studio = make_studio(tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    folder = studio.config.results_dir / "abc"
    folder.mkdir(parents=True)
    (folder / "link.csv").symlink_to(outside)  # a link inside the result folder pointing out of it
    (folder / "ok.csv").write_text("fine")
    kept = studio.workspace.safe_files(
        [folder / "link.csv", folder / "ok.csv", outside, folder / ".." / ".." / "outside.txt"]
    )
    assert kept == [(folder / "ok.csv").resolve()]
    state = SessionState(comparisons=["../../outside", "abc/../../x", "/etc/passwd"])
    for key in state.comparisons:
        with pytest.raises(UserError):
            studio.compare.frame_view(FrameRequest(key), state)
    for session in ("../../evil", "/etc/x", "..", "a/../../b"):
        assert studio.workspace.session_dir(session).resolve().is_relative_to(studio.config.sessions_dir.resolve())
