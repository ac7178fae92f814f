#!/usr/bin/env bash
# Benchmark `prep` end to end against two Python reference pipelines on one corpus and one
# GPT-2 tokenizer.json, and check that prep writes the same token ids as Hugging Face.
#
#   benches/prep_vs_python.sh CORPUS.jsonl TOKENIZER.json [PREP_BINARY]
#
# PREP_BINARY defaults to target/release/prep (cargo build --release -p ingot-prep).
# Needs /usr/bin/time (apt-get install -y time) and python3 with tokenizers, tiktoken, numpy.
# Set KEEP_WORK=1 to keep the outputs (printed at the end) instead of deleting them.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
corpus=${1:?usage: prep_vs_python.sh CORPUS TOKENIZER [PREP_BINARY]}
tokenizer=${2:?usage: prep_vs_python.sh CORPUS TOKENIZER [PREP_BINARY]}
prep=${3:-$here/../target/release/prep}
[[ -x /usr/bin/time ]] || { echo "/usr/bin/time missing: apt-get install -y time" >&2; exit 1; }
[[ -x $prep ]] || { echo "no prep binary at $prep: cargo build --release -p ingot-prep" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/prep-bench.XXXXXX")
[[ ${KEEP_WORK:-0} == 1 ]] || trap 'rm -rf "$work"' EXIT

# Run one step under /usr/bin/time -v: stdout -> NAME.json, stderr -> NAME.err, time -> NAME.time.
timed() {
  local name=$1; shift
  echo "running $name ..." >&2
  if ! /usr/bin/time -v -o "$work/$name.time" "$@" >"$work/$name.json" 2>"$work/$name.err"; then
    echo "$name failed:" >&2; cat "$work/$name.err" >&2; exit 1
  fi
}

timed prep "$prep" --input "$corpus" --tokenizer "$tokenizer" --block-size 1024 \
  --out "$work/prep" --force --json --val-fraction 0
echo "running prep tokenizer bench ..." >&2
"$prep" tokenizer bench --tokenizer "$tokenizer" --input "$corpus" --json >"$work/ceiling.json"
timed hf python3 "$here/python/hf_pipeline.py" "$corpus" "$tokenizer" "$work/py"
timed tiktoken python3 "$here/python/tiktoken_pipeline.py" "$corpus" "$tokenizer" "$work/py"

python3 - "$work" <<'PY'
import glob, json, os, re, struct, sys
import numpy as np

work = sys.argv[1]

def load(name):
    report = json.load(open(f"{work}/{name}.json"))
    timing = open(f"{work}/{name}.time").read()
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", timing).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", timing).group(1)
    wall_s = sum(float(x) * 60**i for i, x in enumerate(reversed(wall.split(":"))))
    return report["tokens"], report["seconds"], wall_s, rss_kb / 1024

rows = {"prep": load("prep"), "hf tokenizers": load("hf"), "tiktoken pool": load("tiktoken")}
ref = rows["tiktoken pool"][0] / rows["tiktoken pool"][1]
print(f"{'pipeline':<15} {'tokens':>10} {'seconds':>8} {'tokens/s':>11} {'vs tiktoken':>11} "
      f"{'wall s':>7} {'peak RSS MB':>11}")
for name, (tokens, secs, wall, rss) in rows.items():
    rate = tokens / secs
    print(f"{name:<15} {tokens:>10} {secs:>8.2f} {rate/1e6:>10.2f}M {rate/ref:>10.2f}x "
          f"{wall:>7.2f} {rss:>11.0f}")

ceiling = json.load(open(f"{work}/ceiling.json"))
prep_rate = rows["prep"][0] / rows["prep"][1]
print(f"encode ceiling (prep tokenizer bench, {ceiling['tokens']} tokens): "
      f"1 thread {ceiling['one_thread_tokens_per_second']/1e6:.2f}M tokens/s, "
      f"{ceiling['threads']} threads {ceiling['all_threads_tokens_per_second']/1e6:.2f}M tokens/s")
print(f"prep end to end = {100 * prep_rate / ceiling['all_threads_tokens_per_second']:.0f}% "
      f"of the all-thread encode ceiling")
print("seconds: each pipeline's own read+tokenize+write time (tokenizer load excluded); "
      "wall s: whole process; peak RSS: largest single process (/usr/bin/time -v)")

# Ids: prep's train payload (header_bytes at offset 40 of each shard; uint16 for GPT-2) must
# equal the HF stream (each doc then EOS) up to the tail that did not fill a last block.
index = json.load(open(f"{work}/prep/index.json"))
parts = []
for path in sorted(glob.glob(f"{work}/prep/train-*.bin")):
    raw = open(path, "rb").read()
    (header_bytes,) = struct.unpack_from("<Q", raw, 40)
    parts.append(np.frombuffer(raw[header_bytes:], dtype=np.uint16))
prep_ids = np.concatenate(parts)
hf_ids = np.fromfile(f"{work}/py/hf.bin", dtype=np.uint16)
tt_ids = np.fromfile(f"{work}/py/tiktoken.bin", dtype=np.uint16)
n = len(prep_ids)
same = (index.get("bos_id") is None and n <= len(hf_ids) and len(hf_ids) - n < 1024
        and np.array_equal(prep_ids, hf_ids[:n]))
print(f"ids identical: {'yes' if same else 'no'} (prep bos_id={index.get('bos_id')} "
      f"eos_id={index.get('eos_id')}; {n} prep train tokens vs {len(hf_ids)} HF tokens, "
      f"{len(hf_ids) - n} in the dropped tail)")
if not same:
    m = min(n, len(hf_ids))
    diff = np.nonzero(prep_ids[:m] != hf_ids[:m])[0]
    if len(diff):
        i = int(diff[0])
        print(f"  first difference at token {i}: prep {prep_ids[i:i+8].tolist()} "
              f"hf {hf_ids[i:i+8].tolist()}")
# tiktoken puts EOT before each doc, HF puts EOS after: shift by one to compare.
tt_same = len(tt_ids) == len(hf_ids) and np.array_equal(tt_ids[1:], hf_ids[:-1])
print(f"tiktoken ids identical to HF (shifted by the leading EOT): {'yes' if tt_same else 'no'}")
PY
[[ ${KEEP_WORK:-0} != 1 ]] || echo "outputs kept in $work" >&2
