//! The GPU demo: an MoE model's expert FFNs decoded on the GPU with expertslab deciding which
//! experts live in VRAM slots, against streaming every expert and reading every expert over the
//! bus.
//!
//! A [`GpuModel`] holds every layer's experts in page-locked, device-mapped host memory (the slow
//! memory), generated on the GPU from a seed ([`GpuModel::generate`]) or given by the caller
//! ([`GpuModel::from_host`]). [`GpuModel::decode`] replays a routing [`Trace`] under a
//! [`RunConfig`]: slots per layer, a policy and schedule for the core's [`ExpertPool`], and a
//! [`MissRule`]. Each (layer, step) record:
//!
//! 1. the pool plans the step; its promotions are copied into their slots on the copy stream
//!    and committed. The copy stream first waits for the previous record's kernels: only then
//!    is the record's routing known (the router reads the previous layer's output; no host
//!    round trip is modelled), and no kernel still reads a slot being overwritten
//!    (write-after-read);
//! 2. each miss gets its action: copied into a scratch slot on the copy stream, or read from
//!    the mapped host memory (zero-copy);
//! 3. when the residency changed, the layer's device slot table is rewritten on the copy stream
//!    (two tables per layer, alternating, so kernels of the step that read experts resident
//!    before the copies never see a table being written);
//! 4. the compute stream runs gate/up and down for the pairs in place before the copies, waits
//!    for the copies, runs gate/up and down for the others, combines each token's pairs, and
//!    records the event the next record's copies wait on.
//!
//! Every layer reads the same input activations (the demo has no attention or residual stream;
//! chaining FFNs alone only shrinks the values), so the outputs of a run are the FFN outputs of
//! every (layer, step) record, which [`RunConfig::record_outputs`] keeps for comparisons.
//!
//! The demo issues its slot copies itself, a plain `cuMemcpyHtoDAsync` per projection from the
//! page-locked host stacks into the slot, with the table and events managed by this module; it
//! does not go through [`CudaSlotSink`](crate::CudaSlotSink), the sink for migrations from any
//! expert source, which BENCHMARKS.md's G1 table measures on its own.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::sys::{CUevent_flags, CU_MEMHOSTALLOC_DEVICEMAP};
use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, LaunchConfig, PinnedHostSlice, PushKernelArg};
use expertslab::trace::replay::{replay, CostModel, ReplayConfig, ReplayPolicy};
use expertslab::trace::synthetic::{RoutingShape, SplitMix64, SyntheticRouting};
use expertslab::trace::{Trace, TraceHeader};
use expertslab::{
    ExpertLayout, ExpertPool, Format, InitialPlacement, MigrationPlan, Policy, PoolConfig, PoolStats, Schedule,
    SlotArena, StackLayout, Step,
};

use crate::error::CudaError;
use crate::ffn::{raw, LayerSlots, MissAction, MissCosts, MissRule, MoeFfn, PairSource, Phase, StepBuffers};
use crate::kernels;
use crate::reference::FfnShape;

/// Alignment of slots and of each projection inside a slot.
pub const SLOT_ALIGN: usize = 256;

/// The shape of a demo model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// Experts per layer.
    pub experts: usize,
    /// MoE layers.
    pub layers: usize,
    /// One layer's FFN shape (top-k, widths, weight format).
    pub shape: FfnShape,
    /// Seed of the weights and activations.
    pub seed: u64,
}

impl ModelSpec {
    /// The shape of a current MoE: 128 experts per layer, top-8, hidden 2048, expert FFN 768,
    /// BF16 (9 MiB per expert), with `layers` layers.
    pub const fn current_moe(layers: usize) -> Self {
        Self {
            experts: 128,
            layers,
            shape: FfnShape { hidden: 2048, ffn: 768, top_k: 8, format: Format::BF16 },
            seed: 1,
        }
    }

    /// The layout of one layer's experts (gate, up, down stacks as GGUF holds them).
    ///
    /// # Errors
    /// [`CudaError::Layout`].
    pub fn layout(&self) -> Result<ExpertLayout, CudaError> {
        let s = &self.shape;
        let gate = StackLayout::new(s.format, self.experts, s.ffn, s.hidden)?;
        let down = StackLayout::new(s.format, self.experts, s.hidden, s.ffn)?;
        Ok(ExpertLayout::gate_up_down(gate, gate, down)?)
    }
}

/// The routing settings of the CLI's `synth` (its defaults: 64 prefill tokens at step 0, a
/// phase change every 256 steps, seed 1, one token per decode step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthSettings {
    /// Experts per layer.
    pub experts: u32,
    /// Layers.
    pub layers: u32,
    /// Experts per token.
    pub top_k: u32,
    /// Decode steps after the prefill block.
    pub steps: u64,
    /// Zipf exponent.
    pub zipf: f64,
    /// Reuse probability.
    pub reuse: f64,
    /// Steps between popularity reshuffles.
    pub phase: u64,
    /// Prefill tokens (step 0); 0 for none.
    pub prefill_tokens: usize,
    /// Seed; layer `l` uses `seed + l`.
    pub seed: u64,
}

impl SynthSettings {
    /// `synth`'s defaults for the given experts, layers, top-k, steps, Zipf exponent and reuse.
    pub const fn new(experts: u32, layers: u32, top_k: u32, steps: u64, zipf: f64, reuse: f64) -> Self {
        Self { experts, layers, top_k, steps, zipf, reuse, phase: 256, prefill_tokens: 64, seed: 1 }
    }

    /// The locality trace of the decode benchmark (G2): `--experts 128 --layers 4 --top-k 8
    /// --steps 512 --zipf 0.9 --reuse 0.5`.
    pub const fn locality() -> Self {
        Self::new(128, 4, 8, 512, 0.9, 0.5)
    }

    /// The near-uniform trace: the same with `--zipf 0 --reuse 0`.
    pub const fn near_uniform() -> Self {
        Self::new(128, 4, 8, 512, 0.0, 0.0)
    }

    /// The trace `expertslab synth` writes for these settings.
    ///
    /// # Errors
    /// [`CudaError::Residency`] for an empty shape.
    pub fn trace(&self) -> Result<Trace, CudaError> {
        let bad = |e: expertslab::trace::TraceError| CudaError::Residency(format!("synthetic trace: {e}"));
        let header = TraceHeader { experts: self.experts, layers: self.layers, top_k: self.top_k };
        let mut trace = Trace::new(header).map_err(bad)?;
        let shape = RoutingShape {
            experts: self.experts,
            top_k: self.top_k,
            zipf_s: self.zipf,
            reuse: self.reuse,
            phase_steps: self.phase,
        };
        let mut layers: Vec<SyntheticRouting> =
            (0..self.layers).map(|l| SyntheticRouting::new(shape, self.seed.wrapping_add(u64::from(l)))).collect();
        let prefill = self.prefill_tokens > 0;
        let mut ids = Vec::new();
        for step in 0..self.steps.saturating_add(u64::from(prefill)) {
            let (tokens, is_prefill) = if prefill && step == 0 { (self.prefill_tokens, true) } else { (1, false) };
            for (layer, routing) in (0u32..).zip(layers.iter_mut()) {
                ids.clear();
                routing.step(tokens, &mut ids);
                trace.push(layer, step, is_prefill, &ids).map_err(bad)?;
            }
        }
        Ok(trace)
    }
}

