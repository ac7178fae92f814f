#!/usr/bin/env bash
# GPU training throughput of `train` (CUDA engine, bf16) against PyTorch on the identical model
# (transformers' LlamaForCausalLM, bf16 autocast, SDPA attention, fused AdamW), eager and with
# torch.compile, reading the same shards, in one run on one GPU. Prints tokens/s, model FLOPs
# utilisation against the GPU's bf16 matmul rate measured in the same run, and device memory
# (benches/python/gpu_summary.py says how each is computed).
#
#   benches/train_gpu_vs_pytorch.sh SHARDS [PYTHON] [TRAIN_BINARY]
#
# SHARDS: a dataset with blocks of at least SEQ tokens, ideally with the GPT-2 vocabulary the
# 124M preset is meant for (scripts/gpu-check.sh makes one from the example corpus). PYTHON
# must import torch (with CUDA), numpy and transformers. Settings, from the environment:
# the shape DIM (768), LAYERS (12), HEADS (12), KV_HEADS (12), FFN (2048), the 124M preset's,
# passed to both sides (to `train` as overrides, so the two models are the same by
# construction), BATCH (16), SEQ (1024), WARMUP (5 steps, not timed; they include kernel and
# torch.compile compilation), STEPS (30 timed steps), RESULTS (directory for the logs, JSON
# and summary; default a fresh temporary one), RUN_TIMEOUT (seconds per run, 300), and
# DEVICE=cpu to check the harness itself on a machine without a GPU (both sides on the CPU in
# f32 for `train`, under bf16 autocast for PyTorch; no matmul rate, so no MFU).
# Exit status: 0 when every run finished, 1 otherwise (the summary is printed either way).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
shards=${1:?usage: train_gpu_vs_pytorch.sh SHARDS [PYTHON] [TRAIN_BINARY]}
python=${2:-python3}
train=${3:-$here/../target/release/train}
DIM=${DIM:-768}
LAYERS=${LAYERS:-12}
HEADS=${HEADS:-12}
KV_HEADS=${KV_HEADS:-12}
FFN=${FFN:-2048}
BATCH=${BATCH:-16}
SEQ=${SEQ:-1024}
WARMUP=${WARMUP:-5}
STEPS=${STEPS:-30}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
DEVICE=${DEVICE:-cuda}
case "$DEVICE" in
    cuda) dtype=bf16 ;;
    cpu) dtype=f32 ;;
    *) echo "error: DEVICE must be cuda or cpu, not $DEVICE" >&2; exit 2 ;;
esac
export WARMUP
results=${RESULTS:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-bench.XXXXXX")}
mkdir -p "$results"
[ "$WARMUP" -ge 1 ] || { echo "error: WARMUP must be at least 1" >&2; exit 2; }
failed=0
vocab=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["vocab_size"])' "$shards/index.json") ||
    { echo "error: $shards/index.json is not a dataset index" >&2; exit 2; }
cat >"$results/shape.json" <<JSON
{"dim": $DIM, "n_layers": $LAYERS, "n_heads": $HEADS, "n_kv_heads": $KV_HEADS, "ffn_dim": $FFN,
 "vocab_size": $vocab, "batch_size": $BATCH, "seq_len": $SEQ, "dtype": "$dtype"}
JSON

rm -f "$results/matmul.json"
if [ "$DEVICE" = cuda ]; then
    echo "== bf16 matmul rate"
    timeout "$RUN_TIMEOUT" "$python" "$here/python/torch_train_gpu.py" matmul >"$results/matmul.json" 2>"$results/matmul.log" ||
        { echo "matmul probe FAILED (see $results/matmul.log)"; rm -f "$results/matmul.json"; failed=1; }
    cat "$results/matmul.json" 2>/dev/null
fi

echo "== ingot: $train --device $DEVICE --dtype $dtype, $WARMUP + $STEPS steps"
rm -rf "$results/ingot"
timeout "$RUN_TIMEOUT" "$train" --shards "$shards" --out "$results/ingot" --model 124M \
    --dim "$DIM" --n-layers "$LAYERS" --n-heads "$HEADS" --n-kv-heads "$KV_HEADS" \
    --ffn-dim "$FFN" --tie-embeddings true --seq-len "$SEQ" --batch-size "$BATCH" --steps $((WARMUP + STEPS)) --lr 6e-4 \
    --device "$DEVICE" --dtype "$dtype" --no-eval --save-every 0 --log-every 1 --quiet \
    >"$results/ingot.log" 2>&1 || { echo "ingot FAILED (see $results/ingot.log):"; tail -5 "$results/ingot.log"; failed=1; }
# The final checkpoint is not part of the measurement; drop it to keep the results small.
rm -rf "$results/ingot/checkpoints"

for mode in eager compile; do
    flag=""
    [ "$mode" = compile ] && flag=--compile
    echo "== torch $mode"
    timeout "$RUN_TIMEOUT" "$python" "$here/python/torch_train_gpu.py" train "$shards" --dim "$DIM" \
        --layers "$LAYERS" --heads "$HEADS" --kv-heads "$KV_HEADS" --ffn "$FFN" --batch "$BATCH" \
        --seq "$SEQ" --warmup "$WARMUP" --steps "$STEPS" --device "$DEVICE" $flag \
        >"$results/torch-$mode.json" 2>"$results/torch-$mode.log" ||
        { echo "torch $mode FAILED (see $results/torch-$mode.log):"; tail -5 "$results/torch-$mode.log"; rm -f "$results/torch-$mode.json"; failed=1; }
done

echo
echo "== summary ($results)"
"$python" "$here/python/gpu_summary.py" "$results" || failed=1
exit $failed
