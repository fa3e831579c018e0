//! [`GpuModel`]: a model's experts in page-locked host memory (an [`ExpertStore`] the library
//! migrates from), the compiled kernels, and the runs over them.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use cudarc::driver::sys::CU_MEMHOSTALLOC_DEVICEMAP;
use cudarc::driver::{CudaContext, CudaEvent, CudaStream, LaunchConfig, PinnedHostSlice, PushKernelArg};
use expertslab::trace::replay::{replay, ReplayConfig, ReplayPolicy};
use expertslab::trace::Trace;
use expertslab::{ExpertLayout, Format, InitialPlacement, SlotArena};
use expertslab_std::ffn::ExpertFfn;
use expertslab_std::{ExpertStore, LayerStacks, SharedBytes};

use super::gguf::GgufExperts;
use super::kernels::CudaKernels;
use super::runner::{Model, Runner};
use super::{activations, check_fit, median, Calibration, ModelSpec, Prediction, RunConfig, RunReport};
use crate::arena::DEVICE_ALIGN;
use crate::driver::CudaDriver;
use crate::error::{CudaError, ResidencyError};
use crate::ffn::{raw, MissAction, MissRule, MoeFfn};
use crate::host::{HostMemory, RingConfig};
use crate::kernels;
use crate::reference::f32_to_f16;
use crate::sink::CudaSlotSink;

