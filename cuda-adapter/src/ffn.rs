//! The GPU MoE FFN for decode and small batches: launches the kernels of
//! [`kernels`] on a compute stream.
//!
//! The FFN depends on no sink type: it takes plain device addresses. A layer is described by
//! [`LayerSlots`] (the slot arena's base address and the core's [`SlotArena`] offsets, and the
//! device slot table `i32[experts]`: −1 not resident, the slot index otherwise). A step is
//! described by the router's ids and weights and, for each (token, k) pair, a [`PairSource`]:
//! through the table, or from explicit addresses for a miss (a scratch slot the host copied the
//! expert into, or registered host memory read over the bus: zero-copy). Which miss action a
//! miss gets is the host's choice, by a [`MissRule`] from costs measured at start-up.
//!
//! The output does not depend on where the weights were read from: the kernels give every
//! lane the same elements in the same order and reduce in the same order wherever the bytes
//! are, so a step computed from slots, scratch slots and mapped host memory is bit-identical to
//! the same step with every expert resident.
//!
//! Ordering: a step's gate/up and down work is launched in two phases ([`Phase::BeforeCopies`]
//! for pairs whose weights are in place before the step's copies, [`Phase::AfterCopies`] for
//! the others, once the compute stream waits on the copies), so copies overlap the compute of
//! resident experts; then [`MoeFfn::launch_combine`] sums each token's pairs in k order.
//! [`MoeFfn::record_reads`] records the event after which no kernel of the step reads a slot
//! (for the copy stream to wait on before overwriting one: write-after-read).

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig,
    PinnedHostSlice, PushKernelArg,
};
use expertslab::{ExpertLayout, Format, Projection, SlotArena};

use crate::error::CudaError;
use crate::kernels;
use crate::reference::FfnShape;

/// Where a layer's slots and slot table live on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSlots {
    /// Device address of slot 0 (the arena's base).
    pub slot_base: u64,
    /// Bytes between consecutive slots.
    pub slot_stride: u64,
    /// Offsets of gate, up and down inside a slot.
    pub offsets: [u64; 3],
    /// Device address of the slot table, `i32[experts]`.
    pub table: u64,
    /// Experts in the layer (the table's length).
    pub experts: u32,
}

impl LayerSlots {
    /// A layer laid out by `arena` for experts of `layout` (which must hold gate, up and down
    /// projections of `shape`), with its slots at `slot_base` and its table at `table`.
    ///
    /// # Errors
    /// [`CudaError::Layout`] when the layout lacks a projection, [`CudaError::Unsupported`] when
    /// a projection's shape or format is not the FFN's.
    pub fn new(
        shape: &FfnShape,
        layout: &ExpertLayout,
        arena: &SlotArena,
        slot_base: u64,
        table: u64,
    ) -> Result<Self, CudaError> {
        // Offsets inside a slot are the same for every arena of this layout and alignment; a
        // one-slot arena gives them even when this one has no slots.
        let one = SlotArena::new(layout, 1, arena.align())?;
        let mut offsets = [0u64; 3];
        for (offset, (projection, rows, cols)) in offsets.iter_mut().zip([
            (Projection::Gate, shape.ffn, shape.hidden),
            (Projection::Up, shape.ffn, shape.hidden),
            (Projection::Down, shape.hidden, shape.ffn),
        ]) {
            let (index, stack) = layout.find(projection)?;
            if stack.rows() != rows || stack.cols() != cols || stack.format() != shape.format {
                return Err(CudaError::Unsupported(format!(
                    "{} is {} × {} {}, the FFN needs {rows} × {cols} {}",
                    projection.name(),
                    stack.rows(),
                    stack.cols(),
                    stack.format().name(),
                    shape.format.name()
                )));
            }
            *offset = one.projection_range(0, index)?.start as u64;
        }
        let experts = u32::try_from(layout.experts())
            .map_err(|_| CudaError::Unsupported(format!("{} experts", layout.experts())))?;
        Ok(Self { slot_base, slot_stride: arena.slot_stride() as u64, offsets, table, experts })
    }

