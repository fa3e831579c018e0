//! The decode runner: every layer step goes through the library's path, layers chained.
//!
//! One record (one layer's step) is, in order on the host:
//!
//! 1. **Wait for the previous record.** The host waits for the event that ends the previous
//!    record's kernels; only then is this record's routing known (the router reads the previous
//!    layer's output), and only then are its ids taken from the trace. Nothing of this record
//!    (a copy, a scratch write, a table update, a kernel) is enqueued earlier.
//! 2. **The pool's step** ([`ExpertPool::step`], or [`SharedSlotPool::step`] for a pool shared
//!    by the layers): plan, migrate the promotions from the model's [`expertslab_std::ExpertStore`]
//!    into the [`CudaSlotSink`] (copies enqueued on its copy stream; each committed once
//!    enqueued after the kernels that read its slot), serve.
//! 3. **Misses not admitted**, by the [`MissRule`]: a scratch write of the sink
//!    ([`CudaSlotSink::write_scratch`], read through [`PairSource::scratch`]) or a read over the
//!    bus from the registered host memory ([`PairSource::mapped`]).
//! 4. **The table**: [`DeviceSlotTable::update`] writes the buffer kernels did not read last.
//! 5. **Kernels**, on the compute stream: gate/up and down of the pairs whose expert stayed in
//!    its slot, read through the table as it was before the update (they overlap the copies);
//!    then [`CudaSlotSink::order_before`]; then the other pairs through the updated table; the
//!    combine writes the layer's output, the next layer's input.
//! 6. **Reads marked**: [`CudaSlotSink::after_reads`] and [`DeviceSlotTable::after_reads`], and
//!    the event the next record waits on.

use std::collections::HashMap;
use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice};
use expertslab::trace::replay::Sharing;
use expertslab::trace::Trace;
use expertslab::{
    ExpertPool, InitialPlacement, MigrateStats, MigrationPlan, PoolConfig, PoolStats, SharedSlotPool, SlotArena, Step,
    StepError,
};

use super::model::GpuModel;
use super::{activations, router_weights, RunConfig, RunReport};
use crate::arena::DEVICE_ALIGN;
use crate::driver::CudaDriver;
use crate::error::CudaError;
use crate::ffn::{raw, MissAction, MissRule, PairSource, Phase, SlotView, StepBuffers};
use crate::sink::{CudaSlotSink, ScratchSlot};
use crate::table::DeviceSlotTable;

/// The sink's key of the one arena a shared pool's slots live in (the pool's own layer index).
const SHARED_ARENA: usize = 0;

/// Where the run's residency is decided.
enum Placement {
    /// No slots: every routed expert is a miss.
    None,
    /// One pool per layer (pool `l` is layer `l`'s, its arena the sink's layer `l`).
    PerLayer(Vec<ExpertPool>),
    /// One pool of `slots × layers` slots for every layer, in the sink's arena
    /// [`SHARED_ARENA`].
    Shared(Box<SharedSlotPool>),
}

impl Placement {
    /// The slot of `expert` of `layer`, if resident.
    fn slot_of(&self, layer: usize, expert: usize) -> Option<usize> {
        match self {
            Self::None => None,
            Self::PerLayer(pools) => pools.get(layer).and_then(|p| p.slot_of(expert)),
            Self::Shared(pool) => pool.slot_of(layer, expert),
        }
    }

    /// The sink's arena key layer `layer` reads its slots from.
    fn arena(&self, layer: usize) -> usize {
        match self {
            Self::Shared(_) => SHARED_ARENA,
            _ => layer,
        }
    }

    /// The pools' counters, summed.
    fn stats(&self) -> PoolStats {
        let mut total = PoolStats::default();
        let mut add = |s: &PoolStats| {
            total.hits += s.hits;
            total.misses += s.misses;
            total.served_by_copy += s.served_by_copy;
            total.served_in_place += s.served_in_place;
            total.promotions += s.promotions;
            total.bytes_promoted += s.bytes_promoted;
        };
        match self {
            Self::None => {}
            Self::PerLayer(pools) => pools.iter().for_each(|p| add(p.stats())),
            Self::Shared(pool) => add(pool.stats()),
        }
        total
    }
}