/// One decode run's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunConfig {
    /// Slots per layer (0: no slots, every routed expert is a miss; the expert count: every
    /// expert resident from the start).
    pub slots: usize,
    /// The pool's policy.
    pub policy: Policy,
    /// The pool's refresh schedule.
    pub schedule: Schedule,
    /// The miss action rule.
    pub miss: MissRule,
    /// Keep every record's output (`[tokens, hidden]` per record, in trace order).
    pub record_outputs: bool,
}

impl RunConfig {
    /// `slots` slots under `policy` refreshing every forward pass, misses by `miss`, outputs
    /// not kept.
    pub const fn new(slots: usize, policy: Policy, miss: MissRule) -> Self {
        Self { slots, policy, schedule: Schedule::EveryForward, miss, record_outputs: false }
    }
}

/// What a decode run did and how long it took.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunReport {
    /// Token–expert pairs whose expert was resident before the step's routing was known.
    pub hits: u64,
    /// Pairs that were not hits (as the pool counts them): `served_by_copy + served_in_place`.
    pub misses: u64,
    /// Misses whose expert was copied into its slot for that step.
    pub served_by_copy: u64,
    /// Misses whose expert was not resident (served by the miss rule: scratch copy or bus read).
    pub served_in_place: u64,
    /// Experts copied into slots (promotions).
    pub promotions: u64,
    /// Bytes copied into slots.
    pub bytes_promoted: u64,
    /// Pairs computed from a scratch slot, and the bytes copied there.
    pub scratch_pairs: u64,
    /// Bytes copied into scratch slots.
    pub bytes_scratch: u64,
    /// Pairs read over the bus.
    pub zero_copy_pairs: u64,
    /// Decode steps timed (records after the prefill, counted once per step, not per layer).
    pub decode_steps: u64,
    /// Decode tokens timed.
    pub decode_tokens: u64,
    /// Wall time of the timed decode steps, from the first enqueue to the end of the last kernel.
    pub decode_seconds: f64,
    /// Bytes copied (slots and scratch) per timed decode step.
    pub step_copy_bytes: Vec<u64>,
    /// Pairs read over the bus per timed decode step.
    pub step_zero_copy_pairs: Vec<u64>,
    /// Every record's output, when asked for.
    pub outputs: Vec<f32>,
}

impl RunReport {
    /// Hits over pairs.
    pub fn hit_rate(&self) -> f64 {
        let pairs = self.hits.saturating_add(self.misses);
        if pairs == 0 {
            0.0
        } else {
            self.hits as f64 / pairs as f64
        }
    }

    /// Seconds per decode token.
    pub fn seconds_per_token(&self) -> f64 {
        if self.decode_tokens == 0 {
            0.0
        } else {
            self.decode_seconds / self.decode_tokens as f64
        }
    }

    /// Bytes moved over the bus by copies (slots and scratch).
    pub fn bytes_copied(&self) -> u64 {
        self.bytes_promoted.saturating_add(self.bytes_scratch)
    }
}

/// Costs measured on the device at start-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Host-to-device copy bandwidth from page-locked memory, bytes per second.
    pub link_bytes_per_second: f64,
    /// The miss costs of one expert.
    pub costs: MissCosts,
}

/// One layer's slow memory: gate, up and down stacks in page-locked, device-mapped host memory.
struct HostLayer {
    memory: PinnedHostSlice<u8>,
    /// Where the stacks start in `memory` (0, or a test's misalignment).
    pad: usize,
    /// The device address of `memory[pad]`.
    device: u64,
}

