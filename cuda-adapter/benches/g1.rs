//! G1, migration throughput: a plan's promotions through `CudaSlotSink` (copies enqueued by
//! `expertslab::migrate`, then one `synchronize`) against raw `cuMemcpyHtoDAsync` of the same
//! bytes, from the same page-locked (registered) memory into the same slots, then one stream
//! sync. Experts of about 1, 9 and 64 MiB (gate/up/down, each a third), medians of
//! `G1_REPS` (default 7) repetitions, the two interleaved. A third row per size copies through
//! the pinned staging ring instead (registration not used).
//!
//! A plain binary (`harness = false`): without a CUDA driver or device it prints one line and
//! succeeds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Instant;

use expertslab::{
    migrate, ExpertLayout, ExpertPool, Format, InitialPlacement, MigrationPlan, PoolConfig, SlotArena, StackLayout,
};
use expertslab_cuda::{CudaDriver, CudaSlotSink, Driver, RingConfig, DEVICE_ALIGN};
use expertslab_std::{ExpertSource, ExpertStore, LayerStacks, SharedBytes};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The store: one layer of `experts` experts whose projections are `projection_bytes` each (I8).
fn store(experts: usize, projection_bytes: usize) -> (ExpertStore, ExpertLayout) {
    let stack = StackLayout::new(Format::I8, experts, 256, projection_bytes / 256).unwrap();
    let layout = ExpertLayout::gate_up_down(stack, stack, stack).unwrap();
    let stacks = (0..3u8)
        .map(|p| {
            let bytes: Vec<u8> = (0..experts * projection_bytes).map(|i| (i as u8) ^ p).collect();
            SharedBytes::copy_from(&bytes)
        })
        .collect::<Vec<_>>();
    let mut store = ExpertStore::new();
    store.insert(0, LayerStacks::new(layout.clone(), &stacks).unwrap()).unwrap();
    (store, layout)
}

/// A cold pool of `experts` slots and the plan that promotes every expert.
fn plan(experts: usize) -> (ExpertPool, MigrationPlan) {
    let mut pool = ExpertPool::new(PoolConfig::new(experts, experts).initial(InitialPlacement::Cold)).unwrap();
    let mut plan = MigrationPlan::new(experts);
    let ids: Vec<u32> = (0..experts as u32).collect();
    pool.refresh(&ids, &mut plan).unwrap();
    assert_eq!(plan.len(), experts);
    (pool, plan)
}

fn main() {
    let driver = match CudaDriver::new(0) {
        Ok(driver) => driver,
        Err(e) => {
            println!("G1 not run: {e}");
            return;
        }
    };
    let reps: usize = std::env::var("G1_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(7).max(5);
    println!(
        "G1 migration throughput on {} ({reps} repetitions, medians)",
        driver.context().name().unwrap_or_default()
    );
    println!("| expert | experts per plan | bytes per plan | raw cuMemcpyHtoDAsync | CudaSlotSink (registered) | ratio | CudaSlotSink (staging ring) | ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    for (mib, experts) in [(1usize, 64usize), (9, 32), (64, 8)] {
        let projection_bytes = ((mib << 20) / 3) / 256 * 256;
        let (store, layout) = store(experts, projection_bytes);
        let arena = SlotArena::new(&layout, experts, DEVICE_ALIGN).unwrap();
        let mut sink = CudaSlotSink::new(driver.clone(), [(0, arena.clone())], RingConfig::default()).unwrap();
        let report = sink.host_mut().register_store(&store);
        assert_eq!(report.refused, 0, "registration refused: {report:?}");
        // A second sink over other slots copies the same bytes through its staging ring.
        let mut staged = CudaSlotSink::new(driver.clone(), [(0, arena)], RingConfig::default()).unwrap();
        let raw_stream = driver.new_stream().unwrap();
        let bytes = (experts * 3 * projection_bytes) as f64;

        // The raw copies: each expert's three slabs into the slot the plan gives it.
        let (_, raw_plan) = plan(experts);
        let vram = sink.vram(0).unwrap();
        let mut copies = Vec::new();
        for promotion in raw_plan.promotions() {
            for (index, &(projection, _)) in layout.projections().iter().enumerate() {
                let src = store.expert(0, projection, usize::from(promotion.expert)).unwrap();
                copies.push((vram.slot_ptr(usize::from(promotion.slot), index).unwrap(), src));
            }
        }
        let raw = |_: usize| {
            let start = Instant::now();
            for &(dst, src) in &copies {
                // SAFETY: `src` is registered, page-locked memory of the store, alive for the
                // whole run; `dst` is a projection of a slot of the sink's arena.
                unsafe { driver.copy_to_device(dst, src, &raw_stream).unwrap() };
            }
            driver.sync_stream(&raw_stream).unwrap();
            start.elapsed().as_secs_f64()
        };
        let through = |sink: &mut CudaSlotSink<CudaDriver>| {
            let (mut pool, plan) = plan(experts);
            let start = Instant::now();
            let report = migrate(&mut pool, &plan, &layout, &store, sink).unwrap();
            sink.synchronize().unwrap();
            let elapsed = start.elapsed().as_secs_f64();
            assert_eq!(report.copied, experts);
            elapsed
        };
        // Warm-up of every path, then interleaved repetitions.
        raw(0);
        through(&mut sink);
        through(&mut staged);
        let (mut t_raw, mut t_sink, mut t_staged) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..reps {
            t_raw.push(raw(rep));
            t_sink.push(through(&mut sink));
            t_staged.push(through(&mut staged));
        }
        assert_eq!(sink.stats().registered_copies as usize, (reps + 1) * experts * 3);
        let (r, s, g) = (median(t_raw), median(t_sink), median(t_staged));
        let gbs = |t: f64| bytes / t / 1e9;
        println!(
            "| {mib} MiB | {experts} | {:.0} MiB | {:.3} ms ({:.1} GB/s) | {:.3} ms ({:.1} GB/s) | {:.3} | {:.3} ms ({:.1} GB/s) | {:.3} |",
            bytes / f64::from(1u32 << 20),
            r * 1e3,
            gbs(r),
            s * 1e3,
            gbs(s),
            r / s,
            g * 1e3,
            gbs(g),
            r / g,
        );
    }
}
