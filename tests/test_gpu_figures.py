"""tools/gpu_figures.py, the script a lent GPU runs (tools/gpu_check.sh), end to end on the CPU at small sizes:
every job of the plan writes its rows, every coding decodes exactly, the VAE job tiles, and the time budget skips
what would not fit, saying so."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from sd_bases import small_full_pack

from tools import gpu_figures, gpu_wheels

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def full_pack(tmp_path_factory):
    return small_full_pack(tmp_path_factory.mktemp("gpu-figures"))


def test_the_quick_run_measures_every_job_and_writes_json_and_markdown(full_pack, tmp_path):
    out = tmp_path / "out"
    assert gpu_figures.main(["--out", str(out), "--device", "cpu", "--quick", "--full-pack", str(full_pack)]) == 0
    data = json.loads((out / "gpu_figures.json").read_text())
    jobs = [j.name for j in gpu_figures.plan(quick=True)]
    assert {r["job"] for r in data["codec"]} | {"vae-1080p"} == set(jobs) and not data["not_measured"]
    for preset in ("full", "tiny"):
        rows = [r for r in data["codec"] if r["preset"] == preset]
        assert {r["label"] for r in rows} == {"TDIR on", "TDIR off"}
        assert all(r["exact"] and r["encode_s"] > 0 and r["decode_s"] > 0 for r in rows)
        assert all(r["peak_decode_bytes"] is None for r in rows)  # no memory counter on the CPU
    on = next(r for r in data["codec"] if r["preset"] == "full" and r["label"] == "TDIR on")
    off = next(r for r in data["codec"] if r["preset"] == "full" and r["label"] == "TDIR off")
    assert on["tdir_k"] > 0 == off["tdir_k"] and on["unet_evals"] < off["unet_evals"]
    whole, tiled = data["vae"]
    assert (whole["mode"], whole["tiles"]) == ("whole", 1) and tiled["mode"] == "tiled" and tiled["tiles"] > 1
    markdown = (out / "gpu_figures.md").read_text()
    assert "| full | 96x64 | off | on |" in markdown and "| n/a | n/a |" in markdown
    assert "random" not in data["packs"]["full"] and data["environment"]["device_name"].startswith("CPU")


def test_jobs_past_the_time_budget_are_listed_as_not_measured(tmp_path):
    out = tmp_path / "out"
    assert gpu_figures.main(["--out", str(out), "--device", "cpu", "--quick", "--budget-s", "-1"]) == 0
    data = json.loads((out / "gpu_figures.json").read_text())
    assert not data["codec"] and not data["vae"]
    assert [n["job"] for n in data["not_measured"]] == [j.name for j in gpu_figures.plan(quick=True)]
    assert all("time budget" in n["reason"] for n in data["not_measured"])
    assert "time budget" in (out / "gpu_figures.md").read_text()


def test_a_job_that_fails_is_listed_with_its_error_and_the_run_goes_on(tmp_path):
    out = tmp_path / "out"
    argv = ["--out", str(out), "--device", "cpu", "--quick", "--full-pack", str(tmp_path / "no-pack")]
    assert gpu_figures.main([*argv, "--jobs", "full-480p", "vae-1080p"]) == 1
    data = json.loads((out / "gpu_figures.json").read_text())
    assert [n["job"] for n in data["not_measured"]] == ["full-480p", "vae-1080p"]
    assert all(n["reason"].startswith("failed: ") for n in data["not_measured"])


def test_the_wheelhouse_holds_what_the_gpu_machine_lacks_and_the_checks_import():
    """tools/gpu_wheels.py: torch and numpy are there already, the app's packages are not needed, PyAV does not fit;
    the library's own needs are downloaded."""
    wanted, left_out = gpu_wheels.plan((REPO / "requirements.txt").read_text())
    assert set(wanted) == {"diffusers", "constriction"}
    assert {"torch", "numpy", "gradio", "ray", "av"} <= set(left_out)
    assert gpu_wheels.plan("av==18.1.0  # comment\ntorch==2.14.1\n", everything=True)[0] == {"av": "18.1.0"}


def test_the_device_command_is_valid_shell_and_documented():
    assert subprocess.run(["bash", "-n", str(REPO / "tools" / "gpu_check.sh")]).returncode == 0
    call = 'run(command="bash tools/gpu_check.sh", carry=[".whl"], timeout_s=540)'
    assert call in (REPO / "tools" / "gpu_check.sh").read_text() and call in (REPO / "docs" / "TRAINING.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without CUDA")
def test_asking_for_cuda_without_it_is_a_clear_error(tmp_path, capsys):
    assert gpu_figures.main(["--out", str(tmp_path), "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_speed_reports_peak_memory_on_cuda():
    from codec.speed import measure_speed

    rows = measure_speed("random-tiny", (64, 64), 3, "cuda", extra=":intra=learned", warmup_frames=1)
    assert [r.label for r in rows] == ["TDIR on", "TDIR off"]
    for row in rows:
        assert row.exact and row.peak_encode_bytes >= row.allocated_bytes > 0 and row.peak_decode_bytes > 0
