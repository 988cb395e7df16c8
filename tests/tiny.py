"""A tiny recipe that runs the real pipeline (both model families, two sizes, two transfer sets) in seconds."""

TINY = """
name = "tiny"
seed = 0

[model]
name = "ViT-Mu/4"

[pretrain]
data = "fractal"
classes = 4
image_size = 16
steps = 6
batch_size = 16
warmup_steps = 2

[finetune]
steps = 4
batch_size = 16
lr = 0.01
warmup_steps = 1

[fewshot]
shots = [2]
draws = 2

[[transfer]]
data = "digits"

[[transfer]]
data = "shapes"
per_class = 8

[sweep]
model = ["ViT-Mu/4", "R14x0.25"]
"pretrain.size" = [16, 32]

[[report.tables]]
name = "transfer"
kind = "finetune"
rows = "model"
columns = "pretrain.size"
"""