/// A step's failure as the crate's error: the sink's own error when a copy failed there.
fn step_error(error: StepError<expertslab::LayoutError, CudaError>) -> CudaError {
    match error {
        StepError::Pool(e) => CudaError::Residency(format!("step: {e}")),
        StepError::Migrate { failure, .. } => match failure.error {
            expertslab::MigrateError::Sink(e) => e,
            expertslab::MigrateError::Source(e) => CudaError::Layout(e),
            other => CudaError::Residency(format!("migrate: {other:?}")),
        },
    }
}

/// One decode run's device state; see the [module docs](self).
pub(super) struct Runner<'m> {
    model: &'m GpuModel,
    sink: CudaSlotSink<CudaDriver>,
    tables: Vec<DeviceSlotTable<CudaDriver>>,
    placement: Placement,
    plan: MigrationPlan,
    /// The pools' counters after the warm start.
    warm: PoolStats,
    rule: MissRule,
    /// Per layer, two step buffers used in turn.
    buffers: Vec<[StepBuffers; 2]>,
    next_buffer: Vec<usize>,
    /// Layer 0's input: the run's activations.
    x: CudaSlice<f32>,
    /// Outputs when they are not recorded: two, so a layer reads the previous one's.
    y: [CudaSlice<f32>; 2],
    outputs: Option<CudaSlice<f32>>,
    /// Per pair of the record: its expert's slot before the step.
    before: Vec<Option<usize>>,
    sources: Vec<PairSource>,
    scratch_of: HashMap<u32, ScratchSlot>,
    /// Recorded after each record's kernels: the next record waits for it before its routing
    /// is known.
    done: CudaEvent,
    done_recorded: bool,
    /// Misses counted without a pool.
    misses: u64,
}

