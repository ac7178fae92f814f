"""Reference pipeline in the style of llm.c's fineweb.py: a multiprocessing Pool with one worker
per CPU encodes documents with tiktoken (imap, chunksize 16), each as [EOT] + encode_ordinary,
and the uint16 arrays are concatenated and written.

    python tiktoken_pipeline.py CORPUS.jsonl TOKENIZER.json OUTDIR

tiktoken cannot download GPT-2 here, so the Encoding is built from the GPT-2 tokenizer.json.
Writes OUTDIR/tiktoken.bin and prints {"tokens": N, "seconds": S} on stdout. S is the wall time
of read + tokenize + write; imports and building the Encoding are not timed.
"""
import json
import multiprocessing as mp
import os
import sys
import time

import numpy as np
import tiktoken

GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT_TEXT = "<|endoftext|>"


def byte_decoder():
    """Inverse of GPT-2's byte-to-printable-character map used in byte-level vocab strings:
    printable Latin-1 bytes stand for themselves, the other bytes for chr(256), chr(257), ..."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {chr(b): b for b in kept}
    extra = 0
    for b in range(256):
        if b not in kept:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def load_encoding(path):
    vocab = json.load(open(path, encoding="utf-8"))["model"]["vocab"]
    decode = byte_decoder()
    ranks = {bytes(decode[c] for c in s): i for s, i in vocab.items() if s != EOT_TEXT}
    eot = vocab[EOT_TEXT]
    return tiktoken.Encoding(
        name="gpt2-from-tokenizer-json",
        pat_str=GPT2_PAT,
        mergeable_ranks=ranks,
        special_tokens={EOT_TEXT: eot},
    )


enc = None  # set in the parent before the Pool forks, so workers inherit it


def tokenize(text):
    ids = [enc.eot_token]
    ids.extend(enc.encode_ordinary(text))
    arr = np.array(ids)
    assert (0 <= arr).all() and (arr < 2**16).all(), "token id does not fit uint16"
    return arr.astype(np.uint16)


def main():
    global enc
    corpus, tokenizer_path, outdir = sys.argv[1:4]
    enc = load_encoding(tokenizer_path)
    os.makedirs(outdir, exist_ok=True)

    start = time.perf_counter()
    with open(corpus, encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f if line.strip()]
    with mp.get_context("fork").Pool(os.cpu_count()) as pool:
        parts = list(pool.imap(tokenize, docs, chunksize=16))
    tokens = np.concatenate(parts)
    tokens.tofile(os.path.join(outdir, "tiktoken.bin"))
    seconds = time.perf_counter() - start

    print(json.dumps({"tokens": int(tokens.size), "seconds": seconds}))


if __name__ == "__main__":
    main()
