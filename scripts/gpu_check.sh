#!/usr/bin/env bash
# GPU check for the distributed engines: the same few-step tiny-model runs as CI's CPU tests, on
# the GPUs of this machine, printing each engine's throughput and whether the adapter is whole.
#   bash scripts/gpu_check.sh [OUT_DIR]
# Needs the package installed (pip install -e '.[deepspeed]'). With one GPU only the single-GPU
# run and 1-process DeepSpeed/FSDP runs are possible; with >= 2 GPUs every engine runs on all.
set -euo pipefail
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
NGPU=$(python -c "import torch; print(torch.cuda.device_count())")
echo "GPUs: $NGPU ($(python -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"))"
[ "$NGPU" -ge 1 ] || { echo "no GPU: nothing to check"; exit 1; }
ARGS=(train --model tiny-t5 --tasks tasks/sample --adapter lora --max-steps 50 --batch-size 16 --encoding def+pos2
      --set model.tiny_d_model=256 --set model.tiny_layers=4 --set log_every=10 --mixed-precision bf16)
run() {  # name, config file
  local name=$1 cfg=$2
  local t0=$(date +%s.%N)
  if accelerate launch --num_processes "$NGPU" --config_file "scripts/accelerate/$cfg" -m instructmt "${ARGS[@]}" \
       --output "$OUT/$name" > "$OUT/$name.log" 2>&1; then
    local t1=$(date +%s.%N)
    python - "$OUT/$name" "$t0" "$t1" "$name" <<'PY'
import json, sys
from pathlib import Path
from safetensors.torch import load_file
run, t0, t1, name = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
logs = [json.loads(l) for l in (run / "logs.jsonl").read_text().splitlines()]
w = load_file(str(run / "model" / "adapter_model.safetensors"))
numel = sum(v.numel() for v in w.values())
tok_s = logs[-1]["tokens_per_rank"] / logs[-1]["elapsed_s"]
print(f"{name:10s} ok  steps={logs[-1]['step']} loss={logs[-1]['loss']:.3f} real_tok/s/rank={tok_s:,.0f} "
      f"adapter_tensors={len(w)} adapter_params={numel:,} wall={t1 - t0:.0f}s")
PY
  else
    echo "$name FAILED (see $OUT/$name.log)"; tail -5 "$OUT/$name.log"
  fi
}
run single single_gpu.yaml
run ddp ddp.yaml
run zero2 deepspeed_zero2.yaml
run zero3 deepspeed_zero3.yaml
run zero3_off deepspeed_zero3_offload.yaml
run fsdp fsdp.yaml
# generation-based evaluation of the ZeRO-3-trained adapter, sharded over the GPUs
accelerate launch --num_processes "$NGPU" --config_file scripts/accelerate/ddp.yaml -m instructmt eval \
  --model "$OUT/zero3/model" --output "$OUT/zero3_eval" --max-instances 20 > "$OUT/zero3_eval.log" 2>&1 \
  && echo "zero3 eval ok: $(python -c "import json;m=json.load(open('$OUT/zero3_eval/metrics.json'));print({k:round(m[k],2) for k in ('exact_match','rougeL','num_instances')})")" \
  || { echo "zero3 eval FAILED"; tail -5 "$OUT/zero3_eval.log"; }
