"""`vitrun bench`: throughput of the input pipeline (`data`), a model against timm (`model`),
a training step against the hardware and timm (`train`), and the paper's Figure 12
(`inference`). The measuring is in vitrun/benchmark.py and vitrun/data/bench.py; this module
parses and prints."""

from __future__ import annotations

from pathlib import Path

import click

from vitrun.cli_common import fail, has_cuda, int_list, make_console, parse_options, source_options


@click.group("bench")
def bench_group():
    """Measure throughput: how many images/s a part of the pipeline delivers."""


@bench_group.command("data")
@click.argument("source")
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(4), help="Crop size the batches are made at.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1), help="Images per batch.")
@click.option("--workers", default=None, type=click.IntRange(0), help="Decoding processes for on-disk sources [default: the cores CPU training leaves free].")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(1), help="Batches timed (after 2 untimed warm-up batches).")
@click.option("--crop", type=click.Choice(["inception", "resize"]), default="inception", show_default=True, help="Training crop (pre-training: inception; fine-tuning real images: resize).")
@click.option("--model", default=None, help="Also time a training step of this model (e.g. ViT-Mu/4) on the same batches, for comparison.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="A source option as in a recipe, e.g. --option label_column=fine_label. Repeatable.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), envvar="VITRUN_CACHE", help="Where generated datasets are cached [env VITRUN_CACHE; default ~/.cache/vitrun].")
@click.option("--project", "project_cores", default=16, show_default=True, type=click.IntRange(2), help="Also project images/s to a machine of this many cores (all but one decoding).")
@click.option("--decode", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True, help="gpu: decode JPEGs on the CUDA device (batches handed over there); falls back to the CPU without one.")
def bench_data_cmd(source, image_size, batch_size, workers, steps, crop, model, options, cache_dir, project_cores, decode):
    """Images/s of the training input pipeline for SOURCE (decode + augment + collate).

    SOURCE is what a recipe's `data` takes: an embedded name (`fractal`, `digits`,
    `shapes`) or KIND:TARGET (`folder:PATH`, `parquet:GLOB`, `arrow:DIR`, `hf:ID`,
    `torchvision:NAME`). Embedded sources are augmented in memory (workers unused).
    """
    from vitrun import data
    from vitrun.data import bench, loader

    opts = source_options(options)
    workers = loader.LoaderSettings.auto_workers() if workers is None else workers
    try:
        data.check(source, opts, cache_dir)
        if model:
            from vitrun.models import spec

            spec(model)
        result = bench.measure(source, image_size=image_size, batch_size=batch_size, workers=workers, steps=steps, crop=crop, model=model, cache_dir=cache_dir, options=opts, decode=decode, device="cuda" if decode == "gpu" and has_cuda() else "cpu")
    except (data.SourceError, ValueError) as err:
        fail(f"{source}: {err}" if not str(err).startswith(source) else str(err))
    console = make_console()
    in_memory = data.is_embedded(source)
    how = "in memory, batched augmentation" if in_memory else f"{result.workers} workers"
    console.print(f"{source}: {result.train_images} training images; {result.steps} batches of {result.batch_size} at {result.image_size} px ({how})")
    console.print(f"  input pipeline: [bold]{result.images_per_s:,.0f} images/s[/bold] ({1000 * result.seconds / result.steps:.1f} ms per batch)")
    if not in_memory:
        basis = "CPU time, workers included" if result.cpu_seconds else "wall time"
        console.print(f"  per decoding core ({basis}): {result.per_core:,.0f} images/s; projected on {project_cores} cores ({project_cores - 1} workers): {result.projected(project_cores):,.0f} images/s")
    if result.model_seconds:
        ratio = result.images_per_s / result.model_images_per_s
        verdict = "keeps the model busy" if ratio >= 1.5 else "about even with the model: little slack" if ratio >= 1 else "slower than the model: training waits for data"
        console.print(f"  {result.model} training step: {result.model_images_per_s:,.{0 if result.model_images_per_s >= 10 else 2}f} images/s ({1000 * result.model_seconds:.1f} ms per batch); loader/model = {ratio:.1f}x, {verdict}")


