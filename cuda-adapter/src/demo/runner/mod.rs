//! The decode runner: every layer step goes through the library's path, layers chained. It is
//! generic over the [`Driver`] and the [`Kernels`], so the mock driver tests its ordering.
//!
//! One record (one layer's step) is, in order on the host:
//!
//! 1. **Wait for the previous record.** The host waits for the event that ends the previous
//!    record's kernels; only then is this record's routing known (the router reads the previous
//!    layer's output), and only then are its ids taken from the trace. Nothing of this record
//!    (a copy, a scratch write, a table update, a kernel) is enqueued earlier.
//!    **Unless every expert of the layer is resident**: then no step of the layer can miss, and
//!    nothing the host does for it (no promotion, no miss plan, no table change) depends on its
//!    routing, so the host enqueues it at once and the compute stream's order alone chains it
//!    after the previous record (its kernels read ids a router on the device would have
//!    written; the pool counts the step's hits from the same ids). The host then runs ahead of
//!    the device, as far as the step buffers' reuse lets it.
//! 2. **The pool's step** ([`ExpertPool::step`], or [`SharedSlotPool::step`] for a pool shared
//!    by the layers): plan, migrate the promotions from the model's [`expertslab_std::ExpertStore`]
//!    into the [`CudaSlotSink`] (copies enqueued on its copy stream; each committed once
//!    enqueued after the kernels that read its slot), serve.
//! 3. **Misses not admitted**, by the [`MissRule`] (which plans the step's missed experts
//!    together): a scratch write of the sink ([`CudaSlotSink::write_scratch`], read through
//!    [`PairSource::scratch`]), a read over the bus from the registered host memory
//!    ([`PairSource::mapped`]), the host ([`PairSource::Host`]: step 5's host work), or split
//!    (down's scratch write, [`CudaSlotSink::write_scratch_down`], gate and up on the host:
//!    [`PairSource::Split`]).
//!    The host's pairs start as soon as they are planned, before the scratch copies and the
//!    GPU's work are enqueued: the layer's input is on the host already (the previous record
//!    copied its output into page-locked memory on the compute stream before its event, which
//!    was waited on, where the layer's records used the host lately; otherwise it is copied
//!    now), and the pairs are computed on the thread pool
//!    ([`expertslab_std::ffn::ExpertFfn`], from the model's host memory) while this thread
//!    enqueues the scratch copies and steps 4 and 5, and the copy engine copies.
//! 4. **Kernels in place**, on the compute stream: gate/up and down of the pairs whose expert
//!    stayed in its slot, read through the table's current buffer (they overlap the copies),
//!    then [`DeviceSlotTable::after_reads`]: that buffer is read until they end.
//! 5. **The table and the other pairs**: [`DeviceSlotTable::update`] writes the other buffer;
//!    [`CudaSlotSink::order_before`]; the pairs copied in this step through the updated table.
//!    Then the host's pairs are waited for and their outputs uploaded on the compute stream;
//!    split pairs' intermediate rows too, and then their down launched ([`Phase::Split`]).
//!    The combine then writes the layer's output, the next layer's input (when no pair is on
//!    the host, the down launches have combined already and nothing is launched). Under a rule
//!    that may use the host, when the next layer may miss and its records computed pairs on
//!    the host lately, the output is then copied into page-locked host memory on the compute
//!    stream, for that layer's host pairs (`ReadBack`).
//! 6. **Reads marked**: [`CudaSlotSink::after_reads`] and [`DeviceSlotTable::after_reads`], and
//!    the event the next record waits on.
//! 7. **Speculative copies** ([`super::RunConfig::prefetch`], the `speculate` module): the
//!    predictor's guesses for the next layer of the same step, copied into its staging or free
//!    slots while this record computes; that record serves them after its own copies.

use std::collections::HashMap;
use std::time::Instant;

use expertslab::trace::replay::{MissedUses, Sharing};
use expertslab::trace::Trace;
use expertslab::{
    ExpertLayout, ExpertPool, InitialPlacement, MigrateStats, MigrationPlan, PoolConfig, PoolStats, Prefetcher,
    SharedSlotPool, SlotArena, Step, StepError,
};
use expertslab_std::ffn::ExpertFfn;
use expertslab_std::ExpertStore;

