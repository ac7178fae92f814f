"""Reference side of tests/transformers_reference.rs, run with PyTorch and `transformers`.

logits MODEL_DIR TOKENS_JSON   load MODEL_DIR with AutoModelForCausalLM (float32, eager
                               attention) and print {"shape": [T, V], "logits": [...]} for the
                               token ids in TOKENS_JSON (a JSON list)
generate MODEL_DIR TOKENS_JSON N
                               greedy `generate` of N new tokens after the ids in TOKENS_JSON
                               (float32, eager attention, its KV cache, no stop at EOS); prints
                               {"tokens": [...]} (the new ids only)
make OUT_DIR                   write a random Llama the way transformers users do:
                               bf16 weights, untied embeddings, grouped-query attention,
                               sharded safetensors with model.safetensors.index.json
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM


def logits(model_dir, tokens_path):
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    ids = torch.tensor([json.load(open(tokens_path))], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=ids).logits[0]
    json.dump({"shape": list(out.shape), "logits": out.flatten().tolist()}, sys.stdout)


def generate(model_dir, tokens_path, n):
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    # Exactly n tokens: no early stop at EOS, so both sides produce the same count.
    model.generation_config.eos_token_id = None
    ids = torch.tensor([json.load(open(tokens_path))], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             num_beams=1, use_cache=True, pad_token_id=0)
    json.dump({"tokens": out[0, ids.shape[1]:].tolist()}, sys.stdout)


def make(out_dir):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=259, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=256, eos_token_id=257)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size="100KB")


if __name__ == "__main__":
    if sys.argv[1] == "logits":
        logits(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "generate":
        generate(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        sys.exit(f"unknown mode {sys.argv[1]}")