    /// The source of a pair whose expert was copied into the slot-shaped buffer at `base` (a
    /// scratch slot laid out like this layer's slots).
    pub const fn scratch(&self, base: u64) -> PairSource {
        PairSource::Direct {
            gate: base.wrapping_add(self.offsets[0]),
            up: base.wrapping_add(self.offsets[1]),
            down: base.wrapping_add(self.offsets[2]),
            after_copies: true,
        }
    }
}

/// Where the kernels read a pair's expert from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairSource {
    /// Through the slot table; the slot was filled before this step's copies.
    Resident,
    /// Through the slot table; the slot is filled by this step's copies.
    Promoted,
    /// From these device-visible addresses of gate, up and down: a scratch slot (filled by this
    /// step's copies: `after_copies`) or mapped host memory (zero-copy).
    Direct {
        /// Gate's address.
        gate: u64,
        /// Up's address.
        up: u64,
        /// Down's address.
        down: u64,
        /// Whether the bytes are written by this step's copies.
        after_copies: bool,
    },
}

impl PairSource {
    fn after_copies(&self) -> bool {
        match self {
            Self::Resident => false,
            Self::Promoted => true,
            Self::Direct { after_copies, .. } => *after_copies,
        }
    }

    fn pointers(&self) -> [u64; 3] {
        match *self {
            Self::Resident | Self::Promoted => [0; 3],
            Self::Direct { gate, up, down, .. } => [gate, up, down],
        }
    }
}

/// Which pairs a gate/up launch computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Pairs whose weights are in place before the step's copies.
    BeforeCopies,
    /// Pairs that read what the step's copies write.
    AfterCopies,
    /// Every pair.
    All,
}

/// What to do with a routed expert that is not resident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissAction {
    /// Copy it into a scratch slot on the copy stream, then compute from there.
    Copy,
    /// Read it straight from registered host memory over the bus.
    ZeroCopy,
}

/// Costs of one expert measured at start-up, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MissCosts {
    /// Copying the expert from page-locked host memory into a slot.
    pub copy: f64,
    /// Computing one pair with the expert in device memory.
    pub resident_pair: f64,
    /// Computing one pair reading the expert from host memory over the bus.
    pub zero_copy_pair: f64,
}

/// How the host picks a miss's action.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MissRule {
    /// Always this action.
    Always(MissAction),
    /// By measured costs: copy when `copy + uses × resident_pair < uses × zero_copy_pair` (the
    /// expert is copied once and then read from device memory by each of the step's `uses`
    /// pairs), read over the bus otherwise.
    Measured(MissCosts),
}

impl MissRule {
    /// The action for a missed expert used by `uses` pairs of the step.
    pub fn choose(&self, uses: usize) -> MissAction {
        match self {
            Self::Always(action) => *action,
            Self::Measured(c) => {
                let n = uses.max(1) as f64;
                if c.copy + n * c.resident_pair < n * c.zero_copy_pair {
                    MissAction::Copy
                } else {
                    MissAction::ZeroCopy
                }
            }
        }
    }
}

/// The kernels' view of a layer (`LayerArgs` in the source).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct LayerArgs {
    slot_base: u64,
    slot_stride: u64,
    proj_offset: [u64; 3],
    table: u64,
    experts: i32,
}

/// The kernels' view of a step (`StepArgs` in the source).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct StepArgs {
    ids: u64,
    weights: u64,
    miss: u64,
    x: u64,
    h: u64,
    part: u64,
    y: u64,
    status: u64,
    tokens: i32,
    top_k: i32,
    hidden: i32,
    ffn: i32,
}

// SAFETY: both are `#[repr(C)]` structs of integers whose field order, types and padding match
// the `LayerArgs` and `StepArgs` structs of `moe_ffn.cu`; the kernels take them by value.
unsafe impl DeviceRepr for LayerArgs {}
// SAFETY: as above.
unsafe impl DeviceRepr for StepArgs {}

/// The compiled MoE FFN kernels for one shape.
#[derive(Debug)]
pub struct MoeFfn {
    shape: FfnShape,
    module: Arc<CudaModule>,
    gate_up: CudaFunction,
    down: CudaFunction,
    combine: CudaFunction,
}