/// A model's experts in page-locked host memory, and the compiled kernels. See the
/// [module docs](self).
pub struct GpuModel {
    spec: ModelSpec,
    layout: ExpertLayout,
    ctx: Arc<CudaContext>,
    compute: Arc<CudaStream>,
    copy: Arc<CudaStream>,
    ffn: MoeFfn,
    layers: Vec<HostLayer>,
    matrix_bytes: usize,
    expert_bytes: usize,
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
        let copy = ctx.new_stream()?;
        let matrix_bytes = spec.shape.gate_bytes()?;
        let expert_bytes = spec.shape.expert_bytes()?;
        Ok(Self { spec, layout, ctx, compute, copy, ffn, layers: Vec::new(), matrix_bytes, expert_bytes })
    }

    fn stack_bytes(&self) -> usize {
        self.matrix_bytes * self.spec.experts
    }

    fn alloc_layer(&self, pad: usize) -> Result<HostLayer, CudaError> {
        let len = 3 * self.stack_bytes() + pad;
        // SAFETY: the memory is written in full (by the fill or the caller's bytes) before any
        // read; DEVICEMAP makes it readable by kernels over the bus.
        let mut memory = unsafe { self.ctx.alloc_pinned_with_flags::<u8>(len, CU_MEMHOSTALLOC_DEVICEMAP) }?;
        let host = memory.as_mut_ptr()?;
        let mut device = 0u64;
        // SAFETY: `host` is the start of a live page-locked allocation made with DEVICEMAP, the
        // case cuMemHostGetDevicePointer maps; `device` receives the address.
        unsafe { cudarc::driver::sys::cuMemHostGetDevicePointer_v2(&mut device, host.cast(), 0) }.result()?;
        Ok(HostLayer { memory, pad, device: device + pad as u64 })
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
        let fill = model.ffn.module().load_function(match spec.shape.format {
            Format::BF16 => kernels::FILL_BF16,
            _ => kernels::FILL_F32,
        })?;
        let elem = spec.shape.element_bytes()?;
        let stack = model.stack_bytes();
        let temp = model.compute.alloc_zeros::<u8>(stack)?;
        for layer in 0..spec.layers {
            let mut host = model.alloc_layer(0)?;
            for (p, cols) in [spec.shape.hidden, spec.shape.hidden, spec.shape.ffn].into_iter().enumerate() {
                let seed = spec.seed ^ ((layer as u64) << 32 | (p as u64) << 24);
                let n = (stack / elem) as u64;
                let scale = (3.0 / cols as f32).sqrt();
                let ptr = raw(&temp, &model.compute);
                let cfg = LaunchConfig { grid_dim: (1024, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
                let mut launch = model.compute.launch_builder(&fill);
                launch.arg(&ptr).arg(&n).arg(&seed).arg(&scale);
                // SAFETY: `fill_*(out, n, seed, scale)` writes `n` elements at `ptr`, the
                // `stack`-byte allocation `temp` (n × elem = stack).
                unsafe { launch.launch(cfg) }?;
                let dst = host.memory.as_mut_slice()?;
                let part = dst.get_mut(p * stack..(p + 1) * stack).ok_or(CudaError::Unsupported("stack".into()))?;
                model.compute.memcpy_dtoh(&temp, part)?;
            }
            model.compute.synchronize()?;
            model.layers.push(host);
        }
        drop(temp);
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
        let stack = model.stack_bytes();
        for layer in stacks {
            let mut host = model.alloc_layer(pad)?;
            let dst = host.memory.as_mut_slice()?;
            for (p, bytes) in layer.iter().enumerate() {
                let part = dst
                    .get_mut(pad + p * stack..pad + (p + 1) * stack)
                    .filter(|part| part.len() == bytes.len())
                    .ok_or_else(|| CudaError::Unsupported(format!("a stack of {} bytes, not {stack}", bytes.len())))?;
                part.copy_from_slice(bytes);
            }
            model.layers.push(host);
        }
        Ok(model)
    }

    /// The model's shape.
    pub const fn spec(&self) -> &ModelSpec {
        &self.spec
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

    /// Host address of projection `p` of `expert` in `layer`'s stacks.
    fn host_slab(&self, layer: usize, p: usize, expert: usize) -> Result<&[u8], CudaError> {
        let host = self.layers.get(layer).ok_or_else(|| CudaError::Unsupported(format!("layer {layer}")))?;
        let start = host.pad + p * self.stack_bytes() + expert * self.matrix_bytes;
        host.memory
            .as_slice()?
            .get(start..start + self.matrix_bytes)
            .ok_or_else(|| CudaError::Unsupported(format!("expert {expert}")))
    }

    /// The zero-copy source of `expert` in `layer`.
    fn zero_copy(&self, layer: usize, expert: usize) -> PairSource {
        let base = self.layers.get(layer).map_or(0, |h| h.device);
        let at = |p: usize| base + (p * self.stack_bytes() + expert * self.matrix_bytes) as u64;
        PairSource::Direct { gate: at(0), up: at(1), down: at(2), after_copies: false }
    }

    /// Enqueues on the copy stream the copy of `expert` of `layer` into the slot-shaped buffer
    /// at `dst` (offsets of `slots`).
    fn copy_expert(&self, slots: &LayerSlots, layer: usize, expert: usize, dst: u64) -> Result<(), CudaError> {
        for (p, offset) in slots.offsets.iter().enumerate() {
            let src = self.host_slab(layer, p, expert)?;
            // SAFETY: `dst + offset` is a projection of a live slot-shaped device allocation of
            // this run, at least `matrix_bytes` long; `src` is page-locked host memory owned by
            // the model, which outlives the run (the run synchronises before returning).
            unsafe { cudarc::driver::result::memcpy_htod_async(dst + offset, src, self.copy.cu_stream()) }?;
        }
        Ok(())
    }

    /// Measures the link bandwidth and the per-pair compute costs of resident and zero-copy
    /// experts (medians of `reps` timings each).
    ///
    /// # Errors
    /// [`CudaError::Driver`] and the kernels' errors.
    pub fn calibrate(&self, reps: usize) -> Result<Calibration, CudaError> {
        let reps = reps.max(3);
        let k = self.spec.shape.top_k.min(self.spec.experts);
        let arena = SlotArena::new(&self.layout, k, SLOT_ALIGN)?;
        let buffer = self.compute.alloc_zeros::<u8>(arena.total_bytes())?;
        let table = self.compute.clone_htod(&vec![-1i32; self.spec.experts])?;
        let base = raw(&buffer, &self.compute);
        let slots = LayerSlots::new(&self.spec.shape, &self.layout, &arena, base, raw(&table, &self.compute))?;
        self.compute.synchronize()?;
        let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
        // Link: copies of k experts from page-locked memory.
        let mut link = Vec::new();
        for _ in 0..reps {
            let start = self.copy.record_event(timing)?;
            for e in 0..k {
                self.copy_expert(&slots, 0, e, base + (e * arena.slot_stride()) as u64)?;
            }
            let end = self.copy.record_event(timing)?;
            end.synchronize()?;
            link.push((k * self.expert_bytes) as f64 / seconds(&start, &end)?);
        }
        // One token over k experts, from device memory and over the bus.
        let ids: Vec<u32> = (0..k as u32).collect();
        let weights = vec![1.0 / k as f32; k];
        let x = self.compute.clone_htod(&activations(self.spec.seed, self.spec.shape.hidden))?;
        let y = self.compute.alloc_zeros::<f32>(self.spec.shape.hidden)?;
        let (xp, yp) = (raw(&x, &self.compute), raw(&y, &self.compute));
        let mut step = self.ffn.step_buffers(&self.compute, 1)?;
        let mut per_pair = |sources: &[PairSource]| -> Result<f64, CudaError> {
            step.stage(&self.compute, &ids, &weights, sources)?;
            let mut t = Vec::new();
            for _ in 0..reps + 1 {
                let start = self.compute.record_event(timing)?;
                // SAFETY: `slots` points at `buffer` and `table` (alive for this function), the
                // sources at `buffer`'s slots or the model's mapped host stacks, `xp` and `yp` at
                // one token's activations and output; all on this stream.
                unsafe { self.ffn.launch(&self.compute, &slots, &step, xp, yp) }?;
                let end = self.compute.record_event(timing)?;
                end.synchronize()?;
                t.push(seconds(&start, &end)? / k as f64);
            }
            t.remove(0); // the first launch warms up
            step.check_status(&self.compute)?;
            Ok(median(&mut t))
        };
        let resident: Vec<PairSource> =
            (0..k).map(|e| slots.scratch(base + (e * arena.slot_stride()) as u64)).collect();
        let zero_copy: Vec<PairSource> = (0..k).map(|e| self.zero_copy(0, e)).collect();
        let resident_pair = per_pair(&resident)?;
        let zero_copy_pair = per_pair(&zero_copy)?;
        let link_bytes_per_second = median(&mut link);
        Ok(Calibration {
            link_bytes_per_second,
            costs: MissCosts { copy: self.expert_bytes as f64 / link_bytes_per_second, resident_pair, zero_copy_pair },
        })
    }

    /// The bytes one slot takes in every layer.
    fn slot_bytes_all_layers(&self) -> Result<u64, CudaError> {
        let per_slot = SlotArena::new(&self.layout, 1, SLOT_ALIGN)?.slot_stride() as u64;
        Ok(per_slot * self.spec.layers as u64)
    }

    /// Decodes `trace` under `run`; see the [module docs](self). The prefill records (and the
    /// records of step 0 when there is no prefill) run untimed; the decode steps after them are
    /// timed together.
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
        let may_copy = run.miss != MissRule::Always(MissAction::ZeroCopy) && slots < spec.experts;
        let scratch = if may_copy { (max_tokens * top_k).min(spec.experts) } else { 0 };
        let (free, _) = self.ctx.mem_get_info()?;
        check_fit(free as u64, self.slot_bytes_all_layers()?, slots, scratch)?;
        let mut state = RunState::new(self, run, slots, scratch, max_tokens, trace)?;
        let hidden = spec.shape.hidden;
        let mut report = RunReport::default();
        let mut start: Option<(Instant, u64)> = None;
        let mut current_step = None;
        let mut output_at = 0usize;
        for record in records {
            let ids = trace.ids(record);
            let decode = !record.prefill && record.step > 0;
            if decode && start.is_none() {
                self.copy.synchronize()?;
                self.compute.synchronize()?;
                start = Some((Instant::now(), record.step));
            }
            if decode && current_step != Some(record.step) {
                current_step = Some(record.step);
                report.decode_steps += 1;
                report.decode_tokens += (ids.len() / top_k) as u64;
                report.step_copy_bytes.push(0);
                report.step_zero_copy_pairs.push(0);
            }
            let y = match &state.outputs {
                Some(out) => raw(out, &self.compute) + (output_at * 4) as u64,
                None => state.y_ptr,
            };
            output_at += ids.len() / top_k * hidden;
            let zero_copy_before = report.zero_copy_pairs;
            let copied =
                state.layer_step(self, record.layer as usize, record.step, record.prefill, ids, y, &mut report)?;
            if decode {
                if let Some(b) = report.step_copy_bytes.last_mut() {
                    *b += copied;
                }
                if let Some(z) = report.step_zero_copy_pairs.last_mut() {
                    *z += report.zero_copy_pairs - zero_copy_before;
                }
            }
        }
        self.copy.synchronize()?;
        self.compute.synchronize()?;
        if let Some((t0, _)) = start {
            report.decode_seconds = t0.elapsed().as_secs_f64();
        }
        for layer in &mut state.layers {
            for b in &mut layer.buffers {
                b.check_status(&self.compute)?;
            }
            if let Some(pool) = &layer.pool {
                report.hits += pool.stats().hits;
                report.misses += pool.stats().misses;
                report.served_by_copy += pool.stats().served_by_copy;
                report.served_in_place += pool.stats().served_in_place;
                report.promotions += pool.stats().promotions - layer.warm.promotions;
                report.bytes_promoted += pool.stats().bytes_promoted - layer.warm.bytes_promoted;
            } else {
                report.misses += layer.misses;
                report.served_in_place += layer.misses;
            }
        }
        if let Some(out) = &state.outputs {
            report.outputs = self.compute.clone_dtoh(out)?;
        }
        Ok(report)
    }

    /// The cost the core's replay predicts for `run` on `trace`'s decode steps, per decode
    /// token: `(hits + served by copy) × resident_pair + served in place × miss pair + bytes
    /// moved / link`, where the pair counts and bytes come from [`expertslab::trace::replay`] (decode records only: the
    /// replay of the whole trace less the replay of its prefill) and the per-pair and link costs
    /// from `calibration`; a miss pair costs what the rule's action costs.
    ///
    /// # Errors
    /// [`CudaError::Residency`] when the replay refuses the trace.
    pub fn predict(&self, trace: &Trace, run: &RunConfig, calibration: &Calibration) -> Result<Prediction, CudaError> {
        let cost = CostModel::new(self.expert_bytes as u64, 1.0, calibration.link_bytes_per_second);
        let config =
            ReplayConfig::new(ReplayPolicy::Pool(run.policy), run.slots, run.schedule, InitialPlacement::Warm, cost);
        let fail = |e: expertslab::trace::replay::ReplayError| CudaError::Residency(format!("replay: {e}"));
        let whole = replay(trace, &config).map_err(fail)?.total;
        let mut prefill = Trace::new(trace.header()).map_err(|e| CudaError::Residency(format!("{e}")))?;
        let mut decode_tokens = 0u64;
        for r in trace.records() {
            if r.prefill || r.step == 0 {
                prefill
                    .push(r.layer, r.step, r.prefill, trace.ids(r))
                    .map_err(|e| CudaError::Residency(format!("{e}")))?;
            } else if r.layer == 0 {
                decode_tokens += (trace.ids(r).len() / self.spec.shape.top_k) as u64;
            }
        }
        let before = replay(&prefill, &config).map_err(fail)?.total;
        let hits = whole.hits - before.hits;
        let served_in_place = whole.served_in_place - before.served_in_place;
        let bytes = whole.bytes_moved - before.bytes_moved;
        let c = &calibration.costs;
        let miss_pair = match run.miss.choose(1) {
            MissAction::Copy => c.copy + c.resident_pair,
            MissAction::ZeroCopy => c.zero_copy_pair,
        };
        // Misses served by copy are computed from their slot after their copy.
        let computed_resident = hits + (whole.served_by_copy - before.served_by_copy);
        let seconds = computed_resident as f64 * c.resident_pair
            + served_in_place as f64 * miss_pair
            + bytes as f64 / calibration.link_bytes_per_second;
        Ok(Prediction {
            seconds_per_token: if decode_tokens == 0 { 0.0 } else { seconds / decode_tokens as f64 },
            hit_rate: whole.hit_rate(),
            bytes_moved: bytes,
            served_in_place,
        })
    }
}

/// Device memory kept free beside the slots: step buffers, activations, the driver's own.
const VRAM_RESERVE: u64 = 256 << 20;

/// Checks that `slots` slots and `scratch` scratch slots per layer fit `free` bytes of device
/// memory, one slot of every layer taking `slot_bytes`, [`VRAM_RESERVE`] kept free.
///
/// # Errors
/// [`CudaError::DoesNotFit`] with how many slots per layer would fit.
fn check_fit(free: u64, slot_bytes: u64, slots: usize, scratch: usize) -> Result<(), CudaError> {
    let needed = slot_bytes.saturating_mul(slots.saturating_add(scratch) as u64);
    if needed.saturating_add(VRAM_RESERVE) <= free {
        return Ok(());
    }
    let room = free.saturating_sub(VRAM_RESERVE).saturating_sub(slot_bytes.saturating_mul(scratch as u64));
    let slots_that_fit = usize::try_from(room / slot_bytes.max(1)).unwrap_or(usize::MAX);
    Err(CudaError::DoesNotFit { layer: None, needed, free, slots_that_fit })
}

/// What the replay's cost model predicts for a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Seconds per decode token.
    pub seconds_per_token: f64,
    /// The replay's hit rate over the whole trace.
    pub hit_rate: f64,
    /// Bytes the replay moves into slots during decode.
    pub bytes_moved: u64,
    /// Misses served in place (computed from slow memory) during decode.
    pub served_in_place: u64,
}

