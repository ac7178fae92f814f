"""PyTorch side of benches/train_cpu_vs_pytorch.sh: trains transformers' LlamaForCausalLM on the
CPU with the same shape, batch and sequence length as `train`, reading the same shards, and
prints {"tokens_per_second": ..., "steps": ..., "seconds": ...} for the timed steps.

    python torch_train_cpu.py SHARDS DIM LAYERS HEADS KV_HEADS FFN BATCH SEQ STEPS THREADS
"""
import json
import sys
import time

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

shards, dim, layers, heads, kv, ffn, batch, seq, steps, threads = sys.argv[1:11]
dim, layers, heads, kv, ffn, batch, seq, steps, threads = map(
    int, (dim, layers, heads, kv, ffn, batch, seq, steps, threads))
torch.set_num_threads(threads)
torch.manual_seed(0)

index = json.load(open(f"{shards}/index.json"))
blocks = np.concatenate([
    np.memmap(f"{shards}/{s['file']}", dtype=index["dtype"], mode="r", offset=index["header_bytes"])
    for s in index["splits"]["train"]["shards"]
]).reshape(-1, index["block_size"])[:, :seq]

config = LlamaConfig(
    vocab_size=index["vocab_size"], hidden_size=dim, intermediate_size=ffn,
    num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
    max_position_embeddings=max(seq, 256), rms_norm_eps=1e-5, rope_theta=10000.0,
    tie_word_embeddings=True)
model = LlamaForCausalLM(config)
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
rng = np.random.default_rng(0)


def step():
    rows = rng.integers(0, len(blocks), size=batch)
    ids = torch.from_numpy(blocks[rows].astype(np.int64))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


for _ in range(2):  # warm-up
    step()
start = time.perf_counter()
for _ in range(steps):
    step()
seconds = time.perf_counter() - start
print(json.dumps({"tokens_per_second": steps * batch * seq / seconds, "steps": steps, "seconds": seconds}))
