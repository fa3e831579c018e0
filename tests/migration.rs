//! Migration: copies land in the right slots, each promotion is committed only after its copy,
//! and a failure at any point leaves every resident slot holding exactly its expert's bytes.

use expertslab::{
    migrate, push_stacks, ArenaSink, ExpertPool, ExpertSource, LayerStacks, LayoutError, MigrateError, MigrationPlan,
    PlanError, PoolConfig, Projection, SlotArena, SlotSink, SlotWrite, StackSink,
};
use expertslab_tests::{borrow_layer, slab_byte, synthetic_layer, GATE_UP_DOWN};

const EXPERTS: usize = 12;
const SLOTS: usize = 4;

/// A sink that fails its `fail_at`-th write (counting from 0) or, with `fail_finish`, its
/// `fail_at`-th finish, after writing half of the bytes (a torn copy).
struct FaultySink<'a> {
    inner: ArenaSink<'a>,
    calls: usize,
    fail_at: usize,
    fail_finish: bool,
}

#[derive(Debug, PartialEq)]
struct Injected;

impl SlotSink for FaultySink<'_> {
    type Error = Injected;

    fn write(&mut self, dest: SlotWrite, bytes: &[u8]) -> Result<(), Injected> {
        if !self.fail_finish {
            self.calls += 1;
            if self.calls - 1 == self.fail_at {
                // Tear the slot: half of the new bytes, garbage after.
                let mut torn = bytes.to_vec();
                let half = torn.len() / 2;
                torn[half..].fill(0xEE);
                self.inner.write(dest, &torn).expect("in range");
                return Err(Injected);
            }
        }
        self.inner.write(dest, bytes).map_err(|_| Injected)
    }

    fn finish(&mut self, _layer: usize, _slot: usize) -> Result<(), Injected> {
        if self.fail_finish {
            self.calls += 1;
            if self.calls - 1 == self.fail_at {
                return Err(Injected);
            }
        }
        Ok(())
    }
}

/// Every slot the pool says holds expert `e` holds exactly `e`'s bytes in every projection.
fn assert_slots_hold_their_experts(pool: &ExpertPool, sink: &ArenaSink<'_>) {
    for (slot, expert) in pool.residents() {
        for index in 0..3 {
            let slab = sink.slab(slot, index).expect("slot in range");
            assert!(slab.iter().all(|&b| b == slab_byte(expert, index)), "slot {slot} does not hold expert {expert}");
        }
    }
}

fn aligned_buffer(bytes: usize) -> Vec<u64> {
    vec![0u64; bytes.div_ceil(8)]
}

#[test]
fn migration_copies_promotions_into_their_slots() {
    let (layout, stacks) = synthetic_layer(EXPERTS, 3, 4);
    let source = [borrow_layer(&layout, &stacks)];
    let arena = SlotArena::new(&layout, SLOTS, 8).unwrap();
    let mut buffer = aligned_buffer(arena.total_bytes());
    let mut sink = ArenaSink::new(arena, 0, bytemuck::cast_slice_mut(&mut buffer)).unwrap();
    let mut pool = ExpertPool::new(PoolConfig::new(EXPERTS, SLOTS)).unwrap();
    let mut plan = MigrationPlan::new(SLOTS);
    pool.initial_plan(&mut plan);
    let report = migrate(&mut pool, &plan, &layout, &source[..], &mut sink).unwrap();
    assert_eq!((report.copied, report.skipped, report.bytes_promoted), (4, 0, 4 * 3 * 48));
    assert_slots_hold_their_experts(&pool, &sink);

    for ids in [[9u32, 9, 10, 2], [11, 11, 11, 0], [5, 6, 7, 8]] {
        pool.refresh(&ids, &mut plan).unwrap();
        migrate(&mut pool, &plan, &layout, &source[..], &mut sink).unwrap();
        assert_slots_hold_their_experts(&pool, &sink);
        assert!(ids.iter().all(|&e| pool.is_resident(e as usize)));
    }
    assert_eq!(pool.stats().bytes_promoted, pool.stats().promotions * 3 * 48);
}

