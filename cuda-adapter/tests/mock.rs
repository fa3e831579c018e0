//! The sink, ring and table on the mock driver, driven through `expertslab::migrate`: CPU only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;

use common::{store, Lane};
use expertslab::{migrate, MigrationPlan, Policy, SlotArena, Step};
use expertslab_cuda::{CudaError, CudaSlotSink, Driver, Faults, MockDriver, MockOp, RingConfig, DEVICE_ALIGN};

type Mock = Arc<Faults<MockDriver>>;

fn lane(register: bool, ring: RingConfig, policy: Policy) -> (Mock, Lane<Mock>) {
    let driver: Mock = Arc::new(Faults::new(MockDriver::new(1 << 24)));
    (Arc::clone(&driver), common::lane(driver, (16, 4, 32), register, ring, policy))
}

#[test]
fn many_steps_keep_slots_and_tables_equal_to_the_pools() {
    for (register, ring) in [
        (true, RingConfig::default()),
        (false, RingConfig { entries: 2, entry_bytes: 100 }),
        (false, RingConfig { entries: 0, entry_bytes: 0 }),
    ] {
        for policy in [Policy::Tide, Policy::Lru] {
            let (_, mut lane) = lane(register, ring, policy);
            common::steps_stay_exact(&mut lane, 40).unwrap_or_else(|e| panic!("{register} {ring:?} {policy:?}: {e}"));
            let stats = *lane.sink.stats();
            let copies = stats.registered_copies + stats.staged_copies + stats.synchronous_copies;
            assert_eq!(copies, lane.pools.iter().map(|p| p.stats().promotions).sum::<u64>() * 3);
            match (register, ring.entries) {
                (true, _) => assert_eq!(copies, stats.registered_copies),
                (false, 0) => assert_eq!(copies, stats.synchronous_copies),
                _ => assert_eq!(copies, stats.staged_copies),
            }
        }
    }
}

#[test]
fn an_enqueue_failure_leaves_the_slot_free_and_a_retry_converges() {
    let (driver, lane) = lane(true, RingConfig::default(), Policy::Tide);
    common::enqueue_failure_converges(&driver, lane);
}

#[test]
fn a_late_failure_frees_the_suspect_slots_and_migrating_again_converges() {
    let (driver, lane) = lane(true, RingConfig::default(), Policy::Tide);
    common::late_failure_converges(&driver, lane);
}

#[test]
fn a_failure_seen_while_waiting_for_a_staging_buffer_is_reported_at_the_next_sync() {
    let (driver, mut lane) = lane(false, RingConfig { entries: 1, entry_bytes: 256 }, Policy::Tide);
    driver.fail_next_sync(); // the first wait for the ring's only entry reports it
    let err = lane.step(0).unwrap_err();
    assert!(err.contains("synchronize"), "{err}");
    // Further writes are refused until the caller synchronizes.
    let failure = lane.sink.synchronize().unwrap_err();
    assert!(!failure.suspects.is_empty());
    failure.repair(&mut lane.pools);
    for table in &mut lane.tables {
        table.invalidate();
    }
    for step in 0..6 {
        lane.step(step).unwrap();
        lane.sink.synchronize().unwrap();
        lane.check().unwrap();
    }
}