/// One layer's stacks in page-locked, device-mapped host memory, shared as bytes: the
/// allocation lives as long as any [`SharedBytes`] handle of it.
struct PinnedStacks {
    /// Owns the allocation `ptr` points into (freed when the last handle goes).
    _memory: PinnedHostSlice<u8>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: `ptr..ptr + len` is `_memory`'s allocation, which `PinnedStacks` owns; after
// construction the bytes are only read (through `as_ref`), from any thread.
unsafe impl Send for PinnedStacks {}
// SAFETY: as above: shared references only read.
unsafe impl Sync for PinnedStacks {}

impl AsRef<[u8]> for PinnedStacks {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` is the start of `_memory`'s `len` bytes, allocated and initialised (the
        // fill or the caller's bytes) before this value was built, and never written after.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A model's experts in page-locked host memory, and the compiled kernels. The experts are an
/// [`ExpertStore`] ([`GpuModel::store`]): the pools' plans migrate from it through a
/// [`CudaSlotSink`], as from any expert source. See the [module docs](super).
pub struct GpuModel {
    pub(super) spec: ModelSpec,
    pub(super) layout: ExpertLayout,
    pub(super) ctx: Arc<CudaContext>,
    pub(super) compute: Arc<CudaStream>,
    pub(super) ffn: MoeFfn,
    pub(super) store: ExpertStore,
    /// Bytes of one expert's gate, up and down matrices.
    projection_bytes: [usize; 3],
    pub(super) expert_bytes: usize,
    /// Where the weights come from, for reports.
    weights: String,
    /// The registration of memory the driver did not allocate (a mapped model file), made once
    /// so each run's sink adopts it instead of registering gigabytes again.
    registration: Option<HostMemory<CudaDriver>>,
    /// The host FFN of the runs and the calibration, on a thread pool of its own (`None` when it
    /// does not read the model's formats). One value, cloned into each run, so the threads kept
    /// warm between layer steps watch one count of the work started.
    pub(super) host: Option<ExpertFfn>,
}

/// The host FFN's threads by default: one fewer than the CPUs this process may use (at least
/// one), so the thread driving the GPU, which enqueues the GPU's work while the host computes,
/// keeps a core of its own. On an H100 machine's 16 cores, 15 threads computed a near-uniform
/// token's host pairs in 11% less time than 16, and a locality token's in 3% more
/// (BENCHMARKS.md, "Beside llama.cpp on three H100 machines").
pub fn default_host_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// The host FFN for `spec`'s shape on rayon's global pool, or `None` when it does not read the
/// model's formats.
fn shaped_ffn(spec: &ModelSpec) -> Option<ExpertFfn> {
    let s = &spec.shape;
    ExpertFfn::new(s.hidden, s.ffn, s.format).and_then(|f| f.with_down_format(s.down_format)).ok()
}

/// [`shaped_ffn`] on `threads` threads of its own.
fn host_ffn(spec: &ModelSpec, threads: usize) -> Result<Option<ExpertFfn>, CudaError> {
    shaped_ffn(spec).map(|f| f.with_threads(threads)).transpose().map_err(|e| CudaError::Unsupported(e.to_string()))
}

/// [`shaped_ffn`] on [`default_host_threads`], or on rayon's global pool where the operating
/// system refuses a pool of its own: a model is built whether or not its runs use the host.
fn default_host_ffn(spec: &ModelSpec) -> Option<ExpertFfn> {
    shaped_ffn(spec).map(|f| f.clone().with_threads(default_host_threads()).unwrap_or(f))
}

impl fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuModel").field("spec", &self.spec).finish_non_exhaustive()
    }
}

/// Opens device `ordinal`, with clear errors when there is no driver or no device.
///
/// # Errors
/// [`CudaError::NoDriver`], [`CudaError::NoDevice`], [`CudaError::Driver`].
pub fn open_device(ordinal: usize) -> Result<Arc<CudaContext>, CudaError> {
    // SAFETY: probing for the driver library loads it; libcuda's initialisers are a plain C
    // library's.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaError::NoDriver);
    }
    let count = CudaContext::device_count().map_err(|_| CudaError::NoDevice { ordinal: 0 })?;
    if usize::try_from(count).map_or(true, |c| ordinal >= c) {
        return Err(CudaError::NoDevice { ordinal: 0 });
    }
    let ctx = CudaContext::new(ordinal)?;
    // The FFN orders its work with explicit events on its two streams.
    // SAFETY: no cudarc allocation of this context is in use yet, so none relies on tracking.
    unsafe { ctx.disable_event_tracking() };
    Ok(ctx)
}

impl GpuModel {
    fn empty(ctx: Arc<CudaContext>, spec: ModelSpec) -> Result<Self, CudaError> {
        let layout = spec.layout()?;
        let ffn = MoeFfn::new(&ctx, spec.shape)?;
        let compute = ctx.new_stream()?;
        let projection_bytes = spec.shape.projection_bytes()?;
        let expert_bytes = spec.shape.expert_bytes()?;
        let host = default_host_ffn(&spec);
        Ok(Self {
            spec,
            layout,
            ctx,
            compute,
            ffn,
            store: ExpertStore::new(),
            projection_bytes,
            expert_bytes,
            weights: String::new(),
            registration: None,
            host,
        })
    }

    /// Where the gate, up and down stacks of a layer lie in its memory, after `pad` bytes.
    fn stack_ranges(&self, pad: usize) -> [std::ops::Range<usize>; 3] {
        let mut start = pad;
        self.projection_bytes.map(|bytes| {
            let range = start..start + bytes * self.spec.experts;
            start = range.end;
            range
        })
    }

    /// Page-locked, device-mapped memory for one layer's three stacks after `pad` bytes.
    fn alloc_layer(&self, pad: usize) -> Result<PinnedHostSlice<u8>, CudaError> {
        let len = self.stack_ranges(pad)[2].end;
        // SAFETY: the memory is written in full (by the fill or the caller's bytes) before any
        // read; DEVICEMAP makes it readable by kernels over the bus.
        Ok(unsafe { self.ctx.alloc_pinned_with_flags::<u8>(len, CU_MEMHOSTALLOC_DEVICEMAP) }?)
    }

    /// Adds `memory` (filled) as layer `layer`'s stacks, after `pad` bytes, to the store.
    fn add_layer(&mut self, layer: usize, mut memory: PinnedHostSlice<u8>, pad: usize) -> Result<(), CudaError> {
        let len = memory.len();
        let ptr = memory.as_mut_ptr()?.cast_const();
        let shared = SharedBytes::from_owner(PinnedStacks { _memory: memory, ptr, len });
        let [gate, up, down] = self.stack_ranges(pad);
        let stacks =
            LayerStacks::new(self.layout.clone(), &[shared.slice(gate)?, shared.slice(up)?, shared.slice(down)?])?;
        self.store.insert(layer, stacks)?;
        Ok(())
    }

    /// A model of `spec` on device `ordinal`, its weights generated on the GPU (uniform in
    /// `±sqrt(3 / cols)`, from SplitMix64 seeded per layer and projection) and copied into
    /// page-locked host memory.
    ///
    /// # Errors
    /// As [`open_device`] and [`MoeFfn::new`]; [`CudaError::Driver`] when memory runs out.
    pub fn generate(ordinal: usize, spec: ModelSpec) -> Result<Self, CudaError> {
        let ctx = open_device(ordinal)?;
        let mut model = Self::empty(ctx, spec)?;
        let ranges = model.stack_ranges(0);
        let largest = ranges.iter().map(ExactSizeIterator::len).max().unwrap_or(0);
        let temp = model.compute.alloc_zeros::<u8>(largest)?;
        let s = &spec.shape;
        for layer in 0..spec.layers {
            let mut host = model.alloc_layer(0)?;
            for (p, (cols, format)) in [s.hidden, s.hidden, s.ffn].into_iter().zip(s.formats()).enumerate() {
                // The fill kernel and the bytes of what it writes one of: an element, or a block.
                let (kernel, unit) = match format {
                    Format::BF16 => (kernels::FILL_BF16, 2),
                    Format::Q8_0 => (kernels::FILL_Q8_0, 34),
                    Format::Q4_K => (kernels::FILL_K_QUANT, 144),
                    Format::Q6_K => (kernels::FILL_K_QUANT, 210),
                    _ => (kernels::FILL_F32, 4),
                };
                let fill = model.ffn.module().load_function(kernel)?;
                let range = ranges.get(p).cloned().unwrap_or_default();
                let seed = spec.seed ^ ((layer as u64) << 32 | (p as u64) << 24);
                let n = (range.len() / unit) as u64;
                let scale = (3.0 / cols as f32).sqrt();
                let ptr = raw(&temp, &model.compute);
                let cfg = LaunchConfig { grid_dim: (1024, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
                let mut launch = model.compute.launch_builder(&fill);
                launch.arg(&ptr).arg(&n).arg(&seed);
                // K-quants take their block size and the f16 scale that makes their weights
                // about ±scale: Q4_K's d·sc·q spans up to 63 · 15 steps, Q6_K's d·sc·(q − 32)
                // up to 127 · 32.
                let (block_bytes, half) = match format {
                    Format::Q4_K => (144u32, u32::from(f32_to_f16(scale / (63.0 * 15.0)))),
                    Format::Q6_K => (210u32, u32::from(f32_to_f16(scale / (127.0 * 32.0)))),
                    _ => (0, 0),
                };
                if kernel == kernels::FILL_K_QUANT {
                    launch.arg(&block_bytes).arg(&half);
                } else {
                    launch.arg(&scale);
                }
                // SAFETY: `fill_*(out, n, …)` writes `n` units at `ptr`, the first
                // `range.len()` bytes of `temp` (n × unit = range.len(): rows are whole units,
                // and `temp` holds the largest stack).
                unsafe { launch.launch(cfg) }?;
                let dst = host.as_mut_slice()?;
                let part = dst.get_mut(range.clone()).ok_or(CudaError::UnknownLayer { layer })?;
                let src = temp.slice(..range.len());
                model.compute.memcpy_dtoh(&src, part)?;
            }
            model.compute.synchronize()?;
            model.add_layer(layer, host, 0)?;
        }
        drop(temp);
        model.weights = format!("generated on the GPU (seed {})", spec.seed);
        Ok(model)
    }

    /// A model of `spec` on device `ordinal` with the caller's weights: `stacks[layer]` holds
    /// the gate, up and down stacks (`experts × rows × cols` each, row-major). `pad` bytes are
    /// left before the stacks (tests use it to read misaligned host memory).
    ///
    /// # Errors
    /// As [`GpuModel::generate`]; [`CudaError::Unsupported`] when a stack has the wrong length.
    pub fn from_host(ordinal: usize, spec: ModelSpec, stacks: &[[Vec<u8>; 3]], pad: usize) -> Result<Self, CudaError> {
        let ctx = open_device(ordinal)?;
        let mut model = Self::empty(ctx, spec)?;
        if stacks.len() != spec.layers {
            return Err(CudaError::Unsupported(format!("{} layers of stacks for {}", stacks.len(), spec.layers)));
        }
        let ranges = model.stack_ranges(pad);
        for (index, layer) in stacks.iter().enumerate() {
            let mut host = model.alloc_layer(pad)?;
            let dst = host.as_mut_slice()?;
            for (bytes, range) in layer.iter().zip(&ranges) {
                let part = dst.get_mut(range.clone()).filter(|part| part.len() == bytes.len()).ok_or_else(|| {
                    CudaError::Unsupported(format!("a stack of {} bytes, not {}", bytes.len(), range.len()))
                })?;
                part.copy_from_slice(bytes);
            }
            model.add_layer(index, host, pad)?;
        }
        model.weights = "the caller's, in page-locked host memory".into();
        Ok(model)
    }

    /// A model of a GGUF file's experts on device `ordinal` (see [`GgufExperts`]): the shape
    /// comes from the file, the experts stay in the file's read-only memory map, registered
    /// once with the driver so copies read them directly and kernels can read them over the
    /// bus. The file must not change while the model lives.
    ///
    /// # Errors
    /// As [`GgufExperts::open`] and [`open_device`]; [`CudaError::Model`] when the driver
    /// refuses to register the mapping.
    pub fn open_gguf(ordinal: usize, path: impl AsRef<Path>) -> Result<Self, CudaError> {
        let path = path.as_ref();
        let experts = GgufExperts::open(path)?;
        let weights = format!(
            "{} ({}, {} MoE blocks, mapped read-only)",
            path.display(),
            experts.architecture(),
            experts.blocks().len()
        );
        let (spec, store) = experts.into_parts();
        let ctx = open_device(ordinal)?;
        let mut model = Self::empty(ctx, spec)?;
        let driver = CudaDriver::from_context(Arc::clone(&model.ctx));
        let mut host = HostMemory::new(driver, RingConfig { entries: 0, entry_bytes: 0 })?;
        let report = host.register_store(&store);
        if report.refused > 0 {
            let why = report.first_refusal.map_or_else(String::new, |e| format!(": {e}"));
            return Err(CudaError::Model(format!("{}: the driver did not register the mapping{why}", path.display())));
        }
        model.store = store;
        model.weights = weights;
        model.registration = Some(host);
        Ok(model)
    }

    /// Runs the host FFN (misses served on the host, and the calibration's host costs) on
    /// `threads` threads of its own instead of [`default_host_threads`]; calibrate again after.
    ///
    /// # Errors
    /// [`CudaError::Unsupported`] when the operating system refuses the threads.
    pub fn set_host_threads(&mut self, threads: usize) -> Result<(), CudaError> {
        self.host = host_ffn(&self.spec, threads)?;
        Ok(())
    }

    /// The host FFN's threads (0 when it does not read the model's formats).
    pub fn host_threads(&self) -> usize {
        self.host.as_ref().map_or(0, ExpertFfn::threads)
    }

    /// Where the weights come from: generated, the caller's, or a file (for reports).
    pub fn weights(&self) -> &str {
        &self.weights
    }

    /// The model's shape.
    pub const fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The experts: every layer's gate, up and down stacks in page-locked host memory.
    pub const fn store(&self) -> &ExpertStore {
        &self.store
    }

    /// The layout of one layer's experts.
    pub const fn layout(&self) -> &ExpertLayout {
        &self.layout
    }

    /// Bytes of one expert.
    pub const fn expert_bytes(&self) -> usize {
        self.expert_bytes
    }

    /// The device's name.
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn device_name(&self) -> Result<String, CudaError> {
        Ok(self.ctx.name()?)
    }

    /// The driver's version, as `major.minor`.
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn driver_version(&self) -> Result<String, CudaError> {
        let mut v = 0i32;
        // SAFETY: writes one int.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) }.result()?;
        Ok(format!("{}.{}", v / 1000, (v % 1000) / 10))
    }

    /// A sink over this device with the model's experts adopted for direct copies and reads
    /// over the bus (they are page-locked and mapped already), no staging ring and no arena
    /// yet.
    ///
    /// # Errors
    /// [`CudaError::Unsupported`] when a layer's memory could not be mapped for the device, or
    /// the sink's errors.
    pub(super) fn sink(&self) -> Result<CudaSlotSink<CudaDriver>, CudaError> {
        let driver = CudaDriver::from_context(Arc::clone(&self.ctx));
        let mut sink = CudaSlotSink::new(driver, [], RingConfig { entries: 0, entry_bytes: 0 })?;
        let report = sink.host_mut().register_store(&self.store);
        if report.refused > 0 {
            let why = report.first_refusal.map_or_else(String::new, |e| format!(": {e}"));
            return Err(CudaError::Unsupported(format!("the model's host memory is not mapped for the device{why}")));
        }
        Ok(sink)
    }

    /// The bytes one slot takes in every layer.
    pub(super) fn slot_bytes_all_layers(&self) -> Result<u64, CudaError> {
        let per_slot = SlotArena::new(&self.layout, 1, DEVICE_ALIGN)?.slot_stride() as u64;
        Ok(per_slot * self.spec.layers as u64)
    }

    /// Decodes `trace` under `run` through the library's path (see the [module docs](super)).
    /// The prefill records (and the records of step 0 when there is no prefill) run untimed;
    /// the decode steps after them are timed together.
    ///
    /// # Errors
    /// [`CudaError::Unsupported`] when the trace's shape is not the model's,
    /// [`CudaError::DoesNotFit`] when the slots do not fit the free device memory,
    /// [`CudaError::Residency`] when the pool refuses a step, [`CudaError::KernelStatus`],
    /// [`CudaError::Driver`].
    pub fn decode(&self, trace: &Trace, run: &RunConfig) -> Result<RunReport, CudaError> {
        let spec = &self.spec;
        let header = trace.header();
        if header.experts as usize != spec.experts
            || header.top_k as usize != spec.shape.top_k
            || header.layers as usize > spec.layers
        {
            return Err(CudaError::Unsupported(format!(
                "a trace of {} experts, top-{}, {} layers for a model of {} experts, top-{}, {} layers",
                header.experts, header.top_k, header.layers, spec.experts, spec.shape.top_k, spec.layers
            )));
        }
        let records = trace.records();
        if records.iter().any(|r| trace.ids(r).iter().any(|&id| id as usize >= spec.experts)) {
            return Err(CudaError::Unsupported("the trace names experts past the model's".into()));
        }
        let top_k = spec.shape.top_k;
        let max_tokens = records.iter().map(|r| trace.ids(r).len() / top_k).max().unwrap_or(1).max(1);
        let slots = run.slots.min(spec.experts);
        let never_copies = matches!(run.miss, MissRule::Always(MissAction::Bus | MissAction::Host));
        let may_copy = !never_copies && slots < spec.experts;
        let scratch = if may_copy { (max_tokens * top_k).min(spec.experts) } else { 0 };
        let (free, _) = self.ctx.mem_get_info()?;
        check_fit(free as u64, self.slot_bytes_all_layers()?, slots, scratch)?;
        let model = Model {
            store: &self.store,
            layout: &self.layout,
            shape: spec.shape,
            experts: spec.experts,
            layers: spec.layers,
            expert_bytes: self.expert_bytes,
            activations: activations(spec.seed, max_tokens * spec.shape.hidden),
            host: self.host.clone(),
        };
        let kernels = CudaKernels::new(&self.ffn, &self.compute, spec.layers, max_tokens)?;
        let sink = self.sink()?;
        Runner::new(model, sink, Arc::clone(&self.compute), kernels, run, slots, scratch, trace)?.run(trace)
    }

    /// [`GpuModel::decode`] `reps` times (at least once): the first run's report, with
    /// `decode_seconds` and `wait_seconds` the medians over the runs.
    ///
    /// # Errors
    /// As [`GpuModel::decode`].
    pub fn decode_median(&self, trace: &Trace, run: &RunConfig, reps: usize) -> Result<RunReport, CudaError> {
        let mut first = self.decode(trace, run)?;
        let (mut times, mut waits) = (vec![first.decode_seconds], vec![first.wait_seconds]);
        let quiet = RunConfig { record_outputs: false, ..*run };
        for _ in 1..reps {
            let r = self.decode(trace, &quiet)?;
            times.push(r.decode_seconds);
            waits.push(r.wait_seconds);
        }
        first.decode_seconds = median(&mut times);
        first.wait_seconds = median(&mut waits);
        Ok(first)
    }

    /// The overlap bound of G4 for `report` ([`super::overlap_bound`] with this model's expert
    /// size).
    pub fn overlap_bound(&self, report: &RunReport, floor_per_token: f64, calibration: &Calibration) -> f64 {
        super::overlap_bound(report, self.expert_bytes, floor_per_token, calibration)
    }

    /// The cost the core's replay predicts for `run` on `trace`'s decode steps, per decode
    /// token: `(hits + served by copy) × resident_pair` plus the replay's modeled time under
    /// [`super::replay_cost`] (additive: `served in place × miss pair + bytes moved / link`, a
    /// miss pair costing what the rule's action costs; under [`MissRule::Balanced`] the
    /// overlapped model's time per layer step), from [`expertslab::trace::replay`] on decode
    /// records only (the replay of the whole trace less the replay of its prefill) and the
    /// costs of `calibration`.
    ///
    /// # Errors
    /// [`CudaError::Residency`] when the replay refuses the trace.
    pub fn predict(&self, trace: &Trace, run: &RunConfig, calibration: &Calibration) -> Result<Prediction, CudaError> {
        let cost = super::replay_cost(run.miss, self.expert_bytes as u64, calibration);
        let mut config =
            ReplayConfig::new(ReplayPolicy::Pool(run.policy), run.slots, run.schedule, InitialPlacement::Warm, cost);
        config.sharing = run.sharing;
        let fail = |e| CudaError::Residency(ResidencyError::Replay(e));
        let whole = replay(trace, &config).map_err(fail)?.total;
        let mut prefill = Trace::new(trace.header()).map_err(|e| CudaError::Residency(ResidencyError::Trace(e)))?;
        let mut decode_tokens = 0u64;
        for r in trace.records() {
            if r.prefill || r.step == 0 {
                prefill
                    .push(r.layer, r.step, r.prefill, trace.ids(r))
                    .map_err(|e| CudaError::Residency(ResidencyError::Trace(e)))?;
            } else if r.layer == 0 {
                decode_tokens += (trace.ids(r).len() / self.spec.shape.top_k) as u64;
            }
        }
        let before = replay(&prefill, &config).map_err(fail)?.total;
        let hits = whole.served.hits - before.served.hits;
        let served_in_place = whole.served.served_in_place - before.served.served_in_place;
        let bytes = whole.bytes_promoted - before.bytes_promoted;
        // Misses served by copy are computed from their slot after their copy; the misses in
        // place and the copies are the replay's modeled time (which prices them as the rule
        // serves them).
        let computed_resident = hits + (whole.served.served_by_copy - before.served.served_by_copy);
        let seconds =
            computed_resident as f64 * calibration.costs.resident_pair + (whole.modeled_time_s - before.modeled_time_s);
        Ok(Prediction {
            seconds_per_token: if decode_tokens == 0 { 0.0 } else { seconds / decode_tokens as f64 },
            hit_rate: whole.hit_rate(),
            bytes_promoted: bytes,
            served_in_place,
        })
    }
}

pub(super) fn seconds(start: &CudaEvent, end: &CudaEvent) -> Result<f64, CudaError> {
    Ok(f64::from(start.elapsed_ms(end)?) / 1e3)
}
