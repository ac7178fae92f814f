"""PyTorch side of benches/train_gpu_vs_pytorch.sh, on one CUDA GPU.

    python torch_train_gpu.py matmul
        Measures the GPU's dense bf16 matmul rate (the MFU denominator): the median of 50
        timed 8192 x 8192 x 8192 products after 10 warm-up ones, timed with CUDA events.
        Prints {"bf16_matmul_flops": ...}.

    python torch_train_gpu.py train SHARDS --dim D --layers L --heads H --kv-heads K --ffn F
                                    --batch B --seq T --warmup W --steps S [--compile]
        Trains transformers' LlamaForCausalLM with exactly `train`'s shape (tied embeddings,
        rope_theta 1e4, rms_norm_eps 1e-5), with f32 master weights under bf16 autocast,
        scaled_dot_product_attention (attn_implementation="sdpa"), fused AdamW (betas 0.9/0.95,
        eps 1e-8, weight decay 0.1 on the matrices only, as `train`), global-norm clipping at
        1.0, and, with --compile, torch.compile. Reads the same shards with numpy memmap, in
        order. W warm-up steps (which include compilation), then S timed steps between two
        device synchronizations. Prints {"tokens_per_second", "device_memory_bytes" (total - free
        after the run, as `train` reports), "max_allocated_bytes", "max_reserved_bytes",
        "first_loss", "last_loss", ...}. `--device cpu` runs the same code on the CPU, to
        check the script on a machine without a GPU (no memory figures).
"""
import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch


def matmul_rate():
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(10):
        a @ b
    times = []
    for _ in range(50):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    seconds = statistics.median(times)
    return {"bf16_matmul_flops": 2 * n**3 / seconds, "matmul_seconds_median": seconds}


def train_blocks(shards, seq):
    """All train blocks of a dataset written by `prep`, cropped to `seq` tokens (FORMAT.md:
    each shard is a header of `header_bytes`, then blocks of `block_size` ids of `dtype`)."""
    index = json.load(open(f"{shards}/index.json"))
    parts = [
        np.memmap(f"{shards}/{s['file']}", dtype=index["dtype"], mode="r",
                  offset=index["header_bytes"]).reshape(-1, index["block_size"])
        for s in index["splits"]["train"]["shards"]
    ]
    return index, [p[:, :seq] for p in parts]


def train(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    index, parts = train_blocks(args.shards, args.seq)
    blocks = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if len(blocks) < args.batch:
        sys.exit(f"error: {args.shards} has {len(blocks)} train blocks, fewer than --batch {args.batch}")
    config = LlamaConfig(
        vocab_size=index["vocab_size"], hidden_size=args.dim, intermediate_size=args.ffn,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, max_position_embeddings=max(args.seq, 1024),
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
        attn_implementation="sdpa")
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    model = LlamaForCausalLM(config).to(dev)
    model.train()
    embed = model.get_input_embeddings().weight
    decay = [p for p in model.parameters() if p.dim() >= 2 and p is not embed]
    no_decay = [p for p in model.parameters() if p.dim() < 2 or p is embed]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    forward = torch.compile(model) if args.compile else model

    cursor = 0

    def next_batch():
        nonlocal cursor
        if cursor + args.batch > len(blocks):
            cursor = 0
        rows = blocks[cursor:cursor + args.batch]
        cursor += args.batch
        ids = torch.from_numpy(rows.astype(np.int64))
        return ids.pin_memory().to(dev, non_blocking=True) if cuda else ids

    def step():
        ids = next_batch()
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = forward(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    first = None
    warm_start = time.perf_counter()
    for _ in range(args.warmup):
        loss = step()
        first = loss.item() if first is None else first
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    warm_seconds = time.perf_counter() - warm_start
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    seconds = time.perf_counter() - start
    free, total = torch.cuda.mem_get_info() if cuda else (0, 0)
    return {
        "engine": "torch.compile" if args.compile else "torch eager",
        "tokens_per_second": args.steps * args.batch * args.seq / seconds,
        "steps": args.steps,
        "seconds": seconds,
        "warmup_seconds": warm_seconds,
        "device_memory_bytes": total - free if cuda else None,
        "max_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "max_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None,
        "first_loss": first,
        "last_loss": loss.item(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if cuda else None,
    }


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("matmul")
    t = sub.add_parser("train")
    t.add_argument("shards")
    for name in ["dim", "layers", "heads", "kv-heads", "ffn", "batch", "seq", "warmup", "steps"]:
        t.add_argument(f"--{name}", type=int, required=True)
    t.add_argument("--compile", action="store_true")
    t.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if getattr(args, "device", "cuda") == "cuda" and not torch.cuda.is_available():
        sys.exit("error: torch sees no CUDA GPU")
    print(json.dumps(matmul_rate() if args.cmd == "matmul" else train(args)))


if __name__ == "__main__":
    main()
