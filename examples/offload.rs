//! Offloaded MoE forward passes on a built-in small model: every expert lives in "slow memory"
//! (plain host buffers standing in for flash or a mapped file), each layer has a few fast slots,
//! pools place experts from the router's choices, and migration copies only promotions.
//!
//! Resident experts compute from their slots, misses from slow memory, and the output is checked
//! to be bit-identical to the output computed with every expert read from slow memory.
//!
//! Run: `cargo run --release -p expertslab-examples --example offload`

use std::error::Error;
use std::num::NonZeroU32;
use std::time::Instant;

use expertslab::{
    cast_bytes, expert_as, migrate, ArenaSink, ExpertLayout, ExpertPool, ExpertSource, Format, LayerPools, LayerStacks,
    PoolConfig, Projection, Schedule, SlotArena, StackLayout, Step,
};

const LAYERS: usize = 3;
const EXPERTS: usize = 32;
const TOP_K: usize = 4;
const SLOTS: usize = 8;
const D_MODEL: usize = 32;
const D_FF: usize = 64;
const STEPS: u64 = 400;
/// Refresh every 4 decode steps (τ = 4): between refreshes, misses are served from slow memory.
const INTERVAL: u32 = 4;

/// A deterministic pseudo-random value in [-1, 1) from an index (splitmix64 finalizer).
fn pseudo(index: u64) -> f32 {
    let mut z = index.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// One MoE layer's weights: router rows, and gate/up/down stacks as bytes (slow memory).
struct Layer {
    router: Vec<f32>,
    stacks: [Vec<u8>; 3],
}

fn build_layer(layer: usize, layout: &ExpertLayout) -> Layer {
    let seed = (layer as u64) << 40;
    let router = (0..EXPERTS * D_MODEL).map(|i| pseudo(seed + i as u64)).collect();
    let stacks = core::array::from_fn(|p| {
        let (_, stack) = layout.projections()[p];
        let floats = stack.total_bytes() / 4;
        let values: Vec<f32> = (0..floats).map(|i| 0.2 * pseudo(seed + ((p as u64 + 1) << 32) + i as u64)).collect();
        bytemuck::cast_slice(&values).to_vec()
    });
    Layer { router, stacks }
}

/// The router: softmax over expert scores, top-k experts and their renormalised weights.
fn route(router: &[f32], x: &[f32]) -> [(u32, f32); TOP_K] {
    let scores: Vec<f32> = router.chunks(D_MODEL).map(|row| row.iter().zip(x).map(|(w, v)| w * v).sum()).collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let mut order: Vec<u32> = (0..EXPERTS as u32).collect();
    order.sort_by(|&a, &b| exp[b as usize].total_cmp(&exp[a as usize]).then(a.cmp(&b)));
    let total: f32 = order[..TOP_K].iter().map(|&e| exp[e as usize]).sum();
    core::array::from_fn(|k| (order[k], exp[order[k] as usize] / total))
}

/// One expert's FFN: down(silu(gate · x) ⊙ (up · x)).
fn expert_ffn(gate: &[f32], up: &[f32], down: &[f32], x: &[f32], out: &mut [f32], weight: f32) {
    let dot = |row: &[f32], v: &[f32]| row.iter().zip(v).map(|(a, b)| a * b).sum::<f32>();
    let hidden: Vec<f32> = gate
        .chunks(D_MODEL)
        .zip(up.chunks(D_MODEL))
        .map(|(g, u)| {
            let g = dot(g, x);
            g / (1.0 + (-g).exp()) * dot(u, x)
        })
        .collect();
    for (o, row) in out.iter_mut().zip(down.chunks(D_FF)) {
        *o += weight * dot(row, &hidden);
    }
}

/// The three projection matrices of `expert`, from its slot when resident, else from slow memory.
fn weights<'a>(
    pool: Option<&ExpertPool>,
    sink: &'a ArenaSink<'_>,
    source: &'a [LayerStacks<'a>],
    layer: usize,
    expert: usize,
) -> Result<[&'a [f32]; 3], Box<dyn Error>> {
    let mut out: [&[f32]; 3] = [&[]; 3];
    for (index, projection) in [Projection::Gate, Projection::Up, Projection::Down].into_iter().enumerate() {
        out[index] = match pool.and_then(|p| p.slot_of(expert)) {
            Some(slot) => cast_bytes(sink.slab(slot, index)?)?,
            None => cast_bytes(source.expert(layer, projection, expert)?)?,
        };
    }
    Ok(out)
}

