//! Refresh cost at five shapes (experts / slots / tokens × top-k), beside the plain reference
//! model and two counting passes over the same ids: the plain count-per-expert loop, and the
//! fastest counting loop measured (`expertslab::count`, which the refresh uses on long steps). The
//! counting loops are floors: a refresh has to count its ids.
//!
//! Each iteration takes the next step of a drifting, skewed trace, refreshes and commits its plan
//! (the pool's part of a step; copying is measured elsewhere). Every sample runs 256 iterations,
//! four whole passes over the 64-step trace, so each sample sees the same mix of steps. Run with
//! `cargo bench -p expertslab-tests --bench refresh`; add `--features expertslab/heap-select` to
//! measure the pool with the heap selection that small firmware builds keep.

use std::hint::black_box;

use divan::{AllocProfiler, Bencher};
use expertslab::count::CountBanks;
use expertslab::trace::synthetic::{RoutingShape, SyntheticRouting};
use expertslab::{ExpertPool, MigrationPlan, PoolConfig};
use expertslab_tests::ReferenceTide;

#[global_allocator]
static ALLOC: AllocProfiler = AllocProfiler::system();

/// `experts/slots/tokens x top_k`.
const SHAPES: [&str; 5] = ["256/64/1x8", "64/16/1x8", "64/16/512x4", "128/32/32x8", "256/64/4096x8"];
const STEPS: usize = 64;

/// A shape's numbers: experts, slots, tokens, top-k.
fn shape(s: &str) -> (u32, usize, usize, u32) {
    let n: Vec<usize> = s.split(['/', 'x']).map(|p| p.parse().expect("a number")).collect();
    (n[0] as u32, n[1], n[2], n[3] as u32)
}

fn trace(experts: u32, tokens: usize, top_k: u32) -> Vec<Vec<u32>> {
    let shape = RoutingShape { phase_steps: 16, ..RoutingShape::new(experts, top_k) };
    let mut routing = SyntheticRouting::new(shape, 0x5eed);
    (0..STEPS)
        .map(|_| {
            let mut ids = Vec::with_capacity(tokens * top_k as usize);
            routing.step(tokens, &mut ids);
            ids
        })
        .collect()
}

#[divan::bench(args = SHAPES, sample_size = 256)]
fn pool(bencher: Bencher, s: &str) {
    let (experts, slots, tokens, top_k) = shape(s);
    let trace = trace(experts, tokens, top_k);
    let mut pool = ExpertPool::new(PoolConfig::new(experts as usize, slots)).expect("valid config");
    let mut plan = MigrationPlan::new(slots);
    pool.initial_plan(&mut plan);
    for &p in plan.promotions() {
        pool.commit(p, 0).expect("fresh plan");
    }
    let mut step = 0;
    bencher.bench_local(|| {
        let ids = &trace[step % STEPS];
        step += 1;
        pool.refresh(black_box(ids), &mut plan).expect("short step");
        for &p in plan.promotions() {
            pool.commit(p, 0).expect("fresh plan");
        }
        black_box(plan.len())
    });
}

#[divan::bench(args = SHAPES, sample_size = 256)]
fn naive_reference(bencher: Bencher, s: &str) {
    let (experts, slots, tokens, top_k) = shape(s);
    let trace = trace(experts, tokens, top_k);
    let mut reference = ReferenceTide::new(experts, slots, true);
    let mut step = 0;
    bencher.bench_local(|| {
        let ids = &trace[step % STEPS];
        step += 1;
        black_box(reference.refresh(black_box(ids)).promoted.len())
    });
}

/// The plain count-per-expert loop.
#[divan::bench(args = SHAPES, sample_size = 256)]
fn plain_count(bencher: Bencher, s: &str) {
    let (experts, _, tokens, top_k) = shape(s);
    let trace = trace(experts, tokens, top_k);
    let mut counts = vec![0u32; experts as usize];
    let mut step = 0;
    bencher.bench_local(|| {
        let ids = &trace[step % STEPS];
        step += 1;
        counts.fill(0);
        for &id in black_box(ids) {
            if let Some(c) = counts.get_mut(id as usize) {
                *c += 1;
            }
        }
        black_box(&counts);
    });
}

/// The fastest counting loop measured, the one the pool's refresh uses on long steps
/// (`expertslab::count`: four banks of counters, eight ids a round, summed at the end). Only the
/// shapes of at least `MIN_BANKED_IDS` ids: shorter steps count in the plain loop.
#[divan::bench(args = ["64/16/512x4", "256/64/4096x8"], sample_size = 256)]
fn banked_count(bencher: Bencher, s: &str) {
    let (experts, _, tokens, top_k) = shape(s);
    let trace = trace(experts, tokens, top_k);
    let mut counts = vec![0u32; experts as usize];
    let mut banks = CountBanks::new(experts as usize);
    let mut step = 0;
    bencher.bench_local(|| {
        let ids = &trace[step % STEPS];
        step += 1;
        assert!(banks.count(black_box(ids), &mut counts), "a long step");
        black_box(&counts);
    });
}

fn main() {
    divan::main();
}