fn seconds(start: &CudaEvent, end: &CudaEvent) -> Result<f64, CudaError> {
    Ok(f64::from(start.elapsed_ms(end)?) / 1e3)
}

/// The median of `v` (0 for none).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match (v.get((n / 2).wrapping_sub(1)), v.get(n / 2)) {
        (_, None) => 0.0,
        (Some(low), Some(high)) if n.is_multiple_of(2) => (low + high) / 2.0,
        (_, Some(middle)) => *middle,
    }
}

/// A token's activations: uniform in `[-1, 1)` from SplitMix64.
pub fn activations(seed: u64, len: usize) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed ^ 0xA5A5_5A5A);
    (0..len).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect()
}

/// The router weights of one record: positive, each token's summing to 1, from its layer and
/// step.
pub fn router_weights(layer: usize, step: u64, pairs: usize, top_k: usize) -> Vec<f32> {
    let mut rng = SplitMix64::new((layer as u64) << 40 ^ step);
    let mut w: Vec<f32> = (0..pairs).map(|_| 0.05 + rng.next_f64() as f32).collect();
    for token in w.chunks_mut(top_k.max(1)) {
        let sum: f32 = token.iter().sum();
        token.iter_mut().for_each(|v| *v /= sum);
    }
    w
}

/// One layer's device state during a run.
struct LayerState {
    pool: Option<ExpertPool>,
    plan: MigrationPlan,
    _slots: CudaSlice<u8>,
    _scratch: CudaSlice<u8>,
    scratch_base: u64,
    stride: u64,
    /// Two tables, alternating; `current` is the one the last step's late kernels read.
    _tables: [CudaSlice<i32>; 2],
    table_ptrs: [u64; 2],
    current: usize,
    /// What the current table holds.
    table_host: Vec<i32>,
    staging: PinnedHostSlice<i32>,
    staged: [Option<CudaEvent>; 2],
    slots: LayerSlots,
    buffers: [StepBuffers; 2],
    next_buffer: usize,
    copies_done: CudaEvent,
    /// Misses counted without a pool.
    misses: u64,
    /// The pool's counters after the warm start.
    warm: PoolStats,
}

