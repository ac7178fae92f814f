#!/usr/bin/env bash
# Data parallelism of the CUDA engine on a machine with NPROC >= 2 GPUs (NOT RUN YET: no
# multi-GPU machine has been lent). On the example corpus (byte tokenizer, blocks of
# BLOCK_SIZE=1024), MODEL=124M in bf16, STEPS=30 steps per run:
#
#   1. equality: 1 rank × micro-batch 8 against NPROC ranks × 8/NPROC, without and with
#      --zero 1: every step's loss within 1e-2 relative (the bf16 loss tolerance of
#      train/tests/gpu_engine.rs), the gradient norms within 3e-2;
#   2. scaling: 1 rank × 8 against NPROC ranks × 8 each (global batch 8·NPROC), without and
#      with --zero 1: tokens/s (the median over the steps after the first 5) and the scaling
#      efficiency tokens/s(N) / (N · tokens/s(1)).
#
# Ranks are started by `torchrun --standalone --no-python` when torchrun is on the PATH (the
# launch users write), else by this script with torchrun's variables. Prints a table; writes
# multi-check.json (and every log) to WORK_DIR, and copies both to $OUT when OUT is set.
#
# Usage: gpu-multi-check.sh BIN_DIR WORK_DIR   (BIN_DIR holds prep, train, example-corpus)
set -euo pipefail
bin=${1:?usage: gpu-multi-check.sh BIN_DIR WORK_DIR}
work=${2:?usage: gpu-multi-check.sh BIN_DIR WORK_DIR}
nproc=${NPROC:-2}
model=${MODEL:-124M}
steps=${STEPS:-30}
block=${BLOCK_SIZE:-1024}
if [ $((8 % nproc)) -ne 0 ]; then
    echo "FAIL: NPROC=$nproc does not divide the global batch of 8 (use 2, 4 or 8)" >&2
    exit 2
fi
rm -rf "$work"
mkdir -p "$work/logs"

# EMULATED=1: on the stand-in device (emulator/, set up as scripts/emulated-gpu-check.sh does),
# to rehearse this script with a small MODEL, STEPS and BLOCK_SIZE; its speeds mean nothing.
gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || echo 0)
if [ "${EMULATED:-0}" != 1 ] && [ "$gpus" -lt "$nproc" ]; then
    echo "FAIL: this check needs $nproc GPUs, nvidia-smi lists $gpus" >&2
    exit 2
fi

"$bin/example-corpus" "$work/corpus" 4000
"$bin/prep" --input "$work/corpus" --txt-unit paragraph --block-size "$block" \
    --out "$work/shards" --quiet
common=(--shards "$work/shards" --model "$model" --device cuda --dtype bf16 --steps "$steps"
    --lr 6e-4 --log-every 1 --eval-every 0 --save-every 0 --quiet)

# ranks NAME N ARGS...: N ranks of train ARGS, output to logs/NAME.log.
ranks() {
    local name=$1 n=$2
    shift 2
    echo "== $name: $n rank(s)"
    if command -v torchrun >/dev/null 2>&1; then
        torchrun --standalone --nproc_per_node "$n" --no-python "$bin/train" "$@" \
            >"$work/logs/$name.log" 2>&1
    else
        local port=$((20000 + RANDOM % 20000)) pids=() r rc=0
        for ((r = 0; r < n; r++)); do
            RANK=$r LOCAL_RANK=$r WORLD_SIZE=$n LOCAL_WORLD_SIZE=$n MASTER_ADDR=127.0.0.1 \
                MASTER_PORT=$port "$bin/train" "$@" >"$work/logs/$name.rank$r.log" 2>&1 &
            pids+=($!)
        done
        for r in "${pids[@]}"; do wait "$r" || rc=1; done
        cat "$work/logs/$name".rank*.log >"$work/logs/$name.log"
        return $rc
    fi
}

half=$((8 / nproc))
ranks one-x8 1 "${common[@]}" --batch-size 8 --out "$work/one-x8"
ranks n-x$half "$nproc" "${common[@]}" --batch-size "$half" --out "$work/n-x$half"
ranks n-x$half-zero "$nproc" "${common[@]}" --batch-size "$half" --zero 1 --out "$work/n-x$half-zero"
ranks n-x8 "$nproc" "${common[@]}" --batch-size 8 --out "$work/n-x8"
ranks n-x8-zero "$nproc" "${common[@]}" --batch-size 8 --zero 1 --out "$work/n-x8-zero"

rc=0
python3 - "$work" "$nproc" "$half" <<'PY' || rc=$?
import json, statistics, sys
work, n, half = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def train(run):
    return [r for r in map(json.loads, open(f"{work}/{run}/metrics.jsonl")) if r["kind"] == "train"]

def tps(run):
    return statistics.median(r["tokens_per_second"] for r in train(run)[5:])

failed = False
result = {"nproc": n, "equality": {}, "scaling": {}}
base = train("one-x8")
for run in (f"n-x{half}", f"n-x{half}-zero"):
    worst = {"loss": 0.0, "grad_norm": 0.0}
    for a, b in zip(train(run), base):
        for k in worst:
            worst[k] = max(worst[k], abs(a[k] - b[k]) / abs(b[k]))
    ok = len(train(run)) == len(base) and worst["loss"] < 1e-2 and worst["grad_norm"] < 3e-2
    failed |= not ok
    result["equality"][run] = {**worst, "pass": ok}
    print(f"{run:>14} vs 1 x 8: loss {worst['loss']:.2e}, grad norm {worst['grad_norm']:.2e} "
          f"relative at worst: {'PASS' if ok else 'FAIL'}")
one = tps("one-x8")
print(f"{'1 rank x 8':>14}: {one:,.0f} tokens/s")
for run in ("n-x8", "n-x8-zero"):
    t = tps(run)
    result["scaling"][run] = {"tokens_per_second": t, "efficiency": t / (n * one)}
    print(f"{run:>14}: {t:,.0f} tokens/s over {n} GPUs, efficiency {t / (n * one):.2f}")
result["one_rank_tokens_per_second"] = one
json.dump(result, open(f"{work}/multi-check.json", "w"), indent=1)
sys.exit(1 if failed else 0)
PY
if [ -n "${OUT:-}" ]; then
    cp "$work/multi-check.json" "$OUT/" 2>/dev/null || true
    tar -czf "$OUT/multi-check-logs.tar.gz" -C "$work" logs
fi
exit $rc
