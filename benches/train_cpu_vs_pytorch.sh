#!/usr/bin/env bash
# CPU training throughput of `train` against PyTorch + transformers on the identical model,
# batch and sequence length, reading the same shards, in one run.
#
#   benches/train_cpu_vs_pytorch.sh SHARDS [PYTHON] [TRAIN_BINARY]
#
# SHARDS: a byte-tokenizer dataset with blocks of at least 256 (scripts/quickstart.sh makes
# one at target/quickstart/shards). PYTHON must import torch and transformers.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
shards=${1:?usage: train_cpu_vs_pytorch.sh SHARDS [PYTHON] [TRAIN_BINARY]}
python=${2:-python3}
train=${3:-$here/../target/release/train}
threads=$(nproc)
batch=8
seq=256
steps=8
work=$(mktemp -d "${TMPDIR:-/tmp}/train-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

# name preset dim layers heads kv ffn
shapes=("tiny tiny 64 4 4 2 176" "15M 15M 288 6 6 6 768")
printf '%-6s %14s %14s %8s\n' model "train tok/s" "torch tok/s" ratio
for shape in "${shapes[@]}"; do
  read -r name preset dim layers heads kv ffn <<<"$shape"
  # Two warm-up steps, then the timed ones; `train` reports its rate over all steps it ran, so
  # take the difference of two runs' token counts over the difference of their wall times.
  t0=$(date +%s.%N)
  "$train" --shards "$shards" --out "$work/$name-a" --model "$preset" --seq-len $seq --batch-size $batch \
    --steps 2 --no-eval --save-every 0 --quiet --threads "$threads" >/dev/null 2>&1
  t1=$(date +%s.%N)
  "$train" --shards "$shards" --out "$work/$name-b" --model "$preset" --seq-len $seq --batch-size $batch \
    --steps $((steps + 2)) --no-eval --save-every 0 --quiet --threads "$threads" >/dev/null 2>&1
  t2=$(date +%s.%N)
  ours=$(python3 -c "print($steps*$batch*$seq/(($t2-$t1)-($t1-$t0)))")
  theirs=$("$python" "$here/python/torch_train_cpu.py" "$shards" "$dim" "$layers" "$heads" "$kv" "$ffn" \
    $batch $seq $steps "$threads" | python3 -c "import json,sys; print(json.load(sys.stdin)['tokens_per_second'])")
  python3 -c "print(f'{\"$name\":<6} {$ours:14.0f} {$theirs:14.0f} {$ours/$theirs:7.2f}x')"
done
echo "batch $batch x seq $seq, $steps timed steps, $threads threads, fp32, AdamW, grad clip 1.0"