struct RunState {
    layers: Vec<LayerState>,
    rule: MissRule,
    _x: CudaSlice<f32>,
    x_ptr: u64,
    _y: CudaSlice<f32>,
    y_ptr: u64,
    outputs: Option<CudaSlice<f32>>,
    sources: Vec<PairSource>,
    scratch_of: HashMap<u32, u64>,
    /// Recorded after each record's kernels: its routing is known, and its reads are done.
    routed: CudaEvent,
    routed_recorded: bool,
}

impl RunState {
    fn new(
        model: &GpuModel,
        run: &RunConfig,
        slots: usize,
        scratch: usize,
        max_tokens: usize,
        trace: &Trace,
    ) -> Result<Self, CudaError> {
        let spec = &model.spec;
        let s = &model.compute;
        let no_timing = Some(CUevent_flags::CU_EVENT_DISABLE_TIMING);
        let mut layers = Vec::with_capacity(spec.layers);
        for l in 0..spec.layers {
            let arena = SlotArena::new(&model.layout, slots, SLOT_ALIGN)?;
            let scratch_arena = SlotArena::new(&model.layout, scratch, SLOT_ALIGN)?;
            let slot_mem = s.alloc_zeros::<u8>(arena.total_bytes().max(1))?;
            let scratch_mem = s.alloc_zeros::<u8>(scratch_arena.total_bytes().max(1))?;
            let pool = if slots == 0 {
                None
            } else {
                let config = PoolConfig::new(spec.experts, slots)
                    .layer(l)
                    .policy(run.policy)
                    .schedule(run.schedule)
                    .initial(InitialPlacement::Warm);
                Some(ExpertPool::new(config).map_err(|e| CudaError::Residency(format!("pool: {e}")))?)
            };
            let tables = [s.clone_htod(&vec![-1i32; spec.experts])?, s.clone_htod(&vec![-1i32; spec.experts])?];
            let table_ptrs = [raw(&tables[0], s), raw(&tables[1], s)];
            let base = raw(&slot_mem, s);
            let layer_slots = LayerSlots::new(&spec.shape, &model.layout, &arena, base, table_ptrs[0])?;
            // SAFETY: written in full before each upload.
            let staging = unsafe { model.ctx.alloc_pinned_with_flags::<i32>(2 * spec.experts, 0) }?;
            let mut state = LayerState {
                plan: MigrationPlan::new(slots),
                pool,
                scratch_base: raw(&scratch_mem, s),
                stride: arena.slot_stride() as u64,
                _slots: slot_mem,
                _scratch: scratch_mem,
                _tables: tables,
                table_ptrs,
                current: 0,
                table_host: vec![-1; spec.experts],
                staging,
                staged: [None, None],
                slots: layer_slots,
                buffers: [model.ffn.step_buffers(s, max_tokens)?, model.ffn.step_buffers(s, max_tokens)?],
                next_buffer: 0,
                copies_done: model.ctx.new_event(no_timing)?,
                misses: 0,
                warm: PoolStats::default(),
            };
            // The warm start: the pool's initial plan, copied and committed before the run.
            if let Some(pool) = &mut state.pool {
                pool.initial_plan(&mut state.plan);
                for p in state.plan.promotions() {
                    let dst = base + u64::from(p.slot) * state.stride;
                    model.copy_expert(&state.slots, l, usize::from(p.expert), dst)?;
                    pool.commit(*p, model.expert_bytes as u64)
                        .map_err(|e| CudaError::Residency(format!("commit: {e}")))?;
                }
                // The warm start is not counted as moved (as in the replay).
                state.warm = *pool.stats();
            }
            if let Some(pool) = &state.pool {
                state.table_host = (0..spec.experts).map(|e| pool.slot_of(e).map_or(-1, |s| s as i32)).collect();
            }
            state.upload_table(model)?;
            layers.push(state);
        }
        model.copy.synchronize()?;
        let x = s.clone_htod(&activations(spec.seed, max_tokens * spec.shape.hidden))?;
        let y = s.alloc_zeros::<f32>(max_tokens * spec.shape.hidden)?;
        let outputs = if run.record_outputs {
            let total: usize = trace.records().iter().map(|r| trace.ids(r).len() / spec.shape.top_k).sum();
            Some(s.alloc_zeros::<f32>((total * spec.shape.hidden).max(1))?)
        } else {
            None
        };
        s.synchronize()?;
        Ok(Self {
            layers,
            rule: run.miss,
            x_ptr: raw(&x, s),
            _x: x,
            y_ptr: raw(&y, s),
            _y: y,
            outputs,
            sources: Vec::new(),
            scratch_of: HashMap::new(),
            routed: model.ctx.new_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING))?,
            routed_recorded: false,
        })
    }

    /// One record of one layer; returns the bytes it copied (slots and scratch).
    #[allow(clippy::too_many_arguments)]
    fn layer_step(
        &mut self,
        model: &GpuModel,
        l: usize,
        step: u64,
        prefill: bool,
        ids: &[u32],
        y: u64,
        report: &mut RunReport,
    ) -> Result<u64, CudaError> {
        let layer = self.layers.get_mut(l).ok_or_else(|| CudaError::Unsupported(format!("layer {l}")))?;
        let expert_bytes = model.expert_bytes as u64;
        let mut copied = 0u64;
        let mut waited = false;
        // Copies of this record start once the previous record's kernels ended: then its
        // routing is known (the router reads the previous layer's output), and every kernel
        // that read a slot or table of this layer has run (write-after-read).
        let (routed, routed_recorded) = (&self.routed, self.routed_recorded);
        let mut wait_reads = |_: &LayerState| -> Result<(), CudaError> {
            if !waited && routed_recorded {
                model.copy.wait(routed)?;
            }
            waited = true;
            Ok(())
        };
        // 1. Plan and copy the promotions.
        let mut promoted: Vec<u16> = Vec::new();
        if let Some(pool) = &mut layer.pool {
            let step = if prefill { Step::prefill(step) } else { Step::decode(step) };
            pool.plan_step(step, ids, &mut layer.plan).map_err(|e| CudaError::Residency(format!("plan: {e}")))?;
        }
        if layer.pool.is_some() && !layer.plan.is_empty() {
            wait_reads(layer)?;
        }
        if let Some(pool) = &mut layer.pool {
            for p in layer.plan.promotions() {
                let dst = layer.slots.slot_base + u64::from(p.slot) * layer.stride;
                model.copy_expert(&layer.slots, l, usize::from(p.expert), dst)?;
                pool.commit(*p, expert_bytes).map_err(|e| CudaError::Residency(format!("commit: {e}")))?;
                promoted.push(p.expert);
                copied += expert_bytes;
            }
            pool.serve(ids);
        }
        // 2. Each pair's source; misses by the rule.
        self.sources.clear();
        self.scratch_of.clear();
        let mut next_scratch = 0u64;
        for &id in ids {
            let resident = layer.pool.as_ref().and_then(|p| p.slot_of(id as usize)).is_some();
            let source = if resident {
                if promoted.contains(&(id as u16)) {
                    PairSource::Promoted
                } else {
                    PairSource::Resident
                }
            } else {
                if layer.pool.is_none() {
                    layer.misses += 1;
                }
                let uses = ids.iter().filter(|&&other| other == id).count();
                match self.rule.choose(uses) {
                    MissAction::ZeroCopy => {
                        report.zero_copy_pairs += 1;
                        model.zero_copy(l, id as usize)
                    }
                    MissAction::Copy => {
                        report.scratch_pairs += 1;
                        let base = match self.scratch_of.get(&id) {
                            Some(&base) => base,
                            None => {
                                wait_reads(layer)?;
                                let base = layer.scratch_base + next_scratch * layer.stride;
                                next_scratch += 1;
                                model.copy_expert(&layer.slots, l, id as usize, base)?;
                                report.bytes_scratch += expert_bytes;
                                copied += expert_bytes;
                                self.scratch_of.insert(id, base);
                                base
                            }
                        };
                        layer.slots.scratch(base)
                    }
                }
            };
            self.sources.push(source);
        }
        // 3. The table, when the residency changed.
        let table_of = |layer: &LayerState, i: usize| {
            layer.table_ptrs.get(i).copied().ok_or_else(|| CudaError::Unsupported("table".into()))
        };
        let before = table_of(layer, layer.current)?;
        let table: Option<Vec<i32>> = layer
            .pool
            .as_ref()
            .map(|pool| (0..layer.table_host.len()).map(|e| pool.slot_of(e).map_or(-1, |s| s as i32)).collect());
        if let Some(table) = table.filter(|t| *t != layer.table_host) {
            wait_reads(layer)?;
            layer.table_host = table;
            layer.current = 1 - layer.current;
            layer.upload_table(model)?;
        }
        let after = table_of(layer, layer.current)?;
        let enqueued = waited;
        if enqueued {
            layer.copies_done.record(&model.copy)?;
        }
        // 4. The kernels.
        let buffers =
            layer.buffers.get_mut(layer.next_buffer).ok_or_else(|| CudaError::Unsupported("step buffers".into()))?;
        layer.next_buffer = 1 - layer.next_buffer;
        buffers.stage(
            &model.compute,
            ids,
            &router_weights(l, step, ids.len(), model.spec.shape.top_k),
            &self.sources,
        )?;
        let early = LayerSlots { table: before, ..layer.slots };
        let late = LayerSlots { table: after, ..layer.slots };
        // SAFETY: `early` and `late` point at this layer's slots and tables, alive for the run;
        // the sources at its scratch slots or the model's mapped host stacks; `x_ptr` at the
        // run's activations (max_tokens × hidden) and `y` at the run's output buffer or a slice
        // of the recorded outputs of this record's length. Slots and scratch slots written by
        // this record's copies are read only after the wait on `copies_done`; the early phase
        // reads slots the copies do not touch, through the table they do not rewrite.
        unsafe {
            model.ffn.launch_gate_up(&model.compute, &early, buffers, self.x_ptr, Phase::BeforeCopies)?;
            model.ffn.launch_down(&model.compute, &early, buffers, Phase::BeforeCopies)?;
            if enqueued {
                model.compute.wait(&layer.copies_done)?;
            }
            model.ffn.launch_gate_up(&model.compute, &late, buffers, self.x_ptr, Phase::AfterCopies)?;
            model.ffn.launch_down(&model.compute, &late, buffers, Phase::AfterCopies)?;
            model.ffn.launch_combine(&model.compute, buffers, y)?;
        }
        self.routed.record(&model.compute)?;
        self.routed_recorded = true;
        Ok(copied)
    }
}

