//! Migration throughput: a plan of `n` promotions of `size` bytes each copied into free slots,
//! by the sequential path (the core's `migrate` through an `ArenaSink`), by the rayon path, and
//! by a plain `copy_from_slice` of the same bytes (the floor). Run with
//! `cargo bench -p expertslab-std --bench migrate`.

use divan::Bencher;
use expertslab_std::{
    ExpertLayout, ExpertPool, ExpertStore, Format, InitialPlacement, LayerStacks, MigrationPlan, ParallelMigrator,
    PoolConfig, Projection, SharedBytes, SlotArena, StackLayout,
};

const KIB: usize = 1024;
const SIZES: [usize; 3] = [64 * KIB, 1024 * KIB, 16 * 1024 * KIB];
const COUNTS: [usize; 4] = [1, 4, 16, 64];

struct Setup {
    layout: ExpertLayout,
    store: ExpertStore,
    arena: SlotArena,
    backing: Vec<u8>,
    ids: Vec<u32>,
}

fn setup(count: usize, size: usize) -> Setup {
    let stack = StackLayout::new(Format::I8, count, 1, size).expect("layout");
    let layout = ExpertLayout::new(&[(Projection::Down, stack)]).expect("layout");
    let bytes: Vec<u8> = (0..count * size).map(|i| (i % 251) as u8).collect();
    let mut store = ExpertStore::new();
    let weights = LayerStacks::new(layout.clone(), &[SharedBytes::copy_from(&bytes)]).expect("weights");
    store.insert(0, weights).expect("stored");
    let arena = SlotArena::new(&layout, count, 64).expect("arena");
    let mut backing = vec![0u8; arena.total_bytes() + 64];
    backing.fill(1); // touch every page before measuring
    Setup { layout, store, arena, backing, ids: (0..count as u32).collect() }
}

/// A fresh pool and its plan of `count` promotions into free slots.
fn fresh_plan(s: &Setup) -> (ExpertPool, MigrationPlan) {
    let config = PoolConfig::new(s.ids.len(), s.ids.len()).initial(InitialPlacement::Cold);
    let mut pool = ExpertPool::new(config).expect("pool");
    let mut plan = MigrationPlan::new(s.ids.len());
    pool.refresh(&s.ids, &mut plan).expect("refresh");
    (pool, plan)
}

fn run(bencher: Bencher, count: usize, size: usize, migrator: ParallelMigrator) {
    let mut s = setup(count, size);
    let Setup { layout, store, arena, backing, .. } = &mut s;
    let buffer = arena.fit(backing).expect("fits");
    let (layout, store, arena) = (&*layout, &*store, &*arena);
    let ids = (0..count as u32).collect::<Vec<_>>();
    let template =
        Setup { layout: layout.clone(), store: store.clone(), arena: arena.clone(), backing: Vec::new(), ids };
    bencher
        .counter(divan::counter::BytesCount::new(count * size))
        .with_inputs(|| fresh_plan(&template))
        .bench_local_values(|(mut pool, plan)| {
            migrator.migrate(&mut pool, &plan, layout, store, arena, buffer).expect("migrates");
            pool
        });
}

#[divan::bench(consts = COUNTS, args = SIZES, sample_count = 20)]
fn sequential<const N: usize>(bencher: Bencher, size: usize) {
    run(bencher, N, size, ParallelMigrator::with_threshold(usize::MAX));
}

#[divan::bench(consts = COUNTS, args = SIZES, sample_count = 20)]
fn rayon<const N: usize>(bencher: Bencher, size: usize) {
    run(bencher, N, size, ParallelMigrator::with_threshold(0));
}

#[divan::bench(consts = COUNTS, args = SIZES, sample_count = 20)]
fn plain_copy<const N: usize>(bencher: Bencher, size: usize) {
    let mut s = setup(N, size);
    let source = s.store.layer(0).expect("layer").stack(Projection::Down).expect("stack").to_vec();
    let stride = s.arena.slot_stride();
    let buffer = s.arena.fit(&mut s.backing).expect("fits");
    bencher.counter(divan::counter::BytesCount::new(N * size)).bench_local(|| {
        for (slot, slab) in buffer.chunks_mut(stride).zip(source.chunks(size)) {
            slot[..size].copy_from_slice(slab);
        }
    });
}

fn main() {
    divan::main();
}
