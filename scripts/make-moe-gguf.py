#!/usr/bin/env python3
"""Write a `qwen3moe` GGUF model file with random weights, of a chosen shape and expert type.

Both expertslab (`demo --device cuda --model FILE`, the decode benchmark) and llama.cpp
(`llama-bench -m FILE`) read the file, so the two can be measured on the same model.

Usage:
    python3 scripts/make-moe-gguf.py OUT.gguf [--layers 4] [--experts 128] [--top-k 8]
        [--hidden 2048] [--expert-ffn 768] [--heads 32] [--kv-heads 4] [--head-dim 128]
        [--vocab 1024] [--expert-type bf16|f32|q8_0|q4_k|q6_k|q4_k_m] [--seed 1]

The defaults are the MoE shape of Qwen3-30B-A3B with 4 layers (128 experts of 9 MiB in BF16,
top-8). Needs numpy and PyPI's `gguf` package (tested with gguf 0.19.0); set PYTHONPATH to a
folder holding them when they are not installed.

What is in the file: `tokenizer.ggml.model = "none"` with `qwen3moe.vocab_size` (dummy tokens,
enough for `llama-bench`), token embeddings, per block the attention (q, k, v, output, q and k
norms) and RMS norms in F32, the router (`ffn_gate_inp`, F32) and the expert stacks
`ffn_{gate,up,down}_exps` in the expert type; the output norm and head. Q8_0 experts are
quantized by gguf's own quantizer. gguf has no Q4_K or Q6_K quantizer, so those blocks hold
random codes under fixed scales chosen so the weights span about the same range (valid blocks
of a random model, which is all a speed comparison needs). `q4_k_m` mixes them as llama.cpp's
Q4_K_M files do for experts: gate and up in Q4_K, down in Q6_K. Weights are uniform in +-sqrt(3 / fan-in) (norm weights 1), from numpy's
PCG64 seeded with --seed: the same arguments give the same file.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

try:
    import gguf
except ImportError as e:  # pragma: no cover - a message, not a feature
    sys.exit(f"make-moe-gguf: the `gguf` package is needed ({e}); pip install gguf, or set PYTHONPATH")

EXPERT_TYPES = {
    "bf16": gguf.GGMLQuantizationType.BF16,
    "f32": gguf.GGMLQuantizationType.F32,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "q4_k": gguf.GGMLQuantizationType.Q4_K,
    "q6_k": gguf.GGMLQuantizationType.Q6_K,
    "q4_k_m": gguf.GGMLQuantizationType.Q4_K,
}
FILE_TYPES = {
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "f32": gguf.LlamaFileType.ALL_F32,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_k": gguf.LlamaFileType.MOSTLY_Q4_K_M,
    "q6_k": gguf.LlamaFileType.MOSTLY_Q6_K,
    "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M,
}
# Bytes per element of each expert type (a block's bytes over its elements).
ELEMENT_BYTES = {"bf16": 2, "f32": 4, "q8_0": 34 / 32, "q4_k": 144 / 256, "q6_k": 210 / 256}
BLOCK = {"q8_0": 32, "q4_k": 256, "q6_k": 256, "q4_k_m": 256}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--experts", type=int, default=128)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--expert-ffn", type=int, default=768)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--expert-type", choices=sorted(EXPERT_TYPES), default="bf16")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    for name in ("layers", "experts", "top_k", "hidden", "expert_ffn", "heads", "kv_heads", "head_dim", "vocab"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if a.top_k > a.experts:
        p.error("--top-k must not exceed --experts")
    if a.heads % a.kv_heads:
        p.error("--heads must be a multiple of --kv-heads")
    block = BLOCK.get(a.expert_type, 1)
    if a.hidden % block or a.expert_ffn % block:
        p.error(f"{a.expert_type} experts need --hidden and --expert-ffn to be multiples of {block} (its block)")
    return a


class Weights:
    """Uniform weights in +-sqrt(3 / fan-in) as float32, from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def f32(self, *shape: int) -> np.ndarray:
        scale = np.float32(np.sqrt(3.0 / shape[-1]))
        out = self.rng.random(shape, dtype=np.float32)
        out *= 2 * scale
        out -= scale
        return out

    def k_quant(self, qtype: gguf.GGMLQuantizationType, experts: int, rows: int, cols: int) -> np.ndarray:
        """Q4_K or Q6_K blocks of random codes whose weights span about +-sqrt(3 / cols): Q4_K's
        d·sc·q − dmin·m reaches 63·15 steps of d, Q6_K's d·sc·(q − 32) 127·32 steps."""
        block, at, steps = (144, (0, 2), 63 * 15) if qtype == gguf.GGMLQuantizationType.Q4_K else (210, (208,), 127 * 32)
        blocks = self.rng.integers(0, 256, size=(experts, rows, cols // 256, block), dtype=np.uint8)
        scale = np.array([np.sqrt(3.0 / cols) / steps], dtype=np.float16).view(np.uint8)
        for i in at:
            blocks[..., i:i + 2] = scale
        return blocks.reshape(experts, rows, cols // 256 * block)

    def bf16(self, *shape: int) -> np.ndarray:
        """BF16 bit patterns (round to nearest even) of `f32(*shape)`, as uint16."""
        bits = self.f32(*shape).view(np.uint32)
        rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
        return (rounded >> np.uint32(16)).astype(np.uint16)


def main() -> None:
    a = parse()
    w = Weights(a.seed)
    arch = "qwen3moe"
    out = gguf.GGUFWriter(a.out, arch)
    out.add_name(f"expertslab random {arch} {a.layers}x{a.experts}")
    out.add_context_length(a.context)
    out.add_embedding_length(a.hidden)
    out.add_block_count(a.layers)
    out.add_feed_forward_length(a.expert_ffn)
    out.add_head_count(a.heads)
    out.add_head_count_kv(a.kv_heads)
    out.add_key_length(a.head_dim)
    out.add_value_length(a.head_dim)
    out.add_layer_norm_rms_eps(1e-6)
    out.add_rope_freq_base(1e6)
    out.add_expert_count(a.experts)
    out.add_expert_used_count(a.top_k)
    out.add_expert_feed_forward_length(a.expert_ffn)
    out.add_vocab_size(a.vocab)
    out.add_tokenizer_model("none")
    out.add_file_type(FILE_TYPES[a.expert_type])

    ones = lambda n: np.ones(n, dtype=np.float32)  # noqa: E731
    out.add_tensor("token_embd.weight", w.f32(a.vocab, a.hidden))
    q, kv = a.heads * a.head_dim, a.kv_heads * a.head_dim
    for b in range(a.layers):
        blk = f"blk.{b}"
        out.add_tensor(f"{blk}.attn_norm.weight", ones(a.hidden))
        out.add_tensor(f"{blk}.attn_q.weight", w.f32(q, a.hidden))
        out.add_tensor(f"{blk}.attn_k.weight", w.f32(kv, a.hidden))
        out.add_tensor(f"{blk}.attn_v.weight", w.f32(kv, a.hidden))
        out.add_tensor(f"{blk}.attn_output.weight", w.f32(a.hidden, q))
        out.add_tensor(f"{blk}.attn_q_norm.weight", ones(a.head_dim))
        out.add_tensor(f"{blk}.attn_k_norm.weight", ones(a.head_dim))
        out.add_tensor(f"{blk}.ffn_norm.weight", ones(a.hidden))
        out.add_tensor(f"{blk}.ffn_gate_inp.weight", w.f32(a.experts, a.hidden))
        # numpy shape (experts, rows, cols): GGUF's ne is [cols, rows, experts].
        for name, rows, cols in (("gate", a.expert_ffn, a.hidden), ("up", a.expert_ffn, a.hidden),
                                 ("down", a.hidden, a.expert_ffn)):
            tensor_name = f"{blk}.ffn_{name}_exps.weight"
            expert_type = EXPERT_TYPES[a.expert_type]
            if a.expert_type == "q4_k_m" and name == "down":
                expert_type = gguf.GGMLQuantizationType.Q6_K
            if expert_type in (gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K):
                out.add_tensor(tensor_name, w.k_quant(expert_type, a.experts, rows, cols), raw_dtype=expert_type)
            elif expert_type == gguf.GGMLQuantizationType.BF16:
                out.add_tensor(tensor_name, w.bf16(a.experts, rows, cols), raw_dtype=expert_type)
            elif expert_type == gguf.GGMLQuantizationType.Q8_0:
                blocks = gguf.quants.quantize(w.f32(a.experts, rows, cols), expert_type)
                out.add_tensor(tensor_name, blocks, raw_dtype=expert_type)
            else:
                out.add_tensor(tensor_name, w.f32(a.experts, rows, cols))
    out.add_tensor("output_norm.weight", ones(a.hidden))
    out.add_tensor("output.weight", w.f32(a.vocab, a.hidden))

    out.write_header_to_file()
    out.write_kv_data_to_file()
    out.write_tensors_to_file()
    out.close()
    if a.expert_type == "q4_k_m":
        expert_bytes = a.expert_ffn * a.hidden * (2 * ELEMENT_BYTES["q4_k"] + ELEMENT_BYTES["q6_k"])
    else:
        expert_bytes = 3 * a.expert_ffn * a.hidden * ELEMENT_BYTES[a.expert_type]
    print(
        f"{a.out}: {arch}, {a.layers} layers x {a.experts} experts of {expert_bytes / 2**20:.1f} MiB "
        f"({a.expert_type}), top-{a.top_k}, hidden {a.hidden}, expert FFN {a.expert_ffn}"
    )


if __name__ == "__main__":
    main()
