//! A GGUF file's experts for the GPU runner, read on the CPU: the shape the file makes, the
//! layers renumbered past a dense block, every slab a slice of the mapped file, and clear errors
//! for files the kernels cannot run.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::path::PathBuf;

use expertslab::{ExpertSource, Format, Projection};
use expertslab_cuda::demo::GgufExperts;
use expertslab_cuda::CudaError;
use expertslab_tests::gguf::write_moe;

fn path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("expertslab-cuda-{}-{name}.gguf", std::process::id()))
}

/// Gate, up and down stacks whose every byte names its layer, projection and position.
fn layers(count: usize, experts: usize, hidden: usize, ffn: usize, elem: usize) -> Vec<[Vec<u8>; 3]> {
    (0..count)
        .map(|l| {
            let stack =
                |p: usize| (0..experts * hidden * ffn * elem).map(|i| (l * 61 + p * 17 + i * 7 % 251) as u8).collect();
            [stack(0), stack(1), stack(2)]
        })
        .collect()
}

#[test]
fn a_file_s_experts_make_the_model_and_stay_in_the_mapping() {
    let file = path("model");
    let stacks = layers(2, 6, 32, 16, 2);
    write_moe(&file, 6, 32, 16, 2, 30, &stacks);
    let experts = GgufExperts::open(&file).unwrap();
    let spec = experts.spec();
    assert_eq!((spec.experts, spec.layers), (6, 2));
    assert_eq!((spec.shape.hidden, spec.shape.ffn, spec.shape.top_k, spec.shape.format), (32, 16, 2, Format::BF16));
    assert_eq!(experts.blocks(), &[1, 2], "block 0 is dense; MoE blocks are layers 0 and 1");
    assert_eq!(experts.architecture(), "qwen3moe");
    let slab = 32 * 16 * 2;
    for (layer, layer_stacks) in stacks.iter().enumerate() {
        for (p, projection) in [Projection::Gate, Projection::Up, Projection::Down].into_iter().enumerate() {
            for expert in 0..6 {
                let got = experts.store().expert(layer, projection, expert).unwrap();
                assert_eq!(got, &layer_stacks[p][expert * slab..(expert + 1) * slab], "{layer} {p} {expert}");
            }
        }
    }
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn files_the_kernels_cannot_run_are_refused_by_name() {
    let stacks = layers(1, 4, 16, 8, 2);
    for (name, top_k, ggml_type, expected) in [
        ("f16", 2, 1, "block 1: experts in f16; the kernels read f32, bf16, q8_0, q4_K and q6_K"),
        ("no-top-k", 0, 30, "no qwen3moe.expert_used_count"),
        ("top-k", 9, 30, "top-k 9 of 4 experts"),
    ] {
        let file = path(name);
        write_moe(&file, 4, 16, 8, top_k, ggml_type, &stacks);
        match GgufExperts::open(&file) {
            Err(CudaError::Model(why)) => {
                assert!(why.contains(expected), "{name}: {why}");
                assert!(why.starts_with(&file.display().to_string()), "{name}: the path is named: {why}");
            }
            other => panic!("{name}: {other:?}"),
        }
        std::fs::remove_file(&file).unwrap();
    }
    let missing = GgufExperts::open("/nonexistent/model.gguf").unwrap_err();
    assert!(missing.to_string().contains("/nonexistent/model.gguf"), "{missing}");
    let not_gguf = path("text");
    std::fs::write(&not_gguf, b"not a model").unwrap();
    let err = GgufExperts::open(&not_gguf).unwrap_err();
    assert!(matches!(err, CudaError::Model(_)), "{err:?}");
    std::fs::remove_file(&not_gguf).unwrap();
}

#[test]
fn a_stack_of_another_format_is_named() {
    use expertslab_tests::gguf::{bytes, Meta, Tensor};
    let (experts, hidden, ffn) = (4usize, 16usize, 8usize);
    let stack = |block: usize, name: &str, ne: [usize; 2], ggml_type: u32, elem: usize| Tensor {
        name: format!("blk.{block}.ffn_{name}_exps.weight"),
        ne: vec![ne[0] as u64, ne[1] as u64, experts as u64],
        ggml_type,
        bytes: vec![0; experts * hidden * ffn * elem],
    };
    let meta = [
        ("general.architecture", Meta::Str("qwen3moe")),
        ("qwen3moe.expert_count", Meta::U32(experts as u32)),
        ("qwen3moe.expert_used_count", Meta::U32(2)),
    ];
    // Gate and up in BF16, down in F32 (a mix, as Q4_K_M files mix Q4_K and Q6_K), in block 0;
    // block 1's down in BF16 differs from it.
    let layer = |block: usize, down: (u32, usize)| {
        [
            stack(block, "gate", [hidden, ffn], 30, 2),
            stack(block, "up", [hidden, ffn], 30, 2),
            stack(block, "down", [ffn, hidden], down.0, down.1),
        ]
    };
    let file = path("mixed");
    std::fs::write(&file, bytes(&meta, &layer(0, (0, 4)))).unwrap();
    let mixed = GgufExperts::open(&file).unwrap();
    assert_eq!((mixed.spec().shape.format, mixed.spec().shape.down_format), (Format::BF16, Format::F32));
    let two: Vec<Tensor> = layer(0, (0, 4)).into_iter().chain(layer(1, (30, 2))).collect();
    std::fs::write(&file, bytes(&meta, &two)).unwrap();
    match GgufExperts::open(&file) {
        Err(CudaError::Model(why)) => {
            assert!(why.contains("block 1: its down stack is 4 experts of 16 × 8 bf16"), "{why}");
            assert!(why.contains("needs 4 of 16 × 8 f32"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    std::fs::remove_file(&file).unwrap();
}