fn main() -> Result<(), Box<dyn Error>> {
    let gate = StackLayout::new(Format::F32, EXPERTS, D_FF, D_MODEL)?;
    let down = StackLayout::new(Format::F32, EXPERTS, D_MODEL, D_FF)?;
    let layout = ExpertLayout::gate_up_down(gate, gate, down)?;
    let layers: Vec<Layer> = (0..LAYERS).map(|l| build_layer(l, &layout)).collect();
    let source: Vec<LayerStacks> = layers
        .iter()
        .map(|l| LayerStacks::new(layout.clone(), &[&l.stacks[0], &l.stacks[1], &l.stacks[2]]))
        .collect::<Result<_, _>>()?;
    // Views check the format: an F32 slab read as f32 works, as anything else it is refused.
    assert!(expert_as::<f32>(&gate, &layers[0].stacks[0], 0).is_ok());

    // Fast memory: one 16-byte aligned arena per layer (u128 storage gives the alignment).
    let arena = SlotArena::new(&layout, SLOTS, 16)?;
    let mut buffers: Vec<Vec<u128>> = (0..LAYERS).map(|_| vec![0u128; arena.total_bytes() / 16]).collect();
    let mut sinks: Vec<ArenaSink> = buffers
        .iter_mut()
        .enumerate()
        .map(|(l, b)| ArenaSink::new(arena.clone(), l, bytemuck::cast_slice_mut(b)))
        .collect::<Result<_, _>>()?;

    let every = NonZeroU32::new(INTERVAL).ok_or("interval must be non-zero")?;
    let config = PoolConfig::new(EXPERTS, SLOTS).schedule(Schedule::EveryDecodeSteps(every));
    let mut pools = LayerPools::new(&[config; LAYERS])?;
    let mut plans = pools.new_plans();
    for (pool, plan) in pools.pools_mut().iter_mut().zip(plans.iter_mut()) {
        pool.initial_plan(plan);
        migrate(pool, plan, &layout, &source[..], &mut sinks[..])?;
    }

    let start = Instant::now();
    let mut x: Vec<f32> = (0..D_MODEL).map(|i| pseudo(1 << 50 | i as u64)).collect();
    let mut bytes_moved = 0u64;
    for step in 0..STEPS {
        // The token's hidden state drifts slowly, so routing has locality.
        for (i, v) in x.iter_mut().enumerate() {
            *v = 0.95 * *v + 0.3 * pseudo(step << 16 | i as u64 | 1 << 60);
        }
        let mut h = x.clone();
        for (l, layer) in layers.iter().enumerate() {
            let routed = route(&layer.router, &h);
            let ids: Vec<u32> = routed.iter().map(|&(e, _)| e).collect();
            let pool = &mut pools.pools_mut()[l];
            pool.plan_step(Step::decode(step), &ids, &mut plans[l])?;
            bytes_moved += migrate(pool, &plans[l], &layout, &source[..], &mut sinks[..])?.bytes;
            pool.serve(&ids);

            let (mut offloaded, mut reference) = (vec![0f32; D_MODEL], vec![0f32; D_MODEL]);
            for &(e, w) in &routed {
                let [g, u, d] = weights(Some(pool), &sinks[l], &source, l, e as usize)?;
                expert_ffn(g, u, d, &h, &mut offloaded, w);
                let [g, u, d] = weights(None, &sinks[l], &source, l, e as usize)?;
                expert_ffn(g, u, d, &h, &mut reference, w);
            }
            if offloaded.iter().zip(&reference).any(|(a, b)| a.to_bits() != b.to_bits()) {
                return Err(format!("step {step} layer {l}: offloaded output differs").into());
            }
            for (hv, o) in h.iter_mut().zip(&offloaded) {
                *hv += o;
            }
        }
    }
    let elapsed = start.elapsed();

    let total = pools.total_stats();
    let full_bytes = total.refreshes * (layout.expert_bytes() * EXPERTS) as u64;
    println!(
        "expertslab offload example: {LAYERS} layers × {EXPERTS} experts (top-{TOP_K}), {SLOTS} slots per layer, refresh every {INTERVAL} steps"
    );
    println!("  steps            {STEPS}");
    println!("  output           identical to the all-slow-memory output at every step and layer");
    println!("  hit rate         {:.1}% ({} hits, {} misses)", 100.0 * total.hit_rate(), total.hits, total.misses);
    println!("  uniform baseline {:.1}% (slots / experts)", 100.0 * SLOTS as f64 / EXPERTS as f64);
    println!("  promotions       {} ({} demotions)", total.promotions, total.demotions);
    println!(
        "  bytes moved      {} KiB (full-stack pushes on each refresh: {} KiB)",
        bytes_moved / 1024,
        full_bytes / 1024
    );
    println!("  time             {:.1} ms", elapsed.as_secs_f64() * 1e3);
    Ok(())
}
