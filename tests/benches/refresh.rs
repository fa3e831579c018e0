//! Refresh cost at E = 256 experts, 64 slots, top-8 routing, beside the plain reference model and
//! a bare count-per-expert pass over the same ids (the floor any refresh has to pay).
//!
//! Each iteration takes the next step of a drifting, skewed trace, refreshes and commits its plan
//! (the pool's part of a step; copying is measured elsewhere). Every sample runs 256 iterations,
//! four whole passes over the 64-step trace, so each sample sees the same mix of steps. Run with
//! `cargo bench -p expertslab-tests --bench refresh`.

use std::hint::black_box;

use divan::{AllocProfiler, Bencher};
use expertslab::trace::synthetic::{RoutingShape, SyntheticRouting};
use expertslab::{ExpertPool, MigrationPlan, PoolConfig};
use expertslab_tests::ReferenceTide;

#[global_allocator]
static ALLOC: AllocProfiler = AllocProfiler::system();

const EXPERTS: u32 = 256;
const BUDGET: usize = 64;
const TOP_K: usize = 8;
const STEPS: usize = 64;

fn trace(tokens: usize) -> Vec<Vec<u32>> {
    let shape = RoutingShape { phase_steps: 16, ..RoutingShape::new(EXPERTS, TOP_K as u32) };
    let mut routing = SyntheticRouting::new(shape, 0x5eed);
    (0..STEPS)
        .map(|_| {
            let mut ids = Vec::with_capacity(tokens * TOP_K);
            routing.step(tokens, &mut ids);
            ids
        })
        .collect()
}

#[divan::bench(args = [1, 4096], sample_size = 256)]
fn pool(bencher: Bencher, tokens: usize) {
    let trace = trace(tokens);
    let mut pool = ExpertPool::new(PoolConfig::new(EXPERTS as usize, BUDGET)).expect("valid config");
    let mut plan = MigrationPlan::new(BUDGET);
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

#[divan::bench(args = [1, 4096], sample_size = 256)]
fn naive_reference(bencher: Bencher, tokens: usize) {
    let trace = trace(tokens);
    let mut reference = ReferenceTide::new(EXPERTS, BUDGET, true);
    let mut step = 0;
    bencher.bench_local(|| {
        let ids = &trace[step % STEPS];
        step += 1;
        black_box(reference.refresh(black_box(ids)).promoted.len())
    });
}

#[divan::bench(args = [1, 4096], sample_size = 256)]
fn bare_count(bencher: Bencher, tokens: usize) {
    let trace = trace(tokens);
    let mut counts = vec![0u32; EXPERTS as usize];
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

fn main() {
    divan::main();
}
