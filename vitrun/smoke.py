"""`vitrun recipe FILE --smoke`: any recipe, shrunk to run end to end on a laptop in minutes.

A full-scale recipe (ImageNet-21k, ViT-B/16, 90 epochs) is checked before GPU-days are spent
on it: the same plan (every variant, stage kind, report table) on stand-ins. Applied to the
recipe as read (after --set, before validation), so what is validated and run is an ordinary
recipe:

* every real dataset becomes the embedded fractal generator with the same number of classes,
  capped at SMOKE_CLASSES; its name stays as the label tables show (embedded sets are kept);
  a few images per class (a random `train_size` subset and its `dev_size` shrink to fit them);
* images are SMOKE_IMAGE px for pre-training and SMOKE_FINETUNE_IMAGE px for fine-tuning (a
  different size, so position embeddings are still resampled);
* a few steps per stage, small batches, warm-up 1; `epochs` become steps;
* models shrink within their family, keeping every option but the size ones: ViT-Ti/S/B →
  ViT-Mu, ViT-L/H → ViT-Mi (ViT-Mu/Mi stay as they are), patches /14 /16 → /4 and /32 → /8; BiT R<depth>x<k> → R14x(k/4,
  at least 0.25: GroupNorm's 32 groups need 16+ channels);
  hybrids → R14x0.25+ViT-Mu/8 (or Mi); `model.init` (downloaded weights) is dropped; each
  keeps its full-scale name as `model.label`, so tables (and the paper's numbers beside them,
  `vitrun report --paper`) are the ones the real run will show;
* swept values that differ (sizes, steps) stay distinct, in the same order, so no variant
  merges into another; [[expect]] cells (full-scale targets) are dropped;
* the experiment is `<name>-smoke`, so smoke results never mix with real ones.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Callable

SMOKE_CLASSES = 10
SMOKE_PER_CLASS = 12  # transfer images per class (raised to fit the largest shot count)
SMOKE_PRETRAIN_PER_CLASS = 8
SMOKE_DEV_FRACTION = 0.25  # a dev split of a few dozen images, enough to rank learning rates at all
SMOKE_IMAGE = 32  # 16 px leaves a ResNet 1x1 maps, where GroupNorm cannot normalise one image
SMOKE_FINETUNE_IMAGE = 40
SMOKE_STEPS = 3
SMOKE_BATCH = 8
SMOKE_SUFFIX = "-smoke"

_SOURCE_KEYS = ("config", "train_split", "test_split", "image_column", "label_column", "root", "download", "test_fraction", "eval_size")
_SIZE_OPTIONS = ("width", "depth", "heads", "mlp", "patch", "blocks", "width_factor", "stride")
_VIT = re.compile(r"ViT-(?P<size>[A-Za-z]+)/(?P<patch>\d+)$")
_RESNET = re.compile(r"R(?P<depth>\d+)x(?P<wf>[0-9.]+)$")
_HYBRID = re.compile(r"R\d+(?:x[0-9.]+)?\+ViT-(?P<size>[A-Za-z]+)/\d+$")


def shrink_model(name: str) -> str:
    """The CPU-sized member of `name`'s family: "ViT-B/16" → "ViT-Mu/4", "R50x1" → "R14x0.25"."""
    if m := _HYBRID.match(name):
        return f"R14x0.25+ViT-{_tiny_size(m['size'])}/8"
    if m := _VIT.match(name):
        patch = int(m["patch"])
        return f"ViT-{_tiny_size(m['size'])}/{patch if patch <= 8 else 4 if patch < 32 else 8}"
    if m := _RESNET.match(name):
        return f"R14x{min(1.0, max(0.25, float(m['wf']) / 4)):g}"
    return name  # unknown: validation names the problem


def _tiny_size(size: str) -> str:
    if size in ("Mu", "Mi"):  # CPU-sized already (the miniatures compare the two): kept
        return size
    return "Mi" if size in ("L", "H", "G") else "Mu"


def shrink(raw: dict[str, Any]) -> dict[str, Any]:
    """The smoke version of a recipe read from TOML (a new dict; `raw` is left as it is)."""
    from vitrun.data import known

    out = copy.deepcopy(raw)
    out["name"] = f"{out.get('name', 'recipe')}{SMOKE_SUFFIX}"
    out.pop("expect", None)
    shots = max(out.get("fewshot", {}).get("shots", [1]) or [1])
    per_class = max(SMOKE_PER_CLASS, shots + 4)

    model = out.setdefault("model", {})
    if isinstance(model.get("name"), str) and shrink_model(model["name"]) != model["name"]:
        model["label"], model["name"] = model["name"], shrink_model(model["name"])
    for key in _SIZE_OPTIONS + ("init",):
        model.pop(key, None)

    pretrain = out.setdefault("pretrain", {})
    _stand_in(pretrain, known, per_class=None)
    pretrain["image_size"] = SMOKE_IMAGE
    _shrink_training(pretrain)
    pretrain["size"] = pretrain["classes"] * SMOKE_PRETRAIN_PER_CLASS

    if "finetune" in out:
        _shrink_training(out["finetune"], image_size=SMOKE_FINETUNE_IMAGE)
    if "fewshot" in out:
        out["fewshot"]["draws"] = 1
    for transfer in out.get("transfer", []):
        _stand_in(transfer, known, per_class=per_class)
        if isinstance(transfer.get("finetune"), dict):  # per-dataset overrides ([[transfer]] finetune = {…})
            _shrink_training(transfer["finetune"], image_size=SMOKE_FINETUNE_IMAGE)
    for analysis in out.get("analysis", []):
        if analysis.get("data") and ":" in analysis["data"]:
            analysis["data"] = "fractal"
        analysis["images"] = min(analysis.get("images", 8), 8)
    # Tiny models on one thread: splitting 64-wide matrices over cores costs more than it gains.
    out.setdefault("run", {})["threads"] = 1
    tables = _one_table_per_model(_sweep_tables(out))
    if tables != _sweep_tables(out):
        out["sweep"] = tables
    for table in tables:
        _shrink_sweep(table, pretrain)
    return out