impl<'m> Runner<'m> {
    /// Sinks, tables, pools (warm: their initial plans migrated and committed), step buffers
    /// and activations for `trace` under `run`, with `slots` slots per layer and `scratch`
    /// scratch slots per layer.
    pub(super) fn new(
        model: &'m GpuModel,
        run: &RunConfig,
        slots: usize,
        scratch: usize,
        max_tokens: usize,
        trace: &Trace,
    ) -> Result<Self, CudaError> {
        let spec = &model.spec;
        let layout = &model.layout;
        let shared = slots > 0 && run.sharing == Sharing::Shared;
        let arenas: Vec<(usize, SlotArena)> = if shared {
            let all = slots.saturating_mul(spec.layers);
            vec![(SHARED_ARENA, SlotArena::new(layout, all, DEVICE_ALIGN)?)]
        } else {
            (0..spec.layers)
                .map(|l| Ok((l, SlotArena::new(layout, slots, DEVICE_ALIGN)?)))
                .collect::<Result<_, CudaError>>()?
        };
        let mut sink = model.sink(arenas)?;
        if scratch > 0 {
            for l in 0..spec.layers {
                sink.add_scratch(l, SlotArena::new(layout, scratch, DEVICE_ALIGN)?)?;
            }
        }
        let tables = (0..spec.layers)
            .map(|l| DeviceSlotTable::new(l, spec.experts, &mut sink))
            .collect::<Result<Vec<_>, _>>()?;
        let config = |layer: usize, slots: usize| {
            PoolConfig::new(spec.experts, slots)
                .layer(layer)
                .policy(run.policy)
                .schedule(run.schedule)
                .initial(InitialPlacement::Warm)
        };
        let residency = |e: expertslab::PoolError| CudaError::Residency(format!("pool: {e}"));
        let mut plan = MigrationPlan::new(slots.saturating_mul(spec.layers).max(1));
        let placement = if slots == 0 {
            Placement::None
        } else if shared {
            let max_ids = trace.records().iter().map(|r| trace.ids(r).len()).max().unwrap_or(0).max(1);
            let mut pool =
                SharedSlotPool::new(spec.layers, config(0, slots * spec.layers), max_ids).map_err(residency)?;
            pool.initial_plan(&mut plan);
            pool.migrate(&plan, layout, &model.store, &mut sink)
                .map_err(|f| step_error(StepError::Migrate { stats: expertslab::StepStats::default(), failure: f }))?;
            Placement::Shared(Box::new(pool))
        } else {
            let mut pools = Vec::with_capacity(spec.layers);
            for l in 0..spec.layers {
                let mut pool = ExpertPool::new(config(l, slots)).map_err(residency)?;
                pool.initial_plan(&mut plan);
                expertslab::migrate(&mut pool, &plan, layout, &model.store, &mut sink).map_err(|f| {
                    step_error(StepError::Migrate { stats: expertslab::StepStats::default(), failure: f })
                })?;
                pools.push(pool);
            }
            Placement::PerLayer(pools)
        };
        // The warm start is not counted as moved (as in the replay).
        let warm = placement.stats();
        let mut runner = Self {
            model,
            tables,
            placement,
            plan,
            warm,
            rule: run.miss,
            buffers: Vec::with_capacity(spec.layers),
            next_buffer: vec![0; spec.layers],
            x: model.compute.clone_htod(&activations(spec.seed, max_tokens * spec.shape.hidden))?,
            y: [
                model.compute.alloc_zeros::<f32>(max_tokens * spec.shape.hidden)?,
                model.compute.alloc_zeros::<f32>(max_tokens * spec.shape.hidden)?,
            ],
            outputs: None,
            before: Vec::new(),
            sources: Vec::new(),
            scratch_of: HashMap::new(),
            done: model.ctx.new_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING))?,
            done_recorded: false,
            misses: 0,
            sink,
        };
        for _ in 0..spec.layers {
            let s = &model.compute;
            runner.buffers.push([model.ffn.step_buffers(s, max_tokens)?, model.ffn.step_buffers(s, max_tokens)?]);
        }
        for l in 0..spec.layers {
            runner.update_table(l)?;
        }
        if run.record_outputs {
            let total: usize = trace.records().iter().map(|r| trace.ids(r).len() / spec.shape.top_k).sum();
            runner.outputs = Some(model.compute.alloc_zeros::<f32>((total * spec.shape.hidden).max(1))?);
        }
        runner.sink.synchronize().map_err(|f| f.error)?;
        model.compute.synchronize()?;
        Ok(runner)
    }

    /// Decodes every record of `trace`; see [`GpuModel::decode`].
    pub(super) fn run(mut self, trace: &Trace) -> Result<RunReport, CudaError> {
        let model = self.model;
        let spec = &model.spec;
        let (top_k, hidden) = (spec.shape.top_k, spec.shape.hidden);
        let mut report = RunReport::default();
        let mut start: Option<Instant> = None;
        let mut current_step = None;
        let mut output_at = 0usize;
        // The previous record's output, and its (step, layer): the next layer of the same step
        // reads it.
        let mut previous: Option<(u64, usize, u64)> = None;
        for (index, record) in trace.records().iter().enumerate() {
            let layer = record.layer as usize;
            let decode = !record.prefill && record.step > 0;
            if decode && start.is_none() {
                self.sink.synchronize().map_err(|f| f.error)?;
                model.compute.synchronize()?;
                start = Some(Instant::now());
            }
            // 1. The previous record's kernels end before this record's routing is known.
            if self.done_recorded {
                self.done.synchronize()?;
            }
            let ids = trace.ids(record);
            let tokens = ids.len() / top_k;
            if decode && current_step != Some(record.step) {
                current_step = Some(record.step);
                report.decode_steps += 1;
                report.decode_tokens += tokens as u64;
                report.step_copy_bytes.push(0);
                report.step_zero_copy_pairs.push(0);
            }
            let input = match previous {
                Some((step, l, y)) if step == record.step && l + 1 == layer => y,
                _ => raw(&self.x, &model.compute),
            };
            let y = match &self.outputs {
                Some(out) => raw(out, &model.compute) + (output_at * 4) as u64,
                None => {
                    let [even, odd] = &self.y;
                    raw(if index % 2 == 0 { even } else { odd }, &model.compute)
                }
            };
            output_at += tokens * hidden;
            let zero_copy_before = report.zero_copy_pairs;
            let step = if record.prefill { Step::prefill(record.step) } else { Step::decode(record.step) };
            let copied = self.layer_step(layer, step, ids, input, y, &mut report)?;
            if decode {
                if let Some(b) = report.step_copy_bytes.last_mut() {
                    *b += copied;
                }
                if let Some(z) = report.step_zero_copy_pairs.last_mut() {
                    *z += report.zero_copy_pairs - zero_copy_before;
                }
            }
            previous = Some((record.step, layer, y));
        }
        self.sink.synchronize().map_err(|f| f.error)?;
        model.compute.synchronize()?;
        if let Some(t0) = start {
            report.decode_seconds = t0.elapsed().as_secs_f64();
        }
        for buffers in &mut self.buffers {
            for b in buffers {
                b.check_status(&model.compute)?;
            }
        }
        let stats = self.placement.stats();
        report.hits = stats.hits;
        report.misses = stats.misses + self.misses;
        report.served_by_copy = stats.served_by_copy;
        report.served_in_place = stats.served_in_place + self.misses;
        report.promotions = stats.promotions - self.warm.promotions;
        report.bytes_promoted = stats.bytes_promoted - self.warm.bytes_promoted;
        if let Some(out) = &self.outputs {
            report.outputs = model.compute.clone_dtoh(out)?;
        }
        Ok(report)
    }

    /// Mirrors layer `layer`'s residency into its device table.
    fn update_table(&mut self, layer: usize) -> Result<usize, CudaError> {
        let table = self.tables.get_mut(layer).ok_or(CudaError::UnknownLayer { layer })?;
        match &self.placement {
            Placement::None => Ok(0),
            Placement::PerLayer(pools) => {
                let pool = pools.get(layer).ok_or(CudaError::UnknownLayer { layer })?;
                table.update(pool, &mut self.sink)
            }
            Placement::Shared(pool) => table.update_shared(pool, &mut self.sink),
        }
    }

    /// The view of layer `layer`'s slots through its table's current buffer.
    fn view(&self, layer: usize) -> Result<SlotView, CudaError> {
        let arena = self.placement.arena(layer);
        let vram = self.sink.vram(arena).ok_or(CudaError::UnknownLayer { layer: arena })?;
        let table = self.tables.get(layer).ok_or(CudaError::UnknownLayer { layer })?;
        SlotView::new(&self.model.spec.shape, &self.model.layout, vram, table.view())
    }

    /// One record of one layer (steps 2 to 6 of the [module docs](self)); returns the bytes it
    /// copied (slots and scratch).
    fn layer_step(
        &mut self,
        layer: usize,
        step: Step,
        ids: &[u32],
        x: u64,
        y: u64,
        report: &mut RunReport,
    ) -> Result<u64, CudaError> {
        let model = self.model;
        let (layout, store) = (&model.layout, &model.store);
        self.before.clear();
        self.before.extend(ids.iter().map(|&id| self.placement.slot_of(layer, id as usize)));
        // 2. The pool's step: plan, migrate through the sink, serve.
        let migrated = match &mut self.placement {
            Placement::None => {
                self.misses += ids.len() as u64;
                MigrateStats::default()
            }
            Placement::PerLayer(pools) => {
                let pool = pools.get_mut(layer).ok_or(CudaError::UnknownLayer { layer })?;
                pool.step(step, ids, &mut self.plan, layout, store, &mut self.sink).map_err(step_error)?.migrated
            }
            Placement::Shared(pool) => {
                pool.step(layer, step, ids, &mut self.plan, layout, store, &mut self.sink).map_err(step_error)?.migrated
            }
        };
        let mut copied = migrated.bytes;
        // 3. Each pair's source; misses by the rule.
        let early_view = self.view(layer)?;
        self.sources.clear();
        self.scratch_of.clear();
        let mut next_scratch = 0usize;
        for (&id, &before) in ids.iter().zip(&self.before) {
            let expert = id as usize;
            let source = match self.placement.slot_of(layer, expert) {
                Some(slot) if before == Some(slot) => PairSource::Resident,
                Some(_) => PairSource::Promoted,
                None => match self.rule.choose(ids.iter().filter(|&&other| other == id).count()) {
                    MissAction::ZeroCopy => {
                        report.zero_copy_pairs += 1;
                        PairSource::mapped(self.sink.host(), layout, store, layer, expert)?
                    }
                    MissAction::Copy => {
                        report.scratch_pairs += 1;
                        let slot = match self.scratch_of.get(&id) {
                            Some(&slot) => slot,
                            None => {
                                let slot =
                                    self.sink.write_scratch(layer, next_scratch, layout, store, layer, expert)?;
                                next_scratch += 1;
                                report.bytes_scratch += model.expert_bytes as u64;
                                copied += model.expert_bytes as u64;
                                self.scratch_of.insert(id, slot);
                                slot
                            }
                        };
                        PairSource::scratch(&self.sink, layout, slot)?
                    }
                },
            };
            self.sources.push(source);
        }
        // 4. The table: the buffer the early kernels do not read.
        self.update_table(layer)?;
        let late_view = self.view(layer)?;
        // 5. The kernels.
        let turn = self.next_buffer.get(layer).copied().unwrap_or(0);
        if let Some(next) = self.next_buffer.get_mut(layer) {
            *next = 1 - turn;
        }
        let buffers =
            self.buffers.get_mut(layer).and_then(|b| b.get_mut(turn)).ok_or(CudaError::UnknownLayer { layer })?;
        let weights = router_weights(layer, step.index, ids.len(), model.spec.shape.top_k);
        buffers.stage(&model.compute, ids, &weights, &self.sources)?;
        let compute = &model.compute;
        // SAFETY: both views read the sink's arena and the layer's table (alive for the run);
        // the sources the sink's scratch slots or the model's registered host stacks; `x` is
        // the run's activations or the previous layer's output, `y` an output buffer of this
        // record's length. The early phase reads only slots this step's copies do not write
        // (experts in the same slot before and after the step), through the table buffer the
        // update did not write; the late phase runs after the compute stream waited on every
        // copy and the table update.
        unsafe {
            model.ffn.launch_gate_up(compute, &early_view, buffers, x, Phase::BeforeCopies)?;
            model.ffn.launch_down(compute, &early_view, buffers, Phase::BeforeCopies)?;
        }
        if let Some(table) = self.tables.get_mut(layer) {
            table.after_reads(compute)?; // the early phase read the buffer before the update
        }
        self.sink.order_before(compute)?;
        // SAFETY: as above.
        unsafe {
            model.ffn.launch_gate_up(compute, &late_view, buffers, x, Phase::AfterCopies)?;
            model.ffn.launch_down(compute, &late_view, buffers, Phase::AfterCopies)?;
            model.ffn.launch_combine(compute, buffers, y)?;
        }
        // 6. Reads marked, and the event the next record waits for.
        self.sink.after_reads(compute)?;
        if let Some(table) = self.tables.get_mut(layer) {
            table.after_reads(compute)?;
        }
        self.done.record(compute)?;
        self.done_recorded = true;
        Ok(copied)
    }
}