impl MoeFfn {
    /// Compiles the kernels for `ctx`'s device and loads them.
    ///
    /// # Errors
    /// [`CudaError::Unsupported`] for a shape the kernels do not take (formats other than F32
    /// and BF16, zero or over-large sizes), [`CudaError::NoNvrtc`], [`CudaError::Compile`],
    /// [`CudaError::Driver`].
    pub fn new(ctx: &Arc<CudaContext>, shape: FfnShape) -> Result<Self, CudaError> {
        shape.expert_bytes()?;
        let fits = |n: usize| n > 0 && i32::try_from(n).is_ok();
        if !fits(shape.hidden) || !fits(shape.ffn) || !fits(shape.top_k) {
            return Err(CudaError::Unsupported(format!("shape {shape:?}")));
        }
        let arch = ctx.compute_capability()?;
        let module = ctx.load_module(kernels::compile(arch)?)?;
        let (gate_up, down) = match shape.format {
            Format::BF16 => (kernels::GATE_UP_BF16, kernels::DOWN_BF16),
            _ => (kernels::GATE_UP_F32, kernels::DOWN_F32),
        };
        Ok(Self {
            shape,
            gate_up: module.load_function(gate_up)?,
            down: module.load_function(down)?,
            combine: module.load_function(kernels::COMBINE)?,
            module,
        })
    }

    /// The shape.
    pub const fn shape(&self) -> &FfnShape {
        &self.shape
    }

    /// The loaded module (for the demo's weight fill).
    pub(crate) fn module(&self) -> &Arc<CudaModule> {
        &self.module
    }

    /// Buffers for steps of up to `max_tokens` tokens, allocated on `stream`.
    ///
    /// # Errors
    /// [`CudaError::Unsupported`] for zero tokens, [`CudaError::Driver`].
    pub fn step_buffers(&self, stream: &Arc<CudaStream>, max_tokens: usize) -> Result<StepBuffers, CudaError> {
        StepBuffers::new(stream, &self.shape, max_tokens)
    }

    /// Launches gate/up on `stream` for the pairs of `phase` of the step staged in `step`:
    /// `h = SiLU(gate · x) ⊙ (up · x)` per pair, reading `x` (`[tokens, hidden]` f32 at a device
    /// address) and the weights through `layer`.
    ///
    /// # Errors
    /// [`CudaError::Driver`] when the launch fails.
    ///
    /// # Safety
    /// The addresses in `layer` (slots, table of `layer.experts` i32), in the step's pair
    /// sources, and `x`/`y` must be live device-accessible memory of the sizes the step needs
    /// (`[tokens, hidden]` f32 for `x` and `y`), written by no other work while the launch runs
    /// and ordered on `stream` after their writes.
    pub unsafe fn launch_gate_up(
        &self,
        stream: &CudaStream,
        layer: &LayerSlots,
        step: &StepBuffers,
        x: u64,
        phase: Phase,
    ) -> Result<(), CudaError> {
        // SAFETY: the caller upholds `launch_pairs`' contract (this function's).
        unsafe {
            self.launch_pairs(&self.gate_up, self.shape.ffn, stream, layer, step, step.args(&self.shape, x, 0), phase)
        }
    }

    /// Launches down on `stream` for the pairs of `phase`: each pair's `down · h` into the step's
    /// partial outputs. Launch after the same pairs' gate/up.
    ///
    /// # Errors
    /// [`CudaError::Driver`] when the launch fails.
    ///
    /// # Safety
    /// The addresses in `layer` (slots, table of `layer.experts` i32), in the step's pair
    /// sources, and `x`/`y` must be live device-accessible memory of the sizes the step needs
    /// (`[tokens, hidden]` f32 for `x` and `y`), written by no other work while the launch runs
    /// and ordered on `stream` after their writes.
    pub unsafe fn launch_down(
        &self,
        stream: &CudaStream,
        layer: &LayerSlots,
        step: &StepBuffers,
        phase: Phase,
    ) -> Result<(), CudaError> {
        // SAFETY: as in `launch_gate_up`.
        unsafe {
            self.launch_pairs(&self.down, self.shape.hidden, stream, layer, step, step.args(&self.shape, 0, 0), phase)
        }
    }

