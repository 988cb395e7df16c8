#!/usr/bin/env bash
# Every GPU check the performance and scale issues ask for, in one run on a lent GPU (~7 min on
# one H200), so that a session drawn for the `device` tool spends its 15 minutes once:
#
#   here, once:   bash tests/benchmarks/gpu_checks.sh --prepare     # wheels the GPU image lacks -> .gpu/
#   on the GPU:   device run: command "bash tests/benchmarks/gpu_checks.sh", carry [".gpu"], timeout_s 540
#   on a CPU:     bash tests/benchmarks/gpu_checks.sh --smoke       # the same steps at toy sizes (a slow test)
#
# The GPU image has its own python3 with torch, timm, click, rich and pandas but not pydantic or
# orjson: --prepare downloads those wheels (cp312, no dependencies beyond them) into .gpu/wheels
# (git-ignored through .git/info/exclude) and the run installs them offline; vitrun runs from this
# checkout (PYTHONPATH), not installed. Each step logs to $OUT/checks.log and leaves a JSON where it
# measures; a failed step is logged and the next one still runs. $OUT/summary.md collects the numbers:
#   1. ViT-B/16, 224 px, batch 256, bf16 + SDPA + torch.compile, against timm's twin: ratio, MFU
#      against the bf16 matmul peak measured in the same run, first step (compilation) vs steady step;
#   2. the same in eager bf16 (what compile buys);
#   3. a recipe through torchrun with NCCL on the GPU it has: micro_batch = "auto" (the out-of-memory
#      search: 2048 images a step), pinned host batches, bf16 + compile, evaluation; stage.json kept.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
MODE=${1:-gpu}
WHEELS=.gpu/wheels
PACKAGES=(pydantic pydantic-core annotated-types typing-inspection typing-extensions orjson)

if [[ $MODE == --prepare ]]; then
    mkdir -p "$WHEELS"
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    # the versions installed here, built for the GPU image's Python 3.12 on x86-64
    pins=$(python3 -m pip freeze | grep -iE "^($(IFS='|'; echo "${PACKAGES[*]}" | sed 's/-/[-_]/g'))==")
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$WHEELS" $pins
    ls "$WHEELS"
    exit
fi

OUT=${OUT:-$ROOT/results/gpu-checks}
mkdir -p "$OUT"
LOG=$OUT/checks.log
export PYTHONPATH=$ROOT PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [[ $MODE == --smoke ]]; then  # CPU: the same commands, sizes a 2-core machine runs in a minute
    MODEL=ViT-Mu/4 IMAGE=32 BATCH=4 REPEATS=1 DEVICE=cpu RECIPE_MODEL=ViT-Mu/4 RECIPE_IMAGE=32 RECIPE_BATCH=8 RECIPE_STEPS=4
else  # a 2048-image step of ViT-B/16 does not fit in 141 GB: "auto" must search (it halves, then bisects up)
    MODEL=ViT-B/16 IMAGE=224 BATCH=256 REPEATS=10 DEVICE=cuda RECIPE_MODEL=ViT-B/16 RECIPE_IMAGE=224 RECIPE_BATCH=2048 RECIPE_STEPS=20
fi

step() {  # step NAME COMMAND...: run, log, go on whatever happens
    local name=$1; shift
    echo "== $name: $*" | tee -a "$LOG"
    local start=$SECONDS
    "$@" >> "$LOG" 2>&1
    local code=$?
    echo "== $name: exit $code after $((SECONDS - start)) s" | tee -a "$LOG"
}

: > "$LOG"
if ! $PY -c "import pydantic, orjson" 2>/dev/null; then
    step install $PY -m pip install --no-index --find-links "$WHEELS" "${PACKAGES[@]}"
fi
{
    date -u
    nvidia-smi 2>/dev/null || echo "no nvidia-smi"
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU', 'cpu', torch.backends.cpu.get_cpu_capability())"
} > "$OUT/machine.txt" 2>&1

step "compiled bf16" $PY -m vitrun bench train --model "$MODEL" --image-size "$IMAGE" --batch-size "$BATCH" --precision bf16 --compile \
    --device "$DEVICE" --compare timm --repeats "$REPEATS" --json "$OUT/bench_compiled.json"
step "eager bf16" $PY -m vitrun bench train --model "$MODEL" --image-size "$IMAGE" --batch-size "$BATCH" --precision bf16 \
    --device "$DEVICE" --compare timm --repeats "$REPEATS" --json "$OUT/bench_eager.json"

RECIPE=$(mktemp -d)/gpu_checks.toml
cat > "$RECIPE" <<EOF
name = "gpu-checks"
seed = 0
[run]
device = "$DEVICE"
precision = "bf16"
compile = true
micro_batch = "auto"
[model]
name = "$RECIPE_MODEL"
[pretrain]
data = "fractal"
classes = 10
image_size = $RECIPE_IMAGE
size = 300                 # generated at 224 px on the host (~35 ms an image on one core); batches span epochs
steps = $RECIPE_STEPS
warmup_steps = 2
batch_size = $RECIPE_BATCH
EOF
# one process under torchrun: NCCL on a GPU (gloo on a CPU) and DDP, as on eight
step "torchrun recipe" $PY -m torch.distributed.run --standalone --nproc-per-node 1 -m vitrun recipe "$RECIPE" \
    --results "$OUT/run" --cache "$OUT/cache"
cp "$OUT"/run/gpu-checks/pretrain-*/stage.json "$OUT/recipe_stage.json" 2>> "$LOG"
rm -rf "$OUT/run" "$OUT/cache"

$PY - "$OUT" >> "$LOG" 2>&1 <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
lines = ["| run | model | img/s | ms/step | first step s | TFLOP/s | of peak | vs timm |", "|---|---|---|---|---|---|---|---|"]
for name in ("bench_compiled", "bench_eager"):
    path = out / f"{name}.json"
    if path.exists():
        r = json.loads(path.read_text())
        for row in r["rows"]:
            ratio = "–" if row["vs_timm"] is None else f"{row['vs_timm']:.2f}x"
            lines.append(f"| {name[6:]} | {row['model']} | {row['images_per_s']:,.0f} | {row['ms_per_step']:,.1f} | {row['first_step_s']:.1f} | {row['tflops']:.1f} | {100 * row['utilisation']:.1f}% of {r['matmul_peak_tflops']:.0f} | {ratio} |")
stage = out / "recipe_stage.json"
if stage.exists():
    s = json.loads(stage.read_text())
    lines.append(f"\nrecipe under torchrun: {s['status']}, {s['device']}, {s['wall_time_s']:.1f} s, micro_batch {s.get('micro_batch')} ({s.get('micro_batch_auto', '')}), world {s['world_size']}")
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
cat "$OUT/summary.md"
