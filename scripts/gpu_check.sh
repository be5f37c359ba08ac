#!/usr/bin/env bash
# The GPU check (issue 27): what this project runs on CUDA, in one go and under 8 minutes on
# one GPU, every result under one folder.
#
#   bash scripts/gpu_check.sh [DIR]            # on a CUDA machine; DIR default $OUT, else outputs/gpu_check
#   bash scripts/gpu_check.sh --dry-run [DIR]  # the same steps, tiny, on CPU (CI runs this)
#
# Steps (each one's output and log in DIR, a summary in DIR/summary.md):
#   1. env.txt           torch, CUDA and the device
#   2. tests.xml/.log    the CUDA test subset (`pytest -k cuda`: CPU/CUDA agreement of MENET,
#                        the metrics, the rain synthesiser and the losses)
#   3. train-fp32/, train-amp/
#                        300 steps of MENET training (batch 16, 128 px, synthetic rain on the
#                        built-in images), without and with --amp (float16 + GradScaler on CUDA)
#   4. evaluate/         the bundled model on the Rain100L test ids (both protocols), from
#                        $MTLWEIGHT_DATA or ../shared/data; synthetic rain when that is absent
#   5. speed.json/.md    benchmarks/speed.py --quick --no-study (CPU inference only: the script
#                        measures the CPU's limits)
#   6. overhead.json     benchmarks/overhead.py --device cuda (weighting overhead per step)
# A step that fails is recorded as FAILED in the summary and the others still run; the exit
# code is the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
RESULTS=${1:-${OUT:-outputs/gpu_check}}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
DATA=${MTLWEIGHT_DATA:-../shared/data}
export PYTHONUNBUFFERED=1

if [ "$DRY" = 1 ]; then
  DEVICE=cpu STEPS=3 PATCH=32 BATCH=2
  TESTS=(tests/menet_example/test_model.py tests/menet_example/test_metrics.py
         tests/menet_example/test_rain.py)
  SPEED=(--quick --no-study --repeats 1 --batches 1)
  OVERHEAD=(--device cpu --quick --no-memory --methods fixed gb_last --repeats 1 --warmup 0)
else
  DEVICE=cuda STEPS=300 PATCH=128 BATCH=16
  TESTS=(tests)
  SPEED=(--quick --no-study)
  OVERHEAD=(--device cuda)
fi

FAILED=0
STATUS=()
step() {  # step NAME TIMEOUT_S COMMAND...: run, log, time and record one step
  local name=$1 limit=$2; shift 2
  local start=$SECONDS rc=0
  echo "== $name: $*" | tee -a "$RESULTS/commands.log"
  timeout "$limit" "$@" > "$RESULTS/$name.log" 2>&1 || rc=$?
  local took=$((SECONDS - start))
  if [ "$rc" = 0 ]; then
    STATUS+=("| $name | ok | $took s |")
  else
    STATUS+=("| $name | FAILED (exit $rc, see $name.log) | $took s |")
    FAILED=$((FAILED + 1))
  fi
  tail -n 3 "$RESULTS/$name.log"
}

"$PY" - > "$RESULTS/env.txt" <<'EOF'
import platform, torch
print("torch", torch.__version__, "| python", platform.python_version())
print("cuda available:", torch.cuda.is_available(), "| cuda", torch.version.cuda)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device:", p.name, f"| {p.total_memory / 2**30:.1f} GiB")
EOF
cat "$RESULTS/env.txt"
if [ "$DRY" = 0 ] && ! grep -q "cuda available: True" "$RESULTS/env.txt"; then
  echo "gpu_check: no CUDA device here; use --dry-run for the CPU version" >&2
  exit 2
fi

step tests 240 "$PY" -m pytest "${TESTS[@]}" -k cuda -q -p no:randomly -p no:cacheprovider \
  --junitxml="$RESULTS/tests.xml"
for mode in fp32 amp; do
  amp=(); [ "$mode" = amp ] && amp=(--amp)
  step "train-$mode" 240 "$PY" -m menet train --synthetic light --steps "$STEPS" \
    --patch-size "$PATCH" --batch-size "$BATCH" --device "$DEVICE" "${amp[@]}" \
    --out "$RESULTS/train-$mode" --force --no-progress
done
if [ "$DRY" = 0 ] && { [ -f "$DATA/Rain100L/pairs.csv" ] || [ -d "$DATA/Rain100L/rain" ]; }; then
  source=(--data "$DATA/Rain100L" --split "$DATA/rain100-split.json" --split-key test)
else
  source=(--synthetic light --images chelsea)
fi
step evaluate 180 "$PY" -m menet evaluate "${source[@]}" --protocol both --device "$DEVICE" \
  --out "$RESULTS/evaluate" --force
step speed 180 "$PY" benchmarks/speed.py "${SPEED[@]}" --out "$RESULTS/speed.json" \
  --markdown "$RESULTS/speed.md"
step overhead 240 "$PY" benchmarks/overhead.py "${OVERHEAD[@]}" --out "$RESULTS/overhead.json"

"$PY" - "$RESULTS" "$DRY" "${STATUS[@]}" > "$RESULTS/summary.md" <<'EOF'
import csv, json, sys
from pathlib import Path
out, dry, rows = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3:]
print(f"# GPU check{' (dry run on CPU)' if dry else ''}\n")
print("```\n" + (out / "env.txt").read_text().strip() + "\n```\n")
print("| step | result | wall time |\n| --- | --- | --- |")
print("\n".join(rows) + "\n")
for mode in ("fp32", "amp"):
    log = out / f"train-{mode}" / "log.csv"
    if log.is_file():
        last = list(csv.DictReader(log.open()))[-1]
        print(f"- train {mode}: {last['step']} steps in {float(last['time']):.1f} s, "
              f"total loss {float(last['total']):.4g}")
summary = out / "evaluate" / "summary.json"
if summary.is_file():
    for protocol, s in json.loads(summary.read_text()).items():
        print(f"- evaluate ({protocol}, {int(s['count'])} images): input "
              f"{s['input_psnr']:.2f} dB -> model {s['output_psnr']:.2f} dB")
EOF
cat "$RESULTS/summary.md"
echo "gpu_check: results in $RESULTS ($FAILED step(s) failed)"
exit "$FAILED"