#[test]
fn slots_are_overwritten_only_after_the_kernels_that_read_them() {
    let (store, layout) = store(1, 8, 4, 32);
    let driver = Arc::new(MockDriver::new(1 << 20));
    let arena = SlotArena::new(&layout, 2, DEVICE_ALIGN).unwrap();
    let mut sink = CudaSlotSink::new(Arc::clone(&driver), [(0, arena)], RingConfig::default()).unwrap();
    sink.host_mut().register_store(&store);
    let copy = *sink.copy_stream();
    let compute = driver.new_stream().unwrap();
    let mut pool = expertslab::ExpertPool::new(expertslab::PoolConfig::new(8, 2).policy(Policy::Lru)).unwrap();
    let mut plan = MigrationPlan::new(2);
    let mut step = |ids: &[u32], sink: &mut CudaSlotSink<Arc<MockDriver>>, index| {
        pool.plan_step(Step::decode(index), ids, &mut plan).unwrap();
        migrate(&mut pool, &plan, &layout, &store, sink).unwrap();
        pool.serve(ids);
        (plan.promotions().to_vec(), (0..8).map(|e| pool.slot_of(e)).collect::<Vec<_>>())
    };
    let copy_waits = |ops: &[MockOp]| -> Vec<usize> {
        ops.iter()
            .enumerate()
            .filter(|(_, op)| matches!(op, MockOp::Wait { stream, .. } if *stream == copy))
            .map(|(i, _)| i)
            .collect()
    };
    let first_copy = |ops: &[MockOp]| ops.iter().position(|op| matches!(op, MockOp::Copy { .. })).unwrap();
    // Step 0 fills both slots (LRU: expert 1 is the older); the kernels read expert 2's slot only.
    let (_, slots) = step(&[1, 2], &mut sink, 0);
    let (slot1, slot2) = (slots[1].unwrap(), slots[2].unwrap());
    sink.order_before(&compute).unwrap();
    sink.after_reads_of(&compute, 0, &[slot2]).unwrap();
    driver.clear_ops();
    // Expert 3 replaces expert 1, whose slot no kernel read: no wait.
    let (promoted, _) = step(&[3], &mut sink, 1);
    assert_eq!(usize::from(promoted[0].slot), slot1);
    assert!(copy_waits(&driver.ops()).is_empty(), "{:?}", driver.ops());
    assert_eq!(sink.stats().read_waits, 0);
    // Expert 4 replaces expert 2 (now the least recently used), whose slot was read: the copy
    // stream waits for the read fence before the copy.
    driver.clear_ops();
    let (promoted, _) = step(&[4], &mut sink, 2);
    assert_eq!(usize::from(promoted[0].slot), slot2);
    let ops = driver.ops();
    let waits = copy_waits(&ops);
    assert_eq!(waits.len(), 1, "{ops:?}");
    assert!(waits[0] < first_copy(&ops), "{ops:?}");
    assert_eq!(sink.stats().read_waits, 1);
    // Now the kernels read every slot: the next overwrite waits, exactly once per fence.
    sink.after_reads(&compute).unwrap();
    driver.clear_ops();
    let waits_before = sink.stats().read_waits;
    step(&[4, 5], &mut sink, 2);
    let ops = driver.ops();
    let waits = copy_waits(&ops);
    assert_eq!(waits.len(), 1, "one wait per fence: {ops:?}");
    assert!(waits[0] < first_copy(&ops), "the wait comes before the first overwrite: {ops:?}");
    assert_eq!(sink.stats().read_waits, waits_before + 1);
    // The fence recorded on the compute stream is the one the copy stream waited on.
    let recorded = driver.ops();
    assert!(
        recorded.iter().all(|op| !matches!(op, MockOp::SyncStream { .. } | MockOp::SyncEvent { .. })),
        "the host never waited"
    );
    // order_before makes the compute stream wait on the copy stream's tail.
    driver.clear_ops();
    sink.order_before(&compute).unwrap();
    let ops = driver.ops();
    let MockOp::Record { event, stream } = ops[0] else { panic!("{ops:?}") };
    assert_eq!(stream, copy);
    assert_eq!(ops[1], MockOp::Wait { stream: compute, event });
}

#[test]
fn the_table_writes_the_buffer_not_read_last_with_only_the_changed_span() {
    let (driver, mut lane) = lane(true, RingConfig::default(), Policy::Tide);
    lane.step(0).unwrap();
    let pool = &lane.pools[0];
    // Nothing changed since: nothing uploaded, the current buffer stays.
    let before = lane.tables[0].view();
    assert_eq!(lane.tables[0].update(pool, &mut lane.sink).unwrap(), 0);
    assert_eq!(lane.tables[0].view(), before);
    // Forgotten: each buffer is written in full once.
    lane.tables[0].invalidate();
    assert_eq!(lane.tables[0].update(pool, &mut lane.sink).unwrap(), 16 * 4);
    let first = lane.tables[0].view();
    assert_ne!(first, before, "an update that writes makes the other buffer current");
    let demote = |lane: &mut Lane<Mock>| {
        let (slot, expert) = lane.pools[0].residents().next().unwrap();
        lane.pools[0].demote_slot(slot);
        expert
    };
    let a = demote(&mut lane);
    assert_eq!(lane.tables[0].update(&lane.pools[0], &mut lane.sink).unwrap(), 16 * 4);
    // Back to the first buffer, which lacks both demotions: the span between them.
    let b = demote(&mut lane);
    let span = (a.max(b) - a.min(b) + 1) * 4;
    assert_eq!(lane.tables[0].update(&lane.pools[0], &mut lane.sink).unwrap(), span);
    assert_eq!(lane.tables[0].view(), first);
    lane.sink.synchronize().unwrap();
    lane.check().unwrap();
    // Readers marked on the compute stream: the copy stream waits for the readers of the buffer
    // it overwrites only, and not for the sink's read fence.
    let copy = *lane.sink.copy_stream();
    let waits =
        |ops: &[MockOp]| ops.iter().filter(|op| matches!(op, MockOp::Wait { stream, .. } if *stream == copy)).count();
    lane.sink.after_reads(&lane.compute).unwrap(); // a fence the table must not wait on
    lane.tables[0].after_reads(&lane.compute).unwrap(); // kernels read the first buffer
    driver.inner().clear_ops();
    demote(&mut lane);
    lane.tables[0].update(&lane.pools[0], &mut lane.sink).unwrap();
    assert_eq!(waits(&driver.inner().ops()), 0, "the second buffer was not read: {:?}", driver.inner().ops());
    driver.inner().clear_ops();
    demote(&mut lane);
    lane.tables[0].update(&lane.pools[0], &mut lane.sink).unwrap();
    let ops = driver.inner().ops();
    assert_eq!(waits(&ops), 1, "the first buffer's readers: {ops:?}");
    let copied = ops.iter().position(|op| matches!(op, MockOp::Copy { .. })).unwrap();
    let waited = ops.iter().position(|op| matches!(op, MockOp::Wait { stream, .. } if *stream == copy)).unwrap();
    assert!(waited < copied, "{ops:?}");
    lane.sink.synchronize().unwrap();
    lane.check().unwrap();
    // A pool of another layer is refused.
    assert!(matches!(
        lane.tables[0].update(&lane.pools[1], &mut lane.sink),
        Err(CudaError::TableMismatch { table: (0, 16), pool: (1, 16) })
    ));
}

