//! What the CPU (mock) tests and the GPU tests share: a small model, routing, and a lane that
//! steps pools through a `CudaSlotSink` and checks slots and tables against the pools.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use expertslab::{
    migrate, ExpertLayout, ExpertPool, ExpertSource, Format, MigrateError, MigrationPlan, Policy, PoolConfig,
    SlotArena, StackLayout, Step,
};
use expertslab_cuda::{
    CudaError, CudaSlotSink, DeviceSlotTable, Driver, Faults, RingConfig, DEVICE_ALIGN, NOT_RESIDENT,
};
use expertslab_std::{ExpertStore, LayerStacks, SharedBytes};

/// The byte at position `i` of `expert`'s slab of projection `projection` in `layer`.
pub fn pattern(layer: usize, projection: usize, expert: usize, i: usize) -> u8 {
    ((layer * 31 + projection * 7 + expert * 13 + i * 3 + i / 251) % 253) as u8
}

/// A store of `layers` MoE layers of `experts` experts, gate/up/down of `rows × cols` BF16.
pub fn store(layers: usize, experts: usize, rows: usize, cols: usize) -> (ExpertStore, ExpertLayout) {
    let stack = StackLayout::new(Format::BF16, experts, rows, cols).unwrap();
    let layout = ExpertLayout::gate_up_down(stack, stack, stack).unwrap();
    let slab = stack.expert_bytes();
    let mut store = ExpertStore::new();
    for layer in 0..layers {
        let stacks = (0..3)
            .map(|p| {
                let bytes: Vec<u8> = (0..experts * slab).map(|i| pattern(layer, p, i / slab, i % slab)).collect();
                SharedBytes::copy_from(&bytes)
            })
            .collect::<Vec<_>>();
        store.insert(layer, LayerStacks::new(layout.clone(), &stacks).unwrap()).unwrap();
    }
    (store, layout)
}

/// `k` routing ids of step `step` in `layer`: mostly a hot set drifting slowly, some cold ids.
pub fn routing(step: usize, layer: usize, experts: usize, k: usize) -> Vec<u32> {
    let mut state = (step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (layer as u64 + 7);
    (0..k)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let hot = !state.is_multiple_of(4);
            let id = if hot {
                (step / 8 + (state >> 8) as usize % (experts / 4)) % experts
            } else {
                (state >> 16) as usize % experts
            };
            id as u32
        })
        .collect()
}

/// Pools, a sink and tables of one model, stepped together.
pub struct Lane<D: Driver + Clone> {
    pub store: ExpertStore,
    pub layout: ExpertLayout,
    pub sink: CudaSlotSink<D>,
    pub pools: Vec<ExpertPool>,
    pub tables: Vec<DeviceSlotTable<D>>,
    pub compute: D::Stream,
    pub plan: MigrationPlan,
    pub k: usize,
}

impl<D: Driver + Clone> Lane<D> {
    pub fn new(
        store: ExpertStore,
        layout: ExpertLayout,
        mut sink: CudaSlotSink<D>,
        slots: usize,
        policy: Policy,
        k: usize,
    ) -> Self {
        let layers: Vec<usize> = sink.layers().collect();
        let experts = layout.experts();
        let pools = layers
            .iter()
            .map(|&l| ExpertPool::new(PoolConfig::new(experts, slots).layer(l).policy(policy)).unwrap())
            .collect();
        let tables = layers.iter().map(|&l| DeviceSlotTable::new(l, experts, &mut sink).unwrap()).collect();
        let compute = sink.driver().new_stream().unwrap();
        Self { store, layout, sink, pools, tables, compute, plan: MigrationPlan::new(slots), k }
    }

