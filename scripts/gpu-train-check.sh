#!/usr/bin/env bash
# The `train` binary end to end on a GPU: on a small example corpus (byte tokenizer, blocks of
# BLOCK_SIZE=256), the tiny model for STEPS=40 steps of BATCH_SIZE=8
#   1. straight through with --device cuda (bf16);
#   2. stopped after STEPS/2 steps (checkpoint), then --resume: every train and eval record of
#      the second half must equal run 1's bit for bit (same losses, norms and validation losses);
#   3. on the CPU: the GPU's final validation loss must be within 5% of the CPU's (bf16
#      against f32), and both must have fallen below 80% of the first one;
#   4. `train sample` and `train eval` load the GPU run's best checkpoint with --device: greedy
#      text with the key/value cache equals the uncached path's (f32), eval within 5% of the CPU;
#   5. a micro-batch whose activations cannot fit on the GPU is refused with one line and no
#      run directory;
#   6. LoRA, and QLoRA (--quantize nf4 --double-quant, with dropout and a trained LM head), on
#      the straight run's last checkpoint for STEPS/2 steps with --device: PEFT adapter
#      checkpoints, stopped and resumed bit for bit, the final validation loss within 5% of the
#      same run on the CPU and below the base's.
# Scripts/gpu-check.sh runs it with the bundle's binaries; DEVICE=cpu runs steps 1-4 on the
# CPU only, to check this script on a machine without a GPU. scripts/emulated-gpu-check.sh
# runs it on the stand-in CUDA device with shorter blocks and fewer steps (the environment
# variables above), since there every kernel runs on the CPU.
#
# Usage: gpu-train-check.sh BIN_DIR WORK_DIR   (BIN_DIR holds prep, train, example-corpus)
set -euo pipefail
bin=${1:?usage: gpu-train-check.sh BIN_DIR WORK_DIR}
work=${2:?usage: gpu-train-check.sh BIN_DIR WORK_DIR}
device=${DEVICE:-cuda}
steps=${STEPS:-40}
half=$((steps / 2))
block=${BLOCK_SIZE:-256}
batch=${BATCH_SIZE:-8}
rm -rf "$work"
mkdir -p "$work"

"$bin/example-corpus" "$work/corpus" 1000
"$bin/prep" --input "$work/corpus" --txt-unit paragraph --block-size "$block" --out "$work/shards" --quiet
common=(--shards "$work/shards" --model tiny --steps "$steps" --batch-size "$batch" --lr 3e-3
    --eval-every "$half" --eval-batches 4 --save-every "$half" --log-every 1 --quiet)

echo "== 1. straight, --device $device"
"$bin/train" "${common[@]}" --device "$device" --out "$work/straight"
echo "== 2. stopped after $half steps, then resumed"
"$bin/train" "${common[@]}" --device "$device" --out "$work/resumed" --stop-after "$half"
"$bin/train" "${common[@]}" --device "$device" --out "$work/resumed" --resume
echo "== 3. the CPU reference"
"$bin/train" "${common[@]}" --device cpu --out "$work/cpu"

python3 - "$work" "$steps" <<'PY'
import json, sys
work, steps = sys.argv[1], int(sys.argv[2])
half = steps // 2

def records(run):
    """The last record of each (kind, step) in a run's metrics.jsonl."""
    out = {}
    for line in open(f"{work}/{run}/metrics.jsonl"):
        r = json.loads(line)
        out[(r["kind"], r["step"])] = r
    return out

straight, resumed, cpu = records("straight"), records("resumed"), records("cpu")
keys = ("loss", "grad_norm", "val_loss")
compared = 0
for key, r in sorted(straight.items()):
    if key[1] <= half:
        continue
    other = resumed.get(key)
    if other is None:
        sys.exit(f"FAIL: the resumed run has no {key[0]} record for step {key[1]}")
    for k in keys:
        if k in r and r[k] != other[k]:
            sys.exit(f"FAIL: step {key[1]} {k}: straight {r[k]!r}, resumed {other[k]!r}")
    compared += 1
print(f"resume: {compared} records of steps {half + 1}-{steps} equal bit for bit")

first = straight[("train", 1)]["loss"]
gpu_val, cpu_val = straight[("eval", steps)]["val_loss"], cpu[("eval", steps)]["val_loss"]
print(f"loss: first {first:.4f}; final val loss {gpu_val:.4f} here, {cpu_val:.4f} on the CPU "
      f"(rel {abs(gpu_val - cpu_val) / cpu_val:.2e})")
if not (gpu_val < 0.8 * first and cpu_val < 0.8 * first):
    sys.exit("FAIL: the validation loss did not fall below 80% of the first training loss")
if abs(gpu_val - cpu_val) > 0.05 * cpu_val:
    sys.exit("FAIL: the final validation loss is more than 5% away from the CPU's")
PY

echo "== 4. sample and eval from the checkpoint with --device $device"
best="$work/straight/checkpoints/best"
"$bin/train" sample --checkpoint "$best" --prompt "The lantern" --max-new-tokens 40 --device "$device"
# Greedy in f32: the key/value cache must give the tokens of the uncached path.
greedy=(sample --checkpoint "$best" --prompt "The lantern" --max-new-tokens 24 --temperature 0
    --device "$device" --dtype f32)
