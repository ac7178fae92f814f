#!/usr/bin/env bash
# What data parallelism over MPI costs per optimizer step on the CPU: the 15M preset (GPT-2
# vocabulary, so 15.4M parameters and a 62 MB gradient all-reduce per step) at micro-batch 4 of
# 256 tokens, one thread per rank, run as `mpirun -np 1` and as `mpirun -np 2`.
#
#   benches/collectives_cpu.sh TOKENIZER_JSON [STEPS] [TRAIN_DIR]
#
# Each rank does the same work in both runs (one micro-batch of 4 per step), so the difference
# in seconds per step is what the second rank adds: the all-reduce of the gradients and the two
# small agreements (loss and stop flag), plus the two processes contending for memory bandwidth
# on the same machine; an upper bound on the collectives alone. TRAIN_DIR holds release builds of
# example-corpus, prep and a train built with `--features mpi` (default target/release).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tok=${1:?usage: benches/collectives_cpu.sh TOKENIZER_JSON [STEPS] [TRAIN_DIR]}
steps=${2:-12}
bin=${3:-$here/../target/release}
work=$(mktemp -d "${TMPDIR:-/tmp}/collectives-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$bin/example-corpus" "$work/corpus" 400 >/dev/null
"$bin/prep" --input "$work/corpus" --tokenizer "$tok" --block-size 256 --out "$work/shards" --quiet >/dev/null

# Seconds per step of a run, from its last metrics line (tokens / tokens per second / steps).
per_step() { # run_dir np
    python3 - "$1" "$2" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl") if '"train"' in l]
last = lines[-1]
print(f"{last['tokens'] / last['tokens_per_second'] / last['step']:.4f}")
EOF
}

printf '%-6s %12s %14s\n' ranks "s per step" "tokens/s"
for np in 1 2; do
    mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$np" "$bin/train" \
        --shards "$work/shards" --out "$work/run-$np" --model 15M --seq-len 256 --batch-size 4 \
        --steps "$steps" --threads 1 --no-eval --save-every 0 --log-every 1 --quiet >/dev/null
    s=$(per_step "$work/run-$np" "$np")
    tps=$(python3 -c "import json; l=[json.loads(x) for x in open('$work/run-$np/metrics.jsonl') if '\"train\"' in x][-1]; print(round(l['tokens_per_second']))")
    printf '%-6s %12s %14s\n' "$np" "$s" "$tps"
done
