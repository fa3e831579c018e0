//! The GPU MoE FFN for decode and small batches: launches the kernels of
//! [`kernels`] on a compute stream.
//!
//! A layer is read through a [`SlotView`], built from the sink's VRAM arena and the device slot
//! table's current buffer (`i32[experts]`: [`crate::NOT_RESIDENT`] or the slot index), so no
//! kernel argument is an address a caller computed. A step is described by the router's ids
//! and weights and, for each (token, k) pair, a [`PairSource`]: through the table, or for a miss
//! from a scratch slot the sink filled ([`PairSource::scratch`]) or from registered host memory
//! read over the bus ([`PairSource::mapped`], zero-copy). Which miss action a miss gets is the
//! host's choice, by a [`MissRule`] from costs measured at start-up.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | [`MoeFfn`]: the compiled kernels and their launches |
//! | `view.rs` | [`SlotView`], [`PairSource`], [`Phase`] |
//! | `miss.rs` | [`MissAction`], [`MissRule`], [`MissCosts`] |
//! | `buffers.rs` | [`StepBuffers`] |
//!
//! The output does not depend on where the weights were read from: the kernels give every
//! lane the same elements in the same order and reduce in the same order wherever the bytes
//! are, so a step computed from slots, scratch slots and mapped host memory is bit-identical to
//! the same step with every expert resident.
//!
//! Ordering: a step's gate/up and down work is launched in two phases ([`Phase::BeforeCopies`]
//! for pairs whose weights are in place before the step's copies, [`Phase::AfterCopies`] for
//! the others, once the compute stream waits on the copies), so copies overlap the compute of
//! resident experts; split pairs ([`PairSource::Split`]) take a third down launch
//! ([`Phase::Split`]) after their intermediate rows were uploaded; then
//! [`MoeFfn::launch_combine`] sums each token's pairs in k order. When every pair of a step is
//! computed whole on the device (none on the host, none split), the down launches do that sum
//! themselves (the last block to finish a row tile of a token combines it), one launch less per
//! layer step. On Hopper and later, a down launch that follows its gate/up is a programmatic
//! dependent of it ([`kernels::dependent_launch`]): its blocks are placed and look up their
//! rows while the gate/up finishes, and wait for it before they read the intermediate rows, which
//! takes the gap between the two launches off each phase (8–9% of the all-resident time per token
//! on an H100, BENCHMARKS.md).
//! [`MoeFfn::record_reads`] records the event after which no kernel of the step reads a slot
//! (for the copy stream to wait on before overwriting one: write-after-read).

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use expertslab::Format;

use crate::error::CudaError;
use crate::kernels;
use crate::reference::FfnShape;

mod buffers;
mod miss;
mod view;

pub use buffers::StepBuffers;
pub use miss::{MissAction, MissCosts, MissRule};
pub use view::{PairSource, Phase, SlotView};

/// The kernels' view of a layer (`LayerArgs` in the source).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerArgs {
    slot_base: u64,
    slot_stride: u64,
    proj_offset: [u64; 3],
    table: u64,
    experts: i32,
}

/// The kernels' view of a step (`StepArgs` in the source).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepArgs {
    pub(crate) ids: u64,
    pub(crate) weights: u64,
    pub(crate) miss: u64,
    pub(crate) x: u64,
    pub(crate) h: u64,
    pub(crate) part: u64,
    pub(crate) y: u64,
    pub(crate) status: u64,
    pub(crate) tokens: i32,
    pub(crate) top_k: i32,
    pub(crate) hidden: i32,
    pub(crate) ffn: i32,
    pub(crate) counts: u64,
    pub(crate) fused: i32,
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
    /// Threads per block of gate/up and of down ([`kernels::block_threads`]).
    threads: [u32; 2],
    /// Down launched as a programmatic dependent of the gate/up before it
    /// ([`kernels::dependent_launch`]).
    dependent_down: bool,
}