impl LayerState {
    /// Uploads `table_host` into the current table on the copy stream.
    fn upload_table(&mut self, model: &GpuModel) -> Result<(), CudaError> {
        let half = self.table_host.len();
        let i = self.current;
        if let Some(event) = self.staged.get_mut(i).and_then(Option::take) {
            event.synchronize()?;
        }
        let staging = self.staging.as_mut_slice()?;
        let part = staging.get_mut(i * half..(i + 1) * half).ok_or(CudaError::Unsupported("table".into()))?;
        part.copy_from_slice(&self.table_host);
        let dst = *self.table_ptrs.get(i).ok_or(CudaError::Unsupported("table".into()))?;
        let src =
            self.staging.as_slice()?.get(i * half..(i + 1) * half).ok_or(CudaError::Unsupported("table".into()))?;
        // SAFETY: `dst` is table `i`, `half` i32 long; `src` is its page-locked staging half,
        // not rewritten before the `staged` event (waited on above next time) completes.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, model.copy.cu_stream()) }?;
        *self.staged.get_mut(i).ok_or(CudaError::Unsupported("table".into()))? =
            Some(model.copy.record_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING))?);
        Ok(())
    }
}

impl GpuModel {
    /// [`GpuModel::decode`] `reps` times (at least once): the first run's report, with
    /// `decode_seconds` the median over the runs.
    ///
    /// # Errors
    /// As [`GpuModel::decode`].
    pub fn decode_median(&self, trace: &Trace, run: &RunConfig, reps: usize) -> Result<RunReport, CudaError> {
        let mut first = self.decode(trace, run)?;
        let mut times = vec![first.decode_seconds];
        let quiet = RunConfig { record_outputs: false, ..*run };
        for _ in 1..reps {
            times.push(self.decode(trace, &quiet)?.decode_seconds);
        }
        first.decode_seconds = median(&mut times);
        Ok(first)
    }

