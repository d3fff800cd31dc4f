"""The app serves a page and lists the registered codecs through its API (a real server on loopback)."""

from __future__ import annotations

import importlib.util
import urllib.request

import pytest
from conftest import REPO
from gradio_client import Client

# app.py (the entry) shares its name with the app/ package, so load it by path
_spec = importlib.util.spec_from_file_location("app_entry", REPO / "app.py")
app_entry = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(app_entry)


@pytest.fixture(scope="module")
def served():
    demo = app_entry.build_app(app_entry.codec_rows)
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    yield demo.local_url
    demo.close()


def test_page_is_served(served):
    with urllib.request.urlopen(served, timeout=30) as response:
        assert response.status == 200 and b"<html" in response.read(2000).lower()


def test_codec_list_over_the_api(served):
    result = Client(served, verbose=False).predict(api_name="/codec_rows")
    rows = {row[0]: row[1] for row in result["data"]}
    assert {"x265", "x264", "av1"} <= rows.keys()
    assert rows["x265"] == "usable"
