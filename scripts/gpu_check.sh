#!/usr/bin/env bash
# The prepared GPU check (a few minutes on one GPU). It runs recipes/text_classification.py on its
# offline default (pretrained MiniLM, generated sentiment data) four ways and records the median
# step time and the peak GPU memory of each:
#   single_gpu.yaml, bf16: the default plan (embeddings + layers 0-3 frozen) and full fine-tuning;
#   fsdp.yaml on ONE process (FSDP2 wrapping a model whose units mix frozen and trainable
#   parameters): the default plan and full fine-tuning.
# Usage: bash scripts/gpu_check.sh [RESULT_DIR]      (default: $OUT if set, else outputs/gpu_check)
#        GPU_CHECK_DRY_RUN=1 bash scripts/gpu_check.sh /tmp/gc   (checks the script itself on a CPU)
# Results: RESULT_DIR/gpu_check.md (the table for the README), one JSON and one log per run.
set -uo pipefail
cd "$(dirname "$0")/.."

RESULTS="${1:-${OUT:-outputs/gpu_check}}"
WORK="${WORK_DIR:-$(mktemp -d)}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
STEPS="${GPU_CHECK_STEPS:-60}"
RUN_TIMEOUT="${GPU_CHECK_RUN_TIMEOUT:-150}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$RESULTS"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  "$PY" -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'available', torch.cuda.is_available(), '| transformers', transformers.__version__, '| accelerate', accelerate.__version__)"
} > "$RESULTS/environment.txt" 2>&1
cat "$RESULTS/environment.txt"
EXTRA=()
if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then  # check this script on a CPU machine: 2 steps, --use_cpu
  STEPS=2; EXTRA=(--use_cpu --bf16 false --max_eval_samples 64); RUN_TIMEOUT=600
  echo "gpu_check: DRY RUN on CPU, figures are meaningless"
elif ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device visible to $PY; nothing measured." | tee "$RESULTS/gpu_check.md"
  exit 1
fi

# Same slice for every run: batch 64, $STEPS optimizer steps, bf16, evaluation on 512 sentences.
COMMON=(--max_steps "$STEPS" --per_device_train_batch_size 64 --max_eval_samples 512 --bf16
        --logging_steps 20 --disable_tqdm true --save_strategy no --report_to none --overwrite_output_dir)
FULL=(--freeze_embeddings false --freeze_layers none)
# BERT declares no _no_split_modules, so FSDP's transformer-based wrap is told the layer class.
FSDP_ARGS=(--fsdp_transformer_layer_cls_to_wrap BertLayer)

failed=0
run() {  # run NAME CONFIG [launch args --] [recipe args]
  local name=$1 config=$2; shift 2
  local launch=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do launch+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  echo "== $name ($config.yaml) =="
  # benchmarks/timed_recipe.py runs the recipe with a step timer that writes $RESULTS/$name.json.
  timeout "$RUN_TIMEOUT" "$PY" -m accelerate.commands.launch \
    --config_file "accelerate_configs/$config.yaml" --num_processes 1 --main_process_port 29555 "${launch[@]}" \
    benchmarks/timed_recipe.py --perf_file "$RESULTS/$name.json" \
    recipes/text_classification.py "${COMMON[@]}" "${EXTRA[@]}" --output_dir "$WORK/$name" "$@" > "$RESULTS/$name.log" 2>&1
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "   FAILED (exit $rc); last lines of $RESULTS/$name.log:"; tail -n 15 "$RESULTS/$name.log"; failed=1
  else
    grep -A4 "== hf-freeze text_classification: done ==" "$RESULTS/$name.log" | sed 's/^/   /'
    cp "$WORK/$name/all_results.json" "$RESULTS/$name.results.json" 2>/dev/null
  fi
}

run single_default single_gpu --
run single_full single_gpu -- "${FULL[@]}"
run fsdp_default fsdp "${FSDP_ARGS[@]}" --
run fsdp_full fsdp "${FSDP_ARGS[@]}" -- "${FULL[@]}"

"$PY" - "$RESULTS" <<'PYEOF'
import json, os, sys

results = sys.argv[1]
rows = ["| config | plan | trainable params | median step (ms) | peak GPU memory allocated (MiB) | eval accuracy |",
        "|---|---|---:|---:|---:|---:|"]
device = ""
for name, config, plan in [("single_default", "single_gpu.yaml, bf16", "default (emb + layers 0-3 frozen)"),
                           ("single_full", "single_gpu.yaml, bf16", "full fine-tuning"),
                           ("fsdp_default", "fsdp.yaml (FSDP2, 1 process), bf16", "default (emb + layers 0-3 frozen)"),
                           ("fsdp_full", "fsdp.yaml (FSDP2, 1 process), bf16", "full fine-tuning")]:
    try:
        perf = json.load(open(os.path.join(results, f"{name}.json")))
        metrics = json.load(open(os.path.join(results, f"{name}.results.json")))
    except (OSError, ValueError):
        rows.append(f"| {config} | {plan} | failed (see {name}.log) | | | |")
        continue
    device = perf["device"]
    if perf["peak_memory_allocated_mib"] is None:  # dry run on CPU
        perf["peak_memory_allocated_mib"] = float("nan")
    rows.append(f"| {config} | {plan} | {perf['trainable_params']:,} | {1000 * perf['median_step_s']:.1f} | "
                f"{perf['peak_memory_allocated_mib']:.0f} | {metrics.get('eval_accuracy', float('nan')):.4f} |")
text = f"GPU check on {device or 'GPU'}: batch 64, median of steps 6.., bf16.\n\n" + "\n".join(rows) + "\n"
open(os.path.join(results, "gpu_check.md"), "w").write(text)
print(text)
PYEOF
exit $failed