#[test]
fn writes_are_checked_against_the_arena() {
    let (_, mut lane) = lane(true, RingConfig::default(), Policy::Tide);
    use expertslab::{Projection, SlotSink, SlotWrite};
    let dest = |layer, slot, index| SlotWrite { layer, slot, projection: Projection::Gate, index };
    assert_eq!(lane.sink.write(dest(5, 0, 0), &[0; 256]), Err(CudaError::UnknownLayer { layer: 5 }));
    assert!(matches!(lane.sink.write(dest(0, 4, 0), &[0; 256]), Err(CudaError::Layout(_))));
    assert!(matches!(lane.sink.write(dest(0, 0, 3), &[0; 256]), Err(CudaError::Layout(_))));
    assert!(matches!(lane.sink.write(dest(0, 0, 0), &[0; 255]), Err(CudaError::Layout(_))));
    assert!(matches!(lane.sink.finish(0, 9), Err(CudaError::Layout(_))));
}

#[test]
fn polling_confirms_without_waiting_and_reports_late_failures() {
    let (driver, mut lane) = lane(true, RingConfig::default(), Policy::Tide);
    lane.step(0).unwrap();
    assert_eq!(lane.sink.poll(), Ok(true));
    lane.check().unwrap();
    // The mock never blocks: polling logs no host wait.
    lane.step(1).unwrap();
    driver.inner().clear_ops();
    driver.fail_next_sync(); // reported by the next query of completed work
    let failure = lane.sink.poll().unwrap_err();
    assert!(!failure.suspects.is_empty());
    assert!(driver.inner().ops().iter().all(|op| !matches!(op, MockOp::SyncStream { .. } | MockOp::SyncEvent { .. })));
    failure.repair(&mut lane.pools);
    for (pool, table) in lane.pools.iter().zip(&mut lane.tables) {
        table.invalidate();
        table.update(pool, &mut lane.sink).unwrap();
    }
    assert_eq!(lane.sink.poll(), Ok(true));
    lane.check().unwrap();
}

#[test]
fn a_failure_seen_by_the_table_is_kept_for_the_next_sync() {
    let (driver, mut lane) = lane(true, RingConfig::default(), Policy::Tide);
    lane.step(0).unwrap();
    lane.sink.synchronize().unwrap();
    driver.fail_next_sync();
    // Each invalidate-and-update uses the next of the table's four mirrors; the fifth waits for
    // the first mirror's copy, and that wait reports the failure.
    let mut seen = None;
    for _ in 0..5 {
        lane.tables[0].invalidate();
        if let Err(e) = lane.tables[0].update(&lane.pools[0], &mut lane.sink) {
            seen = Some(e);
            break;
        }
    }
    assert_eq!(seen, Some(CudaError::Unconfirmed));
    let failure = lane.sink.synchronize().unwrap_err();
    assert!(matches!(failure.error, CudaError::Driver { call: "cuEventSynchronize", .. }));
    lane.sink.synchronize().unwrap();
}
