"""`vitrun bench inference` (Figure 12): the search and estimate logic, and the real CLI at tiny sizes."""

from __future__ import annotations

import csv

import pytest
import torch
from click.testing import CliRunner

from vitrun import benchmark
from vitrun.cli import main


def test_gpu_search_finds_the_largest_batch_that_fits():
    """The out-of-memory search, with a fake pass that fails above 300 images."""
    tried = []

    def run(b):
        tried.append(b)
        if b > 300:
            raise torch.cuda.OutOfMemoryError("out of memory")

    assert benchmark._largest_gpu_batch(run, cap=4096) == (300, "measured")
    assert tried[:10] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]  # doubling, then bisection
    assert len(tried) <= 10 + 9
    assert benchmark._largest_gpu_batch(lambda b: None, cap=100) == (100, "capped")


def test_cpu_estimate_extrapolates_the_peak_memory_of_two_passes(monkeypatch):
    peaks = {1: 110, 4: 140}  # bytes: 100 fixed + 10 per image
    monkeypatch.setattr(benchmark, "_peak_bytes", lambda work: peaks[work()])
    assert benchmark._estimated_cpu_batch(lambda b: b, 4, budget=1100, cap=10_000) == (100, "estimated")
    assert benchmark._estimated_cpu_batch(lambda b: b, 4, budget=1100, cap=50) == (50, "capped")


@pytest.mark.skipif(not benchmark.Path("/proc/self/clear_refs").exists(), reason="Linux only")
def test_peak_bytes_sees_an_allocation():
    size = 256 * 2**20
    peak = benchmark._peak_bytes(lambda: torch.ones(size // 4).sum())
    assert peak is not None and size * 0.9 < peak < size * 3


def test_cli_prints_the_table_and_writes_csv_and_figure(tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "inference", "--models", "ViT-Mu/4,R14x0.25", "--sizes", "16", "--device", "cpu",
            "--batch", "2", "--repeats", "1", "--max-batch", "64", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "Figure 12" in result.output and "img/s per core" in result.output
    rows = list(csv.DictReader((out / "inference.csv").open()))
    assert [(r["model"], r["image_size"]) for r in rows] == [("ViT-Mu/4", "16"), ("R14x0.25", "16")]
    for row in rows:
        assert float(row["images_per_s"]) > 0 and row["unit"] == "core"
        assert float(row["images_per_s_per_unit"]) == pytest.approx(float(row["images_per_s"]) / torch.get_num_threads())
        assert row["max_batch_how"] in ("estimated", "capped") and 0 < int(row["max_batch"]) <= 64
    assert (out / "inference.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, message", [
    (["--models", "ViT-Q/16"], "unknown model"),
    (["--sizes", "64,abc"], "expected integers"),
    (["--models", "ViT-Mu/4", "--sizes", "18"], "not a multiple of the patch size 4"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--models", "nope"], "CUDA" if not torch.cuda.is_available() else "unknown model"),
])
def test_cli_bad_input_exits_2(args, message, tmp_path):
    result = CliRunner().invoke(main, ["bench", "inference", "--out", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output
