"""Trained models by name, for the commands that use one after training (evaluate, export).

A TARGET is one of:

* a stage key (`pretrain-1a2b3c4d5e6f`, `finetune-…`) under `--results`: the stage's final
  weights, rebuilt as the stage left them (a fine-tuned model has its new head and resolution;
  fine-tuning keeps weights only with `[finetune] save_weights = true`);
* `timm:NAME`: timm's pre-trained weights (from the Hugging Face hub or its cache);
* `npz:PATH`: an official Google checkpoint (vit_jax, big_vision, BiT), architecture read from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitrun.store import BrokenRecord, StageDir, Store


class TargetError(ValueError):
    """A target that names nothing usable; the message says what to do."""


@dataclass
class Trained:
    model: Any  # nn.Module
    label: str  # what it is, for titles: "finetune-… (ViT-Mu/4 on digits)"
    stage: StageDir | None = None
    record: dict[str, Any] | None = None


def find_stage(store: Store, key: str, experiment: str | None = None) -> StageDir:
    """The finished stage `key` in `experiment` (default: whichever experiment holds it)."""
    experiments = [experiment] if experiment else sorted(p.name for p in store.root.glob("*") if (p / key).is_dir())
    found = [store.stage(name, key) for name in experiments if store.stage(name, key).path.is_dir()]
    if not found:
        raise TargetError(f"{key}: no such stage under {store.root} (stage keys are the folder names `vitrun report --format json` and `--dry-run` show)")
    if len(found) > 1:
        raise TargetError(f"{key}: in several experiments ({', '.join(s.path.parent.name for s in found)}); name one with --experiment")
    stage = found[0]
    if stage.status() != "done":
        raise TargetError(f"{key}: the stage has not finished; run its recipe again to complete it")
    return stage


def load(target: str, store: Store, experiment: str | None = None) -> Trained:
    """The model TARGET names, in eval mode on the CPU (see the module docstring)."""
    scheme, sep, rest = target.partition(":")
    if sep and scheme in ("timm", "npz"):
        return _converted(target, scheme, rest)
    return from_stage(find_stage(store, target, experiment))


def from_stage(stage: StageDir) -> Trained:
    """A finished stage's model with its final weights, checked against the stage's record."""
    from vitrun import models
    from vitrun.engine import checkpoint

    record = stage.read()
    config, metrics, kind = record["config"], record.get("metrics", {}), record["kind"]
    if not stage.weights_file.is_file():
        hint = "set [finetune] save_weights = true and run the recipe again" if kind.startswith("finetune") else "this kind of stage keeps no weights"
        raise TargetError(f"{stage.path.name}: no weights kept ({stage.weights_file} is missing); {hint}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in config["model"].items()}
    spec = models.ModelSpec(**fields)
    pretrain_size = config["pretrain"]["image_size"]
    if kind == "pretrain":
        model = models.build(spec, metrics["num_classes"], pretrain_size)
        label = f"{stage.path.name} ({spec.name} pre-trained on {config['pretrain'].get('name') or config['pretrain'].get('data', 'random init')})"
    else:  # a fine-tuned model: the pre-training model with the fine-tuning head and resolution
        finetune = config["finetune"]
        model = models.build(spec, 1, pretrain_size)
        model.reset_head(metrics["num_classes"])
        model.set_image_size(finetune["image_size"], mode=finetune["pos_embed_resample"])
        label = f"{stage.path.name} ({spec.name} fine-tuned on {config['transfer']['name']})"
    try:
        weights = stage.verified_weights()  # never weights that changed on disk since the stage finished
    except BrokenRecord as err:
        raise TargetError(f"{err}; run the stage's recipe again to recompute it") from None
    model.load_state_dict(checkpoint.load_weights(weights))
    return Trained(model.eval(), label, stage, record)


def _converted(target: str, scheme: str, rest: str) -> Trained:
    from vitrun import interop

    interop.check_init(target)  # one-line errors for a missing file or an unknown form
    if scheme == "npz":
        try:
            model = interop.from_npz(rest)
        except (ValueError, FileNotFoundError) as err:
            raise TargetError(f"{target}: {err}") from None
    else:
        from vitrun.interop.pretrained import timm_pretrained

        try:
            model = interop.from_timm(timm_pretrained(target, rest))
        except ValueError as err:
            raise TargetError(str(err)) from None
    return Trained(model.eval(), target)


def default_out(trained: Trained, what: str, fallback: Path) -> Path:
    """Where a command writes about `trained`: inside its stage folder, else `fallback`."""
    return trained.stage.path / what if trained.stage else fallback