    /// The overlap bound of G4 for `report`: the sum over its decode steps of
    /// `max(copy time, compute time)`, with the copy time the step's copied bytes over the
    /// link and the compute time the all-resident time per token plus the extra time of the
    /// step's pairs read over the bus.
    pub fn overlap_bound(&self, report: &RunReport, floor_per_token: f64, calibration: &Calibration) -> f64 {
        let extra = (calibration.costs.zero_copy_pair - calibration.costs.resident_pair).max(0.0);
        report
            .step_copy_bytes
            .iter()
            .zip(&report.step_zero_copy_pairs)
            .map(|(&bytes, &zc)| {
                let copy = bytes as f64 / calibration.link_bytes_per_second;
                let compute = floor_per_token + zc as f64 * extra;
                copy.max(compute)
            })
            .sum()
    }
}

/// Where the demo's routing comes from.
#[derive(Debug, Clone)]
pub enum DemoRouting {
    /// Synthetic routing generated like `expertslab synth`.
    Synthetic(SynthSettings),
    /// A routing trace (read by the caller).
    Trace(Trace),
}

/// The demo's settings.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// The CUDA device.
    pub device: usize,
    /// The model's shape.
    pub model: ModelSpec,
    /// The routing.
    pub routing: DemoRouting,
    /// Slots per layer for the expertslab row.
    pub slots: usize,
    /// The expertslab row's policy.
    pub policy: Policy,
    /// Timed repetitions per row (the median is reported).
    pub reps: usize,
}

impl Default for DemoConfig {
    /// The model (128 experts, top-8, hidden 2048, FFN 768, BF16, 4 layers) on device 0,
    /// the locality trace, half the experts in slots under TIDE, 5 repetitions.
    fn default() -> Self {
        Self {
            device: 0,
            model: ModelSpec::current_moe(4),
            routing: DemoRouting::Synthetic(SynthSettings::locality()),
            slots: 64,
            policy: Policy::Tide,
            reps: 5,
        }
    }
}

/// One row of the demo's comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoRow {
    /// What ran.
    pub name: String,
    /// Slots per layer.
    pub slots: usize,
    /// Hit rate over the trace.
    pub hit_rate: f64,
    /// Bytes copied over the bus per decode token.
    pub bytes_per_token: f64,
    /// Pairs read over the bus per decode token.
    pub zero_copy_pairs_per_token: f64,
    /// Median seconds per decode token.
    pub seconds_per_token: f64,
    /// Whether the outputs are bit-identical to the all-resident row's.
    pub bit_identical: bool,
}

/// The demo's result; `Display` prints it as a table.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoReport {
    /// The device's name.
    pub device: String,
    /// The driver's version.
    pub driver: String,
    /// The model's shape.
    pub model: ModelSpec,
    /// Bytes per expert.
    pub expert_bytes: usize,
    /// Decode steps per run.
    pub decode_steps: u64,
    /// Costs measured at start-up.
    pub calibration: Calibration,
    /// The rows: all resident, streaming, zero-copy, expertslab.
    pub rows: Vec<DemoRow>,
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.model;
        let c = &self.calibration;
        writeln!(
            f,
            "{} (driver {}): {} layers × {} experts, top-{}, hidden {}, FFN {}, {} ({:.1} MiB per expert)",
            self.device,
            self.driver,
            m.layers,
            m.experts,
            m.shape.top_k,
            m.shape.hidden,
            m.shape.ffn,
            m.shape.format.name(),
            self.expert_bytes as f64 / (1 << 20) as f64
        )?;
        writeln!(
            f,
            "measured: link {:.1} GB/s (expert copy {:.0} µs), pair from VRAM {:.2} µs, pair over the bus {:.1} µs",
            c.link_bytes_per_second / 1e9,
            c.costs.copy * 1e6,
            c.costs.resident_pair * 1e6,
            c.costs.zero_copy_pair * 1e6
        )?;
        writeln!(f, "{} decode steps, one token each; medians of the timed runs", self.decode_steps)?;
        writeln!(
            f,
            "{:<34} {:>6} {:>9} {:>13} {:>10} {:>12} {:>9} {:>13}",
            "run", "slots", "hit rate", "copied/token", "bus pairs", "time/token", "vs floor", "bit-identical"
        )?;
        let floor = self.rows.first().map_or(0.0, |r| r.seconds_per_token);
        for r in &self.rows {
            writeln!(
                f,
                "{:<34} {:>6} {:>8.1}% {:>9.1} MiB {:>10.1} {:>9.1} µs {:>8.2}× {:>13}",
                r.name,
                r.slots,
                100.0 * r.hit_rate,
                r.bytes_per_token / (1 << 20) as f64,
                r.zero_copy_pairs_per_token,
                r.seconds_per_token * 1e6,
                if floor > 0.0 { r.seconds_per_token / floor } else { 0.0 },
                if r.bit_identical { "yes" } else { "NO" }
            )?;
        }
        Ok(())
    }
}