impl MoeFfn {
    /// Compiles the kernels for `ctx`'s device and loads them.
    ///
    /// # Errors
    /// [`CudaError::Unsupported`] for a shape the kernels do not take (formats other than F32,
    /// BF16, Q8_0, Q4_K and Q6_K, widths not whole blocks, zero or over-large sizes, a block
    /// format whose quantized activations need over 48 KiB of shared memory: widths over 35,746,
    /// or 29,416 for Q8_0, whose eight warps a block stage rows there too), a kernel source
    /// whose block size is not whole warps dividing 16 rows, [`CudaError::NoNvrtc`],
    /// [`CudaError::Compile`], [`CudaError::Driver`].
    pub fn new(ctx: &Arc<CudaContext>, shape: FfnShape) -> Result<Self, CudaError> {
        shape.expert_bytes()?;
        let fits = |n: usize| n > 0 && i32::try_from(n).is_ok();
        if !fits(shape.hidden) || !fits(shape.ffn) || !fits(shape.top_k) {
            return Err(CudaError::Unsupported(format!("shape {shape:?}")));
        }
        let arch = ctx.compute_capability()?;
        let module = ctx.load_module(kernels::compile(arch)?)?;
        // One kernel per projection's format (a Q4_K_M file's down is Q6_K).
        let kernel = |format: Format| match format {
            Format::BF16 => (kernels::GATE_UP_BF16, kernels::DOWN_BF16),
            Format::Q8_0 => (kernels::GATE_UP_Q8_0, kernels::DOWN_Q8_0),
            Format::Q4_K => (kernels::GATE_UP_Q4_K, kernels::DOWN_Q4_K),
            Format::Q6_K => (kernels::GATE_UP_Q6_K, kernels::DOWN_Q6_K),
            _ => (kernels::GATE_UP_F32, kernels::DOWN_F32),
        };
        let (gate_up_name, down_name) = (kernel(shape.format).0, kernel(shape.down_format).1);
        let (gate_up, down) = (module.load_function(gate_up_name)?, module.load_function(down_name)?);
        let threads = [kernels::block_threads(&gate_up, gate_up_name)?, kernels::block_threads(&down, down_name)?];
        // A block format's launches quantize a row's activations into shared memory.
        for ((format, cols), threads) in
            [(shape.format, shape.hidden), (shape.down_format, shape.ffn)].into_iter().zip(threads)
        {
            if activation_smem(format, cols, threads / 32) > MAX_ACTIVATION_SMEM {
                return Err(CudaError::Unsupported(format!("{cols} {} activations per row", format.name())));
            }
        }
        let dependent_down = kernels::dependent_launch(arch);
        Ok(Self {
            shape,
            gate_up,
            down,
            combine: module.load_function(kernels::COMBINE)?,
            threads,
            module,
            dependent_down,
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
        layer: &SlotView,
        step: &StepBuffers,
        x: u64,
        phase: Phase,
    ) -> Result<(), CudaError> {
        if phase == Phase::Split {
            // Split pairs' gate and up are the host's.
            return Ok(());
        }
        // SAFETY: the caller upholds `launch_pairs`' contract (this function's).
        unsafe {
            let smem = activation_smem(self.shape.format, self.shape.hidden, self.threads[0] / 32);
            let args = step.args(&self.shape, x, 0);
            let kernel = (&self.gate_up, self.threads[0], false);
            self.launch_pairs(kernel, self.shape.ffn, smem, stream, layer, step, args, phase)
        }
    }

    /// Launches down on `stream` for the pairs of `phase`: each pair's `down · h` into the step's
    /// partial outputs. Launch after the same pairs' gate/up (for [`Phase::Split`], after
    /// [`StepBuffers::upload_h`] on the same stream). When every pair of the step is
    /// computed on the device ([`StepBuffers::fused`]), the down launches also combine each
    /// token's pairs into `y` (`[tokens, hidden]` f32), as [`MoeFfn::launch_combine`] would,
    /// and that launch has nothing left to do.
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
        layer: &SlotView,
        step: &StepBuffers,
        y: u64,
        phase: Phase,
    ) -> Result<(), CudaError> {
        // SAFETY: as in `launch_gate_up`.
        unsafe {
            let smem = activation_smem(self.shape.down_format, self.shape.ffn, self.threads[1] / 32);
            let args = step.args(&self.shape, 0, y);
            // A split phase's down follows the upload of h, not a gate/up: no kernel to overlap.
            let dependent = self.dependent_down && phase != Phase::Split;
            let kernel = (&self.down, self.threads[1], dependent);
            self.launch_pairs(kernel, self.shape.hidden, smem, stream, layer, step, args, phase)
        }
    }

    /// # Safety
    /// As [`MoeFfn::launch_gate_up`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch_pairs(
        &self,
        (function, threads, dependent): (&CudaFunction, u32, bool),
        rows: usize,
        smem: u32,
        stream: &CudaStream,
        layer: &SlotView,
        step: &StepBuffers,
        step_args: StepArgs,
        phase: Phase,
    ) -> Result<(), CudaError> {
        let (first, count) = match phase {
            Phase::BeforeCopies => (0, step.before),
            Phase::AfterCopies => (step.before, step.on_device - step.before),
            Phase::All => (0, step.on_device),
            Phase::Split => (step.on_device, step.split),
        };
        if count == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: ((rows as u32).div_ceil(kernels::ROWS_PER_BLOCK), count as u32, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: smem,
        };
        let layer_args = layer_args(layer);
        let pairs = step.order_ptr() + 4 * first as u64;
        if dependent {
            // SAFETY: as below; the kernel waits for the launch before it (`griddepcontrol.wait`)
            // before it reads anything that launch writes.
            return unsafe { launch_dependent(function, &cfg, stream, &layer_args, &step_args, pairs) };
        }
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

    /// Whether down launches are programmatic dependents of the gate/up before them
    /// ([`kernels::dependent_launch`]).
    pub const fn dependent_down(&self) -> bool {
        self.dependent_down
    }

    /// Launches the combine on `stream`: `y[token] = Σ_k weight · (down · h)` over the token's
    /// pairs in k order, written to `y` (`[tokens, hidden]` f32 at a device address). Launch
    /// after every down phase of the step (and the upload of the host's outputs). Nothing is
    /// launched when the down launches combined already ([`StepBuffers::fused`]).
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
        if step.tokens == 0 || step.fused() {
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
        layer: &SlotView,
        step: &StepBuffers,
        x: u64,
        y: u64,
    ) -> Result<(), CudaError> {
        // SAFETY: the caller upholds the launches' contract (this function's).
        unsafe {
            self.launch_gate_up(stream, layer, step, x, Phase::All)?;
            self.launch_down(stream, layer, step, y, Phase::All)?;
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

/// The most shared memory a launch quantizes its activations into: what every GPU the kernels
/// run on gives a block without opting in.
const MAX_ACTIVATION_SMEM: u32 = 48 << 10;

/// Bytes of shared memory a launch over rows of `cols` weights of `format` quantizes its
/// activations into (`act_smem` in the source): for a block format the activations' bytes, each
/// block of 32's f32 scale and each half-block's i32 sum, and for Q8_0 each of the block's
/// `warps` warps' staging of a row's pass of 32 blocks; none for F32 and BF16. Saturates.
fn activation_smem(format: Format, cols: usize, warps: u32) -> u32 {
    if !format.is_block_quantized() {
        return 0;
    }
    let stage = if format == Format::Q8_0 { warps as usize * 32 * 34 } else { 0 };
    let bytes = cols.saturating_add(cols / 32 * 12).saturating_add(stage);
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

fn layer_args(layer: &SlotView) -> LayerArgs {
    LayerArgs {
        slot_base: layer.slot_base,
        slot_stride: layer.slot_stride,
        proj_offset: layer.offsets,
        table: layer.table,
        experts: layer.experts.min(i32::MAX as u32) as i32,
    }
}

/// The device address of `slice` (kept alive by its owner; ordering is the caller's, on its
/// streams).
pub(crate) fn raw<T>(slice: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (ptr, _guard) = slice.device_ptr(stream);
    ptr
}

/// Launches a kernel of a step's pairs (down, after its gate/up) as a programmatic dependent
/// of the kernel launched before it on `stream`
/// (`CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION`): it may start before that kernel
/// finishes, and waits for it inside (`griddepcontrol.wait`). cudarc's
/// launch builder takes no launch attributes, so this calls `cuLaunchKernelEx` itself.
///
/// # Safety
/// As [`MoeFfn::launch_gate_up`]; and the kernel must read nothing the kernel before it writes,
/// and write nothing it reads, before its `griddepcontrol.wait`.
unsafe fn launch_dependent(
    function: &CudaFunction,
    cfg: &LaunchConfig,
    stream: &CudaStream,
    layer: &LayerArgs,
    step: &StepArgs,
    pairs: u64,
) -> Result<(), CudaError> {
    use cudarc::driver::sys;
    stream.context().bind_to_thread()?;
    // SAFETY: an all-zero launch attribute value is a valid value of every member.
    let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
    value.programmaticStreamSerializationAllowed = 1;
    let mut attribute = sys::CUlaunchAttribute {
        id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
        pad: [0; 4],
        value,
    };
    let config = sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: stream.cu_stream(),
        attrs: &mut attribute,
        numAttrs: 1,
    };
    // The kernel's three parameters, each by the address of its value (the driver copies them
    // before the call returns).
    let mut params: [*mut std::ffi::c_void; 3] = [
        std::ptr::from_ref(layer).cast_mut().cast(),
        std::ptr::from_ref(step).cast_mut().cast(),
        std::ptr::from_ref(&pairs).cast_mut().cast(),
    ];
    // SAFETY: `config` and `params` live across the call; the parameters match the kernel's
    // signature (two structs by value and a device address); the caller upholds the rest.
    unsafe { sys::cuLaunchKernelEx(&config, function.cu_function(), params.as_mut_ptr(), std::ptr::null_mut()) }
        .result()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_formats_quantize_their_activations_into_shared_memory() {
        // The bytes, a scale and two half-block sums per 32, and Q8_0's staging (8 warps × 32
        // blocks of 34 bytes).
        assert_eq!(activation_smem(Format::BF16, 2048, 8), 0);
        assert_eq!(activation_smem(Format::F32, 2048, 8), 0);
        assert_eq!(activation_smem(Format::Q4_K, 2048, 16), 2048 + 64 * 12);
        assert_eq!(activation_smem(Format::Q6_K, 768, 16), 768 + 24 * 12);
        assert_eq!(activation_smem(Format::Q8_0, 2048, 8), 2048 + 64 * 12 + 8704);
        assert_eq!(activation_smem(Format::Q8_0, 2048, 16), 2048 + 64 * 12 + 17_408);
        assert!(activation_smem(Format::Q4_K, 35_584, 16) <= MAX_ACTIVATION_SMEM);
        assert!(activation_smem(Format::Q4_K, 35_840, 16) > MAX_ACTIVATION_SMEM);
        assert!(activation_smem(Format::Q8_0, 29_408, 8) <= MAX_ACTIVATION_SMEM);
        assert!(activation_smem(Format::Q8_0, 29_440, 8) > MAX_ACTIVATION_SMEM);
        assert!(activation_smem(Format::Q8_0, 23_072, 16) <= MAX_ACTIVATION_SMEM);
        assert!(activation_smem(Format::Q8_0, 23_104, 16) > MAX_ACTIVATION_SMEM);
        assert_eq!(activation_smem(Format::Q4_K, usize::MAX, 16), u32::MAX);
    }

    #[test]
    fn the_kernel_argument_structs_match_the_source() {
        // LayerArgs: 6 × u64 + i32, padded to 8; StepArgs: 8 × u64 + 4 × i32 + u64 + i32,
        // padded to 8.
        assert_eq!(size_of::<LayerArgs>(), 56);
        assert_eq!(size_of::<StepArgs>(), 96);
        assert!(kernels::MOE_FFN_SOURCE.contains("int ffn;\n    u64 counts;"));
        assert!(kernels::MOE_FFN_SOURCE.contains("u64 part;"));
        assert!(kernels::MOE_FFN_SOURCE.contains("u64 proj_offset[3];"));
    }
}