def _stand_in(section: dict[str, Any], known, per_class: int | None) -> None:
    """Replace the section's dataset by fractals of as many classes (capped); keep its label."""
    data = section.get("data", "fractal")
    holds = known.lookup(data)
    classes = section.get("classes") or (holds.classes if holds else SMOKE_CLASSES)
    if ":" in data:  # a real dataset; embedded ones are small and offline already: kept
        section.setdefault("name", holds.name if holds else data)
        section["data"] = "fractal"
    section["classes"] = min(classes, SMOKE_CLASSES)
    for key in _SOURCE_KEYS:
        section.pop(key, None)
    if per_class is not None:
        section["per_class"] = per_class
        _shrink_subset(section, pool=section["classes"] * per_class)
        if "dev_size" not in section:
            section["dev_fraction"] = SMOKE_DEV_FRACTION


def _shrink_subset(section: dict[str, Any], pool: int) -> None:
    """A random `train_size` subset (VTAB-1k's 1,000) to fit the stand-in's `pool` images, its
    `dev_size` (200) in the same proportion, so both keys still run."""
    size = section.get("train_size")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        return  # unset, or the schema's to report
    section["train_size"] = small = min(size, pool * 3 // 4)
    dev = section.get("dev_size")
    if isinstance(dev, int) and not isinstance(dev, bool) and dev > 0:
        section["dev_size"] = max(1, min(small - 1, round(dev * small / size)))


def _shrink_training(section: dict[str, Any], image_size: int | None = None) -> None:
    """A few steps of small batches; warm-up 1 (0 for a single step); no epochs."""
    section.pop("epochs", None)
    if section.get("steps", 1) != 0:  # 0: "no pre-training", kept as it is
        section["steps"] = SMOKE_STEPS
    section["batch_size"] = SMOKE_BATCH
    section["warmup_steps"] = 1
    if image_size is not None:
        section["image_size"] = image_size
    if section.get("eval_every"):
        section["eval_every"] = 1


def _shrink_sweep(table: dict[str, Any], pretrain: dict[str, Any]) -> None:
    """Swept values shrink as the keys they set, distinct values staying distinct and ordered."""
    rules: dict[str, Callable[[list[Any]], list[Any]]] = {
        "model": lambda vs: [shrink_model(v) if isinstance(v, str) else v for v in vs],
        "model.name": lambda vs: [shrink_model(v) if isinstance(v, str) else v for v in vs],
        "model.label": lambda vs: vs,
        "pretrain.data": lambda vs: ["fractal" for _ in vs],
        "pretrain.classes": lambda vs: _ranked(vs, 2, 2),
        "pretrain.size": lambda vs: _ranked(vs, pretrain["classes"] * SMOKE_PRETRAIN_PER_CLASS, pretrain["classes"] * 2),
        "pretrain.steps": lambda vs: [0 if v == 0 else s for v, s in zip(vs, _ranked(vs, SMOKE_STEPS, 1))],
        "pretrain.epochs": lambda vs: [SMOKE_STEPS for _ in vs],
        "pretrain.image_size": lambda vs: _ranked(vs, SMOKE_IMAGE, 8),
        "pretrain.batch_size": lambda vs: _ranked(vs, SMOKE_BATCH, 4),
        "pretrain.warmup_steps": lambda vs: [1 for _ in vs],
        "finetune.steps": lambda vs: _ranked(vs, SMOKE_STEPS, 1),
        "finetune.image_size": lambda vs: _ranked(vs, SMOKE_FINETUNE_IMAGE, 8),
        "finetune.batch_size": lambda vs: _ranked(vs, SMOKE_BATCH, 4),
        "finetune.warmup_steps": lambda vs: [1 for _ in vs],
    }
    for key in list(table):
        if key.startswith("model.") and key[len("model."):] in _SIZE_OPTIONS:
            del table[key]  # the tiny model's own sizes (ViT-b/32's halved width is ViT-Mu's)
            continue
        if key in rules and isinstance(table[key], list):
            table[key] = rules[key](table[key])
    if "pretrain.epochs" in table:  # steps replace epochs
        table["pretrain.steps"] = table.pop("pretrain.epochs")
    if "pretrain.data" in table:  # every value is now "fractal": one stand-in, not a duplicate variant each
        table["pretrain.data"] = ["fractal"]


def _one_table_per_model(tables: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A swept model becomes one [[sweep]] table per model, each also setting `model.label` to
    the full-scale name, so the tables name the models the recipe is about."""
    out = []
    for table in tables:
        key = next((k for k in ("model", "model.name") if isinstance(table.get(k), list)), None)
        names = table[key] if key else []
        if not names or not all(isinstance(n, str) and shrink_model(n) != n for n in names):
            out.append(table)
            continue
        rest = {k: v for k, v in table.items() if k != key}
        out += [{**rest, "model.name": [name], "model.label": [name]} for name in names]
    return out


def _ranked(values: list[Any], start: int, step: int) -> list[Any]:
    """Each distinct number → start + rank × step, so order and distinctness survive."""
    numbers = sorted({v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return [start + numbers.index(v) * step if v in numbers else v for v in values]


def _sweep_tables(raw: dict[str, Any]) -> list[dict[str, Any]]:
    sweep = raw.get("sweep", {})
    if isinstance(sweep, dict):
        return [sweep] if sweep else []
    return [t for t in sweep if isinstance(t, dict)] if isinstance(sweep, list) else []