    /// Plans and migrates step `step` in every layer, updates the tables, orders the compute
    /// stream after the copies and records the reads. Stops at the first migration failure.
    pub fn step(&mut self, step: usize) -> Result<(), String> {
        let experts = self.layout.experts();
        for (pool, table) in self.pools.iter_mut().zip(&mut self.tables) {
            let ids = routing(step, pool.layer(), experts, self.k);
            pool.plan_step(Step::decode(step as u64), &ids, &mut self.plan).map_err(|e| e.to_string())?;
            migrate(pool, &self.plan, &self.layout, &self.store, &mut self.sink).map_err(|e| e.to_string())?;
            table.update(pool, &mut self.sink).map_err(|e| e.to_string())?;
            pool.serve(&ids);
        }
        self.sink.order_before(&self.compute).map_err(|e| e.to_string())?;
        self.sink.after_reads(&self.compute).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Retries the last plan of every layer (after a failure).
    pub fn retry(&mut self, step: usize) -> Result<(), String> {
        self.step(step)
    }

    /// Checks every resident expert's slot bytes against the store, and each table (read back
    /// from the device) against its pool.
    pub fn check(&mut self) -> Result<(), String> {
        for pool in &self.pools {
            let layer = pool.layer();
            for (slot, expert) in pool.residents() {
                for (index, &(projection, stack)) in self.layout.projections().iter().enumerate() {
                    let mut out = vec![0u8; stack.expert_bytes()];
                    self.sink.read_slot(layer, slot, index, &mut out).map_err(|e| e.to_string())?;
                    let want = self.store.expert(layer, projection, expert).map_err(|e| e.to_string())?;
                    if out != want {
                        return Err(format!("layer {layer} slot {slot}: expert {expert} {projection:?} differs"));
                    }
                }
            }
        }
        for (pool, table) in self.pools.iter().zip(&self.tables) {
            let mut want = vec![NOT_RESIDENT; pool.experts()];
            for (slot, expert) in pool.residents() {
                want[expert] = slot as i32;
            }
            let got = table.read_back(&mut self.sink).map_err(|e| e.to_string())?;
            if got != want || table.entries() != want {
                return Err(format!("layer {}: device table {got:?}, pool {want:?}", pool.layer()));
            }
        }
        Ok(())
    }

    /// Every (layer, slot, expert) resident.
    pub fn residents(&self) -> Vec<(usize, usize, usize)> {
        self.pools.iter().flat_map(|p| p.residents().map(move |(s, e)| (p.layer(), s, e))).collect()
    }
}

/// A lane of 2 layers × `experts` experts (`rows × cols` BF16 projections), 8 slots per layer
/// (`slots` when fewer experts), k = 6, the store registered or not.
pub fn lane<D: Driver + Clone>(
    driver: D,
    shape: (usize, usize, usize),
    register: bool,
    ring: RingConfig,
    policy: Policy,
) -> Lane<D> {
    let (experts, rows, cols) = shape;
    let slots = (experts / 4).max(1);
    let (store, layout) = store(2, experts, rows, cols);
    let arenas = (0..2).map(|l| (l, SlotArena::new(&layout, slots, DEVICE_ALIGN).unwrap()));
    let mut sink = CudaSlotSink::new(driver, arenas, ring).unwrap();
    if register {
        let report = sink.host_mut().register_store(&store);
        assert_eq!(report.refused, 0, "{report:?}");
    }
    Lane::new(store, layout, sink, slots, policy, 6)
}

/// Steps `lane` `steps` times, confirming and checking every slot and table after each step.
pub fn steps_stay_exact<D: Driver + Clone>(lane: &mut Lane<D>, steps: usize) -> Result<(), String> {
    for step in 0..steps {
        lane.step(step)?;
        lane.sink.synchronize().map_err(|e| e.to_string())?;
        lane.check().map_err(|e| format!("step {step}: {e}"))?;
    }
    Ok(())
}

/// A copy refused at enqueue time fails its promotion: the slot stays free, the pool stays
/// consistent, and migrating the plan again converges.
pub fn enqueue_failure_converges<D: Driver + Clone>(driver: &Faults<impl Driver>, mut lane: Lane<D>) {
    lane.step(0).unwrap();
    lane.sink.synchronize().unwrap();
    // Step 1 of layer 0 plans some promotions; the second copy of the first one fails.
    let ids = routing(50, 0, lane.layout.experts(), lane.k);
    let pool = &mut lane.pools[0];
    let mut plan = MigrationPlan::new(pool.slots());
    pool.plan_step(Step::decode(50), &ids, &mut plan).unwrap();
    assert!(!plan.is_empty());
    let first = plan.promotions()[0];
    driver.fail_copy(1);
    let failure = migrate(pool, &plan, &lane.layout, &lane.store, &mut lane.sink).unwrap_err();
    assert_eq!(failure.failed, first);
    assert!(matches!(failure.error, MigrateError::Sink(CudaError::Driver { call: "cuMemcpyHtoDAsync", .. })));
    assert_eq!(pool.expert_in(usize::from(first.slot)), None, "the failed slot stays free");
    assert!(!pool.is_resident(usize::from(first.expert)));
    // The pool is consistent: every resident is in its slot, and the sink is usable.
    lane.tables[0].update(&lane.pools[0], &mut lane.sink).unwrap();
    lane.sink.synchronize().unwrap();
    lane.check().unwrap();
    // Migrating the same plan again converges.
    let pool = &mut lane.pools[0];
    let report = migrate(pool, &plan, &lane.layout, &lane.store, &mut lane.sink).unwrap();
    assert_eq!(report.copied, plan.len());
    assert_eq!(pool.slot_of(usize::from(first.expert)), Some(usize::from(first.slot)));
    lane.tables[0].update(&lane.pools[0], &mut lane.sink).unwrap();
    lane.sink.synchronize().unwrap();
    lane.check().unwrap();
}

/// A failure reported at a sync frees every slot written since the last confirmed sync; the
/// residents left were confirmed, and the next steps converge.
pub fn late_failure_converges<D: Driver + Clone>(driver: &Faults<impl Driver>, mut lane: Lane<D>) {
    lane.step(0).unwrap();
    lane.sink.synchronize().unwrap();
    let confirmed = lane.residents();
    assert!(!confirmed.is_empty());
    // Step 1's copies "fail on the device": the sync reports it.
    lane.step(1).unwrap();
    let written: Vec<_> = lane.residents().into_iter().filter(|r| !confirmed.contains(r)).collect();
    assert!(!written.is_empty(), "step 1 promoted something");
    driver.fail_next_sync();
    let failure = lane.sink.synchronize().unwrap_err();
    assert!(matches!(failure.error, CudaError::Driver { call: "cuStreamSynchronize", .. }));
    let demotions_before: u64 = lane.pools.iter().map(|p| p.stats().demotions).sum();
    let demoted = failure.repair(&mut lane.pools);
    assert_eq!(demoted, written.len(), "every expert promoted since the last sync is demoted");
    let demotions_after: u64 = lane.pools.iter().map(|p| p.stats().demotions).sum();
    assert_eq!(demotions_after - demotions_before, demoted as u64);
    for (layer, slot, _) in &written {
        assert_eq!(lane.pools[*layer].expert_in(*slot), None);
    }
    // Everything still resident was confirmed by the first sync.
    assert!(lane.residents().iter().all(|r| confirmed.contains(r)));
    for table in &mut lane.tables {
        table.invalidate();
    }
    for (pool, table) in lane.pools.iter().zip(&mut lane.tables) {
        table.update(pool, &mut lane.sink).unwrap();
    }
    lane.sink.synchronize().unwrap();
    lane.check().unwrap();
    // The next steps promote the wanted experts again and converge.
    for step in 2..10 {
        lane.step(step).unwrap();
        lane.sink.synchronize().unwrap();
        lane.check().unwrap();
    }
}