cached=$("$bin/train" "${greedy[@]}" 2>/dev/null)
uncached=$("$bin/train" "${greedy[@]}" --no-kv-cache 2>/dev/null)
if [ "$cached" != "$uncached" ]; then
    echo "FAIL: greedy text with the cache differs from the uncached path:"
    printf '  cached:   %q\n  uncached: %q\n' "$cached" "$uncached"
    exit 1
fi
echo "greedy with and without the key/value cache: the same 24 tokens"
eval_args=(eval --checkpoint "$best" --shards "$work/shards" --max-batches 4 --batch-size 4 --json)
"$bin/train" "${eval_args[@]}" --device "$device" >"$work/eval-device.json"
"$bin/train" "${eval_args[@]}" --device cpu >"$work/eval-cpu.json"
python3 - "$work" <<'PY'
import json, sys
here, cpu = (json.load(open(f"{sys.argv[1]}/eval-{k}.json")) for k in ("device", "cpu"))
rel = abs(here["loss"] - cpu["loss"]) / cpu["loss"]
print(f"train eval: loss {here['loss']:.4f} ({here['engine']}), {cpu['loss']:.4f} on the CPU (rel {rel:.2e})")
if rel > 0.05:
    sys.exit("FAIL: train eval's loss is more than 5% away from the CPU's")
PY

if [ "$device" = cuda ]; then
    echo "== 5. a micro-batch too large for the GPU is refused in one line, before the run starts"
    # About 250 GB of activations (1,700 sequences of 256 tokens through 4 wide layers).
    set +e
    msg=$("$bin/train" --shards "$work/shards" --model tiny --dim 1024 --ffn-dim 16384 \
        --n-heads 16 --n-kv-heads 16 --batch-size 1700 --steps 1 --no-eval --device cuda \
        --quiet --out "$work/too-big" 2>&1)
    rc=$?
    set -e
    echo "$msg"
    if [ $rc -ne 1 ] || ! grep -q "^error: .*need .* GiB of GPU memory but .* is free on cuda:0; lower --batch-size" <<<"$msg" || [ -e "$work/too-big" ]; then
        echo "FAIL: expected exit 1, one 'error: ... GiB of GPU memory ...' line and no run directory"
        exit 1
    fi
fi
for quant in none nf4; do
    echo "== 6. LoRA r=8 on the last checkpoint (--quantize $quant), --device $device"
    base="$work/straight/checkpoints/step-$(printf %07d "$steps")"
    lora=(--shards "$work/shards" --init-from "$base" --lora-rank 8 --lora-alpha 16 --steps "$half"
        --batch-size "$batch" --lr 1e-2 --eval-every "$half" --eval-batches 4 --save-every "$((half / 2))"
        --log-every 1 --quiet)
    # QLoRA with dropout and a trained LM head: the masks and the saved module resume too.
    if [ "$quant" = nf4 ]; then lora+=(--quantize nf4 --double-quant --lora-dropout 0.1 --lora-save lm_head); fi
    "$bin/train" "${lora[@]}" --device "$device" --out "$work/lora-$quant"
    "$bin/train" "${lora[@]}" --device "$device" --out "$work/lora-$quant-resumed" --stop-after "$((half / 2))"
    "$bin/train" "${lora[@]}" --device "$device" --out "$work/lora-$quant-resumed" --resume
    "$bin/train" "${lora[@]}" --device cpu --out "$work/lora-$quant-cpu"
    test -f "$work/lora-$quant/checkpoints/step-$(printf %07d "$half")/adapter_model.safetensors"
    python3 - "$work" "$quant" "$steps" "$half" <<'PY'
import json, sys
work, quant, steps, half = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def records(run):
    out = {}
    for line in open(f"{work}/{run}/metrics.jsonl"):
        r = json.loads(line)
        out[(r["kind"], r["step"])] = r
    return out

run, resumed, cpu = (records(f"lora-{quant}{s}") for s in ("", "-resumed", "-cpu"))
for key, r in run.items():
    if key[1] > half // 2:
        for k in ("loss", "grad_norm", "val_loss"):
            if k in r and resumed[key][k] != r[k]:
                sys.exit(f"FAIL: LoRA ({quant}) step {key[1]} {k}: {r[k]!r} straight, {resumed[key][k]!r} resumed")
base = records("straight")[("eval", steps)]["val_loss"]
here, ref = run[("eval", half)]["val_loss"], cpu[("eval", half)]["val_loss"]
print(f"LoRA ({quant}): val loss {base:.4f} of the base, {here:.4f} after {half} steps here, {ref:.4f} on the CPU; resumed bit for bit")
if abs(here - ref) > 0.05 * ref:
    sys.exit("FAIL: the LoRA run's validation loss is more than 5% away from the CPU's")
if not here < base:
    sys.exit("FAIL: LoRA did not lower the validation loss")
PY
done
echo "train end to end: PASS"
