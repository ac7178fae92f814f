"""Reference pipeline, the way nanoGPT / Hugging Face users prepare data: read a jsonl corpus,
encode it with `tokenizers` `encode_batch`, append EOS after every document, write uint16 .bin.

    python hf_pipeline.py CORPUS.jsonl TOKENIZER.json OUTDIR

Writes OUTDIR/hf.bin and prints {"tokens": N, "seconds": S} on stdout. S is the wall time of
read + tokenize + write; imports and loading the tokenizer are not timed.
"""
import json
import os
import sys
import time

import numpy as np
from tokenizers import Tokenizer

EOS = 50256  # GPT-2 <|endoftext|>
BATCH = 1024  # documents per encode_batch call


def main():
    corpus, tokenizer_path, outdir = sys.argv[1:4]
    tok = Tokenizer.from_file(tokenizer_path)
    tok.no_truncation()
    tok.no_padding()
    os.makedirs(outdir, exist_ok=True)

    start = time.perf_counter()
    with open(corpus, encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f if line.strip()]
    parts = []
    for i in range(0, len(docs), BATCH):
        for enc in tok.encode_batch(docs[i : i + BATCH], add_special_tokens=False):
            ids = enc.ids
            ids.append(EOS)
            parts.append(np.array(ids, dtype=np.uint16))
    tokens = np.concatenate(parts)
    tokens.tofile(os.path.join(outdir, "hf.bin"))
    seconds = time.perf_counter() - start

    print(json.dumps({"tokens": int(tokens.size), "seconds": seconds}))


if __name__ == "__main__":
    main()