@bench_group.command("model")
@click.argument("name")
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(4), help="Input resolution.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1), help="Images per step.")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(1), help="Timed steps per model and kind of work (after 2 warm-up steps); the median counts.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 … (auto: cuda when there is one).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True, help="auto: bf16 autocast on GPU, fp32 on CPU.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="A model option as in a recipe's [model], e.g. --option classifier=gap. Repeatable.")
def bench_model_cmd(name, image_size, batch_size, repeats, device, precision, options):
    """Images/s of model NAME against timm's same architecture, in one run.

    Inference (eval, no grad) and a training step (forward, backward, Adam update) of our
    model and of its timm twin (same weights, built by vitrun.interop.to_timm), timed in
    turns so a busy machine favours neither. Needs timm for the comparison (pip install timm).
    """
    from vitrun.benchmark import bench_model
    from vitrun.engine.device import FLAG_SETTING, place
    from vitrun.models import spec

    fields = parse_options(options)
    try:
        spec(name, **fields)
        placement = place(device, precision, setting=FLAG_SETTING)
        timings = bench_model(name, placement, image_size, batch_size, repeats, **fields)
    except (ValueError, RuntimeError) as err:
        fail(str(err))
    from rich.table import Table

    table = Table(title=f"{name} at {image_size} px, batch {batch_size}, {placement.describe()}", title_justify="left", header_style="bold")
    for column in ("work", "vitrun img/s", "timm img/s", "vitrun / timm"):
        table.add_column(column, justify="left" if column == "work" else "right")
    for work in dict.fromkeys(t.work for t in timings):
        ours = next(t.images_per_s for t in timings if t.work == work and t.model == "vitrun")
        theirs = next((t.images_per_s for t in timings if t.work == work and t.model == "timm"), None)
        table.add_row(work, f"{ours:,.1f}", "–" if theirs is None else f"{theirs:,.1f}", "–" if theirs is None else f"{ours / theirs:.2f}x")
    if not any(t.model == "timm" for t in timings):
        table.caption = "timm is not installed: pip install timm for the comparison"
    make_console().print(table)


