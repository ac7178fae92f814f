"""Reference side of tests/peft_reference.rs, run with PyTorch, `transformers` and `peft`.

logits BASE_DIR ADAPTER_DIR TOKENS_JSON
        load BASE_DIR with AutoModelForCausalLM (float32, eager attention), put the LoRA
        adapter of ADAPTER_DIR on it with PeftModel.from_pretrained (as a user continuing
        from an ingot run would), and print {"shape": [T, V], "logits": [...], "lora_modules": N,
        "saved_modules": [...]} for the ids in TOKENS_JSON (a JSON list)
"""
import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def logits(base_dir, adapter_dir, tokens_path):
    base = AutoModelForCausalLM.from_pretrained(
        base_dir, torch_dtype=torch.float32, attn_implementation="eager")
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
    else:
        sys.exit(f"unknown mode {sys.argv[1]}")
