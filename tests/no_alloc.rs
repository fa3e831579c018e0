//! Refresh, serve and migrate allocate nothing once the pool, its plan and its sink are built,
//! measured with a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use expertslab::{
    migrate, AdmissionConfig, ArenaSink, DecayConfig, ExpertPool, MigrationPlan, Policy, PoolConfig, SlotArena,
};
use expertslab_tests::{borrow_layer, synthetic_layer};

struct Counting;

thread_local! {
    /// Allocations made by this thread: tests run in parallel threads, each counts its own.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

fn count_one() {
    // `try_with` fails only while the thread is being torn down; nothing is counted then.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: forwards every call unchanged to the system allocator; only counts allocations.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A deterministic routing stream with drift: ids from a window that slides over the experts.
fn routing(step: u32, tokens: u32, top_k: u32, experts: u32) -> Vec<u32> {
    (0..tokens * top_k).map(|i| (step / 3 + i * 7 + (i * i) % 5) % experts).collect()
}

#[test]
fn refresh_serve_migrate_and_budget_changes_do_not_allocate() {
    const EXPERTS: u32 = 64;
    let (layout, stacks) = synthetic_layer(EXPERTS as usize, 2, 8);
    let source = [borrow_layer(&layout, &stacks)];
    let arena = SlotArena::new(&layout, 16, 16).unwrap();
    // Miri runs each step thousands of times slower: a shorter trace there.
    let steps: u32 = if cfg!(miri) { 120 } else { 1000 };
    let (shrink_at, grow_at) = (steps as usize * 3 / 10, steps as usize * 6 / 10);
    let trace: Vec<Vec<u32>> = (0..steps).map(|s| routing(s, 1 + s % 9, 4, EXPERTS)).collect();
    let stream: Vec<u32> = trace.concat();
    // Tinylfu at threshold 0 moves experts; its steps of more ids than slots rank their experts.
    let policies = [
        Policy::Tide,
        Policy::Decay(DecayConfig::default()),
        Policy::Lru,
        Policy::Lfu,
        Policy::Lru2,
        Policy::Belady,
        Policy::Tinylfu(AdmissionConfig::DEFAULT),
    ];
    for policy in policies {
        let mut buffer = vec![0u128; arena.total_bytes() / 16];
        let mut sink = ArenaSink::new(arena.clone(), 0, bytemuck::cast_slice_mut(&mut buffer)).unwrap();
        let mut pool = ExpertPool::new(PoolConfig::new(EXPERTS as usize, 16).policy(policy)).unwrap();
        if policy == Policy::Belady {
            pool.load_future(&stream).unwrap(); // evaluation only: allocates, before the count
        }
        let mut plan = MigrationPlan::new(pool.slots());

        let before = allocations();
        pool.initial_plan(&mut plan);
        migrate(&mut pool, &plan, &layout, &source[..], &mut sink).unwrap();
        for (step, ids) in trace.iter().enumerate() {
            // Slot-count changes within the most slots the pool has had allocate nothing either.
            match step {
                s if s == shrink_at => assert!(pool.set_slots(5) > 0, "{policy:?}"),
                s if s == grow_at => assert_eq!(pool.set_slots(16), 0),
                _ => {}
            }
            pool.refresh(ids, &mut plan).unwrap();
            migrate(&mut pool, &plan, &layout, &source[..], &mut sink).unwrap();
            pool.serve(ids);
        }
        let allocations = allocations() - before;
        let moved = pool.stats().promotions;
        assert!(moved > u64::from(steps) / 10, "{policy:?}: the trace must move experts to prove anything");
        assert_eq!(allocations, 0, "{policy:?}");
    }
}

#[test]
fn the_counter_sees_allocations() {
    // The proof above is only as good as the counter: it must see a plain allocation.
    let before = allocations();
    let v = std::hint::black_box(vec![1u8; 32]);
    assert!(allocations() > before);
    drop(v);
}

#[test]
fn a_shared_pool_and_prefetch_do_not_allocate_per_step() {
    use expertslab::{Predictor, Prefetcher, SharedSlotPool, Step};
    const EXPERTS: u32 = 64;
    const LAYERS: usize = 4;
    let steps: u32 = if cfg!(miri) { 60 } else { 500 };
    let trace: Vec<Vec<u32>> = (0..steps * LAYERS as u32).map(|s| routing(s, 1 + s % 3, 4, EXPERTS)).collect();
    let max_ids = trace.iter().map(Vec::len).max().unwrap();
    for policy in [Policy::Lru, Policy::Lfu, Policy::Lru2, Policy::Belady, Policy::Tinylfu(AdmissionConfig::DEFAULT)] {
        let config = PoolConfig::new(EXPERTS as usize, 16 * LAYERS).policy(policy);
        let mut shared = SharedSlotPool::new(LAYERS, config, max_ids).unwrap();
        if policy == Policy::Belady {
            // evaluation only: allocates, before the count
            shared.load_future(trace.iter().enumerate().map(|(i, ids)| (i % LAYERS, ids.as_slice()))).unwrap();
        }
        let mut prefetcher = matches!(policy, Policy::Lru | Policy::Lfu)
            .then(|| Prefetcher::new(LAYERS, EXPERTS as usize, 4, Predictor::Both, policy, true, max_ids).unwrap());
        let mut plan = MigrationPlan::new(shared.slots());
        let mut keys: Vec<u16> = Vec::with_capacity(EXPERTS as usize);

        let before = allocations();
        shared.initial_plan(&mut plan);
        for &p in plan.promotions() {
            shared.commit(p, 1).unwrap();
        }
        for (i, ids) in trace.iter().enumerate() {
            let layer = i % LAYERS;
            shared.plan_step(layer, Step::decode(i as u64 / LAYERS as u64), ids, &mut plan).unwrap();
            for &p in plan.promotions() {
                shared.commit(p, 1).unwrap();
            }
            shared.serve(layer, ids);
            let Some(prefetcher) = prefetcher.as_mut() else { continue };
            prefetcher.observe(layer, ids);
            let next = layer + 1;
            keys.clear();
            let guesses = prefetcher.predict(layer, ids, EXPERTS as usize);
            keys.extend(guesses.iter().filter_map(|&e| shared.key(next, usize::from(e))).map(|k| k as u16));
            let experts = EXPERTS as usize;
            let prefetcher = &*prefetcher;
            let outranked =
                |v: usize, g: usize| prefetcher.outranked(v / experts, v % experts, g / experts, g % experts);
            shared.keyed().prefetch(&keys, 2, outranked, &mut plan).unwrap();
            for &p in plan.promotions() {
                shared.commit(p, 1).unwrap();
            }
        }
        let allocations = allocations() - before;
        assert!(shared.stats().promotions > u64::from(steps) / 10, "{policy:?}: the trace must move experts");
        assert_eq!(allocations, 0, "{policy:?}");
    }
}
