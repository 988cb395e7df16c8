"""The `vitrun` command: parse, call the library, render with rich.

Heavy imports (torch, pandas) happen inside commands, so `vitrun --help` answers at once.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

EXIT_USAGE = 2  # bad input: recipe, report spec, arguments
EXIT_FAILED = 1  # a stage failed while running
EXIT_INTERRUPTED = 130


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    from rich.markup import escape  # messages quote TOML tables such as [finetune]: not markup

    _console(stderr=True).print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True, markup=True)
    sys.exit(code)


def _parse_shard(ctx, param, value):
    if value is None:
        return None
    try:
        index, count = (int(x) for x in value.split("/"))
    except ValueError:
        raise click.BadParameter("expected I/N, e.g. --shard 2/4") from None
    if not 1 <= index <= count:
        raise click.BadParameter(f"shard {index} of {count} does not exist: use 1 ≤ I ≤ N")
    return index, count


results_option = click.option("--results", "results", default="results", show_default=True, type=click.Path(file_okay=False), help="Results directory (one folder per experiment).")
set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key, e.g. --set pretrain.steps=50 or --set 'pretrain.size=[500]' (a list for a swept key replaces its values). Repeatable.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="vitrun")
def main():
    """Reproduce "An Image is Worth 16x16 Words" (ViT, arXiv 2010.11929) from TOML recipes.

    \b
    Start here:
      vitrun ls                          built-in recipes
      vitrun recipe quickstart           run one (CPU, a few minutes), print its tables
      vitrun recipe quickstart --dry-run the plan: stages, status, estimated FLOPs
      vitrun cp quickstart my.toml       copy a recipe to edit, then: vitrun recipe my.toml
      vitrun report --format markdown    tables from everything under results/
    """


@main.command("recipe")
@click.argument("recipe")
@results_option
@set_option
@click.option("--dry-run", is_flag=True, help="Print the plan (kind, model, data, size, status, FLOPs) and run nothing.")
@click.option("--shard", callback=_parse_shard, metavar="I/N", help="Run only shard I of N (1-based); independent jobs sharing --results merge with no extra step.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), envvar="VITRUN_CACHE", help="Where generated datasets are cached [env VITRUN_CACHE; default ~/.cache/vitrun].")
def recipe_cmd(recipe, results, overrides, dry_run, shard, cache_dir):
    """Run RECIPE (a path, or a built-in name such as `quickstart`) and print its report.

    The recipe's [sweep] expands into stages (pre-train → fine-tune / few-shot). Finished
    stages are skipped, a killed run resumes from its checkpoint, and adding a dataset or
    sweep value runs only the new stages.
    """
    from vitrun import plan as planning
    from vitrun.recipe import RecipeError, load
    from vitrun.store import Store

    try:
        loaded = load(recipe, overrides)
    except RecipeError as err:
        _fail(str(err))
    stages = planning.plan(loaded.variants)
    if shard:
        stages = planning.shard(stages, *shard)
    store = Store(results)
    console = _console()
    if dry_run:
        console.print(_plan_table(loaded.name, stages, store, loaded.swept_keys()))
        return
    from vitrun.engine import Interrupted
    from vitrun.runner import StageFailed, run_plan

    try:
        summary = run_plan(loaded, stages, store, console, cache_dir)
    except StageFailed as err:
        _fail(str(err), EXIT_FAILED)
    except Interrupted as err:  # training checkpointed before stopping
        _fail(f"interrupted: {err}", EXIT_INTERRUPTED)
    except KeyboardInterrupt:  # Ctrl-C between stages: finished stages are already saved
        _fail("interrupted; run the same command again to resume", EXIT_INTERRUPTED)
    if summary.ran:
        console.print(f"Ran {len(summary.ran)} stages; results in {store.root / loaded.name}")
    _print_report(store, [loaded.name], "table", None, console)


@main.command("report")
@results_option
@click.option("--experiment", help="Only this experiment (a folder under --results). Default: every experiment.")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "latex", "json", "html"]), default="table", show_default=True, help="table: rich tables in the terminal; json: {experiment, tables: [{name, index, columns, data, std, n, status, notes}], paper, expect, unfinished}; html: one self-contained page per experiment (tables, figures, recipe, versions, devices) written to --out, else results/<experiment>/report/.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Also write each table (in --format), its PNG figure and the paper-style figures (PNG and SVG) under DIR/<experiment>/.")
@click.option("--paper", is_flag=True, help="Put the paper's numbers (Tables 2, 5, 6, 8; vitrun/paper/numbers.csv) beside ours where model, pre-training set and dataset match, with the delta.")
@click.option("--check", is_flag=True, help="Exit 1 when a recipe's [[expect]] cell misses its target ± tolerance or has no result (CI for long runs).")
@click.option("--real", "real_labels", type=click.Path(dir_okay=False), help="ReaL labels (the public real.json) to score fine-tuned ImageNet stages on ImageNet-ReaL, from the test predictions each keeps; the test split must be the validation set in file-name order.")
@click.option("--figures", is_flag=True, help="Write the paper-style figures (PNG and SVG) to results/<experiment>/report/ (--out and --format html write them anyway).")
def report_cmd(results, experiment, fmt, out_dir, paper, check, real_labels, figures):
    """Rebuild the tables (and figures) of finished stages under --results.

    Each experiment's tables come from its recipe's [report] section; an experiment
    without one gets mean accuracy per model and pre-training size for each stage kind.
    Means are over seeds (± std, n); failed, diverged and unfinished stages are counted
    under the tables, never averaged in.
    """
    from vitrun.store import Store

    store = Store(results)
    names = [experiment] if experiment else store.experiments()
    if experiment and experiment not in store.experiments():
        hint = ", ".join(store.experiments()) or "none yet: run `vitrun recipe quickstart`"
        _fail(f"{results}: no finished stages for experiment {experiment!r} (experiments: {hint})")
    if not names:
        _fail(f"{results}: no results yet; run a recipe first, e.g. `vitrun recipe quickstart`")
    real = None
    if real_labels:
        from vitrun.paper.real import RealLabelsError, load_real_labels

        try:
            real = load_real_labels(real_labels)
        except RealLabelsError as err:
            _fail(f"--real {err}")
    failures = _print_report(store, names, fmt, out_dir, _console(), paper=paper, figures=figures, real=real)
    if check and failures:
        for name, outcome in failures:
            click.echo(f"check failed: {name}: {outcome.describe()}", err=True)
        raise SystemExit(1)


@main.command("ls")
def ls_cmd():
    """List the built-in recipes, one line each."""
    from vitrun.recipe import builtin_recipes

    console = _console()
    for path in builtin_recipes():
        console.print(f"[cyan]{path.stem:<20}[/cyan] {_first_comment(path)}")


@main.command("cp")
@click.argument("name")
@click.argument("dest", type=click.Path(dir_okay=True))
def cp_cmd(name, dest):
    """Copy built-in recipe NAME to DEST (a file or a folder) to edit it."""
    from vitrun.recipe import BUILTIN_DIR, builtin_recipes

    source = BUILTIN_DIR / f"{name.removesuffix('.toml')}.toml"
    if not source.is_file():
        import difflib

        close = difflib.get_close_matches(name, [p.stem for p in builtin_recipes()], n=1)
        _fail(f"{name}: no built-in recipe of that name{f' (did you mean {close[0]!r}?)' if close else ''}; `vitrun ls` lists them")
    target = Path(dest)
    if target.is_dir():
        target = target / source.name
    if target.exists():
        _fail(f"{target}: already exists; choose another DEST or remove it first")
    shutil.copyfile(source, target)
    _console().print(f"Copied {source.stem} to {target}; run it with `vitrun recipe {target}`")


@main.command("validate")
@click.argument("recipe")
@set_option
def validate_cmd(recipe, overrides):
    """Check RECIPE without running anything: exit 0 if valid, else one line and exit 2."""
    from vitrun import plan as planning
    from vitrun.recipe import RecipeError, load

    try:
        loaded = load(recipe, overrides)
    except RecipeError as err:
        _fail(str(err))
    stages = planning.plan(loaded.variants)
    counts = {k: sum(s.kind == k for s in stages) for k in planning.KINDS}
    detail = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    _console().print(f"[green]valid[/green]: {loaded.path} — {len(loaded.variants)} variants, {len(stages)} stages ({detail})")


@main.command("models")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True, help="json: a list of objects {name, family, layers, width, mlp, heads, patch, blocks, params, tokens, image_size, gflops, gmacs}.")
@click.option("--model", "model_names", multiple=True, metavar="NAME", help="Only this model, e.g. --model ViT-B/16 (any name the registry decodes, not only the listed ones). Repeatable.")
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(min=1), help="Resolution for the tokens and FLOPs columns.")
def models_cmd(fmt, model_names, image_size):
    """The paper's Table 1 for every registered model: layers, width, MLP, heads, parameters, tokens, FLOPs.

    Counting every model takes a few seconds (each is built on torch's meta device).
    """
    import json

    from vitrun.models import describe
    from vitrun.models.summary import CAPTION

    try:
        rows = describe(list(model_names) or None, image_size)
    except ValueError as err:
        _fail(str(err))
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    from rich import box
    from rich.table import Table

    # A light box and one space between columns keep the nine columns within 80 characters.
    table = Table(title=f"Models at {image_size} px (arXiv 2010.11929, Table 1)", title_justify="left", header_style="bold",
                  caption=CAPTION, caption_justify="left", box=box.SIMPLE_HEAD, show_edge=False, padding=0)
    columns = (("model", "name"), ("layers", "layers"), ("width", "width"), ("MLP", "mlp"), ("heads", "heads"), ("params", "params"), ("tokens", "tokens"), ("GFLOPs", "gflops"), ("GMACs", "gmacs"))
    for header, _ in columns:
        table.add_column(header, justify="left" if header == "model" else "right", no_wrap=True)
    for row in rows:
        cells = [row[key] for _, key in columns]
        table.add_row(*("–" if v is None else f"{v:,.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else v for v in cells))
    _console().print(table)


@main.group("bench")
def bench_group():
    """Measure throughput: how many images/s a part of the pipeline delivers."""


@bench_group.command("data")
@click.argument("source")
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(4), help="Crop size the batches are made at.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1), help="Images per batch.")
@click.option("--workers", default=None, type=click.IntRange(0), help="Decoding processes for on-disk sources [default: the cores CPU training leaves free, at most 8].")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(1), help="Batches timed (after 2 untimed warm-up batches).")
@click.option("--crop", type=click.Choice(["inception", "resize"]), default="inception", show_default=True, help="Training crop (pre-training: inception; fine-tuning real images: resize).")
@click.option("--model", default=None, help="Also time a training step of this model (e.g. ViT-Mu/4) on the same batches, for comparison.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="A source option as in a recipe, e.g. --option label_column=fine_label. Repeatable.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), envvar="VITRUN_CACHE", help="Where generated datasets are cached [env VITRUN_CACHE; default ~/.cache/vitrun].")
def bench_data_cmd(source, image_size, batch_size, workers, steps, crop, model, options, cache_dir):
    """Images/s of the training input pipeline for SOURCE (decode + augment + collate).

    SOURCE is what a recipe's `data` takes: an embedded name (`fractal`, `digits`,
    `shapes`) or KIND:TARGET (`folder:PATH`, `parquet:GLOB`, `arrow:DIR`, `hf:ID`,
    `torchvision:NAME`). Embedded sources are augmented in memory (workers unused).
    """
    from vitrun import data
    from vitrun.data import bench, loader

    opts = _source_options(options)
    workers = loader.LoaderSettings.auto_workers() if workers is None else workers
    try:
        data.check(source, opts, cache_dir)
        if model:
            from vitrun.models import spec

            spec(model)
        result = bench.measure(source, image_size=image_size, batch_size=batch_size, workers=workers, steps=steps, crop=crop, model=model, cache_dir=cache_dir, options=opts)
    except (data.SourceError, ValueError) as err:
        _fail(f"{source}: {err}" if not str(err).startswith(source) else str(err))
    console = _console()
    in_memory = data.is_embedded(source)
    how = "in memory, batched augmentation" if in_memory else f"{result.workers} workers"
    console.print(f"{source}: {result.train_images} training images; {result.steps} batches of {result.batch_size} at {result.image_size} px ({how})")
    console.print(f"  input pipeline: [bold]{result.images_per_s:,.0f} images/s[/bold] ({1000 * result.seconds / result.steps:.1f} ms per batch)")
    if result.model_seconds:
        ratio = result.images_per_s / result.model_images_per_s
        verdict = "keeps the model busy" if ratio >= 1.5 else "about even with the model: little slack" if ratio >= 1 else "slower than the model: training waits for data"
        console.print(f"  {result.model} training step: {result.model_images_per_s:,.0f} images/s ({1000 * result.model_seconds:.1f} ms per batch); loader/model = {ratio:.1f}x, {verdict}")


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
    from vitrun.engine.device import place
    from vitrun.models import spec

    fields = _options(options)
    try:
        spec(name, **fields)
        placement = place(device, precision)
        timings = bench_model(name, placement, image_size, batch_size, repeats, **fields)
    except (ValueError, RuntimeError) as err:
        _fail(str(err))
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
    _console().print(table)


def _source_options(items):
    """`--option KEY=VALUE` pairs as SourceOptions."""
    from vitrun.data import SourceOptions

    return SourceOptions(**_options(items, tuple(SourceOptions.__dataclass_fields__)))


def _options(items, allowed: tuple[str, ...] | None = None) -> dict:
    """`--option KEY=VALUE` pairs (values read as TOML, else text); KEY one of `allowed` if given."""
    from vitrun.recipe import toml_value

    fields = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or (allowed is not None and key not in allowed):
            _fail(f"--option {item}: expected KEY=VALUE" + (f" with KEY one of {', '.join(allowed)}" if allowed else ""))
        fields[key] = toml_value(text)
    return fields


# -- helpers ---------------------------------------------------------------------------

def _first_comment(path: Path) -> str:
    for line in path.read_text().splitlines():
        text = line.lstrip("#").strip()
        if line.startswith("#") and text:
            return text
    return ""


def _plan_table(experiment: str, stages, store, swept=()):
    from rich.table import Table

    from vitrun.stages import training_flops

    table = Table(title=f"Plan for {experiment}: {len(stages)} stages", title_justify="left", header_style="bold")
    columns = [("kind", "left"), ("model", "left"), ("data", "left"), ("size", "right"), ("status", "left"), ("est. FLOPs", "right"), ("key", "left")]
    if swept:
        columns.insert(2, ("variant", "left"))
    for name, justify in columns:
        table.add_column(name, justify=justify, style="dim" if name == "key" else None)
    colours = {"done": "green", "partial": "yellow", "todo": "white"}
    total = 0.0
    for stage in stages:
        status = store.stage(experiment, stage.key).status()
        flops = training_flops(stage)
        total += flops if status != "done" else 0.0
        cells = [stage.kind, stage.model, stage.detail, stage.size_label, f"[{colours[status]}]{status}[/]", f"{flops:.2e}" if flops else "–", stage.key]
        if swept:
            cells.insert(2, stage.variant(swept))
        table.add_row(*cells)
    table.caption = f"to run: {total:.2e} FLOPs (training; evaluation not counted)"
    return table


def _print_report(store, experiments, fmt, out_dir, console, paper=False, figures=False, real=None) -> list:
    """Print (and with out_dir write) each experiment's report; returns the [[expect]] cells
    that miss, as (experiment, outcome)."""
    import json

    from pydantic import ValidationError

    from vitrun import report, reporting

    documents, failures = [], []
    for name in experiments:
        try:
            built = reporting.build(store, name, paper=paper, real=real)
        except report.ReportError as err:
            _fail(f"{(store.recipe(name) or {}).get('path', name)}: {err}")
        except ValidationError as err:
            first = err.errors()[0]
            _fail(f"{(store.recipe(name) or {}).get('path', name)}: expect.{'.'.join(map(str, first['loc']))}: {first['msg']}")
        failures += [(name, o) for o in built.failures()]
        documents.append(built.document())
        listings = built.listings()
        if fmt == "table":
            console.print(f"[bold]{name}[/bold]" if len(experiments) > 1 else "")
            for table in built.tables:
                console.print(report.rich_table(table))
            for title, frame, notes in listings:
                console.print(reporting.rich_listing(title, frame, notes))
            for note in built.notes():
                console.print(f"[yellow]{note}[/yellow]")
        elif fmt not in ("json", "html"):
            texts = [report.render_text(t, fmt) for t in built.tables] + [reporting.render_listing(*item, fmt) for item in listings]
            click.echo("\n".join(texts + built.notes()))
        folder = Path(out_dir) / name if out_dir else None
        if fmt == "html" or figures or folder:
            _write_outputs(folder or store.root / name / "report", built, fmt, tables=folder is not None, experiment_dir=store.root / name)
    if fmt == "json":
        click.echo(json.dumps(documents[0] if len(documents) == 1 else documents, indent=2))
    return failures


def _write_outputs(folder: Path, built, fmt, tables: bool, experiment_dir: Path) -> None:
    """The paper-style figures; the HTML page (--format html); with `tables` (--out) every
    table in `fmt` with a PNG of it."""
    import json

    from vitrun import figures, html_page, report
    from vitrun.store import write_atomic

    written = []
    drawn = figures.draw_all(built.frame, folder, paper=built.paper is not None)
    if fmt == "html":
        page = folder / "report.html"
        write_atomic(page, html_page.render(built, drawn, experiment_dir).encode())
        page.chmod(0o644)  # a page to share: readable like any other written file
        written.append(f"page {page}")
    elif tables:
        for table in built.tables:
            stem = folder / report.slug(table.name)
            text = json.dumps(report.to_json(built.name, [table]), indent=2) if fmt == "json" else report.render_text(table, fmt)
            write_atomic(stem.with_suffix("." + report.EXTENSIONS[fmt]), text.encode())
            report.save_figure(table, stem.with_suffix(".png"))
        written.append(f"{len(built.tables)} tables (.{report.EXTENSIONS[fmt]}) with a figure each (.png)")
    written.append(f"{len(drawn)} paper-style figures (.png, .svg)")
    # stderr: stdout may be carrying --format json to another program
    _console(stderr=True).print(f"[dim]wrote {', '.join(written)} to {folder}[/dim]")


if __name__ == "__main__":
    main()
