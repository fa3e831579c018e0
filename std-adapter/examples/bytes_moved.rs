//! Bytes moved per refresh: incremental migration (only promotions are copied) against the full,
//! lossless stack push (every stack of every layer on every refresh), over a decode trace with
//! temporal locality.
//!
//! Run: `cargo run --release -p expertslab-std --example bytes_moved`

use std::error::Error;
use std::num::NonZeroU32;

use expertslab_std::trace::synthetic::{RoutingShape, SyntheticRouting};
use expertslab_std::{
    ExpertStore, LayerStacks, Offloader, PoolConfig, Projection, RoutingCapture, Schedule, SharedBytes, StackSink, Step,
};
use expertslab_tests::synthetic_layer;

const LAYERS: usize = 4;
const EXPERTS: usize = 64;
const TOP_K: usize = 8;
const STEPS: u64 = 512;

/// Counts the bytes a full push hands over.
#[derive(Default)]
struct CountingParams(u64);

impl StackSink for CountingParams {
    type Error = std::convert::Infallible;

    fn write_stack(&mut self, _: &str, _: usize, _: Projection, bytes: &[u8]) -> Result<(), Self::Error> {
        self.0 += bytes.len() as u64;
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut store = ExpertStore::new();
    for layer in 0..LAYERS {
        let (layout, stacks) = synthetic_layer(EXPERTS, 32, 64);
        let shared: Vec<_> = stacks.iter().map(|s| SharedBytes::copy_from(s)).collect();
        store.insert(layer, LayerStacks::new(layout, &shared)?)?;
    }
    let expert_kib = store.layer(0).map_or(0, |l| l.layout().expert_bytes()) / 1024;
    println!("{LAYERS} layers × {EXPERTS} experts of {expert_kib} KiB, 1 token × top-{TOP_K} per step, {STEPS} steps");
    println!("routing: expertslab::trace::synthetic, Zipf 0.9, reuse 0.5, a new phase every 64 steps");
    println!();
    println!(
        "| slots | τ | refreshes | promotions | incremental MiB | full push MiB | full / incremental | hit rate |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for slots in [8, 16, 32] {
        for tau in [1, 4] {
            let schedule = Schedule::EveryDecodeSteps(NonZeroU32::new(tau).ok_or("tau > 0")?);
            let config = PoolConfig::new(EXPERTS, slots).schedule(schedule);
            let mut model = Offloader::new(store.clone(), config, 64)?;
            model.warm_up()?;
            let mut full = CountingParams::default();
            let mut incremental = 0u64;
            let shape = RoutingShape { phase_steps: 64, ..RoutingShape::new(EXPERTS as u32, TOP_K as u32) };
            let mut routings: Vec<SyntheticRouting> =
                (0..LAYERS as u64).map(|l| SyntheticRouting::new(shape, 42 + l)).collect();
            let mut ids = Vec::new();
            let mut capture = RoutingCapture::new();
            for step in 0..STEPS {
                capture.clear();
                for (layer, routing) in routings.iter_mut().enumerate() {
                    ids.clear();
                    routing.step(1, &mut ids);
                    capture.record(layer, &ids);
                }
                let report = model.step(Step::decode(step), &capture)?;
                incremental += report.migrated.bytes_promoted;
                if report.refreshed > 0 {
                    model.push_full(&mut full).map_err(|e| format!("{e:?}"))?;
                }
            }
            let stats = model.stats();
            let mib = |b: u64| b as f64 / (1 << 20) as f64;
            println!(
                "| {slots} | {tau} | {} | {} | {:.1} | {:.1} | {:.0}× | {:.1}% |",
                stats.refreshes,
                stats.promotions,
                mib(incremental),
                mib(full.0),
                full.0 as f64 / incremental.max(1) as f64,
                100.0 * stats.hit_rate()
            );
        }
    }
    Ok(())
}