/// Runs the GPU demo: generates the model's weights on the GPU, measures the link and the
/// per-pair costs, and decodes the routing four ways (every expert resident; no slots and every
/// routed expert uploaded each step; no slots and every routed expert read over the bus;
/// expertslab slots under the configured policy with the measured miss rule), checking that
/// every way gives bit-identical outputs.
///
/// # Errors
/// [`CudaError::NoDriver`] or [`CudaError::NoDevice`] without a GPU, [`CudaError::DoesNotFit`]
/// when the slots do not fit the free VRAM (with how many would), and the errors of
/// [`GpuModel::generate`] and [`GpuModel::decode`].
pub fn run_demo(config: &DemoConfig) -> Result<DemoReport, CudaError> {
    let trace = match &config.routing {
        DemoRouting::Synthetic(settings) => settings.trace()?,
        DemoRouting::Trace(trace) => trace.clone(),
    };
    let model = GpuModel::generate(config.device, config.model)?;
    let calibration = model.calibrate(10)?;
    let experts = config.model.experts;
    let runs = [
        (
            "every expert resident (floor)".to_string(),
            RunConfig::new(experts, config.policy, MissRule::Always(MissAction::Copy)),
        ),
        (
            "no slots, upload each step".to_string(),
            RunConfig::new(0, config.policy, MissRule::Always(MissAction::Copy)),
        ),
        (
            "no slots, read over the bus".to_string(),
            RunConfig::new(0, config.policy, MissRule::Always(MissAction::ZeroCopy)),
        ),
        (
            format!("expertslab {}, measured miss rule", config.policy.name()),
            RunConfig::new(config.slots, config.policy, MissRule::Measured(calibration.costs)),
        ),
    ];
    let mut rows = Vec::new();
    let mut reference: Option<Vec<f32>> = None;
    let mut decode_steps = 0;
    for (name, run) in runs {
        let run = RunConfig { record_outputs: true, ..run };
        let report = model.decode_median(&trace, &run, config.reps)?;
        let bits: Vec<u32> = report.outputs.iter().map(|v| v.to_bits()).collect();
        let reference_bits = reference.get_or_insert_with(|| report.outputs.clone());
        let identical = bits.iter().copied().eq(reference_bits.iter().map(|v| v.to_bits()));
        let tokens = report.decode_tokens.max(1) as f64;
        decode_steps = report.decode_steps;
        let copied_decode: u64 = report.step_copy_bytes.iter().sum();
        let zc_decode: u64 = report.step_zero_copy_pairs.iter().sum();
        rows.push(DemoRow {
            name,
            slots: run.slots.min(experts),
            hit_rate: report.hit_rate(),
            bytes_per_token: copied_decode as f64 / tokens,
            zero_copy_pairs_per_token: zc_decode as f64 / tokens,
            seconds_per_token: report.seconds_per_token(),
            bit_identical: identical,
        });
    }
    Ok(DemoReport {
        device: model.device_name()?,
        driver: model.driver_version()?,
        model: config.model,
        expert_bytes: model.expert_bytes(),
        decode_steps,
        calibration,
        rows,
    })
}

/// The pick of `expertslab tune` at a fixed budget: the policy and refresh interval with the
/// lowest modeled time under the core's replay, over the deployable policies (TIDE, decay,
/// LRU, LFU, LRU-2) and intervals τ ∈ {1, 2, 4, 8, 16, 32} for the interval policies, with the
/// slow-pair cost of the measured miss rule and the measured link.
///
/// # Errors
/// [`CudaError::Residency`] when the replay refuses the trace.
pub fn tune_pick(
    trace: &Trace,
    slots: usize,
    expert_bytes: u64,
    calibration: &Calibration,
) -> Result<(Policy, Schedule), CudaError> {
    let c = &calibration.costs;
    let slow_pair_seconds = match MissRule::Measured(*c).choose(1) {
        MissAction::Copy => c.copy + c.resident_pair,
        MissAction::ZeroCopy => c.zero_copy_pair,
    };
    let cost = CostModel::new(expert_bytes, slow_pair_seconds, calibration.link_bytes_per_second);
    let mut best: Option<(f64, Policy, Schedule)> = None;
    for name in ["tide", "decay", "lru", "lfu", "lru2"] {
        let policy = Policy::from_name(name).map_err(|e| CudaError::Residency(format!("{e}")))?;
        let schedules: Vec<Schedule> = if policy.is_demand() {
            vec![Schedule::EveryForward]
        } else {
            [1u32, 2, 4, 8, 16, 32]
                .iter()
                .filter_map(|&n| std::num::NonZeroU32::new(n).map(Schedule::EveryDecodeSteps))
                .collect()
        };
        for schedule in schedules {
            let config = ReplayConfig::new(ReplayPolicy::Pool(policy), slots, schedule, InitialPlacement::Warm, cost);
            let time =
                replay(trace, &config).map_err(|e| CudaError::Residency(format!("replay: {e}")))?.total.modeled_time_s;
            if best.is_none_or(|(t, _, _)| time < t) {
                best = Some((time, policy, schedule));
            }
        }
    }
    best.map(|(_, p, s)| (p, s)).ok_or_else(|| CudaError::Residency("no candidate".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_that_do_not_fit_say_how_many_would() {
        let gib = 1u64 << 30;
        assert!(check_fit(10 * gib, gib, 4, 2).is_ok());
        match check_fit(10 * gib, gib, 16, 2) {
            Err(CudaError::DoesNotFit { layer: None, needed, free, slots_that_fit }) => {
                assert_eq!((needed, free), (18 * gib, 10 * gib));
                assert_eq!(slots_that_fit, 7); // 10 GiB less 256 MiB, less 2 scratch slots
            }
            other => panic!("{other:?}"),
        }
        let message = check_fit(gib, gib, 1, 0).unwrap_err().to_string();
        assert!(message.contains("0 slots per layer would fit"), "{message}");
    }

    #[test]
    fn synthetic_traces_follow_synth() {
        let settings = SynthSettings { steps: 3, prefill_tokens: 2, ..SynthSettings::locality() };
        let trace = settings.trace().unwrap();
        let records = trace.records();
        assert_eq!(records.len(), 4 * 4); // prefill + 3 steps, 4 layers each
        assert!(records.iter().take(4).all(|r| r.prefill && r.step == 0 && trace.ids(r).len() == 16));
        assert!(records.iter().skip(4).all(|r| !r.prefill && trace.ids(r).len() == 8));
        // Layer l draws from SyntheticRouting seeded with seed + l, like `synth`.
        let mut layer1 = SyntheticRouting::new(
            RoutingShape { experts: 128, top_k: 8, zipf_s: 0.9, reuse: 0.5, phase_steps: 256 },
            settings.seed + 1,
        );
        let mut ids = Vec::new();
        layer1.step(2, &mut ids);
        assert_eq!(trace.ids(&records[1]), &ids[..]);
    }

    #[test]
    fn router_weights_sum_to_one_per_token() {
        let w = router_weights(2, 9, 16, 8);
        for token in w.chunks(8) {
            assert!((token.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            assert!(token.iter().all(|&v| v > 0.0));
        }
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }
}
