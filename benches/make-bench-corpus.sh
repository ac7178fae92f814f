#!/usr/bin/env bash
# Build a deterministic ~40 MB English jsonl benchmark corpus from Debian's `fortunes` and
# `dict-jargon` packages: one {"text": ...} object per line, each one fortune or one Jargon
# File entry, the whole list cycled in a fixed order until the target size is reached.
#
#   apt-get install -y fortunes dict-jargon
#   benches/make-bench-corpus.sh /work/bench/corpus/bench.jsonl [TARGET_BYTES]
#
# The corpus is third-party text: keep it outside the repository and never commit it.
set -euo pipefail

out=${1:?usage: make-bench-corpus.sh OUT.jsonl [TARGET_BYTES]}
target=${2:-40000000}
fortunes=/usr/share/games/fortunes
jargon=/usr/share/dictd/jargon
[[ -d $fortunes && -f $jargon.dict.dz && -f $jargon.index ]] ||
  { echo "missing corpus sources; run: apt-get install -y fortunes dict-jargon" >&2; exit 1; }
mkdir -p "$(dirname "$out")"

python3 - "$fortunes" "$jargon" "$out" "$target" <<'PY'
import gzip, json, os, sys

fortune_dir, jargon, out, target = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
docs = []

# Fortunes: plain files (not .dat indexes, not .u8 symlinks), sorted by name; "%" lines
# separate the fortunes.
for name in sorted(os.listdir(fortune_dir)):
    path = os.path.join(fortune_dir, name)
    if "." in name or os.path.islink(path) or not os.path.isfile(path):
        continue
    text = open(path, "rb").read().decode("utf-8", errors="replace")
    for piece in text.split("\n%\n"):
        piece = piece.strip("\n%")
        if piece.strip():
            docs.append(piece)

# Jargon File: the dictd index gives each entry's offset and length (base64 numbers) into
# the uncompressed .dict; several headwords can share one entry, so keep unique offsets.
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
def b64num(s):
    n = 0
    for c in s:
        n = n * 64 + B64.index(c)
    return n
data = gzip.open(jargon + ".dict.dz").read()
entries = {}
for line in open(jargon + ".index", encoding="utf-8"):
    word, off, length = line.rstrip("\n").split("\t")[:3]
    if not word.startswith("00-database"):
        entries[b64num(off)] = b64num(length)
for off in sorted(entries):
    text = data[off:off + entries[off]].decode("utf-8", errors="replace").strip("\n")
    if text.strip():
        docs.append(text)

# Cycle the documents in this fixed order until the file reaches the target size.
written = cycles = 0
with open(out, "w", encoding="utf-8") as f:
    while written < target:
        for d in docs:
            line = json.dumps({"text": d}, ensure_ascii=False) + "\n"
            f.write(line)
            written += len(line.encode("utf-8"))
            if written >= target:
                break
        cycles += 1
print(f"{out}: {written} bytes, {len(docs)} unique documents, {cycles} cycle(s)", file=sys.stderr)
PY
