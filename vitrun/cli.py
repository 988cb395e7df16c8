"""The `vitrun` command: parse, call the library, render with rich.

Heavy imports (torch, pandas) happen inside commands, so `vitrun --help` answers at once.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from vitrun.cli_bench import bench_group
from vitrun.cli_common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, fail, has_cuda, make_console, source_options


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


main.add_command(bench_group)


@main.command("recipe")
@click.argument("recipe")
@results_option
@set_option
@click.option("--dry-run", is_flag=True, help="Print the plan (kind, model, data, size, status, FLOPs) and run nothing.")
@click.option("--shard", callback=_parse_shard, metavar="I/N", help="Run only shard I of N (1-based); independent jobs sharing --results merge with no extra step.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), envvar="VITRUN_CACHE", help="Where generated datasets are cached [env VITRUN_CACHE; default ~/.cache/vitrun].")
@click.option("--fail-fast", is_flag=True, help="Stop at the first stage that fails or diverges (default: go on with every stage whose parents are done, then exit 1).")
@click.option("--nproc-per-node", "nproc", type=click.IntRange(1, 1024), help="Train data-parallel on N processes on this machine (one per GPU; gloo on CPU): re-runs this command under torchrun. Several nodes: start `torchrun … -m vitrun recipe` yourself (README).")
@click.option("--smoke", is_flag=True, help="Check the recipe end to end in minutes: every dataset replaced by embedded fractals with as many classes (at most 10), tiny images, 3 steps per stage, models shrunk within their family; results under <name>-smoke.")
@click.option("--gpu", type=click.Choice(["h100", "a100", "v100"]), default="a100", show_default=True, help="With --dry-run: also estimate each stage's time on this GPU (peak bf16 FLOP/s × 40% utilisation).")
@click.option("--jobs", type=click.IntRange(1, 64), help="Run N stage runners side by side on this CPU, each with cores/N threads, sharing the plan through stage locks (default: [run] jobs, else 1). Small models train faster this way than with every thread on one stage; the extra runners' output goes to a log named only if one fails.")
def recipe_cmd(recipe, results, overrides, dry_run, shard, cache_dir, fail_fast, nproc, smoke, gpu, jobs):
    """Run RECIPE (a path, or a built-in name such as `quickstart`) and print its report.

    The recipe's [sweep] expands into stages (pre-train → fine-tune / few-shot). Finished
    stages are skipped, a killed run resumes from its checkpoint, and adding a dataset or
    sweep value runs only the new stages.

    \b
    RECIPE may also be a folder (a path, or a built-in one: `mini`, `paper`): every recipe in
    it runs, in name order, each as its own experiment with its own report; all are validated
    before the first starts, and the options apply to each. The CPU miniatures of the paper:
      vitrun recipe mini              (51 minutes on an idle 2-core CPU, measured)
      vitrun recipe mini --dry-run    (every plan and its estimate)
    """
    from vitrun import suite
    from vitrun.recipe import RecipeError

    try:
        members = suite.members(recipe)
        if members is None:
            complete = _run_recipe(recipe, results, overrides, dry_run, shard, cache_dir, fail_fast, nproc, smoke, gpu, jobs)
        else:
            suite.validate(members, overrides, smoke=smoke, offline=dry_run)
            complete = True
            from vitrun.engine import distributed

            for i, path in enumerate(members, 1):
                if distributed.env_rank() == 0:  # under torchrun only rank 0 prints
                    make_console().rule(f"{recipe}: {path.stem} ({i}/{len(members)})")
                complete = _run_recipe(str(path), results, overrides, dry_run, shard, cache_dir, fail_fast, nproc, smoke, gpu, jobs) and complete
    except RecipeError as err:
        fail(str(err))
    if not complete:
        sys.exit(EXIT_FAILED)


def _run_recipe(recipe, results, overrides, dry_run, shard, cache_dir, fail_fast, nproc, smoke, gpu, jobs=None) -> bool:
    """Plan (and unless dry_run, run and report) one recipe; False when a stage failed."""
    from vitrun import plan as planning
    from vitrun.engine import distributed
    from vitrun.recipe import RecipeError, load
    from vitrun.store import Store

    main_rank = distributed.env_rank() == 0  # under torchrun only rank 0 prints
    try:
        loaded = load(recipe, overrides, smoke=smoke, offline=dry_run)
    except RecipeError as err:
        fail(str(err))
    for warning in loaded.warnings if main_rank else ():  # once, not once per rank
        click.echo(f"warning: {warning}", err=True)
    stages = planning.plan(loaded.variants)
    store = Store(results)
    if shard:
        done = {stage.key for stage in stages if store.stage(loaded.name, stage.key).status() == "done"}
        stages = planning.shard(stages, *shard, done=done)
    console = make_console()
    world_size = nproc or distributed.env_world_size()
    splits = _batch_splits(stages, world_size, loaded.variants[0].run)
    if dry_run:
        for note in loaded.notes:
            console.print(note, soft_wrap=True)
        console.print(_plan_table(loaded.name, stages, store, loaded.swept_keys(), gpu=gpu))
        for line in splits:
            console.print(line, soft_wrap=True)
        return True
    if nproc and nproc > 1 and not distributed.launched():
        sys.exit(distributed.relaunch(nproc, distributed.strip_option(sys.argv[1:], "--nproc-per-node")))
    from vitrun.engine import Interrupted
    from vitrun.runner import CannotStart, ResultsUnwritable, print_summary, run_plan

    if not stages:
        console.print("Nothing to run (no stages in this shard or plan); nothing written")
        return True
    helpers = _start_runners(loaded, recipe, results, overrides, shard, cache_dir, fail_fast, smoke, jobs, console, stages, store)
    try:
        try:
            summary = run_plan(loaded, stages, store, console, cache_dir, fail_fast)
        finally:  # the extra runners end with this one: waited for, or stopped when it stops
            _end_runners(helpers, stopping=sys.exc_info()[0] is not None, console=console)
    except ResultsUnwritable as err:
        fail(str(err), EXIT_FAILED)
    except CannotStart as err:  # the recipe asks for what this machine lacks: usage, exit 2
        fail(f"{loaded.path}: {err}")
    except Interrupted as err:  # training checkpointed before stopping
        fail(f"interrupted: {err}", EXIT_INTERRUPTED)
    except KeyboardInterrupt:  # Ctrl-C between stages: finished stages are already saved
        fail("interrupted; run the same command again to resume", EXIT_INTERRUPTED)
    if not main_rank:  # rank 0 reports; the others only share its exit status
        return summary.complete
    if summary.ran:
        console.print(f"Ran {len(summary.ran)} stages; results in {store.root / loaded.name}")
    if loaded.variants[0].analysis:
        _run_recipe_analyses(loaded, stages, store, console, cache_dir)
    if store.experiments() and loaded.name in store.experiments():
        _print_report(store, [loaded.name], "table", None, console, allow_missing=True, run=loaded.run_label)
    print_summary(summary, console)
    return summary.complete


def _start_runners(loaded, recipe, results, overrides, shard, cache_dir, fail_fast, smoke, jobs, console, stages, store) -> list:
    """With `--jobs N` / `[run] jobs` > 1 on a CPU: N - 1 more runners of this recipe (no more
    than there are stages left to run), and this process's own threads cut to its share
    (vitrun/jobs.py)."""
    from vitrun import jobs as runners
    from vitrun.engine import distributed
    from vitrun.store import FINISHED

    run = loaded.variants[0].run
    left = sum(store.stage(loaded.name, stage.key).status() not in FINISHED for stage in stages)
    count = min(jobs or run.jobs or 1, left)
    if count < 2 or runners.is_child() or distributed.launched():
        return []
    if distributed.device_type(run.device) == "cuda":
        console.print("[yellow]note:[/yellow] jobs > 1 shares a CPU; on GPUs run one `--shard I/N` per device: running one runner", soft_wrap=True)
        return []
    import torch

    threads = run.threads or runners.threads_per_job(count)
    torch.set_num_threads(threads)
    argv = ["recipe", recipe, "--results", str(results)]
    for override in overrides:
        argv += ["--set", override]
    if shard:
        argv += ["--shard", f"{shard[0]}/{shard[1]}"]
    if cache_dir:
        argv += ["--cache", str(cache_dir)]
    argv += ["--fail-fast"] * bool(fail_fast) + ["--smoke"] * bool(smoke)
    console.print(f"{count} runners side by side, {threads} thread{'s' * (threads > 1)} each (jobs = {count})", soft_wrap=True)
    return runners.start(argv, count, threads)


def _end_runners(helpers, stopping: bool, console) -> None:
    from rich.markup import escape

    from vitrun import jobs as runners

    if stopping:
        runners.stop(helpers)
    for line in runners.finish(helpers):
        console.print(f"[yellow]note:[/yellow] {escape(line)}", soft_wrap=True)


@main.command("report")
@results_option
@click.option("--experiment", help="Only this experiment (a folder under --results). Default: every experiment.")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "latex", "json", "html"]), default="table", show_default=True, help="table: rich tables in the terminal; markdown, latex: one section per experiment; csv: one long table (experiment, table, row labels, column, value, std, n, status); json: a list with one {experiment, tables: [{name, index, columns, data, std, n, status, notes}], paper, expect, unfinished} per experiment; html: one self-contained page per experiment (tables, figures, recipe, versions, devices) written to --out, else results/<experiment>/report/.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Also write each table (in --format), its PNG figure and the paper-style figures (PNG and SVG) under DIR/<experiment>/.")
@click.option("--paper", is_flag=True, help="Put the paper's numbers (Tables 2, 5, 6, 8; vitrun/paper/numbers.csv) beside ours where model, pre-training set and dataset match, with the delta.")
@click.option("--check", is_flag=True, help="Exit 1 when a recipe's [[expect]] cell misses its target ± tolerance or has no result (CI for long runs).")
@click.option("--real", "real_labels", type=click.Path(dir_okay=False), help="ReaL labels (the public real.json) to score fine-tuned ImageNet stages on ImageNet-ReaL, from the test predictions each keeps; the test split must be the validation set in file-name order.")
@click.option("--figures", is_flag=True, help="Write the paper-style figures (PNG and SVG) to results/<experiment>/report/ (--out and --format html write them anyway).")
@click.option("--allow-missing", is_flag=True, help="Exit 0 even when some stage records cannot be read or verified (they are still listed under the tables).")
@click.option("--curves", is_flag=True, help="Also draw each training stage's loss, learning rate, gradient norm and (with eval_every) held-out accuracy against the step (from metrics.jsonl and stage.json) as curves-<kind>.png under --out, else results/<experiment>/report/.")
@click.option("--all", "every_run", is_flag=True, help="Every run of an experiment (the recipe as written and each --set variant), each labelled in a `run` row level; default: the recipe as written, and other runs listed under the tables.")
def report_cmd(results, experiment, fmt, out_dir, paper, check, real_labels, figures, allow_missing, curves, every_run):
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
        fail(f"{results}: no finished stages for experiment {experiment!r} (experiments: {hint})")
    if not names:
        fail(f"{results}: no results yet; run a recipe first, e.g. `vitrun recipe quickstart`")
    real = None
    if real_labels:
        from vitrun.paper.real import RealLabelsError, load_real_labels

        try:
            real = load_real_labels(real_labels)
        except RealLabelsError as err:
            fail(f"--real {err}")
    try:
        failures = _print_report(store, names, fmt, out_dir, make_console(), paper=paper, figures=figures, real=real, allow_missing=allow_missing, every_run=every_run, curves=curves)
    except OSError as err:  # --out on a read-only or full disk, or under a file
        fail(f"{err.filename or out_dir}: cannot write ({err.strerror}); choose another --out", EXIT_FAILED)
    if check and failures:
        for name, outcome in failures:
            click.echo(f"check failed: {name}: {outcome.describe()}", err=True)
        raise SystemExit(1)


@main.command("ls")
def ls_cmd():
    """List the built-in recipes, one line each: name, folder, description."""
    from rich.markup import escape

    from vitrun.catalogue import entries

    console = make_console()
    for entry in entries():
        console.print(f"[cyan]{entry.name:<22}[/cyan] [dim]{entry.group:<6}[/dim] {escape(entry.description)}", soft_wrap=True)


@main.command("cp")
@click.argument("name")
@click.argument("dest", type=click.Path(dir_okay=True))
def cp_cmd(name, dest):
    """Copy built-in recipe NAME to DEST (a file or a folder) to edit it."""
    from vitrun.recipe import builtin, builtin_recipes

    source = builtin(name)
    if source is None:
        import difflib

        close = difflib.get_close_matches(name, [p.stem for p in builtin_recipes()], n=1)
        fail(f"{name}: no built-in recipe of that name{f' (did you mean {close[0]!r}?)' if close else ''}; `vitrun ls` lists them")
    target = Path(dest)
    if target.is_dir():
        target = target / source.name
    if target.exists():
        fail(f"{target}: already exists; choose another DEST or remove it first")
    shutil.copyfile(source, target)
    make_console().print(f"Copied {source.stem} to {target}; run it with `vitrun recipe {target}`")


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
        fail(str(err))
    stages = planning.plan(loaded.variants)
    counts = {k: sum(s.kind == k for s in stages) for k in planning.KINDS}
    detail = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    make_console().print(f"[green]valid[/green]: {loaded.path} — {len(loaded.variants)} variants, {len(stages)} stages ({detail})")


@main.command("models")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True, help="json: a list of objects {name, family, layers, width, mlp, heads, patch, blocks, params, tokens, image_size, gflops, gmacs}.")
@click.option("--model", "model_names", multiple=True, metavar="NAME", help="Only this model, e.g. --model ViT-B/16 (any name the registry decodes, not only the listed ones). Repeatable.")
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(min=1), help="Resolution for the tokens and FLOPs columns.")
def models_cmd(fmt, model_names, image_size):
    """The paper's Table 1 for every registered model: layers, width, MLP, heads, parameters, tokens, FLOPs.

    Rows at 224 px are precounted and print at once; another --image-size counts each model
    on torch's meta device (a few seconds for all of them).
    """
    import json

    from vitrun.models import describe
    from vitrun.models.summary import CAPTION

    try:
        rows = describe(list(model_names) or None, image_size)
    except ValueError as err:
        fail(str(err))
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
    make_console().print(table)


@main.command("doctor")
@click.option("--results", "results", default=None, type=click.Path(file_okay=False), help="Also scan this results directory: broken records, bad weights, failed and unfinished stages, orphaned temp files, stale locks.")
@click.option("--fix", "apply_fix", is_flag=True, help="Set broken records aside (their stages re-run), remove orphaned temp files and stale locks.")
@click.option("--no-weights", is_flag=True, help="Skip checking weights against their sha256 (reads every weights file).")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), envvar="VITRUN_CACHE", help="The dataset cache to report [env VITRUN_CACHE; default ~/.cache/vitrun].")
def doctor_cmd(results, apply_fix, no_weights, cache_dir):
    """Versions, devices and caches; with --results, what in a results directory needs attention.

    Exit 0 when nothing needs fixing (failed and unfinished stages are retried or resumed by the
    next run and do not count), else 1.
    """
    from rich.markup import escape

    from vitrun import doctor

    console = make_console()
    console.print("[bold]versions[/bold]  " + ", ".join(f"{name} {version}" for name, version in doctor.versions()), soft_wrap=True)
    console.print("[bold]devices[/bold]   " + "; ".join(doctor.devices()), soft_wrap=True)
    for what, path, size in doctor.caches(cache_dir):
        console.print(f"[bold]cache[/bold]     {what}: {escape(str(path))} ({'absent' if size is None else doctor.human_bytes(size)})", soft_wrap=True)
    if results is None:
        return
    if not Path(results).is_dir():
        fail(f"{results}: no such folder (give the --results directory of a run)")
    findings = doctor.scan(Path(results), check_weights=not no_weights)
    if not findings:
        console.print(f"[green]results[/green]   {escape(str(results))}: nothing to fix", soft_wrap=True)
        return
    console.print(f"[bold]results[/bold]   {escape(str(results))}: {len(findings)} findings", soft_wrap=True)
    for finding in findings:
        action = finding.fix or "none: the next run handles it"
        if apply_fix and finding.fix:
            action = doctor.fix(finding)
        console.print(f"  {finding.kind:<11} {escape(str(finding.path))}: {escape(finding.detail)} → {'' if apply_fix else '--fix would '}{escape(action)}", soft_wrap=True)
    if any(f.fix for f in findings) and not apply_fix:
        sys.exit(EXIT_FAILED)


@main.command("analyze")
@click.argument("target")
@click.option("--what", "whats", multiple=True, type=click.Choice(["all", "embedding-filters", "posemb-similarity", "attention-distance", "rollout"]), default=("all",), show_default=True, help="Which analysis (Figures 6, 7). Repeatable.")
@click.option("--data", "source", help="Images for attention-distance and rollout (a recipe `data` value) [default: the stage's pre-training source; digits for timm:/npz:].")
@click.option("--images", default=64, show_default=True, type=click.IntRange(1), help="Test images averaged over for attention-distance (rollout draws the first 8).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Analysis folder [default: RESULTS/<experiment>/analysis for stages, RESULTS/analysis for timm:/npz:].")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 … (auto: cuda when there is one); fp32 either way.")
@results_option
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), envvar="VITRUN_CACHE", help="Where generated datasets are cached [env VITRUN_CACHE; default ~/.cache/vitrun].")
def analyze_cmd(target, whats, source, images, out_dir, device, results, cache_dir):
    """Draw the paper's look inside a model (§4.5) for TARGET, as PNG + CSV.

    TARGET: a pre-training stage key, an experiment (each of its pre-training stages),
    timm:NAME (timm's weights, hub or cache) or npz:PATH (an official checkpoint).
    Each analysis folder keeps an index.json the HTML report reads.
    """
    from vitrun.engine.device import FLAG_SETTING, place
    from vitrun.evals import analyze
    from vitrun.store import Store

    chosen = analyze.WHATS if "all" in whats else tuple(dict.fromkeys(whats))
    try:
        placement = place(device, "fp32", setting=FLAG_SETTING)
        targets = analyze.resolve(target, Store(results), out_dir)
        console = make_console()
        for one in targets:
            written, skipped = analyze.run(one, chosen, source, images, cache_dir, placement.device, strict=len(targets) == 1)
            for w in written:
                console.print(f"[green]✓[/green] {w.what:<19} {w.png} [dim](+ .csv)[/dim]", soft_wrap=True)
            for reason in skipped:
                console.print(f"[yellow]skipped[/yellow] {reason}", soft_wrap=True)
    except (ValueError, RuntimeError) as err:
        fail(str(err))


def _run_recipe_analyses(loaded, stages, store, console, cache_dir) -> None:
    """The recipe's [[analysis]] tables, for every pre-training stage of this run (vitrun/evals/analyze.py)."""
    from vitrun.engine.device import place
    from vitrun.evals import analyze

    keys = [s.key for s in stages if s.kind == "pretrain"]
    try:
        written, skipped = analyze.run_recipe(loaded.name, loaded.variants[0].analysis, keys, store, cache_dir, place(loaded.variants[0].run.device, "fp32").device)
    except ValueError as err:
        fail(f"{loaded.path}: analysis: {err}")
    for reason in skipped:
        console.print(f"[dim]analysis skipped: {reason}[/dim]", soft_wrap=True)
    if written:
        console.print(f"Drew {len(written)} analyses (Figures 6, 7) in {store.root / loaded.name / analyze.ANALYSIS_DIR}")


@main.command("evaluate")
@click.argument("target")
@click.option("--data", "source", required=True, help="The dataset, as a recipe's `data`: digits, folder:PATH, parquet:GLOB, hf:ID … (its classes must be the model's).")
@click.option("--split", type=click.Choice(["test", "train", "validation"]), default="test", show_default=True, help="Which split to score.")
@click.option("--image-size", type=click.IntRange(4), default=None, help="Evaluation resolution [default: the model's].")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1), help="Images per forward pass.")
@click.option("--view", type=click.Choice(["full", "center"]), default="full", show_default=True, help="full: the whole image resized, as fine-tuning tests (vit_jax); center: shorter side resized and centre-cropped, as pre-training tests and few-shot.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="A source option as in a recipe, e.g. --option label_column=fine_label. Repeatable.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True, help="json: {target, data, split, view, images, top1, top5, per_class, confusion}.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Where the confusion matrix PNG and JSON go [default: the stage's folder, evaluation/<data>/; else ./evaluation/].")
@click.option("--experiment", help="The experiment holding a stage key, when several do.")
@results_option
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 … (auto: cuda when there is one).")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), envvar="VITRUN_CACHE", help="Where generated datasets are cached [env VITRUN_CACHE; default ~/.cache/vitrun].")
def evaluate_cmd(target, source, split, image_size, batch_size, view, options, fmt, out_dir, experiment, results, device, cache_dir):
    """Score TARGET on a dataset: top-1, top-5, per-class accuracy and a confusion matrix.

    \b
    TARGET is a stage key under --results (a pre-training, or a fine-tuning run with
    [finetune] save_weights = true), timm:NAME (timm's weights) or npz:PATH (an official
    checkpoint). Examples:
      vitrun evaluate finetune-1a2b3c4d5e6f --data digits
      vitrun evaluate npz:ViT-B_16.npz --data folder:/data/imagenet --option test_split=val
    """
    import json

    from vitrun import data, trained
    from vitrun.engine.device import FLAG_SETTING, place
    from vitrun.evals.evaluate import evaluate, save_confusion_png
    from vitrun.report import slug
    from vitrun.store import Store

    opts = source_options(options)
    try:
        data.check(source, opts, cache_dir)
        model = trained.load(target, Store(results), experiment)
        size = image_size or model.model.image_size
        ds = data.load(source, image_size=size, cache_dir=cache_dir, options=opts)
        images = {"test": ds.test, "train": ds.train, "validation": ds.validation}[split]
        if images is None:
            raise ValueError(f"{source} has no validation split; use --split test or train")
        result = evaluate(model.model, images, size, place(device, setting=FLAG_SETTING), batch_size, view=view)
    except (trained.TargetError, data.SourceError, ValueError, RuntimeError) as err:
        fail(str(err))
    folder = f"{source}-{split}" if view == "full" else f"{source}-{split}-{view}"  # one view does not overwrite the other
    out = Path(out_dir) if out_dir else trained.default_out(model, f"evaluation/{slug(folder)}", Path("evaluation") / slug(f"{target}-{folder}"))
    document = {"target": target, "data": source, "split": split, "image_size": size, "view": view, **result.to_json()}
    _write_text(out / "evaluation.json", json.dumps(document, indent=2))
    save_confusion_png(result, out / "confusion.png", f"{model.label} on {source} ({split})")
    if fmt == "json":
        click.echo(json.dumps(document, indent=2))
        return
    from rich.table import Table

    console = make_console()
    console.print(f"[bold]{model.label}[/bold] on {source} ({split}, {result.images:,} images at {size} px, {view} view): "
                  f"top-1 [bold]{result.top1:.1%}[/bold], top-5 {result.top5:.1%}")
    table = Table(title="Per-class accuracy", title_justify="left", header_style="bold")
    for column in ("class", "images", "accuracy (%)"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in document["per_class"]:
        table.add_row(row["class"], f"{row['images']:,}", "–" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}")
    console.print(table)
    console.print(f"confusion matrix: {out / 'confusion.png'}; numbers: {out / 'evaluation.json'}")


@main.command("export")
@click.argument("target")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--to", "fmt", type=click.Choice(["timm", "npz", "safetensors"]), required=True, help="timm: timm's state dict (safetensors; .pth by suffix); npz: the official vit_jax/BiT layout; safetensors: vitrun's own, spec in the metadata.")
@click.option("--experiment", help="The experiment holding a stage key, when several do.")
@results_option
def export_cmd(target, path, fmt, experiment, results):
    """Write TARGET's weights to PATH for another tool.

    \b
    TARGET is a stage key under --results (a fine-tuned model needs [finetune]
    save_weights = true), timm:NAME or npz:PATH. Examples:
      vitrun export finetune-1a2b3c4d5e6f digits_vit.safetensors --to timm
      vitrun export pretrain-1a2b3c4d5e6f vit.npz --to npz
    """
    from vitrun import trained
    from vitrun.interop.export import export
    from vitrun.store import Store

    try:
        model = trained.load(target, Store(results), experiment)
        info = export(model.model, path, fmt)
    except (trained.TargetError, ValueError) as err:
        fail(str(err))
    make_console().print(f"Wrote {model.label} to {path} ({fmt})")
    make_console().print(f"load it with: {info['load']}", soft_wrap=True)


def _write_text(path: Path, text: str) -> None:
    from vitrun.store import write_atomic

    write_atomic(path, (text.rstrip("\n") + "\n").encode())


# -- helpers ---------------------------------------------------------------------------

def _batch_splits(stages, world_size: int, run) -> list[str]:
    """`per-device × devices × accumulation = global` per training batch (micro_batch "auto",
    the default on CUDA, shows as auto); a batch that does not split is a usage error (exit 2)
    before anything runs."""
    from vitrun.engine.distributed import BatchSplitError, device_type, micro_batch_setting
    from vitrun.runner import check_splits

    micro_batch = run.micro_batch if run.micro_batch is not None else micro_batch_setting(None, device_type(run.device))
    try:
        return check_splits(stages, world_size, micro_batch)
    except BatchSplitError as err:
        fail(str(err))


def _plan_table(experiment: str, stages, store, swept=(), gpu: str = "a100"):
    from rich.table import Table

    from vitrun import estimate
    from vitrun.stages import training_flops

    device = "cuda" if has_cuda() else "cpu"
    rates = estimate.measured_flops_per_second(stages, device)
    table = Table(title=f"Plan for {experiment}: {len(stages)} stages", title_justify="left", header_style="bold")
    columns = [("kind", "left"), ("model", "left"), ("data", "left"), ("size", "right"), ("steps×batch@px", "right"), ("status", "left"), ("est. FLOPs", "right"),
               (f"time ({device})", "right"), (f"time ({gpu})", "right"), ("key", "left")]
    if swept:
        columns.insert(2, ("variant", "left"))
    for name, justify in columns:
        table.add_column(name, justify=justify, style="dim" if name == "key" else None)
    colours = {"done": "green", "diverged": "red", "failed": "red", "broken": "red", "partial": "yellow", "todo": "white"}
    total, here, by_kind = 0.0, 0.0, {}
    for stage in stages:
        status = store.stage(experiment, stage.key).status()
        flops = training_flops(stage)
        seconds = estimate.stage_seconds_here(stage, flops, rates)
        if status not in ("done", "diverged"):
            total += flops
            here += seconds or 0.0
            by_kind[stage.kind] = by_kind.get(stage.kind, 0.0) + flops
        section = stage.training  # the effective values: a [[transfer]] finetune override merged
        shape = f"{section['steps']}×{section['batch_size']}@{section['image_size']}" if section and section.get("steps") else "–"  # scratch: no steps
        cells = [stage.kind, stage.model, stage.detail, stage.size_label, shape, f"[{colours[status]}]{status}[/]", estimate.flops_text(flops),
                 estimate.duration(seconds), estimate.duration(estimate.gpu_seconds(flops, gpu)) if flops else "–", stage.key]
        if swept:
            cells.insert(2, stage.variant(swept))
        table.add_row(*cells)
    kinds = ", ".join(f"{kind} {estimate.flops_text(f)}" for kind, f in by_kind.items() if f)
    gpu_hours = estimate.gpu_seconds(total, gpu) / 3600
    table.caption = (f"to run: {estimate.flops_text(total)}{f' ({total:.2e} FLOPs)' if total >= 1e15 else ' FLOPs'} of training (evaluation not counted){f'; {kinds}' if kinds else ''}\n"
                     f"here ({device}): {estimate.duration(here)}, from one timed training step of each model (at most {estimate.MEASURE_MAX_IMAGE} px), scaled by FLOPs; "
                     f"one {estimate.GPUS[gpu].name}: {estimate.duration(estimate.gpu_seconds(total, gpu))} = {gpu_hours:.3g} GPU-hours "
                     f"(peak {estimate.GPUS[gpu].peak_flops / 1e12:.0f} TFLOP/s × {estimate.ASSUMED_MFU:.0%} assumed utilisation)")
    return table


def _print_report(store, experiments, fmt, out_dir, console, paper=False, figures=False, real=None, allow_missing=False, run=None, every_run=False, curves=False) -> list:
    """Print (and with out_dir write) each experiment's report; returns the [[expect]] cells
    that miss, as (experiment, outcome)."""
    from vitrun.rows import read_ahead

    read = read_ahead(store, experiments)  # first: records are read while pandas loads
    import json

    from pydantic import ValidationError

    from rich.markup import escape

    from vitrun import report, reporting

    documents, failures, broken, tidy = [], [], [], []
    problems = []
    for name in experiments:
        source = (store.recipe(name) or {}).get("path", name)
        rows, unverified = read(name)  # read and verified once: rows for the tables, problems listed under them
        problems += unverified
        try:
            built = reporting.build(store, name, paper=paper, real=real, run=run, every_run=every_run, rows=rows)
        except report.ReportError as err:  # one experiment's bad table: said in one line, the others still print
            broken.append(f"{source}: {err}")
            continue
        except ValidationError as err:
            first = err.errors()[0]
            broken.append(f"{source}: expect.{'.'.join(map(str, first['loc']))}: {first['msg']}")
            continue
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
                console.print(f"[yellow]{escape(note)}[/yellow]", soft_wrap=True)
        elif fmt == "csv":  # one long CSV over every experiment, printed at the end
            tidy.extend([report.tidy(t, name) for t in built.tables] + [reporting.tidy_listing(title, frame, name) for title, frame, _ in listings])
            for note in built.notes():
                make_console(stderr=True).print(f"{name}: {escape(note)}", soft_wrap=True)
        elif fmt in ("markdown", "latex"):
            heading = f"## {name}\n" if fmt == "markdown" else f"% experiment: {name}\n"
            texts = [report.render_text(t, fmt) for t in built.tables] + [reporting.render_listing(*item, fmt) for item in listings]
            notes = built.notes() if fmt == "markdown" else [f"% {note}" for note in built.notes()]
            click.echo(heading + "\n".join(texts + notes))
        folder = Path(out_dir) / name if out_dir else None
        if fmt == "html" or figures or folder:
            _write_outputs(folder or store.root / name / "report", built, fmt, tables=folder is not None, experiment_dir=store.root / name)
        if curves:
            from vitrun.curves import curves_frame, save_curves

            drawn = save_curves(curves_frame(store, name), folder or store.root / name / "report")
            make_console(stderr=True).print(f"[dim]{name}: " + (", ".join(str(p) for p in drawn) or "no training curves (no metrics.jsonl)") + "[/dim]", soft_wrap=True)
    if fmt == "json":
        click.echo(json.dumps(documents, indent=2))  # always a list: one entry per experiment
    if fmt == "csv" and tidy:
        import pandas as pd

        click.echo(pd.concat(tidy, ignore_index=True).to_csv(index=False), nl=False)
    for line in broken:
        make_console(stderr=True).print(f"[bold red]error:[/bold red] {escape(line)}", soft_wrap=True)
    _report_problems(problems, allow_missing)
    if broken:
        sys.exit(EXIT_USAGE)
    return failures


def _report_problems(problems, allow_missing: bool) -> None:
    """Stages whose record cannot be trusted are left out of the tables: say which, one line
    each (stderr: stdout may carry --format json), and exit 1 unless --allow-missing."""
    if not problems:
        return
    err = make_console(stderr=True)
    err.print(f"[bold yellow]{len(problems)} stage records missing from the tables[/bold yellow] (a run of the recipe re-runs these stages):", soft_wrap=True)
    from rich.markup import escape

    for problem in problems:
        err.print(f"  {escape(str(problem))}", soft_wrap=True)
    if not allow_missing:
        fail("the tables above lack these stages; re-run the recipe, or pass --allow-missing to accept them as they are", EXIT_FAILED)


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
        written.append(f"page {page}")
    elif tables:
        for table in built.tables:
            stem = folder / report.slug(table.name)
            text = json.dumps(report.to_json(built.name, [table]), indent=2) if fmt == "json" else report.render_text(table, fmt)
            write_atomic(stem.with_suffix("." + report.EXTENSIONS[fmt]), (text.rstrip("\n") + "\n").encode())
            report.save_figure(table, stem.with_suffix(".png"))
        written.append(f"{len(built.tables)} tables (.{report.EXTENSIONS[fmt]}) with a figure each (.png)")
    written.append(f"{len(drawn)} paper-style figures (.png, .svg)")
    # stderr: stdout may be carrying --format json to another program
    make_console(stderr=True).print(f"[dim]wrote {', '.join(written)} to {folder}[/dim]")


if __name__ == "__main__":
    main()
