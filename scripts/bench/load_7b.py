"""Peak host memory of loading a 7B-shape LLaMA checkpoint (LVM's 7B: vocab 8292, hidden 4096,
intermediate 11008, 32 layers, 32 heads; f16, sharded safetensors, random weights).

    python3 scripts/bench/load_7b.py make DIR     # writes config.json + shards + index (13.5 GB)
    python3 scripts/bench/load_7b.py torch DIR    # transformers' from_pretrained onto the GPU

`torch` prints one JSON line like `llama_bench_gpu --load DIR` does: the files' size and the
process's peak resident memory (VmHWM) before and after loading, for the same checkpoint.
"""
import json
import os
import sys
import time

import torch


def status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 8292,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "torch_dtype": "float16",
}


def make(out):
    from safetensors.torch import save_file

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
    h, i, v, layers = 4096, 11008, 8292, 32
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float32) * 0.02).to(torch.float16)

    shards, weight_map, shard, size = [], {}, {}, 0

    def flush():
        nonlocal shard, size
        name = f"model-{len(shards) + 1:05d}.safetensors"
        save_file(shard, os.path.join(out, name), metadata={"format": "pt"})
        for k in shard:
            weight_map[k] = name
        shards.append(name)
        shard, size = {}, 0

    def add(name, t):
        nonlocal size
        shard[name] = t
        size += t.numel() * 2
        if size >= 4 << 30:
            flush()

    add("model.embed_tokens.weight", rand(v, h))
    for l in range(layers):
        p = f"model.layers.{l}."
        for n in ["q_proj", "k_proj", "v_proj", "o_proj"]:
            add(p + f"self_attn.{n}.weight", rand(h, h))
        add(p + "mlp.gate_proj.weight", rand(i, h))
        add(p + "mlp.up_proj.weight", rand(i, h))
        add(p + "mlp.down_proj.weight", rand(h, i))
        add(p + "input_layernorm.weight", torch.ones(h, dtype=torch.float16))
        add(p + "post_attention_layernorm.weight", torch.ones(h, dtype=torch.float16))
    add("model.norm.weight", torch.ones(h, dtype=torch.float16))
    add("lm_head.weight", rand(v, h))
    if shard:
        flush()
    total = sum(os.path.getsize(os.path.join(out, s)) for s in shards)
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    print(json.dumps({"made": out, "shards": len(shards), "file_bytes": total}))


def load_torch(d):
    from transformers import LlamaForCausalLM

    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    files = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".safetensors"))
    before = status_bytes("VmHWM")
    t = time.time()
    try:
        model = LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.float16, device_map="cuda")
        how = "device_map=cuda"
    except Exception as e:  # accelerate missing: load on the host, then move
        print(f"device_map failed ({e}); loading on the host", file=sys.stderr)
        model = LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.float16).cuda()
        how = "host then .cuda()"
    torch.cuda.synchronize()
    secs = time.time() - t
    peak = status_bytes("VmHWM")
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({
        "load": d, "reference": "transformers " + how, "params": params, "file_bytes": files,
        "peak_rss_before": before, "peak_rss": peak, "rss_after": status_bytes("VmRSS"),
        "peak_over_file": round(peak / files, 3), "seconds": round(secs, 2),
    }))


if __name__ == "__main__":
    {"make": make, "torch": load_torch}[sys.argv[1]](sys.argv[2])