use super::{Prefetch, RunConfig, RunReport};
use crate::arena::DEVICE_ALIGN;
use crate::driver::Driver;
use crate::error::{CudaError, ResidencyError};
use crate::ffn::{MissAction, MissRule, PairSource, Phase, SlotView};
use crate::reference::FfnShape;
use crate::sink::{CudaSlotSink, ScratchSlot};
use crate::table::DeviceSlotTable;
use placement::{Placement, SHARED_ARENA};
use speculate::speculation;

/// What a run reads: the experts and their shape.
pub(crate) struct Model<'m> {
    pub(crate) store: &'m ExpertStore,
    pub(crate) layout: &'m ExpertLayout,
    pub(crate) shape: FfnShape,
    pub(crate) experts: usize,
    pub(crate) layers: usize,
    pub(crate) expert_bytes: usize,
    /// Layer 0's input, `[max tokens, hidden]`.
    pub(crate) activations: Vec<f32>,
    /// The host's FFN, for misses the rule serves on the host (`None`: the format has none).
    pub(crate) host: Option<ExpertFfn>,
}

/// A step's failure as the crate's error: the sink's own error when a copy failed there.
fn step_error(error: StepError<expertslab::LayoutError, CudaError>) -> CudaError {
    match error {
        StepError::Pool(e) => CudaError::Residency(ResidencyError::Pool(e)),
        StepError::Migrate { failure, .. } => migrate_error(failure.error),
    }
}

fn migrate_error(error: expertslab::MigrateError<expertslab::LayoutError, CudaError>) -> CudaError {
    match error {
        expertslab::MigrateError::Sink(e) => e,
        expertslab::MigrateError::Source(e) => CudaError::Layout(e),
        expertslab::MigrateError::Plan(e) => CudaError::Residency(ResidencyError::Plan(e)),
        expertslab::MigrateError::SlabLength { expected, actual, .. } => {
            CudaError::Residency(ResidencyError::SlabLength { expected, actual })
        }
        other => CudaError::Residency(ResidencyError::Migrate(other.summary())),
    }
}

/// Device memory of the runner's own (activations and outputs), freed on drop.
struct DeviceBuffer<D: Driver> {
    driver: D,
    ptr: u64,
    bytes: usize,
}

impl<D: Driver + Clone> DeviceBuffer<D> {
    fn new(driver: &D, bytes: usize) -> Result<Self, CudaError> {
        let bytes = bytes.max(4);
        Ok(Self { driver: driver.clone(), ptr: driver.alloc(bytes)?, bytes })
    }
}

impl<D: Driver> Drop for DeviceBuffer<D> {
    fn drop(&mut self) {
        // Kernels may still use the buffer.
        let _ = self.driver.sync_device();
        // SAFETY: allocated in `new` by this driver, freed only here, after the device sync.
        let _ = unsafe { self.driver.free(self.ptr) };
    }
}

/// One decode run's state; see the [module docs](self).
pub(crate) struct Runner<'m, D: Driver, K> {
    model: Model<'m>,
    driver: D,
    compute: D::Stream,
    kernels: K,
    sink: CudaSlotSink<D>,
    tables: Vec<DeviceSlotTable<D>>,
    placement: Placement,
    plan: MigrationPlan,
    /// The pools' counters after the warm start.
    warm: PoolStats,
    rule: MissRule,
    /// Layer 0's input: the run's activations.
    x: DeviceBuffer<D>,
    /// Outputs when they are not recorded: two, so a layer reads the previous one's.
    y: [DeviceBuffer<D>; 2],
    outputs: Option<DeviceBuffer<D>>,
    /// Per pair of the record: its expert's slot before the step.
    before: Vec<Option<usize>>,
    sources: Vec<PairSource>,
    scratch_of: HashMap<u32, ScratchSlot>,
    /// The record's missed experts with their uses, and the rule's action for each.
    missed: MissedUses,
    actions: Vec<MissAction>,
    /// The record's pairs served on the host and its split pairs, their input, outputs and
    /// intermediate rows.
    host_pairs: Vec<usize>,
    split_pairs: Vec<usize>,
    /// The record's pairs planned for a scratch copy, and whether each is split (its down
    /// copied only).
    scratch_pairs: Vec<(usize, bool)>,
    host_x: Vec<u8>,
    /// Under a rule that may serve misses on the host: where records copy their output back
    /// for the next layer's host pairs ([`ReadBack`]). Declared after the device buffers, whose
    /// drop waits for the device: freed after any copy into it ended.
    readback: Option<ReadBack<D::Pinned>>,
    host_parts: Vec<f32>,
    host_h: Vec<f32>,
    /// The model's store, shared with the host's pairs computing on the thread pool.
    host_store: std::sync::Arc<ExpertStore>,
    /// Recorded after each record's kernels: the next record waits for it before its routing
    /// is known.
    done: D::Event,
    done_recorded: bool,
    /// This record did not wait for the previous one (every expert of its layer is resident).
    ahead: bool,
    /// Misses counted without a pool.
    misses: u64,
    /// Speculative copies ([`RunConfig::prefetch`]): the settings, the predictor, the plan of a
    /// record's copies, and per layer the experts copied for its next record (served from their
    /// slots only after the compute stream waited for the copies).
    prefetch: Option<(Prefetch, Prefetcher)>,
    prefetch_plan: MigrationPlan,
    fresh: Vec<Vec<u16>>,
    /// Every slot index of a layer's arena (the slots a record's kernels may read).
    arena_slots: Vec<usize>,
}

