//! What the CPU (mock) tests and the GPU tests share: a small model, routing, and a lane that
//! steps pools through a `CudaSlotSink` and checks slots and tables against the pools.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use expertslab::{
    migrate, ExpertLayout, ExpertPool, ExpertSource, Format, MigrationPlan, Policy, PoolConfig, StackLayout, Step,
};
use expertslab_cuda::{CudaSlotSink, DeviceSlotTable, Driver, NOT_RESIDENT};
use expertslab_std::{ExpertStore, LayerWeights, SharedBytes};

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
            .collect();
        store.insert(layer, LayerWeights::new(layout.clone(), stacks).unwrap());
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
            let got = table.read_back(&self.sink).map_err(|e| e.to_string())?;
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