/// A failing sink at every possible write, and at every possible finish: after the failure the
/// pool is consistent with slot contents, the failed slot is free, and migrating the same plan
/// again completes it.
#[test]
fn a_failure_at_any_point_loses_nothing_and_a_retry_converges() {
    let (layout, stacks) = synthetic_layer(EXPERTS, 3, 4);
    let source = [borrow_layer(&layout, &stacks)];
    let arena = SlotArena::new(&layout, SLOTS, 8).unwrap();
    let steps: [&[u32]; 3] = [&[8, 8, 9, 10, 11], &[0, 1, 0, 1, 2], &[11, 5, 5, 6]];
    for fail_finish in [false, true] {
        let writes_per_promotion = if fail_finish { 1 } else { 3 };
        for fail_at in 0..SLOTS * writes_per_promotion {
            for (s, ids) in steps.iter().enumerate() {
                let mut buffer = aligned_buffer(arena.total_bytes());
                let sink = ArenaSink::new(arena.clone(), 0, bytemuck::cast_slice_mut(&mut buffer)).unwrap();
                let mut sink = FaultySink { inner: sink, calls: 0, fail_at: usize::MAX, fail_finish };
                let mut pool = ExpertPool::new(PoolConfig::new(EXPERTS, SLOTS)).unwrap();
                let mut plan = MigrationPlan::new(SLOTS);
                pool.initial_plan(&mut plan);
                migrate(&mut pool, &plan, &layout, &source[..], &mut sink).unwrap();
                for earlier in &steps[..s] {
                    pool.refresh(earlier, &mut plan).unwrap();
                    migrate(&mut pool, &plan, &layout, &source[..], &mut sink).unwrap();
                }

                pool.refresh(ids, &mut plan).unwrap();
                sink.calls = 0;
                sink.fail_at = fail_at;
                match migrate(&mut pool, &plan, &layout, &source[..], &mut sink) {
                    Ok(report) => assert!(fail_at >= report.copied * writes_per_promotion),
                    Err(failure) => {
                        assert_eq!(failure.error, MigrateError::Sink(Injected));
                        assert_eq!(failure.completed.copied, fail_at / writes_per_promotion);
                        assert!(pool.expert_in(usize::from(failure.failed.slot)).is_none());
                        assert!(!pool.is_resident(usize::from(failure.failed.expert)));
                        assert_slots_hold_their_experts(&pool, &sink.inner);
                        sink.fail_at = usize::MAX;
                        let retry = migrate(&mut pool, &plan, &layout, &source[..], &mut sink).unwrap();
                        assert_eq!(retry.skipped, failure.completed.copied);
                    }
                }
                for p in plan.promotions() {
                    assert_eq!(pool.slot_of(usize::from(p.expert)), Some(usize::from(p.slot)));
                }
                assert_slots_hold_their_experts(&pool, &sink.inner);
            }
        }
    }
}

/// A source that lies about slab lengths or fails.
struct BadSource<'a> {
    inner: &'a [LayerStacks<&'a [u8]>],
    short: bool,
}

impl ExpertSource for BadSource<'_> {
    type Error = &'static str;

    fn expert(&self, layer: usize, projection: Projection, expert: usize) -> Result<&[u8], &'static str> {
        if expert == 7 {
            return Err("flash read failed");
        }
        let slab = self.inner.expert(layer, projection, expert).map_err(|_| "missing")?;
        Ok(if self.short && projection == Projection::Down { &slab[1..] } else { slab })
    }
}

#[test]
fn source_errors_and_wrong_lengths_leave_the_slot_free() {
    let (layout, stacks) = synthetic_layer(EXPERTS, 2, 2);
    let layers = [borrow_layer(&layout, &stacks)];
    let arena = SlotArena::new(&layout, SLOTS, 4).unwrap();
    let mut buffer = aligned_buffer(arena.total_bytes());
    let mut sink = ArenaSink::new(arena, 0, bytemuck::cast_slice_mut(&mut buffer)).unwrap();
    let mut pool = ExpertPool::new(PoolConfig::new(EXPERTS, SLOTS)).unwrap();
    let mut plan = MigrationPlan::new(SLOTS);

    pool.refresh(&[7, 7, 3], &mut plan).unwrap(); // warm start never migrated: slots are free
    let failure =
        migrate(&mut pool, &plan, &layout, &BadSource { inner: &layers, short: false }, &mut sink).unwrap_err();
    assert_eq!(failure.error, MigrateError::Source("flash read failed"));
    assert_eq!(failure.failed.expert, 7);
    assert_eq!(pool.resident(), 0);

    pool.refresh(&[3], &mut plan).unwrap();
    let failure =
        migrate(&mut pool, &plan, &layout, &BadSource { inner: &layers, short: true }, &mut sink).unwrap_err();
    assert_eq!(failure.error, MigrateError::SlabLength { projection: Projection::Down, expected: 16, actual: 15 });
    assert_eq!(pool.resident(), 0);
    assert_eq!(pool.stats().promotions, 0);
}

