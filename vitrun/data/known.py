"""What vitrun knows about the paper's public datasets without opening them: classes and
training-split size, for `epochs` (converted to steps) and `--smoke` (stand-ins with as many
classes). Torch-free, no network.

Sizes are the training split each hub copy or torchvision class serves (the split vitrun trains
on); sources: the dataset pages on the Hugging Face hub and the original papers
(ImageNet: Russakovsky et al. 2015; CIFAR: Krizhevsky 2009; Pets: Parkhi et al. 2012, trainval;
Flowers: Nilsback & Zisserman 2008, train; DTD and SVHN as noted beside them).
ImageNet-21k (fall 2011): 14,197,122 images of which the hub copy holds out 472,840 (`../shared/PAPER.md`), ≈13.7M to train on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Known:
    name: str  # the paper's name
    classes: int
    train_images: int
    min_per_class: int | None = None  # training images of the smallest class (few-shot needs k)


_IN21K = Known("ImageNet-21k", 21_841, 14_197_122 - 472_840)
_IN1K = Known("ImageNet", 1_000, 1_281_167, 732)
_C10 = Known("CIFAR-10", 10, 50_000, 5_000)
_C100 = Known("CIFAR-100", 100, 50_000, 500)
_PETS = Known("Pets", 37, 3_680, 93)
_FLOWERS = Known("Flowers", 102, 1_020, 10)  # the train split: 10 images of every species
_DTD = Known("DTD", 47, 1_880, 40)  # Cimpoi et al. 2014, partition 1's train split
_SVHN = Known("SVHN", 10, 73_257)  # Netzer et al. 2011, train (the extra split aside)

# `data` values (KIND:TARGET, config and options aside) -> what they hold.
KNOWN: dict[str, Known] = {
    "hf:timm/imagenet-22k-wds": _IN21K,
    "hf:ILSVRC/imagenet-1k": _IN1K,
    "hf:timm/imagenet-1k-wds": _IN1K,
    "hf:uoft-cs/cifar10": _C10,
    "hf:uoft-cs/cifar100": _C100,
    "torchvision:CIFAR10": _C10,
    "torchvision:CIFAR100": _C100,
    "torchvision:OxfordIIITPet": _PETS,
    "torchvision:Flowers102": _FLOWERS,
    "torchvision:DTD": _DTD,
    "torchvision:SVHN": _SVHN,
}

# Embedded sets: classes, training images (generators: their defaults; see vitrun/data).
EMBEDDED: dict[str, Known] = {
    "digits": Known("digits", 10, 1_198),
    "shapes": Known("shapes", 10, 10 * 300),
    "fractal": Known("fractal", 100, 100 * 100),
}


def lookup(data: str) -> Known | None:
    """What `data` holds, if vitrun knows it by name (a hub id with or without its :config)."""
    if data in EMBEDDED:
        return EMBEDDED[data]
    if data in KNOWN:
        return KNOWN[data]
    head, _, _ = data.rpartition(":")
    return KNOWN.get(head) if head.count(":") == 1 else None
