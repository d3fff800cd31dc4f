"""The app served for real on loopback: the page, the codec list and the `/compare` API through gradio_client."""

from __future__ import annotations

import importlib.util
import urllib.request

import pytest
from conftest import EXAMPLE_CLIP, REPO
from gradio_client import Client, handle_file

# app.py (the entry) shares its name with the app/ package, so load it by path
_spec = importlib.util.spec_from_file_location("app_entry", REPO / "app.py")
app_entry = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(app_entry)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data = tmp_path_factory.mktemp("studio-data")
    demo, options = app_entry.create({"DIFFVC_STUDIO_PACK": "random-tiny", "DIFFVC_STUDIO_DATA": str(data)})
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, **options)
    yield demo.local_url
    demo.close()


def test_page_is_served(served):
    with urllib.request.urlopen(served, timeout=30) as response:
        assert response.status == 200 and b"<html" in response.read(2000).lower()


def test_codec_list_over_the_api(served):
    result = Client(served, verbose=False).predict(api_name="/codec_rows")
    rows = {row[0]: row[1] for row in result["data"]}
    assert {"x265", "x264", "av1", "diffvc"} <= rows.keys()
    assert rows["x265"] == "usable" and rows["diffvc"].startswith("usable")


def test_compare_api(served):
    client = Client(served, verbose=False)
    rows = client.predict(handle_file(str(EXAMPLE_CLIP)), 40, False, 2, api_name="/compare")
    assert [row["codec"] for row in rows] == ["diffvc", "x265"]
    diffvc, x265 = rows
    assert diffvc["qp"] == 40 and diffvc["frames"] == 2 and diffvc["bytes"] > 0
    assert diffvc["params"]["tdir"] is False and x265["matched"]["target_bpp"] == pytest.approx(diffvc["bpp"])
    assert len(diffvc["per_frame"]["bits"]) == 2 and max(diffvc["width"], diffvc["height"]) == 256


def test_compare_api_bad_file_is_a_clear_error(served, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    with pytest.raises(Exception, match="not a video file"):
        Client(served, verbose=False).predict(handle_file(str(junk)), 32, True, 2, api_name="/compare")
