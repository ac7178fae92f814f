"""Reference side of tests/peft_reference.rs, run with PyTorch, `transformers` and `peft`.

logits BASE_DIR ADAPTER_DIR TOKENS_JSON
        load BASE_DIR with AutoModelForCausalLM (float32, eager attention), put the LoRA
        adapter of ADAPTER_DIR on it with PeftModel.from_pretrained (as a user continuing
        from an ingot run would), and print {"shape": [T, V], "logits": [...], "lora_modules": N,
        "saved_modules": [...]} for the ids in TOKENS_JSON (a JSON list)
qlogits BASE_DIR ADAPTER_DIR TOKENS_JSON DOUBLE
        the same on a QLoRA base: first every linear layer of the blocks is replaced by its
        NF4 round trip through bitsandbytes (quantize_4bit with blocks of 64, double
        quantisation when DOUBLE is 1, then dequantize_4bit, in f32), the weights a 4-bit
        base computes with; the products then run in f32 (bitsandbytes' own 4-bit CPU
        matmul computes in bf16, too coarse for a 1e-5 comparison)
"""
import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def nf4_round_trip(model, double):
    import bitsandbytes.functional as F
    for layer in model.model.layers:
        for module in [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                       layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj,
                       layer.mlp.down_proj]:
            # Flattened: the blocks of 64 run over the row-major weight, as bitsandbytes'
            # CUDA kernels and ours take them. (Its CPU dequantize_4bit of a 2-D state whose
            # rows are not whole blocks, e.g. down_proj's 176 columns here, puts the blocks
            # elsewhere than its quantize_4bit did.)
            w = module.weight.data
            q, state = F.quantize_4bit(w.flatten(), blocksize=64, quant_type="nf4",
                                       compress_statistics=double)
            back = F.dequantize_4bit(q, state).to(torch.float32)
            module.weight.data = back.reshape(w.shape)


def logits(base_dir, adapter_dir, tokens_path, quantize=None):
    base = AutoModelForCausalLM.from_pretrained(
        base_dir, torch_dtype=torch.float32, attn_implementation="eager")
    if quantize is not None:
        nf4_round_trip(base, quantize)
    model = PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    # What PEFT made of the adapter, so the Rust side can see it did not load it empty.
    lora_modules = sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A"))
    saved = sorted({n.split(".")[-3] for n, _ in model.named_modules()
                    if n.endswith(".modules_to_save.default")})
    ids = torch.tensor([json.load(open(tokens_path))], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=ids).logits[0]
    json.dump({"shape": list(out.shape), "logits": out.flatten().tolist(),
               "lora_modules": lora_modules, "saved_modules": saved}, sys.stdout)


if __name__ == "__main__":
    if sys.argv[1] == "logits":
        logits(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "qlogits":
        logits(sys.argv[2], sys.argv[3], sys.argv[4], quantize=sys.argv[5] == "1")
    else:
        sys.exit(f"unknown mode {sys.argv[1]}")
