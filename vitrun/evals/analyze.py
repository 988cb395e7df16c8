"""`vitrun analyze`: run the §4.5 analyses (evals/analysis.py) on a model and write PNG + CSV.

A target is a pre-training stage key, an experiment (every pre-training stage in it),
`timm:NAME` or `npz:PATH`. Files go to `<analysis folder>/<slug>/<what>.{png,csv}`, where the
analysis folder is `results/<experiment>/analysis/` for stages (the slug is the stage key) and
`--out` (default `results/analysis/`) for timm/npz models. Each analysis folder keeps an
`index.json`: a list of `{"what", "target", "title", "png", "csv"}`, paths relative to the
folder above it (the experiment's folder), one entry per (what, target), newest kept; the
HTML report embeds the PNGs it lists.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from vitrun.evals import analysis, figures
from vitrun.store import Store, write_atomic, write_json_atomic

WHATS = ("embedding-filters", "posemb-similarity", "attention-distance", "rollout")
INDEX_FILE = "index.json"
ANALYSIS_DIR = "analysis"
ROLLOUT_IMAGES = 8  # overlays drawn (Figure 6 shows a handful)
CHUNK = 8  # images per forward pass: bounds the (L, B, h, N, N) attention tensor


class AnalysisError(ValueError):
    """A target or option that cannot be analysed, phrased as the one line the user sees."""


@dataclass(frozen=True)
class Target:
    """One model to analyse and where its files go."""

    label: str  # what the user named: a stage key, "timm:NAME", "npz:PATH"
    folder: Path  # the analysis folder holding index.json
    slug: str  # subfolder of `folder` for this model
    load: Callable[[], nn.Module]
    data: str  # default images: the stage's pre-training source, else digits
    data_section: dict[str, Any]  # that source's options and classes (a stage config section)


@dataclass(frozen=True)
class Written:
    what: str
    target: str
    title: str
    png: Path
    csv: Path | None

    def entry(self, root: Path) -> dict[str, Any]:
        return {"what": self.what, "target": self.target, "title": self.title, "png": str(self.png.relative_to(root)),
                "csv": None if self.csv is None else str(self.csv.relative_to(root))}


# -- targets ------------------------------------------------------------------------------------

def resolve(target: str, store: Store, out: str | Path | None = None) -> list[Target]:
    """The models `target` names (see the module docstring); AnalysisError when none."""
    if target.startswith(("timm:", "npz:")):
        folder = Path(out) if out else store.root / ANALYSIS_DIR
        return [Target(target, folder, _slug(target), lambda: _load_pretrained(target, store), "digits", {})]
    experiments = store.experiments()
    if target in experiments:
        records = [r for r in store.records(target) if r.get("kind") == "pretrain"]
        if not records:
            raise AnalysisError(f"experiment {target!r} has no finished pre-training stage to analyse")
        return [_stage_target(store, target, r, out) for r in records]
    for experiment in experiments:
        sd = store.stage(experiment, target)
        if sd.status() == "done":
            record = sd.read()
            if record.get("kind") != "pretrain":
                parent = (record.get("parents") or ["?"])[0]
                raise AnalysisError(f"{target} is a {record.get('kind')} stage; only pre-training stages keep weights: analyse its pre-training {parent}")
            return [_stage_target(store, experiment, record, out)]
    hint = ", ".join(experiments) or "none yet: run `vitrun recipe quickstart`"
    raise AnalysisError(f"{target}: not a finished stage key nor an experiment under {store.root} (experiments: {hint}), nor timm:NAME or npz:PATH")


def _stage_target(store: Store, experiment: str, record: dict[str, Any], out: str | Path | None) -> Target:
    key, config = record["key"], record["config"]
    folder = Path(out) if out else store.root / experiment / ANALYSIS_DIR
    section = config.get("pretrain", {})
    data = section.get("data") or "digits"  # "scratch" stages have no data
    return Target(key, folder, key, lambda: _load_stage(store, experiment, key), data, section if section.get("data") else {})


def _load_stage(store: Store, experiment: str, key: str) -> nn.Module:
    from vitrun import trained

    try:
        return trained.from_stage(store.stage(experiment, key)).model
    except trained.TargetError as err:
        raise AnalysisError(str(err)) from None


def _load_pretrained(target: str, store: Store) -> nn.Module:
    from vitrun import trained

    try:
        return trained.load(target, store).model
    except trained.TargetError as err:
        raise AnalysisError(str(err) if str(err).startswith(target) else f"{target}: {err}") from None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")


# -- what applies --------------------------------------------------------------------------------

def not_applicable(model: nn.Module, what: str) -> str | None:
    """Why `what` cannot be drawn for `model`, or None."""
    spec = model.spec
    if spec.family == "resnet":
        return f"{spec.name} is a ResNet: no patch embedding, position embeddings or attention"
    if what == "embedding-filters" and spec.family == "hybrid":
        return f"{spec.name}'s patch embedding reads ResNet features, not RGB pixels"
    if what == "posemb-similarity" and spec.pos_embed not in ("1d", "2d"):
        return f"{spec.name} has pos_embed={spec.pos_embed!r}: no absolute position table"
    return None


# -- running -------------------------------------------------------------------------------------

def run(target: Target, whats: tuple[str, ...], data: str | None = None, images: int = 64, cache_dir: str | None = None,
        device: torch.device = torch.device("cpu"), strict: bool = True, keep_done: bool = False) -> tuple[list[Written], list[str]]:
    """Run `whats` on `target`: (files written, reasons for skipped analyses).

    strict: an analysis that does not apply raises AnalysisError (one named model) instead of
    being skipped (every pre-training stage of an experiment).
    keep_done: leave an analysis whose files exist with the same settings (data, images) as it
    is (a recipe's [[analysis]] on a re-run); `vitrun analyze` always redraws.
    """
    settings = {"data": data or target.data, "images": images}
    if keep_done:
        whats = tuple(w for w in whats if not _done(target, w, settings))
        if not whats:
            return [], []
    model = target.load().to(device).eval()
    title = f"{model.spec.name} ({target.label})"
    written, skipped = [], {}
    batch = None
    for what in whats:
        reason = not_applicable(model, what)
        if reason:
            if strict:
                raise AnalysisError(f"{target.label}: cannot draw {what}: {reason}")
            skipped.setdefault(reason, []).append(what)
            continue
        if what in ("attention-distance", "rollout") and batch is None:
            batch = _images(target, data, images, model.image_size, cache_dir)
        base = target.folder / target.slug / what
        rows, header = DRAW[what](model, batch, title, base.with_suffix(".png"), device)
        csv_path = base.with_suffix(".csv")
        write_atomic(csv_path, _csv(header, rows))
        write_json_atomic(base.with_suffix(".json"), settings)
        written.append(Written(what, target.label, f"{TITLES[what]}: {title}", base.with_suffix(".png"), csv_path))
    if written:
        update_index(target.folder, written)
    return written, [f"{target.label} {', '.join(names)}: {reason}" for reason, names in skipped.items()]


def _done(target: Target, what: str, settings: dict[str, Any]) -> bool:
    base = target.folder / target.slug / what
    try:
        return base.with_suffix(".png").is_file() and json.loads(base.with_suffix(".json").read_text()) == settings
    except (OSError, json.JSONDecodeError):
        return False


def run_recipe(experiment: str, analyses: list, stage_keys: list[str], store: Store, cache_dir: str | None = None,
               device: torch.device = torch.device("cpu")) -> tuple[list[Written], list[str]]:
    """A recipe's `[[analysis]]` tables for each finished pre-training stage in `stage_keys`.

    Analyses that do not apply to a model (a ResNet's attention) are skipped with a reason;
    ones already drawn with the same settings are kept.
    """
    written, skipped = [], []
    for key in stage_keys:
        sd = store.stage(experiment, key)
        if sd.status() != "done" or sd.read().get("kind") != "pretrain":
            continue
        target = _stage_target(store, experiment, sd.read(), None)
        groups: dict[tuple, list[str]] = {}
        for a in analyses:  # one model load per (data, images)
            groups.setdefault((a.data, a.images), []).append(a.what)
        for (data, images), whats in groups.items():
            w, s = run(target, tuple(whats), data, images, cache_dir, device, strict=False, keep_done=True)
            written += w
            skipped += s
    return written, skipped


def _images(target: Target, source: str | None, count: int, image_size: int, cache_dir: str | None) -> torch.Tensor:
    """`count` test images of the source, a seeded sample across classes: (B, 3, S, S) in [-1, 1]."""
    from vitrun import data
    from vitrun.data import loader
    from vitrun.data.options import SourceOptions

    section = target.data_section if source is None else {}
    source = source or target.data
    try:
        data.check(source, SourceOptions.of(section), cache_dir)
        ds = data.load(source, image_size=image_size, classes=section.get("classes"), per_class=1, cache_dir=cache_dir, options=SourceOptions.of(section))
    except ValueError as err:  # SourceError is one
        raise AnalysisError(f"--data {source}: {err}") from err
    test = ds.test
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[: min(count, len(test))]
    chunks = [x for x, _ in loader.eval_batches(test.subset(pick.sort().values), image_size, 64)]
    return torch.cat(chunks)


def _embedding_filters(model, batch, title, png, device):
    components, ratios = analysis.filter_components(model.patch_embed.proj.weight.cpu())
    figures.embedding_filters(components.numpy(), ratios.numpy(), f"{TITLES['embedding-filters']}\n{title}", png)
    return [(i + 1, f"{r:.6g}") for i, r in enumerate(ratios.tolist())], ("component", "explained_variance_ratio")


def _posemb_similarity(model, batch, title, png, device):
    tables = model.position_embeddings().detach().cpu()[:, model.num_prefix_tokens :]  # (L, gh·gw, D): patches only
    similarity = torch.stack([analysis.cosine_similarity(t) for t in tables]).numpy()  # (L, n, n)
    gh, gw = model.grid
    every = model.spec.pos_embed_at == "every-layer"
    names = [f"layer {i + 1}" for i in range(len(tables))] if every else [f"{model.spec.pos_embed} table" + (" (every layer)" if model.spec.pos_embed_at != "stem" else "")]
    figures.position_similarity(similarity, model.grid, names, f"{TITLES['posemb-similarity']}\n{title}", png)
    rows = [(layer + 1, q // gw, q % gw, k // gw, k % gw, f"{similarity[layer, q, k]:.6g}")
            for layer in range(len(similarity)) for q in range(gh * gw) for k in range(gh * gw)]
    return rows, ("table", "query_row", "query_col", "key_row", "key_col", "cosine")


def _attention_distance(model, batch, title, png, device):
    cell = model.image_size / model.grid[0]  # pixels per grid cell (a hybrid's: its stride)
    total = None
    for start in range(0, len(batch), CHUNK):
        x = batch[start : start + CHUNK].to(device)
        maps = analysis.attention_maps(model, x)  # (L, B, h, N, N)
        per_layer = torch.stack([analysis.mean_attention_distance(a, model.grid, cell, model.num_prefix_tokens) for a in maps])
        total = per_layer * len(x) if total is None else total + per_layer * len(x)  # (L, h), weighted by images
    distance = (total / len(batch)).cpu().numpy()
    figures.attention_distance(distance, model.image_size, f"{TITLES['attention-distance']} ({len(batch)} images)\n{title}", png)
    rows = [(layer + 1, head + 1, f"{distance[layer, head]:.6g}", len(batch)) for layer in range(distance.shape[0]) for head in range(distance.shape[1])]
    return rows, ("layer", "head", "mean_distance_px", "images")


def _rollout(model, batch, title, png, device):
    x = batch[:ROLLOUT_IMAGES].to(device)
    rollout = analysis.attention_rollout(analysis.attention_maps(model, x))  # (B, N, N)
    maps = analysis.rollout_map(rollout, model.grid, model.num_prefix_tokens, model.spec.classifier)  # (B, gh, gw)
    S = model.image_size
    upsampled = torch.nn.functional.interpolate(maps[:, None], size=(S, S), mode="bilinear", align_corners=False)[:, 0]
    pictures = ((x.cpu() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    figures.rollout_overlays(pictures, upsampled.cpu().numpy(), f"{TITLES['rollout']}\n{title}", png)
    gh, gw = model.grid
    rows = [(b, r, c, f"{maps[b, r, c].item():.6g}") for b in range(len(maps)) for r in range(gh) for c in range(gw)]
    return rows, ("image", "row", "col", "rollout")


DRAW = {"embedding-filters": _embedding_filters, "posemb-similarity": _posemb_similarity,
        "attention-distance": _attention_distance, "rollout": _rollout}
TITLES = {
    "embedding-filters": "Principal components of the patch-embedding filters (Fig. 7 left)",
    "posemb-similarity": "Position-embedding cosine similarity (Fig. 7 centre)",
    "attention-distance": "Mean attention distance per head (Fig. 7 right)",
    "rollout": "Attention rollout, identity added (Fig. 6)",
}


def _csv(header: tuple[str, ...], rows: list[tuple]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode()


# -- the index -----------------------------------------------------------------------------------

def update_index(folder: Path, written: list[Written]) -> Path:
    """Add `written` to `folder/index.json` (one entry per (what, target), the new one kept)."""
    path = folder / INDEX_FILE
    try:
        entries = json.loads(path.read_text()) if path.is_file() else []
    except json.JSONDecodeError:
        entries = []  # a damaged index is rebuilt from what is written next
    fresh = [w.entry(folder.parent) for w in written]
    done = {(e["what"], e["target"]) for e in fresh}
    kept = [e for e in entries if isinstance(e, dict) and (e.get("what"), e.get("target")) not in done]
    write_json_atomic(path, kept + fresh)
    return path