#[test]
fn stale_and_foreign_plans_are_refused() {
    let (layout, stacks) = synthetic_layer(EXPERTS, 1, 1);
    let source = [borrow_layer(&layout, &stacks)];
    let arena = SlotArena::new(&layout, SLOTS, 4).unwrap();
    let mut buffer = aligned_buffer(arena.total_bytes());
    let mut sink = ArenaSink::new(arena, 0, bytemuck::cast_slice_mut(&mut buffer)).unwrap();
    let mut pool = ExpertPool::new(PoolConfig::new(EXPERTS, SLOTS)).unwrap();
    let mut plan = MigrationPlan::new(SLOTS);
    pool.initial_plan(&mut plan);
    migrate(&mut pool, &plan, &layout, &source[..], &mut sink).unwrap();

    // A plan made before the slots were filled is stale: its slots are taken.
    let mut stale = MigrationPlan::new(SLOTS);
    let mut other =
        ExpertPool::new(PoolConfig::new(EXPERTS, SLOTS).initial(expertslab::InitialPlacement::Cold)).unwrap();
    other.refresh(&[9], &mut stale).unwrap();
    let failure = migrate(&mut pool, &stale, &layout, &source[..], &mut sink).unwrap_err();
    assert_eq!(failure.error, MigrateError::Plan(PlanError::SlotOccupied { slot: 0, expert: 0 }));
    assert_slots_hold_their_experts(&pool, &sink);

    let mut layer3 = ExpertPool::new(PoolConfig::new(EXPERTS, SLOTS).layer(3)).unwrap();
    layer3.refresh(&[9], &mut stale).unwrap();
    let failure = migrate(&mut pool, &stale, &layout, &source[..], &mut sink).unwrap_err();
    assert_eq!(failure.error, MigrateError::Plan(PlanError::LayerMismatch { plan: 3, pool: 0 }));

    // A promotion into a slot the sink does not have fails in the sink, not silently.
    let small = SlotArena::new(&layout, 1, 4).unwrap();
    let mut small_buffer = aligned_buffer(small.total_bytes());
    let mut small_sink = ArenaSink::new(small, 0, bytemuck::cast_slice_mut(&mut small_buffer)).unwrap();
    pool.refresh(&[10, 10, 11], &mut plan).unwrap();
    let failure = migrate(&mut pool, &plan, &layout, &source[..], &mut small_sink).unwrap_err();
    assert!(matches!(failure.error, MigrateError::Sink(LayoutError::SlotOutOfRange { .. })));

    // A plan made before a slot-count change: refused whole, even into slots that still exist.
    pool.refresh(&[6, 6, 7, 7, 8, 8, 9, 9], &mut plan).unwrap();
    assert!(!plan.is_empty());
    let resident = pool.resident();
    pool.set_slots(SLOTS - 1);
    let failure = migrate(&mut pool, &plan, &layout, &source[..], &mut sink).unwrap_err();
    assert_eq!(failure.error, MigrateError::Plan(PlanError::SlotsChanged { plan: 0, pool: 1 }));
    assert_eq!(failure.completed.copied, 0);
    assert!(pool.resident() <= resident);
    assert_slots_hold_their_experts(&pool, &sink);
}

#[derive(Default)]
struct Params(Vec<(String, usize, Projection, usize)>);

impl StackSink for Params {
    type Error = ();

    fn write_stack(&mut self, name: &str, layer: usize, projection: Projection, bytes: &[u8]) -> Result<(), ()> {
        self.0.push((name.to_string(), layer, projection, bytes.len()));
        Ok(())
    }
}

#[test]
fn full_stacks_are_pushed_by_gguf_name() {
    let (layout, stacks) = synthetic_layer(EXPERTS, 2, 2);
    let model = [borrow_layer(&layout, &stacks), borrow_layer(&layout, &stacks)];
    let mut params = Params::default();
    let bytes = push_stacks(1, &layout, &model[..], &mut params).unwrap();
    assert_eq!(bytes, 3 * 12 * 16);
    let names: Vec<&str> = params.0.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, ["blk.1.ffn_gate_exps.weight", "blk.1.ffn_up_exps.weight", "blk.1.ffn_down_exps.weight"]);
    assert!(params.0.iter().zip(GATE_UP_DOWN).all(|(p, proj)| p.1 == 1 && p.2 == proj && p.3 == 192));
    assert!(push_stacks(2, &layout, &model[..], &mut params).is_err());
}

#[test]
fn a_model_sink_dispatches_by_layer() {
    let (layout, stacks) = synthetic_layer(EXPERTS, 1, 2);
    let model = [borrow_layer(&layout, &stacks), borrow_layer(&layout, &stacks)];
    let arena = SlotArena::new(&layout, 2, 8).unwrap();
    let mut b0 = aligned_buffer(arena.total_bytes());
    let mut b1 = aligned_buffer(arena.total_bytes());
    let mut sinks = [
        ArenaSink::new(arena.clone(), 0, bytemuck::cast_slice_mut(&mut b0)).unwrap(),
        ArenaSink::new(arena.clone(), 1, bytemuck::cast_slice_mut(&mut b1)).unwrap(),
    ];
    let mut pools = expertslab::LayerPools::new(&[PoolConfig::new(EXPERTS, 2), PoolConfig::new(EXPERTS, 2)]).unwrap();
    let mut plans = pools.new_plans();
    let ids: [&[u32]; 2] = [&[4, 5], &[6]];
    assert_eq!(pools.plan_step(expertslab::Step::decode(0), &ids, &mut plans).unwrap(), 2);
    for (pool, plan) in pools.pools_mut().iter_mut().zip(&plans) {
        migrate(pool, plan, &layout, &model[..], &mut sinks[..]).unwrap();
    }
    assert_slots_hold_their_experts(&pools.pools()[0], &sinks[0]);
    assert_slots_hold_their_experts(&pools.pools()[1], &sinks[1]);
    assert!(pools.pools()[1].is_resident(6) && !pools.pools()[1].is_resident(4));
    let out_of_range = SlotWrite { layer: 2, slot: 0, projection: Projection::Gate, index: 0 };
    assert!(matches!(
        sinks[..].write(out_of_range, &[0; 8]),
        Err(LayoutError::LayerOutOfRange { layer: 2, layers: 2 })
    ));
}