    /// # Safety
    /// As [`MoeFfn::launch_gate_up`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch_pairs(
        &self,
        function: &CudaFunction,
        rows: usize,
        stream: &CudaStream,
        layer: &LayerSlots,
        step: &StepBuffers,
        step_args: StepArgs,
        phase: Phase,
    ) -> Result<(), CudaError> {
        let (first, count) = match phase {
            Phase::BeforeCopies => (0, step.before),
            Phase::AfterCopies => (step.before, step.pairs - step.before),
            Phase::All => (0, step.pairs),
        };
        if count == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: ((rows as u32).div_ceil(kernels::ROWS_PER_BLOCK), count as u32, 1),
            block_dim: (kernels::BLOCK_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let layer_args = layer_args(layer);
        let pairs = step.order_ptr + 4 * first as u64;
        let mut launch = stream.launch_builder(function);
        launch.arg(&layer_args).arg(&step_args).arg(&pairs);
        // SAFETY: the arguments match the kernels' signature (two structs by value and a device
        // address of `count` i32 pair indices inside `step`'s block). Every address the kernel
        // reads was given by the caller for this step (valid by the callers' contract): `layer`'s slots and table, `step`'s
        // buffers (alive as long as `step`), `x`, and the pair sources' addresses; the kernel
        // checks expert ids against the table's length and skips pairs without a source. Gate/up
        // writes the pairs' rows of `h`, down reads them (launched after, on the same stream) and
        // writes the pairs' rows of the partial outputs.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// Launches the combine on `stream`: `y[token] = Σ_k weight · (down · h)` over the token's
    /// pairs in k order, written to `y` (`[tokens, hidden]` f32 at a device address). Launch
    /// after every down phase of the step.
    ///
    /// # Errors
    /// [`CudaError::Driver`] when the launch fails.
    ///
    /// # Safety
    /// The addresses in `layer` (slots, table of `layer.experts` i32), in the step's pair
    /// sources, and `x`/`y` must be live device-accessible memory of the sizes the step needs
    /// (`[tokens, hidden]` f32 for `x` and `y`), written by no other work while the launch runs
    /// and ordered on `stream` after their writes.
    pub unsafe fn launch_combine(&self, stream: &CudaStream, step: &StepBuffers, y: u64) -> Result<(), CudaError> {
        if step.tokens == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: ((self.shape.hidden as u32).div_ceil(kernels::BLOCK_THREADS), step.tokens as u32, 1),
            block_dim: (kernels::BLOCK_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let step_args = step.args(&self.shape, 0, y);
        let mut launch = stream.launch_builder(&self.combine);
        launch.arg(&step_args);
        // SAFETY: combine reads the router weights and the partial outputs of `step` and writes
        // `y`, `[tokens, hidden]` f32 given by the caller (valid by this function's contract).
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// The whole step on one stream: gate/up and down for every pair, then the combine. For
    /// steps whose copies the stream already waited on.
    ///
    /// # Errors
    /// As [`MoeFfn::launch_gate_up`].
    ///
    /// # Safety
    /// As [`MoeFfn::launch_gate_up`].
    pub unsafe fn launch(
        &self,
        stream: &CudaStream,
        layer: &LayerSlots,
        step: &StepBuffers,
        x: u64,
        y: u64,
    ) -> Result<(), CudaError> {
        // SAFETY: the caller upholds the launches' contract (this function's).
        unsafe {
            self.launch_gate_up(stream, layer, step, x, Phase::All)?;
            self.launch_down(stream, layer, step, Phase::All)?;
            self.launch_combine(stream, step, y)
        }
    }

    /// Records, on `stream`, the event after which the kernels launched so far no longer read
    /// any slot: a copy stream that waits on it may overwrite the slots they read.
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn record_reads(&self, stream: &CudaStream) -> Result<CudaEvent, CudaError> {
        Ok(stream.record_event(None)?)
    }
}

fn layer_args(layer: &LayerSlots) -> LayerArgs {
    LayerArgs {
        slot_base: layer.slot_base,
        slot_stride: layer.slot_stride,
        proj_offset: layer.offsets,
        table: layer.table,
        experts: layer.experts.min(i32::MAX as u32) as i32,
    }
}

/// A step's device buffers: the router's ids and weights, each pair's miss addresses, the
/// launch order of the pairs, the intermediate `h` and a status word, staged through one
/// page-locked host block and uploaded with one copy.
///
/// The host block is reused by the next [`StepBuffers::stage`], which first waits for the
/// previous upload: keep two per layer to stage a step while the last one runs.
#[derive(Debug)]
pub struct StepBuffers {
    max_pairs: usize,
    top_k: usize,
    tokens: usize,
    pairs: usize,
    before: usize,
    host: PinnedHostSlice<u64>,
    device: CudaSlice<u64>,
    device_ptr: u64,
    order_ptr: u64,
    h: CudaSlice<f32>,
    h_ptr: u64,
    _part: CudaSlice<f32>,
    part_ptr: u64,
    status: CudaSlice<u32>,
    status_ptr: u64,
    uploaded: Option<CudaEvent>,
}

/// Words of the staged block: miss addresses (3 per pair), then ids, weights and the pair order
/// (one 32-bit value per pair each, two to a word).
fn block_words(pairs: usize) -> usize {
    pairs * 3 + 3 * pairs.div_ceil(2)
}

impl StepBuffers {
    fn new(stream: &Arc<CudaStream>, shape: &FfnShape, max_tokens: usize) -> Result<Self, CudaError> {
        let max_pairs = max_tokens
            .checked_mul(shape.top_k)
            .filter(|&p| p > 0 && i32::try_from(p).is_ok())
            .ok_or_else(|| CudaError::Unsupported(format!("{max_tokens} tokens per step")))?;
        let words = block_words(max_pairs);
        let h_len = max_pairs
            .checked_mul(shape.ffn)
            .ok_or_else(|| CudaError::Unsupported(format!("{max_tokens} tokens per step")))?;
        let ctx = stream.context();
        // SAFETY: the block is written in full by `stage` before each upload reads it.
        let host = unsafe { ctx.alloc_pinned_with_flags::<u64>(words, 0) }?;
        let device = stream.alloc_zeros::<u64>(words)?;
        let h = stream.alloc_zeros::<f32>(h_len)?;
        let part_len = max_pairs
            .checked_mul(shape.hidden)
            .ok_or_else(|| CudaError::Unsupported(format!("{max_tokens} tokens per step")))?;
        let part = stream.alloc_zeros::<f32>(part_len)?;
        let part_ptr = raw(&part, stream);
        let status = stream.alloc_zeros::<u32>(1)?;
        let device_ptr = raw(&device, stream);
        let (h_ptr, status_ptr) = (raw(&h, stream), raw(&status, stream));
        Ok(Self {
            max_pairs,
            top_k: shape.top_k,
            tokens: 0,
            pairs: 0,
            before: 0,
            host,
            order_ptr: device_ptr + 8 * (max_pairs * 3 + 2 * max_pairs.div_ceil(2)) as u64,
            device,
            device_ptr,
            h,
            h_ptr,
            _part: part,
            part_ptr,
            status,
            status_ptr,
            uploaded: None,
        })
    }

    /// Pairs the buffers hold at most.
    pub const fn max_pairs(&self) -> usize {
        self.max_pairs
    }

    /// Stages a step on `stream`: `ids` and `weights` are `[tokens, top_k]`, token-major;
    /// `sources` gives each pair's source. Waits for this block's previous upload first.
    ///
    /// # Errors
    /// [`CudaError::Unsupported`] when the lengths disagree, a step is longer than the buffers,
    /// an id does not fit `i32`, or a direct source has a null address; [`CudaError::Driver`].
    pub fn stage(
        &mut self,
        stream: &CudaStream,
        ids: &[u32],
        weights: &[f32],
        sources: &[PairSource],
    ) -> Result<(), CudaError> {
        let pairs = ids.len();
        if pairs != weights.len() || pairs != sources.len() || !pairs.is_multiple_of(self.top_k) {
            return Err(CudaError::Unsupported("ids, weights and sources must be tokens × top_k long".into()));
        }
        if pairs > self.max_pairs {
            return Err(CudaError::Unsupported(format!("{pairs} pairs, the buffers hold {}", self.max_pairs)));
        }
        if ids.iter().any(|&id| i32::try_from(id).is_err())
            || sources.iter().any(|s| matches!(s, PairSource::Direct { .. }) && s.pointers().contains(&0))
        {
            return Err(CudaError::Unsupported("an id over i32::MAX or a null source address".into()));
        }
        if let Some(event) = self.uploaded.take() {
            event.synchronize()?;
        }
        let max = self.max_pairs;
        let half = max.div_ceil(2);
        let block = self.host.as_mut_slice()?;
        block.fill(0);
        let (miss, rest) = block.split_at_mut(max * 3);
        let (id_words, rest) = rest.split_at_mut(half);
        let (weight_words, order_words) = rest.split_at_mut(half);
        for (pair, source) in sources.iter().enumerate() {
            for (slot, p) in miss.iter_mut().skip(pair * 3).zip(source.pointers()) {
                *slot = p;
            }
        }
        let put = |words: &mut [u64], i: usize, v: u32| {
            if let Some(w) = words.get_mut(i / 2) {
                *w |= u64::from(v) << (32 * (i % 2));
            }
        };
        for (i, (&id, &w)) in ids.iter().zip(weights).enumerate() {
            put(id_words, i, id);
            put(weight_words, i, w.to_bits());
        }
        // Launch order: pairs in place before the copies first, then the others.
        let early = (0..pairs).filter(|&p| sources.get(p).is_some_and(|s| !s.after_copies()));
        let late = (0..pairs).filter(|&p| sources.get(p).is_some_and(PairSource::after_copies));
        for (i, p) in early.chain(late).enumerate() {
            put(order_words, i, p as u32);
        }
        self.before = sources.iter().filter(|s| !s.after_copies()).count();
        self.pairs = pairs;
        self.tokens = pairs / self.top_k;
        let (dst, _guard) = self.device.device_ptr(stream);
        // SAFETY: `dst` is this block's device allocation of `block_words(max_pairs)` words and
        // the source is the page-locked host block of the same length; it is not written again
        // until `uploaded` completes (waited on above at the next `stage`).
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, self.host.as_slice()?, stream.cu_stream()) }?;
        self.uploaded = Some(stream.record_event(None)?);
        Ok(())
    }

    fn args(&self, shape: &FfnShape, x: u64, y: u64) -> StepArgs {
        let max = self.max_pairs;
        let half = max.div_ceil(2) as u64;
        let ids = self.device_ptr + 8 * (max as u64 * 3);
        StepArgs {
            ids,
            weights: ids + 8 * half,
            miss: self.device_ptr,
            x,
            h: self.h_ptr,
            part: self.part_ptr,
            y,
            status: self.status_ptr,
            tokens: self.tokens as i32,
            top_k: shape.top_k as i32,
            hidden: shape.hidden as i32,
            ffn: shape.ffn as i32,
        }
    }

    /// Reads and clears the status word the kernels set for pairs they could not compute
    /// (synchronises `stream`).
    ///
    /// # Errors
    /// [`CudaError::KernelStatus`] when a kernel set it, [`CudaError::Driver`].
    pub fn check_status(&mut self, stream: &Arc<CudaStream>) -> Result<(), CudaError> {
        let status = stream.clone_dtoh(&self.status)?;
        stream.memset_zeros(&mut self.status)?;
        match status.first().copied().unwrap_or(0) {
            0 => Ok(()),
            bits => Err(CudaError::KernelStatus(bits)),
        }
    }

    /// The intermediate `h` of the last step, `[pairs, ffn]` (synchronises `stream`).
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn h(&self, stream: &Arc<CudaStream>) -> Result<Vec<f32>, CudaError> {
        Ok(stream.clone_dtoh(&self.h)?)
    }
}

/// The device address of `slice` (kept alive by its owner; ordering is the caller's, on its
/// streams).
pub(crate) fn raw<T>(slice: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (ptr, _guard) = slice.device_ptr(stream);
    ptr
}

#[cfg(test)]
mod tests {
    use super::*;
    use expertslab::StackLayout;

    #[test]
    fn the_miss_rule_weighs_one_copy_against_reads_over_the_bus() {
        // A 9 MiB expert: 180 µs to copy, 3 µs per pair from HBM, 200 µs per pair over the bus.
        let costs = MissCosts { copy: 180e-6, resident_pair: 3e-6, zero_copy_pair: 200e-6 };
        let rule = MissRule::Measured(costs);
        assert_eq!(rule.choose(1), MissAction::Copy); // 183 < 200
        let slow_copy = MissRule::Measured(MissCosts { copy: 400e-6, ..costs });
        assert_eq!(slow_copy.choose(1), MissAction::ZeroCopy); // 403 > 200
        assert_eq!(slow_copy.choose(3), MissAction::Copy); // 409 < 600: shared by three tokens
        assert_eq!(slow_copy.choose(0), MissAction::ZeroCopy); // counted as one use
        assert_eq!(MissRule::Always(MissAction::ZeroCopy).choose(100), MissAction::ZeroCopy);
        assert_eq!(MissRule::Always(MissAction::Copy).choose(1), MissAction::Copy);
    }

    #[test]
    fn layer_offsets_come_from_the_arena() {
        let shape = FfnShape { hidden: 64, ffn: 24, top_k: 2, format: Format::BF16 };
        let gate = StackLayout::new(Format::BF16, 8, 24, 64).unwrap();
        let down = StackLayout::new(Format::BF16, 8, 64, 24).unwrap();
        let layout = ExpertLayout::gate_up_down(gate, gate, down).unwrap();
        let arena = SlotArena::new(&layout, 0, 256).unwrap();
        let layer = LayerSlots::new(&shape, &layout, &arena, 0x1000, 0x2000).unwrap();
        let m = 24 * 64 * 2;
        assert_eq!(layer.offsets, [0, m as u64, 2 * m as u64]); // 3072 is a multiple of 256
        assert_eq!(layer.slot_stride, 3 * m as u64);
        let arena = SlotArena::new(&layout, 3, 4096).unwrap();
        let layer = LayerSlots::new(&shape, &layout, &arena, 0x1000, 0x2000).unwrap();
        assert_eq!(layer.offsets, [0, 4096, 8192]);
        assert_eq!(layer.slot_stride, 3 * 4096);
        assert_eq!(
            layer.scratch(1 << 20),
            PairSource::Direct { gate: 1 << 20, up: (1 << 20) + 4096, down: (1 << 20) + 8192, after_copies: true }
        );
        let wrong = FfnShape { ffn: 32, ..shape };
        assert!(matches!(LayerSlots::new(&wrong, &layout, &arena, 0, 0), Err(CudaError::Unsupported(_))));
        let no_down = ExpertLayout::new(&[(Projection::Gate, gate), (Projection::Up, gate)]).unwrap();
        assert!(matches!(LayerSlots::new(&shape, &no_down, &arena, 0, 0), Err(CudaError::Layout(_))));
    }

    #[test]
    fn the_kernel_argument_structs_match_the_source() {
        // LayerArgs: 6 × u64 + i32, padded to 8; StepArgs: 8 × u64 + 4 × i32.
        assert_eq!(size_of::<LayerArgs>(), 56);
        assert_eq!(size_of::<StepArgs>(), 80);
        assert!(kernels::MOE_FFN_SOURCE.contains("u64 part;"));
        assert!(kernels::MOE_FFN_SOURCE.contains("u64 proj_offset[3];"));
        assert_eq!(block_words(8), 24 + 12);
        assert_eq!(block_words(3), 9 + 6);
    }
}