impl<'m, D: Driver + Clone, K: Kernels<D>> Runner<'m, D, K> {
    /// Tables, pools (warm: their initial plans migrated through `sink` and committed) and
    /// buffers for `trace` under `run`, with `slots` slots per layer and `scratch` scratch slots
    /// per layer. `sink` has the model's experts registered and no arena yet.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        model: Model<'m>,
        mut sink: CudaSlotSink<D>,
        compute: D::Stream,
        kernels: K,
        run: &RunConfig,
        slots: usize,
        scratch: usize,
        trace: &Trace,
    ) -> Result<Self, CudaError> {
        let layout = model.layout;
        let layers = model.layers;
        // Speculative copies are checked before anything is allocated.
        let prefetch = match run.prefetch {
            None => None,
            Some(p) => Some((p, speculation(run, slots, &model, trace)?)),
        };
        let driver = sink.driver().clone();
        let shared = slots > 0 && run.sharing == Sharing::Shared;
        if shared {
            sink.add_arena(SHARED_ARENA, SlotArena::new(layout, slots.saturating_mul(layers), DEVICE_ALIGN)?)?;
        } else {
            for l in 0..layers {
                sink.add_arena(l, SlotArena::new(layout, slots, DEVICE_ALIGN)?)?;
            }
        }
        if scratch > 0 {
            for l in 0..layers {
                sink.add_scratch(l, SlotArena::new(layout, scratch, DEVICE_ALIGN)?)?;
            }
        }
        let tables =
            (0..layers).map(|l| DeviceSlotTable::new(l, model.experts, &mut sink)).collect::<Result<Vec<_>, _>>()?;
        let config = |layer: usize, slots: usize| {
            PoolConfig::new(model.experts, slots)
                .layer(layer)
                .policy(run.policy)
                .schedule(run.schedule)
                .initial(InitialPlacement::Warm)
                .miss_order(run.miss_order)
                .staging(run.prefetch.map_or(0, |p| p.staging))
        };
        let residency = |e| CudaError::Residency(ResidencyError::Pool(e));
        let mut plan = MigrationPlan::new(slots.saturating_mul(layers).max(1));
        let placement = if slots == 0 {
            Placement::None
        } else if shared {
            let max_ids = trace.records().iter().map(|r| trace.ids(r).len()).max().unwrap_or(0).max(1);
            let mut pool = SharedSlotPool::new(layers, config(0, slots * layers), max_ids).map_err(residency)?;
            pool.initial_plan(&mut plan);
            pool.migrate(&plan, layout, model.store, &mut sink).map_err(|f| migrate_error(f.error))?;
            Placement::Shared(Box::new(pool))
        } else {
            let mut pools = Vec::with_capacity(layers);
            for l in 0..layers {
                let mut pool = ExpertPool::new(config(l, slots)).map_err(residency)?;
                pool.initial_plan(&mut plan);
                expertslab::migrate(&mut pool, &plan, layout, model.store, &mut sink)
                    .map_err(|f| migrate_error(f.error))?;
                pools.push(pool);
            }
            Placement::PerLayer(pools)
        };
        // The warm start is not counted as moved (as in the replay).
        let warm = placement.stats();
        let out_bytes = model.activations.len() * 4;
        let x = DeviceBuffer::new(&driver, out_bytes)?;
        let input: Vec<u8> = model.activations.iter().flat_map(|v| v.to_le_bytes()).collect();
        // SAFETY: `x` holds `out_bytes` bytes; `input` lives until the stream is synchronized
        // below.
        unsafe { driver.copy_to_device(x.ptr, &input, &compute)? };
        driver.sync_stream(&compute)?;
        let outputs = if run.record_outputs {
            let total: usize = trace.records().iter().map(|r| trace.ids(r).len() / model.shape.top_k).sum();
            Some(DeviceBuffer::new(&driver, total * model.shape.hidden * 4)?)
        } else {
            None
        };
        let readback = match (&model.host, run.miss.may_use_host()) {
            (Some(_), true) => Some(ReadBack::new(driver.alloc_readback(out_bytes.max(4))?, layers)),
            _ => None,
        };
        let mut runner = Self {
            y: [DeviceBuffer::new(&driver, out_bytes)?, DeviceBuffer::new(&driver, out_bytes)?],
            done: driver.new_event()?,
            driver,
            compute,
            kernels,
            tables,
            placement,
            plan,
            warm,
            rule: run.miss,
            x,
            outputs,
            before: Vec::new(),
            sources: Vec::new(),
            scratch_of: HashMap::new(),
            missed: MissedUses::default(),
            actions: Vec::new(),
            host_pairs: Vec::new(),
            split_pairs: Vec::new(),
            scratch_pairs: Vec::new(),
            host_x: Vec::new(),
            readback,
            host_parts: Vec::new(),
            host_h: Vec::new(),
            host_store: std::sync::Arc::new(model.store.clone()),
            done_recorded: false,
            ahead: false,
            misses: 0,
            prefetch,
            prefetch_plan: MigrationPlan::new(slots.max(1)),
            fresh: vec![Vec::new(); layers],
            arena_slots: (0..slots).collect(),
            sink,
            model,
        };
        for l in 0..layers {
            runner.update_table(l)?;
        }
        runner.sink.synchronize().map_err(|f| f.error)?;
        Ok(runner)
    }

    /// The event each record's kernels end with (the next record waits for it).
    #[cfg(test)]
    pub(crate) fn done_event(&self) -> &D::Event {
        &self.done
    }

    /// The sink.
    #[cfg(test)]
    pub(crate) fn sink(&self) -> &CudaSlotSink<D> {
        &self.sink
    }

    /// The device slot tables, by layer.
    #[cfg(test)]
    pub(crate) fn tables(&self) -> &[DeviceSlotTable<D>] {
        &self.tables
    }

    /// Decodes every record of `trace`; see [`super::GpuModel::decode`].
    pub(crate) fn run(&mut self, trace: &Trace) -> Result<RunReport, CudaError> {
        let (top_k, hidden) = (self.model.shape.top_k, self.model.shape.hidden);
        let mut report = RunReport::default();
        let mut start: Option<Instant> = None;
        let mut current_step = None;
        let mut output_at = 0u64;
        // The previous record's (step, layer, output): the next layer of the same step reads it.
        let mut previous: Option<(u64, usize, u64)> = None;
        for (index, record) in trace.records().iter().enumerate() {
            let layer = record.layer as usize;
            let decode = !record.prefill && record.step > 0;
            if decode && start.is_none() {
                self.sink.synchronize().map_err(|f| f.error)?;
                self.driver.sync_stream(&self.compute)?;
                start = Some(Instant::now());
            }
            // 1. The previous record's kernels end before this record's routing is known, unless
            // no decision of this record depends on its routing.
            self.ahead = self.done_recorded && self.placement.holds_all(layer, self.model.experts);
            if self.done_recorded && !self.ahead {
                let waited = Instant::now();
                self.driver.sync_event(&self.done)?;
                if start.is_some() {
                    report.wait_seconds += waited.elapsed().as_secs_f64();
                }
            }
            let ids = trace.ids(record);
            let tokens = ids.len() / top_k;
            if decode && current_step != Some(record.step) {
                current_step = Some(record.step);
                report.decode_steps += 1;
                report.decode_tokens += tokens as u64;
                report.step_copy_bytes.push(0);
                report.step_bus_pairs.push(0);
                report.step_host_pairs.push(0);
                report.step_split_pairs.push(0);
            }
            let x = match previous {
                Some((step, l, y)) if step == record.step && l + 1 == layer => y,
                _ => self.x.ptr,
            };
            let y = match &self.outputs {
                Some(out) => out.ptr + output_at,
                None => {
                    let [even, odd] = &self.y;
                    if index % 2 == 0 {
                        even.ptr
                    } else {
                        odd.ptr
                    }
                }
            };
            output_at += (tokens * hidden * 4) as u64;
            let (bus_before, host_before, split_before) = (report.bus_pairs, report.host_pairs, report.split_pairs);
            let step = if record.prefill { Step::prefill(record.step) } else { Step::decode(record.step) };
            let copied = self.layer_step(layer, step, ids, x, y, &mut report)?;
            // Speculative copies for the next record, while this one computes.
            self.speculate(layer, record, trace.records().get(index + 1), trace, &mut report)?;
            if decode {
                if let Some(b) = report.step_copy_bytes.last_mut() {
                    *b += copied;
                }
                if let Some(z) = report.step_bus_pairs.last_mut() {
                    *z += report.bus_pairs - bus_before;
                }
                if let Some(h) = report.step_host_pairs.last_mut() {
                    *h += report.host_pairs - host_before;
                }
                if let Some(s) = report.step_split_pairs.last_mut() {
                    *s += report.split_pairs - split_before;
                }
            }
            previous = Some((record.step, layer, y));
        }
        let waited = Instant::now();
        self.sink.synchronize().map_err(|f| f.error)?;
        self.driver.sync_stream(&self.compute)?;
        if start.is_some() {
            report.wait_seconds += waited.elapsed().as_secs_f64();
        }
        if let Some(t0) = start {
            report.decode_seconds = t0.elapsed().as_secs_f64();
        }
        self.kernels.check(&self.compute)?;
        let stats = self.placement.stats();
        report.served.hits = stats.served.hits;
        report.served.misses = stats.served.misses + self.misses;
        report.served.served_by_copy = stats.served.served_by_copy;
        report.served.served_in_place = stats.served.served_in_place + self.misses;
        report.promotions = stats.promotions - self.warm.promotions;
        report.bytes_promoted = stats.bytes_promoted - self.warm.bytes_promoted;
        if let Some(out) = &self.outputs {
            let mut bytes = vec![0u8; out.bytes];
            // SAFETY: the buffer holds `bytes` bytes; the compute stream was synchronized above.
            unsafe { self.driver.copy_to_host(&mut bytes, out.ptr)? };
            let len = (output_at / 4) as usize;
            report.outputs =
                bytes.chunks_exact(4).take(len).map(|b| b.try_into().map_or(f32::NAN, f32::from_le_bytes)).collect();
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
        SlotView::new(&self.model.shape, self.model.layout, vram, table.view())
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
        let (layout, store) = (self.model.layout, self.model.store);
        self.before.clear();
        self.before.extend(ids.iter().map(|&id| self.placement.slot_of(layer, id as usize)));
        // Experts copied speculatively for this record are read only once the compute stream
        // waited for their copies: with the step's own copies, not before them.
        if let Some(fresh) = self.fresh.get_mut(layer).filter(|f| !f.is_empty()) {
            for (before, &id) in self.before.iter_mut().zip(ids) {
                if fresh.iter().any(|&e| u32::from(e) == id) {
                    *before = None;
                }
            }
            report.prefetch_hits += fresh.iter().filter(|&&e| ids.contains(&u32::from(e))).count() as u64;
            fresh.clear();
        }
        // 2. The pool's step: plan, migrate through the sink, serve. Under the balanced rule the
        // pool promotes at most the step's bandwidth-matched share of its misses.
        let cap = self.fetch_cap(ids);
        let migrated = match &mut self.placement {
            Placement::None => {
                self.misses += ids.len() as u64;
                MigrateStats::default()
            }
            Placement::PerLayer(pools) => {
                let pool = pools.get_mut(layer).ok_or(CudaError::UnknownLayer { layer })?;
                pool.set_fetch_cap(cap);
                pool.step(step, ids, &mut self.plan, layout, store, &mut self.sink).map_err(step_error)?.migrated
            }
            Placement::Shared(pool) => {
                pool.set_fetch_cap(cap);
                pool.step(layer, step, ids, &mut self.plan, layout, store, &mut self.sink).map_err(step_error)?.migrated
            }
        };
        let mut copied = migrated.bytes_promoted;
        // 3. Each pair's source; the step's misses planned together by the rule.
        let early_view = self.view(layer)?;
        self.pair_sources(layer, ids, migrated.copied, report)?;
        // The host's pairs start on the thread pool; the GPU's work is enqueued meanwhile.
        let host_started = Instant::now();
        let on_host = !self.host_pairs.is_empty() || !self.split_pairs.is_empty();
        if on_host && self.ahead {
            // Not reached (a layer holding every expert has no miss), but the host reads the
            // previous record's output only once it is final.
            self.driver.sync_event(&self.done)?;
            self.ahead = false;
        }
        let timed = !step.prefill && step.index > 0;
        let host_job = if on_host {
            let job = self.host_start(layer, ids, x)?;
            if timed {
                report.host_input_seconds += host_started.elapsed().as_secs_f64();
            }
            Some(job)
        } else {
            None
        };
        // The misses' scratch copies, once the host's pairs are on their way.
        copied += self.scratch_copies(layer, ids, report)?;
        // 4. The kernels of the pairs in place before the copies, through the table as it is,
        // marked as reading that buffer before the update writes the other.
        self.kernels.stage(layer, step.index, ids, &self.sources, &self.compute)?;
        // SAFETY: both views read the sink's arenas and the layer's table (alive for the run);
        // the sources the sink's scratch slots or the model's registered host stacks; `x` is
        // the run's activations or the previous layer's output, `y` an output buffer of this
        // record's length. The early phase reads only slots this step's copies do not write
        // (experts in the same slot before and after the step), through the table buffer the
        // update did not write; the late phase runs after the compute stream waited on every
        // copy and the table update.
        unsafe { self.kernels.pairs(layer, Phase::BeforeCopies, &early_view, x, y, &self.compute)? };
        if let Some(table) = self.tables.get_mut(layer) {
            table.after_reads(&self.compute)?;
        }
        // 5. The table, then the other pairs once the compute stream waited on every copy.
        self.update_table(layer)?;
        let late_view = self.view(layer)?;
        let compute = &self.compute;
        self.sink.order_before(compute)?;
        // SAFETY: as above.
        unsafe { self.kernels.pairs(layer, Phase::AfterCopies, &late_view, x, y, compute)? };
        if let Some(job) = host_job {
            self.host_finish(&job, report, timed)?;
            self.kernels.upload_parts(layer, &self.host_pairs, &self.host_parts, &self.compute)?;
            if !self.split_pairs.is_empty() {
                self.kernels.upload_h(layer, &self.split_pairs, &self.host_h, &self.compute)?;
                // SAFETY: as above; the split pairs' down reads scratch slots this step's
                // copies filled (the compute stream waited on them above) and the rows just
                // uploaded on the same stream.
                unsafe { self.kernels.pairs(layer, Phase::Split, &late_view, x, y, &self.compute)? };
            }
            if timed {
                report.host_seconds += host_started.elapsed().as_secs_f64();
            }
        }
        let compute = &self.compute;
        // SAFETY: as above.
        unsafe { self.kernels.combine(layer, y, compute)? };
        self.read_back_output(layer, y, ids.len() / self.model.shape.top_k.max(1))?;
        let compute = &self.compute;
        // 6. Reads marked, and the event the next record waits for. With speculative copies, only
        // this layer's slots: a copy into the next layer's slots does not wait for these kernels
        // (per-layer pools only; no record reads another layer's slots).
        if self.prefetch.is_some() {
            self.sink.after_reads_of(compute, layer, &self.arena_slots)?;
        } else {
            self.sink.after_reads(compute)?;
        }
        if let Some(table) = self.tables.get_mut(layer) {
            table.after_reads(compute)?;
        }
        self.driver.record(&self.done, compute)?;
        self.done_recorded = true;
        Ok(copied)
    }
}

mod host;
mod kernels;
mod placement;
mod sources;
mod speculate;

pub(crate) use host::spawn_on;
use host::ReadBack;
pub(crate) use kernels::Kernels;

#[cfg(test)]
mod tests;
