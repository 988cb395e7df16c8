"""Time `vitrun report` over many generated stage.json files (the issue's bar: 10,000 in < 3 s).

    python tests/benchmarks/report_bench.py [--stages 10000] [--repeats 3] [-- extra report options]

Writes the records into a temporary results directory (one experiment; pre-trainings of
three model families over sizes and seeds, each with fine-tuning and 5-shot stages on
several datasets, as a big sweep leaves them), then runs the real command in a fresh
process each time (imports included) and prints the best and median wall time, and the
CPU time (user + system) the command used: on a shared machine the wall time counts other
jobs' turns too, the CPU time only ours.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vitrun.store import sealed_bytes

MODELS = [
    {"name": "ViT-B/16", "family": "vit", "width": 768, "depth": 12, "heads": 12, "mlp": 3072, "patch": 16, "classifier": "token", "pos_embed": "1d", "pos_embed_at": "stem", "pre_logits": True, "dropout": 0.0},
    {"name": "R50x1", "family": "resnet", "blocks": [3, 4, 6, 3], "width_factor": 1.0},
    {"name": "R50+ViT-B/16", "family": "hybrid", "width": 768, "depth": 12, "heads": 12, "mlp": 3072, "patch": 1, "classifier": "token", "pos_embed": "1d", "pos_embed_at": "stem", "blocks": [3, 4, 9]},
]
TRANSFERS = ["imagenet", "imagenet-real", "cifar10", "cifar100", "pets", "flowers", "digits", "shapes", "vtab/dtd"]


def generate(root: Path, stages: int) -> int:
    """`stages` records under root/bench/; returns how many were written."""
    folder = root / "bench"
    written, i = 0, 0
    while written < stages:
        model, size, seed = MODELS[i % 3], 1000 * (1 + (i // 3) % 20), i // 60
        upstream = {"seed": seed, "model": model, "pretrain": {"data": "hf:timm/imagenet-22k-wds", "size": size, "image_size": 224, "steps": 1000, "batch_size": 4096, "lr": 0.001, "weight_decay": 0.1}}
        pre_key = f"pretrain-{i:012x}"
        written += _write(folder, pre_key, "pretrain", upstream, [], 0.3, 1e18 * size / 1000)
        for j, data in enumerate(TRANSFERS):
            if written >= stages:
                break
            transfer = {**upstream, "transfer": {"data": data, "name": data}, "finetune": {"steps": 500, "batch_size": 512, "lr": [0.001, 0.003, 0.01, 0.03], "image_size": 384}}
            written += _write(folder, f"finetune-{i:06x}{j:06x}", "finetune", transfer, [pre_key], 0.5 + 0.01 * j, 1e15)
            if written < stages:
                fewshot = {**upstream, "transfer": {"data": data, "name": data}, "fewshot": {"shots": 5, "l2_reg": 1024.0, "draws": 3}}
                written += _write(folder, f"fewshot-{i:07x}{j:05x}", "fewshot", fewshot, [pre_key], 0.4 + 0.01 * j, 1e13)
        i += 1
    (folder / "recipe.json").write_text(json.dumps({"name": "bench", "path": "bench.toml", "recipe": {"name": "bench"}, "report": {"tables": []}}))
    return written


def _write(folder: Path, key: str, kind: str, config: dict, parents: list, accuracy: float, flops: float) -> int:
    record = {
        "key": key, "kind": kind, "experiment": "bench", "status": "done", "config": config, "parents": parents,
        "metrics": {"accuracy": accuracy, "loss": 1.0, "steps": 500, "accuracy_per_draw": [accuracy] * 3, "dev_accuracy": {"0.01": accuracy}},
        "wall_time_s": 12.5, "flops": flops, "device": "cuda:0 NVIDIA H200 (bf16)", "versions": {"vitrun": "0.1.0", "torch": "2.4.0", "python": "3.11.9"},
        "finished_at": "2026-01-01T00:00:00+00:00",
    }
    (folder / key).mkdir(parents=True)
    (folder / key / "stage.json").write_bytes(sealed_bytes(record))  # as the runner seals it
    return 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("extra", nargs="*", help="more `vitrun report` options, after --")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        n = generate(Path(tmp), args.stages)
        command = [sys.executable, "-m", "vitrun.cli", "report", "--results", tmp, "--format", "json", *args.extra]
        times, cpu = [], []
        for _ in range(args.repeats):
            before = _children_cpu()
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - started)
            cpu.append(_children_cpu() - before)
    shown = " ".join(command[3:4] + command[6:])
    print(f"vitrun {shown} over {n} stage.json files: wall best {min(times):.2f} s, median {statistics.median(times):.2f} s; CPU best {min(cpu):.2f} s, median {statistics.median(cpu):.2f} s ({args.repeats} runs)")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
