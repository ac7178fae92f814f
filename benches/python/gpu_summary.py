"""Summary of benches/train_gpu_vs_pytorch.sh: reads the results directory it filled and prints
tokens/s, model FLOPs utilisation and device memory for `train` and PyTorch, then writes
summary.json beside them.

    python gpu_summary.py RESULTS_DIR

RESULTS_DIR holds shape.json (the model and batch both sides trained), matmul.json
(torch_train_gpu.py matmul), ingot/ (the run directory of `train`: config.json and
metrics.jsonl), torch-eager.json and torch-compile.json. A missing or
failed run is reported as such; the others are still summarised.

FLOPs per token (the PaLM / nanoGPT convention): 6 x (parameters that take part in a matrix
product: every layer's q, k, v, o, gate, up and down projections and the LM head; the
embedding lookup does none) + 12 x layers x seq x (heads x head_dim) for the attention scores
and their product with V, forward and backward, without discounting the causal mask. MFU is
tokens/s x FLOPs per token over the bf16 matmul rate measured on the same GPU in the same run.
"""
import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def flops_per_token(m, seq):
    d, f, L, v = m["dim"], m["ffn_dim"], m["n_layers"], m["vocab_size"]
    hd = d // m["n_heads"]
    qd, kvd = m["n_heads"] * hd, m["n_kv_heads"] * hd
    matmul_params = L * (2 * d * qd + 2 * d * kvd + 3 * d * f) + v * d
    return 6 * matmul_params + 12 * L * seq * qd, matmul_params


def ingot_result(run_dir, warmup):
    """Steady-state tokens/s of `train` from its metrics: each train record's tokens_per_second
    is the mean rate since the start of the loop, so the time at step k is k x step_tokens /
    rate_k, and the timed steps are those after `warmup`."""
    config = load(os.path.join(run_dir, "config.json"))
    if config is None:
        return None
    records = []
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            records = [json.loads(l) for l in f if l.strip()]
    except (OSError, ValueError):
        pass
    train = [r for r in records if r.get("kind") == "train"]
    if len(train) <= warmup:
        return None
    step_tokens = config["batch_size"] * config["grad_accum"] * config["seq_len"]
    at = {r["step"]: r["step"] * step_tokens / r["tokens_per_second"] for r in train}
    first, last = train[warmup - 1]["step"], train[-1]["step"]
    seconds = at[last] - at[first]
    mem = [r["device_memory_bytes"] for r in train if "device_memory_bytes" in r]
    return {
        "engine": f"ingot ({config.get('dtype', 'f32')})",
        "tokens_per_second": (last - first) * step_tokens / seconds,
        "steps": last - first,
        "seconds": seconds,
        "device_memory_bytes": max(mem) if mem else None,
        "first_loss": train[0]["loss"],
        "last_loss": train[-1]["loss"],
        "model": config["model"],
    }


def main():
    results = sys.argv[1]
    warmup = int(os.environ.get("WARMUP", "5"))
    matmul = load(os.path.join(results, "matmul.json"))
    config = load(os.path.join(results, "shape.json"))
    if config is None:
        sys.exit(f"error: {results}/shape.json missing")
    m = {k: config[k] for k in ["dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size"]}
    ours = ingot_result(os.path.join(results, "ingot"), warmup)
    if ours is not None:
        used = ours.pop("model")
        trained = {k: used[k] for k in m}
        if trained != m:
            sys.exit(f"error: train used {trained}, not the benchmark's shape {m}")
    fpt, matmul_params = flops_per_token(m, config["seq_len"])
    rate = matmul["bf16_matmul_flops"] if matmul else None
    rows = [("ingot", ours), ("torch eager", load(os.path.join(results, "torch-eager.json"))),
            ("torch.compile", load(os.path.join(results, "torch-compile.json")))]
    compiled = rows[2][1]
    print(f"model {config.get('dtype', 'f32')}: dim {m['dim']}, {m['n_layers']} layers, "
          f"{m['n_heads']}/{m['n_kv_heads']} heads, ffn {m['ffn_dim']}, vocab {m['vocab_size']}; "
          f"batch {config['batch_size']} x seq {config['seq_len']}; "
          f"{matmul_params / 1e6:.1f}M matmul parameters, {fpt / 1e9:.3f} GFLOP per token")
    if rate:
        print(f"bf16 matmul rate (8192^3, median of 50): {rate / 1e12:.1f} TFLOP/s")

    def cell(x, width, spec, unit=""):
        return (format(x, spec) + unit if x is not None else "-").rjust(width)

    print(f"{'engine':<16} {'tokens/s':>10} {'MFU':>7} {'device mem':>11} {'vs compile':>10} "
          f"{'first loss':>10} {'last loss':>10}")
    summary = {"flops_per_token": fpt, "matmul_parameters": matmul_params,
               "bf16_matmul_flops": rate, "model": m, "dtype": config.get("dtype"),
               "batch_size": config["batch_size"], "seq_len": config["seq_len"], "runs": {}}
    for name, r in rows:
        if r is None:
            print(f"{name:<16} FAILED (see its log)")
            continue
        tps = r["tokens_per_second"]
        mfu = tps * fpt / rate if rate else None
        mem = r.get("device_memory_bytes")
        ratio = tps / compiled["tokens_per_second"] if compiled else None
        r = dict(r, mfu=mfu, vs_torch_compile=ratio)
        summary["runs"][name] = r
        print(f"{r.get('engine', name):<16} {tps:>10.0f} "
              f"{cell(mfu and 100 * mfu, 7, '.1f', '%')} "
              f"{cell(mem and mem / 2**30, 11, '.2f', ' GiB')} {cell(ratio, 10, '.2f', 'x')} "
              f"{cell(r.get('first_loss'), 10, '.3f')} {cell(r.get('last_loss'), 10, '.3f')}")
    with open(os.path.join(results, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
