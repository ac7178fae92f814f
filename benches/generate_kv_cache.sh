#!/usr/bin/env bash
# Generation speed of `train sample` with the key/value cache against the uncached path
# (--no-kv-cache, which recomputes the whole sequence for every new token), at prompts of 256
# and 1024 tokens, greedy, on one engine.
#
#   benches/generate_kv_cache.sh [DEVICE] [NEW_TOKENS] [TRAIN_DIR]
#
# DEVICE: cpu (default) or cuda[:N]. TRAIN_DIR holds release builds of prep, train and
# example-corpus (default target/release). The model is the 15M preset (dim 288, 6 layers)
# with room for 1,280 positions, trained for one step on the example corpus: the speed of a
# forward pass does not depend on how well the weights are trained. Both paths must print the
# same text (greedy), which the script checks.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
device=${1:-cpu}
new=${2:-32}
bin=${3:-$here/../target/release}
work=$(mktemp -d "${TMPDIR:-/tmp}/generate-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$bin/example-corpus" "$work/corpus" 400 >/dev/null
"$bin/prep" --input "$work/corpus" --block-size 1280 --out "$work/shards" --quiet >/dev/null
"$bin/train" --shards "$work/shards" --out "$work/run" --model 15M --seq-len 1280 \
    --batch-size 1 --steps 1 --no-eval --quiet >/dev/null 2>&1
ck="$work/run/checkpoints/best"
# Byte tokenizer: a prompt of N-1 bytes is N tokens with the BOS.
text=$(cat "$work"/corpus/*.txt | tr -d '\n' | head -c 2000)

printf '%-8s %5s %14s %14s %8s %16s %16s\n' context new "cached tok/s" "uncached tok/s" speedup \
    "cached prefill s" "uncached 1st s"
for ctx in 256 1024; do
    prompt=${text:0:$((ctx - 1))}
    args=(sample --checkpoint "$ck" --prompt "$prompt" --max-new-tokens "$new" --temperature 0
        --device "$device")
    cached_out=$("$bin/train" "${args[@]}" 2>"$work/cached.err")
    uncached_out=$("$bin/train" "${args[@]}" --no-kv-cache 2>"$work/uncached.err")
    if [ "$cached_out" != "$uncached_out" ]; then
        echo "FAIL: at context $ctx the cached and uncached greedy texts differ" >&2
        exit 1
    fi
    # "N new tokens: R tokens/s after the prompt (P tokens, prefill S s); ..."
    rate() { grep -o '[0-9.]* tokens/s after' "$1" | cut -d' ' -f1; }
    prefill() { grep -o 'prefill [0-9.]* s' "$1" | cut -d' ' -f2; }
    c=$(rate "$work/cached.err")
    u=$(rate "$work/uncached.err")
    python3 -c "print(f'{$ctx:<8} {$new:5} {$c:14.1f} {$u:14.1f} {$c/$u:7.1f}x {$(prefill "$work/cached.err"):16.3f} {$(prefill "$work/uncached.err"):16.3f}')"
done
echo "15M preset, greedy, device $device, $(nproc) cores; tok/s: new tokens after the prompt's pass"
