//! The parallel migrator keeps the core's guarantees: each promotion is committed only after its
//! copy, a failure anywhere leaves every resident slot holding its expert's bytes and the failed
//! slot free, and migrating the same plan again converges. Sequential and parallel paths agree.

use expertslab_std::{
    ExpertLayout, ExpertPool, ExpertSource, LayerStacks, LayoutError, MigrateError, MigrationPlan, ParallelMigrator,
    PoolConfig, Projection, SlotArena,
};
use expertslab_tests::{borrow_layer, slab_byte, synthetic_layer};

const EXPERTS: usize = 24;
const SLOTS: usize = 8;

/// A source that fails at one projection of one expert: with an error, or by giving a slab one
/// byte short. Projections before it have been copied when it fails.
struct FailingAt<'a> {
    inner: &'a [LayerStacks<&'a [u8]>],
    expert: usize,
    projection: Projection,
    short: bool,
}

impl ExpertSource for FailingAt<'_> {
    type Error = LayoutError;

    fn expert(&self, layer: usize, projection: Projection, expert: usize) -> Result<&[u8], LayoutError> {
        let slab = self.inner.expert(layer, projection, expert)?;
        if expert != self.expert || projection != self.projection {
            return Ok(slab);
        }
        match slab.split_last() {
            Some((_, short)) if self.short => Ok(short),
            _ => Err(LayoutError::ZeroDimension),
        }
    }
}

fn assert_slots_hold_their_experts(pool: &ExpertPool, arena: &SlotArena, buffer: &[u8]) {
    for (slot, expert) in pool.residents() {
        for index in 0..3 {
            let slab = arena.projection_bytes(buffer, slot, index).unwrap();
            assert!(slab.iter().all(|&b| b == slab_byte(expert, index)), "slot {slot} does not hold expert {expert}");
        }
    }
}

/// A pool of `EXPERTS` experts in `SLOTS` slots whose warm start `migrator` has copied into
/// `buffer`, and its plan, ready for the next refresh.
fn warm_pool<S>(
    migrator: &ParallelMigrator,
    layout: &ExpertLayout,
    source: &S,
    arena: &SlotArena,
    buffer: &mut [u8],
) -> (ExpertPool, MigrationPlan)
where
    S: ExpertSource<Error = LayoutError> + Sync + ?Sized,
{
    let mut pool = ExpertPool::new(PoolConfig::new(EXPERTS, SLOTS)).unwrap();
    let mut plan = MigrationPlan::new(SLOTS);
    pool.initial_plan(&mut plan);
    migrator.migrate(&mut pool, &plan, layout, source, arena, buffer).unwrap();
    (pool, plan)
}

#[test]
fn parallel_and_sequential_paths_fill_the_same_slots() {
    let (layout, stacks) = synthetic_layer(EXPERTS, 16, 32);
    let source = [borrow_layer(&layout, &stacks)];
    let arena = SlotArena::new(&layout, SLOTS, 64).unwrap();
    let steps: [&[u32]; 4] = [&[1, 2, 3, 4, 5, 6, 7, 8, 9], &[20, 21, 22, 1, 2], &[0, 0, 23, 12, 13, 14], &[5, 6]];
    let mut outcomes = Vec::new();
    for migrator in [ParallelMigrator::with_threshold(0), ParallelMigrator::with_threshold(usize::MAX)] {
        let mut backing = vec![0u8; arena.total_bytes() + 64];
        let buffer = arena.fit(&mut backing).unwrap();
        let (mut pool, mut plan) = warm_pool(&migrator, &layout, &source[..], &arena, buffer);
        for ids in steps {
            pool.refresh(ids, &mut plan).unwrap();
            let report = migrator.migrate(&mut pool, &plan, &layout, &source[..], &arena, buffer).unwrap();
            assert_eq!(report.copied, plan.len());
            assert_eq!(report.bytes_promoted, (plan.len() * layout.expert_bytes()) as u64);
            assert_slots_hold_their_experts(&pool, &arena, buffer);
        }
        outcomes.push((pool.residents().collect::<Vec<_>>(), *pool.stats(), buffer.to_vec()));
    }
    assert_eq!(outcomes[0], outcomes[1]);
}

