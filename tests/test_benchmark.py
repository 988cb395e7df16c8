"""`vitrun bench model`: our model and its timm twin timed in one run."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from vitrun.benchmark import TrainTiming, bench_model, matmul_peak
from vitrun.cli import main
from vitrun.engine.device import place


@pytest.mark.parametrize("name", ["ViT-Mu/4", "R14x0.5"])
def test_bench_model_times_both_sides(name):
    pytest.importorskip("timm")
    timings = bench_model(name, place("cpu"), image_size=32, batch_size=2, repeats=1, warmup=1)
    assert {(t.model, t.work) for t in timings} == {(m, w) for m in ("vitrun", "timm") for w in ("inference", "train step")}
    assert all(t.images_per_s > 0 for t in timings)


def test_bench_model_cli():
    pytest.importorskip("timm")
    result = CliRunner().invoke(main, ["bench", "model", "ViT-Mu/4", "--image-size", "32", "--batch-size", "2", "--repeats", "1", "--option", "classifier=gap"])
    assert result.exit_code == 0, result.output
    assert "vitrun / timm" in result.output and "train step" in result.output
    bad = CliRunner().invoke(main, ["bench", "model", "ViT-Mu/4", "--option", "clasifier=gap"])
    assert bad.exit_code == 2 and "did you mean 'classifier'" in bad.output


def test_train_timing_arithmetic():
    # 4 images in 0.5 s at 1 GFLOP forward each: 8 img/s, ×3 for forward + backward = 24 GFLOP/s.
    t = TrainTiming("vitrun", batch_size=4, seconds=0.5, flops_per_image=10**9, peak_flops=48e9)
    assert t.images_per_s == pytest.approx(8.0)
    assert t.tflops == pytest.approx(0.024)
    assert t.utilisation == pytest.approx(0.5)


def test_matmul_peak_counts_two_flops_per_multiply_add(monkeypatch):
    import vitrun.benchmark as benchmark

    monkeypatch.setattr(benchmark, "_alternate", lambda steps, repeats, warmup, device: {"mm": [0.5, 0.25, 1.0], "linear": [0.3, 0.4]})
    assert matmul_peak(place("cpu", "fp32"), size=100) == pytest.approx(2 * 100**3 / 0.25)  # the best repeat of either product


def test_matmul_peak_on_a_cpu_grows_the_product_until_one_takes_50_ms(monkeypatch):
    import vitrun.benchmark as benchmark

    # bf16 on a CPU without bf16 units is ~100x slower than fp32: a 2048 product would take minutes
    monkeypatch.setattr(benchmark, "_mm_seconds", lambda size, device, dtype: 0.01 if size < 1024 else 0.2)
    monkeypatch.setattr(benchmark, "_alternate", lambda steps, repeats, warmup, device: {"mm": [1.0], "linear": [1.0]})
    assert matmul_peak(place("cpu", "fp32")) == 2 * 1024**3
    monkeypatch.setattr(benchmark, "_mm_seconds", lambda size, device, dtype: 0.01)
    assert matmul_peak(place("cpu", "fp32")) == 2 * 2048**3  # no larger than 2048


def test_bench_train_cli(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    import vitrun.benchmark as benchmark

    measure = benchmark.matmul_peak  # measured for real, on a 256² matrix: 2048² takes 1.4 s a reading here
    monkeypatch.setattr(benchmark, "matmul_peak", lambda placement, size=None, repeats=5: measure(placement, 256, repeats))
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "train", "--model", "ViT-Mu/4", "--image-size", "32", "--batch-size", "2", "--repeats", "1",
                                       "--precision", "fp32", "--compile", "--compare", "timm", "--option", "classifier=gap", "--json", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    for column in ("img/s", "ms/step", "TFLOP/s", "of peak", "vs timm", "first step", "matmul peak", "--compile ignored"):
        assert column in result.output
    assert "timm" in result.output.split("vs timm")[1]  # a timm row under the header
    record = json.loads(out.read_text())
    assert (record["model"], record["image_size"], record["batch_size"], record["precision"], record["compile"]) == ("ViT-Mu/4", 32, 2, "fp32", False)
    assert record["cpu"]["capability"] and record["versions"]["torch"] and record["matmul_peak_tflops"] > 0
    ours, timm = record["rows"]
    assert (ours["model"], timm["model"]) == ("vitrun", "timm") and timm["vs_timm"] == pytest.approx(1.0)
    assert all(row["first_step_s"] > 0 and row["ms_per_step"] > 0 for row in record["rows"])
    assert ours["vs_timm"] == pytest.approx(timm["ms_per_step"] / ours["ms_per_step"])
    bad = CliRunner().invoke(main, ["bench", "train", "--model", "ViT-Mu/4", "--device", "cuda:7" if not _has_cuda() else "nope"])
    assert bad.exit_code == 2 and "error:" in bad.output


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
