//! The synthetic trace families of BENCHMARKS.md's placement goals table: `expertslab synth
//! --experts 64 --layers 4 --top-k 8 --steps 1000` with a family's flags (a prefill of 64 tokens,
//! then 1000 decode steps of one token; layer `l` seeded with `seed + l`), 16 slots per layer and
//! the CLI's default cost model.

use expertslab::trace::replay::CostModel;
use expertslab::trace::synthetic::{RoutingShape, SyntheticRouting};
use expertslab::trace::{Trace, TraceHeader};

/// Experts per layer.
pub const EXPERTS: u32 = 64;
/// Layers.
pub const LAYERS: u32 = 4;
/// Experts per token.
pub const TOP_K: u32 = 8;
/// Slots per layer.
pub const SLOTS: usize = 16;
/// Bytes of one expert.
pub const EXPERT_BYTES: u64 = 4 << 20;
/// Decode steps after the prefill.
pub const DECODE_STEPS: u64 = 1000;
/// Tokens of the prefill step.
pub const PREFILL_TOKENS: usize = 64;

/// The trace `expertslab synth` writes for these flags.
pub fn synth(zipf_s: f64, reuse: f64, phase_steps: u64, seed: u64) -> Trace {
    synth_observed(zipf_s, reuse, phase_steps, seed, |_, _| {})
}

/// [`synth`], calling `observe` with each record's layer and generator right after the
/// generator drew the record (in the order of the trace's records).
pub fn synth_observed(
    zipf_s: f64,
    reuse: f64,
    phase_steps: u64,
    seed: u64,
    mut observe: impl FnMut(u32, &SyntheticRouting),
) -> Trace {
    let shape = RoutingShape { experts: EXPERTS, top_k: TOP_K, zipf_s, reuse, phase_steps };
    let mut layers: Vec<SyntheticRouting> =
        (0..LAYERS).map(|l| SyntheticRouting::try_new(shape, seed + u64::from(l)).unwrap()).collect();
    let mut trace = Trace::new(TraceHeader { experts: EXPERTS, layers: LAYERS, top_k: TOP_K }).unwrap();
    let mut ids = Vec::new();
    for step in 0..=DECODE_STEPS {
        let tokens = if step == 0 { PREFILL_TOKENS } else { 1 };
        for (layer, routing) in (0..LAYERS).zip(layers.iter_mut()) {
            ids.clear();
            routing.step(tokens, &mut ids);
            trace.push(layer, step, step == 0, &ids).unwrap();
            observe(layer, routing);
        }
    }
    trace
}

/// The CLI's default cost model: a 4 MiB expert over 16 GB/s, a slow pair reading it at 20 GB/s.
pub fn cost() -> CostModel {
    CostModel::new(EXPERT_BYTES, EXPERT_BYTES as f64 / 20e9, 16e9)
}