@bench_group.command("train")
@click.option("--model", "name", required=True, help="Model name, e.g. ViT-S/16, R50x1, R50+ViT-B/16 (vitrun models lists them).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1), help="Images per step.")
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(4), help="Input resolution.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True, help="auto: bf16 autocast on GPU, fp32 on CPU.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile both models (GPU only; ignored on a CPU).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 … (auto: cuda when there is one).")
@click.option("--compare", type=click.Choice(["timm", "none"]), default="timm", show_default=True, help="Also time timm's same architecture (same weights), in turns with ours.")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(1), help="Timed steps per model (after 2 warm-up steps); the median counts.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="A model option as in a recipe's [model], e.g. --option classifier=gap. Repeatable.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the numbers, the device and the versions to this JSON file.")
def bench_train_cmd(name, batch_size, image_size, precision, compile_, device, compare, repeats, options, json_path):
    """Training-step speed of a model against the hardware and against timm.

    Images/s, achieved TFLOP/s (counted forward FLOPs × 3 for forward + backward), the share
    of the matrix-multiply peak measured on the same device in this run, and our speed over
    timm's (same weights, vitrun.interop.to_timm), median of steps timed in turns. A step
    is forward, backward and the AdamW update as each trainer builds it: vitrun's fused
    kernels, timm's create_optimizer_v2. "first step" is each model's first step on its own
    (with --compile, the compilation): the wait before the steady rate. `bench model` also
    times inference.
    """
    from vitrun.benchmark import bench_train, train_record
    from vitrun.engine.device import FLAG_SETTING, place
    from vitrun.models import spec

    fields = parse_options(options)
    try:
        spec(name, **fields)
        placement = place(device, precision, compile=compile_, setting=FLAG_SETTING)
        timings, peak = bench_train(name, placement, image_size, batch_size, repeats, compare=compare == "timm", **fields)
    except (ValueError, RuntimeError) as err:
        fail(str(err))
    from rich.table import Table

    table = Table(title=f"{name} training step at {image_size} px, batch {batch_size}, {placement.describe()}", title_justify="left", header_style="bold")
    for column in ("model", "img/s", "ms/step", "TFLOP/s", "of peak", "vs timm", "first step"):
        table.add_column(column, justify="left" if column == "model" else "right")
    theirs = next((t for t in timings if t.model == "timm"), None)
    for t in timings:
        ratio = "–" if theirs is None else f"{theirs.seconds / t.seconds:.2f}x"
        table.add_row(t.model, f"{t.images_per_s:,.1f}", f"{1000 * t.seconds:,.1f}", f"{t.tflops:.3g}", f"{100 * t.utilisation:.1f}%", ratio, f"{t.first_step_seconds:.2f} s")
    notes = [f"matmul peak {peak / 1e12:.3g} TFLOP/s ({'bf16' if placement.dtype else 'fp32'} matrix product, this device, this run)"]
    if compile_ and not placement.compile:
        notes.append("--compile ignored: torch.compile is used on a GPU only")
    if placement.dtype and placement.device.type == "cpu":  # most CPUs have no bf16 matrix units
        from vitrun.benchmark import matmul_peak

        share = peak / matmul_peak(place(device, "fp32", setting=FLAG_SETTING))
        if share < 1:
            notes.append(f"bf16 matmuls run at {100 * share:.3g}% of fp32's on this CPU: train in fp32 here")
    if compare == "timm" and theirs is None:
        notes.append("timm is not installed: pip install timm for the comparison")
    table.caption = "; ".join(notes)
    table.caption_justify = "left"
    make_console().print(table)
    if json_path:
        import json

        from vitrun.durable import write_atomic

        record = train_record(name, image_size, batch_size, placement, timings, peak)
        write_atomic(Path(json_path), (json.dumps(record, indent=2) + "\n").encode())


@bench_group.command("inference")
@click.option("--models", "model_names", metavar="A,B,…", help="Models, comma-separated [default: ViT-B/16,R50x1,R50+ViT-B/16 on a GPU; ViT-Ti/16,R26x0.5,R26x0.5+ViT-Ti/16 on a CPU].")
@click.option("--sizes", callback=int_list, default="64,128,224,384,512", show_default=True, metavar="S,…", help="Input sizes in pixels, comma-separated.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 … (auto: cuda when there is one). GPU: bf16 autocast; CPU: fp32.")
@click.option("--batch", type=click.IntRange(2), help="Images per timed pass [default: 64 on a GPU (at most the largest that fits), 4 on a CPU].")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1), help="Timed passes per model and size; the median counts.")
@click.option("--max-batch", default=16384, show_default=True, type=click.IntRange(1), help="Upper bound of the largest-batch search (GPU) or estimate (CPU).")
@click.option("--memory", "memory_gib", default=16.0, show_default=True, type=click.FloatRange(min=0, min_open=True), help="CPU only: memory budget in GiB the largest batch is estimated against (16: one TPUv3 core, Figure 12's device).")
@click.option("--threads", type=click.IntRange(1), help="CPU threads (cores) to run on [default: torch's]; images/s per core divides by this.")
@click.option("--out", "out_dir", default="results/bench", show_default=True, type=click.Path(file_okay=False), help="Where inference.csv and inference.png (Figure 12) go.")
def bench_inference_cmd(model_names, sizes, device, batch, repeats, max_batch, memory_gib, threads, out_dir):
    """The paper's Figure 12 here: inference images/s and the largest batch per input size.

    Images/s per core on a CPU (÷ torch's threads) or per device on a GPU; the largest
    batch is searched on a GPU (doubling, then bisection, until out of memory) and
    estimated on a CPU from the peak memory of two passes (see vitrun/benchmark.py).
    """
    from vitrun import benchmark
    from vitrun.engine.device import FLAG_SETTING, place
    from vitrun.models import spec

    try:
        placement = place(device, "auto", threads=threads, setting=FLAG_SETTING)
        on_gpu = placement.device.type == "cuda"
        names = [n.strip() for n in model_names.split(",") if n.strip()] if model_names else list(benchmark.FIGURE12_MODELS if on_gpu else benchmark.CPU_MODELS)
        for name in names:
            spec(name)
    except (ValueError, RuntimeError) as err:
        fail(str(err))
    console = make_console()
    console.print(f"Figure 12 on {placement.describe()}: {', '.join(names)} at {', '.join(map(str, sizes))} px")
    with console.status("measuring …") as status:
        try:
            points = benchmark.bench_inference(
                names, sizes, placement, batch or (64 if on_gpu else 4), repeats, max_batch, int(memory_gib * 2**30),
                on_point=lambda p: status.update(f"measured {p.model} at {p.image_size} px: {p.images_per_s_per_unit:,.1f} images/s per {p.unit}"),
            )
        except ValueError as err:  # e.g. an input size the model's patches do not divide
            fail(str(err))
    from rich.table import Table

    unit = points[0].unit
    table = Table(title=f"Inference (arXiv 2010.11929, Figure 12) on {placement.describe()}", title_justify="left", header_style="bold")
    for column in ("model", "size", "batch", "img/s", f"img/s per {unit}", "largest batch"):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=True)
    marks = {"measured": "", "estimated": "≈", "capped": "≥", "unknown": ""}
    for p in points:
        largest = "–" if p.max_batch is None else f"{marks[p.max_batch_how]}{p.max_batch:,}"
        table.add_row(p.model, str(p.image_size), str(p.batch), f"{p.images_per_s:,.1f}", f"{p.images_per_s_per_unit:,.1f}", largest)
    table.caption = ("largest batch: ≈ estimated from the peak memory of two passes against --memory; ≥ the --max-batch bound" if not on_gpu
                     else "largest batch: searched until out of memory; ≥ the --max-batch bound")
    console.print(table)
    csv_path, png_path = benchmark.write_inference(points, Path(out_dir), f"Inference on {placement.describe()}")
    console.print(f"[dim]wrote {csv_path} and {png_path}[/dim]")
