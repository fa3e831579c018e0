//! A small GGUF v3 writer for tests: metadata of a few types and tensors of any bytes.

use std::path::Path;

/// A metadata value.
pub enum Meta {
    U32(u32),
    F32(f32),
    Str(&'static str),
}

/// One tensor: its name, `ne` (innermost dimension first, as GGUF stores it), ggml type id
/// (0 F32, 1 F16, 30 BF16) and bytes.
pub struct Tensor {
    pub name: String,
    pub ne: Vec<u64>,
    pub ggml_type: u32,
    pub bytes: Vec<u8>,
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

const ALIGN: usize = 32;

/// The bytes of a GGUF v3 file with `meta` and `tensors` (data aligned to 32 bytes).
pub fn bytes(meta: &[(&str, Meta)], tensors: &[Tensor]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    for (key, value) in meta {
        string(&mut out, key);
        match value {
            Meta::U32(v) => {
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            Meta::F32(v) => {
                out.extend_from_slice(&6u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            Meta::Str(s) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                string(&mut out, s);
            }
        }
    }
    let mut offset = 0usize;
    for t in tensors {
        string(&mut out, &t.name);
        out.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
        for d in &t.ne {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.ggml_type.to_le_bytes());
        out.extend_from_slice(&(offset as u64).to_le_bytes());
        offset = (offset + t.bytes.len()).next_multiple_of(ALIGN);
    }
    out.resize(out.len().next_multiple_of(ALIGN), 0);
    for t in tensors {
        out.extend_from_slice(&t.bytes);
        out.resize(out.len().next_multiple_of(ALIGN), 0);
    }
    out
}

/// Writes a `qwen3moe`-style file at `path`: block 0 dense (an `ffn_up` tensor only), then one
/// MoE block per entry of `layers` (gate, up and down stacks of `experts` experts, `ffn × hidden`,
/// `ffn × hidden` and `hidden × ffn`, of ggml type `ggml_type`, and an F32 router
/// `ffn_gate_inp` of `experts × hidden`, uniform in ±1 / sqrt(hidden)), with the router's top-k
/// (none written when `top_k` is 0).
pub fn write_moe(
    path: &Path,
    experts: usize,
    hidden: usize,
    ffn: usize,
    top_k: u32,
    ggml_type: u32,
    layers: &[[Vec<u8>; 3]],
) {
    write_moe_types(path, experts, hidden, ffn, top_k, [ggml_type; 3], layers);
}

/// As [`write_moe`], the gate, up and down stacks of ggml types `types` (a Q4_K_M file's are
/// Q4_K, Q4_K and Q6_K: `[12, 12, 14]`).
pub fn write_moe_types(
    path: &Path,
    experts: usize,
    hidden: usize,
    ffn: usize,
    top_k: u32,
    types: [u32; 3],
    layers: &[[Vec<u8>; 3]],
) {
    let mut meta = vec![
        ("general.architecture", Meta::Str("qwen3moe")),
        ("qwen3moe.block_count", Meta::U32(layers.len() as u32 + 1)),
        ("qwen3moe.expert_count", Meta::U32(experts as u32)),
        ("qwen3moe.expert_used_count", Meta::U32(top_k)),
        ("qwen3moe.attention.layer_norm_rms_epsilon", Meta::F32(1e-6)),
    ];
    if top_k == 0 {
        meta.retain(|(k, _)| *k != "qwen3moe.expert_used_count");
    }
    let mut tensors = vec![Tensor {
        name: "blk.0.ffn_up.weight".into(),
        ne: vec![hidden as u64, ffn as u64],
        ggml_type: 0,
        bytes: vec![0; hidden * ffn * 4],
    }];
    for (i, [gate, up, down]) in layers.iter().enumerate() {
        let block = i + 1;
        tensors.push(Tensor {
            name: format!("blk.{block}.ffn_norm.weight"),
            ne: vec![hidden as u64],
            ggml_type: 0,
            bytes: vec![0; hidden * 4],
        });
        let scale = 1.0 / (hidden as f32).sqrt();
        let router: Vec<u8> = (0..experts * hidden)
            .flat_map(|i| {
                let unit = ((i * 7919 + block * 104_729) % 2001) as f32 / 1000.0 - 1.0;
                (unit * scale).to_le_bytes()
            })
            .collect();
        tensors.push(Tensor {
            name: format!("blk.{block}.ffn_gate_inp.weight"),
            ne: vec![hidden as u64, experts as u64],
            ggml_type: 0,
            bytes: router,
        });
        for ((name, ne, bytes), ggml_type) in
            [("gate", [hidden, ffn], gate), ("up", [hidden, ffn], up), ("down", [ffn, hidden], down)]
                .into_iter()
                .zip(types)
        {
            tensors.push(Tensor {
                name: format!("blk.{block}.ffn_{name}_exps.weight"),
                ne: vec![ne[0] as u64, ne[1] as u64, experts as u64],
                ggml_type,
                bytes: bytes.clone(),
            });
        }
    }
    std::fs::write(path, bytes(&meta, &tensors)).unwrap();
}