#[test]
fn a_failing_promotion_anywhere_leaves_the_pool_consistent_and_a_retry_converges() {
    let (layout, stacks) = synthetic_layer(EXPERTS, 4, 8);
    let layers = [borrow_layer(&layout, &stacks)];
    let arena = SlotArena::new(&layout, SLOTS, 16).unwrap();
    let ids: Vec<u32> = (10..18).collect();
    let projections = [Projection::Gate, Projection::Up, Projection::Down];
    // Every promotion, every projection, an error or a short slab, both paths (a sample of the
    // promotions under Miri).
    let failing_experts = if cfg!(miri) { 16..18 } else { 10..18 };
    for (failing, projection, short) in
        failing_experts.flat_map(|e| projections.map(move |p| (e, p))).flat_map(|(e, p)| [(e, p, false), (e, p, true)])
    {
        for migrator in [ParallelMigrator::with_threshold(0), ParallelMigrator::with_threshold(usize::MAX)] {
            let mut backing = vec![0u8; arena.total_bytes() + 16];
            let buffer = arena.fit(&mut backing).unwrap();
            let (mut pool, mut plan) = warm_pool(&migrator, &layout, &layers[..], &arena, buffer);
            pool.refresh(&ids, &mut plan).unwrap();
            let source = FailingAt { inner: &layers, expert: failing, projection, short };
            let failure = migrator.migrate(&mut pool, &plan, &layout, &source, &arena, buffer).unwrap_err();
            if short {
                let expected = layout.find(projection).unwrap().1.expert_bytes();
                let error = MigrateError::SlabLength { projection, expected, actual: expected - 1 };
                assert_eq!(failure.error, error);
            } else {
                assert_eq!(failure.error, MigrateError::Source(LayoutError::ZeroDimension));
            }
            assert_eq!(usize::from(failure.failed.expert), failing);
            assert!(pool.expert_in(usize::from(failure.failed.slot)).is_none());
            assert_slots_hold_their_experts(&pool, &arena, buffer);
            let retry = migrator.migrate(&mut pool, &plan, &layout, &layers[..], &arena, buffer).unwrap();
            assert_eq!(retry.skipped + retry.copied, plan.len());
            assert!(ids.iter().all(|&e| pool.is_resident(e as usize)));
            assert_slots_hold_their_experts(&pool, &arena, buffer);
        }
    }
}

#[test]
fn stale_plans_and_small_buffers_are_refused() {
    let (layout, stacks) = synthetic_layer(EXPERTS, 4, 8);
    let source = [borrow_layer(&layout, &stacks)];
    let arena = SlotArena::new(&layout, SLOTS, 16).unwrap();
    let migrator = ParallelMigrator::with_threshold(0);
    let mut backing = vec![0u8; arena.total_bytes() + 16];
    let mut pool = ExpertPool::new(PoolConfig::new(EXPERTS, SLOTS)).unwrap();
    let mut plan = MigrationPlan::new(SLOTS);
    pool.initial_plan(&mut plan);
    let short = &mut arena.fit(&mut backing).unwrap()[..arena.total_bytes() - 1];
    let failure = migrator.migrate(&mut pool, &plan, &layout, &source[..], &arena, short).unwrap_err();
    assert!(matches!(failure.error, MigrateError::Sink(LayoutError::BufferTooSmall { .. })));
    assert_eq!(pool.resident(), 0);

    let buffer = arena.fit(&mut backing).unwrap();
    migrator.migrate(&mut pool, &plan, &layout, &source[..], &arena, buffer).unwrap();
    // The same initial plan again: everything is done, nothing copied.
    let again = migrator.migrate(&mut pool, &plan, &layout, &source[..], &arena, buffer).unwrap();
    assert_eq!((again.copied, again.skipped), (0, SLOTS));
    // A plan made by another pool whose slots this pool has filled differently: refused.
    let mut other =
        ExpertPool::new(PoolConfig::new(EXPERTS, SLOTS).initial(expertslab_std::InitialPlacement::Cold)).unwrap();
    let mut foreign = MigrationPlan::new(SLOTS);
    other.refresh(&[20, 21, 22], &mut foreign).unwrap();
    let failure = migrator.migrate(&mut pool, &foreign, &layout, &source[..], &arena, buffer).unwrap_err();
    assert!(matches!(failure.error, MigrateError::Plan(_)));
    assert_slots_hold_their_experts(&pool, &arena, buffer);
    // A plan of another layer: refused at its first promotion, nothing committed.
    let layer_three = ExpertPool::new(PoolConfig::new(EXPERTS, SLOTS).layer(3)).unwrap();
    let mut misrouted = MigrationPlan::new(SLOTS);
    layer_three.initial_plan(&mut misrouted);
    let mut fresh = ExpertPool::new(PoolConfig::new(EXPERTS, SLOTS)).unwrap();
    let failure = migrator.migrate(&mut fresh, &misrouted, &layout, &source[..], &arena, buffer).unwrap_err();
    assert_eq!(failure.error, MigrateError::Plan(expertslab_std::PlanError::LayerMismatch { plan: 3, pool: 0 }));
    assert_eq!(failure.failed, misrouted.promotions()[0]);
    assert_eq!((fresh.resident(), failure.completed.copied), (0, 0));
}
