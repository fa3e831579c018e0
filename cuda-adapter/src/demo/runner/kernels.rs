//! [`Kernels`]: what the runner launches for a layer's step, so the mock driver can stand in for
//! the GPU's kernels.

use crate::driver::Driver;
use crate::error::CudaError;
use crate::ffn::{PairSource, Phase, SlotView};

/// The MoE FFN's launches for a layer's step, on the runner's compute stream.
pub(crate) trait Kernels<D: Driver> {
    /// Stages `layer`'s step: its ids (`[tokens, top_k]`), the router's weights for `step`, and
    /// each pair's source.
    ///
    /// # Errors
    /// The kernels' or the driver's error.
    fn stage(
        &mut self,
        layer: usize,
        step: u64,
        ids: &[u32],
        sources: &[PairSource],
        stream: &D::Stream,
    ) -> Result<(), CudaError>;

    /// Launches gate/up and down for the staged pairs of `phase`, reading slots through `view`
    /// and the input at `x`; down may also combine into `y` (`[tokens, hidden]` f32) when the
    /// step has no pairs on the host, which leaves [`Kernels::combine`] nothing to launch.
    ///
    /// # Errors
    /// The driver's error.
    ///
    /// # Safety
    /// `view`, the staged sources and `x` (`[tokens, hidden]` f32) are live device memory,
    /// ordered on `stream` after their writes and written by no other work while the launch
    /// runs; `y` is live device memory of the step's length, written by no other work meanwhile.
    unsafe fn pairs(
        &mut self,
        layer: usize,
        phase: Phase,
        view: &SlotView,
        x: u64,
        y: u64,
        stream: &D::Stream,
    ) -> Result<(), CudaError>;

    /// Launches the combine of the staged step into `y` (`[tokens, hidden]` f32).
    ///
    /// # Errors
    /// The driver's error.
    ///
    /// # Safety
    /// `y` is live device memory of the step's length, written by no other work meanwhile.
    unsafe fn combine(&mut self, layer: usize, y: u64, stream: &D::Stream) -> Result<(), CudaError>;

    /// Enqueues on `stream` the upload of host-computed outputs of the staged step: `parts`
    /// holds one `hidden`-long row per entry of `pairs` (pair indexes of the step). Before the
    /// combine.
    ///
    /// # Errors
    /// The kernels' or the driver's error.
    fn upload_parts(
        &mut self,
        layer: usize,
        pairs: &[usize],
        parts: &[f32],
        stream: &D::Stream,
    ) -> Result<(), CudaError>;

    /// Enqueues on `stream` the upload of the intermediate rows the host computed for the staged
    /// step's split pairs: `h` holds one `ffn`-long row per entry of `pairs`. Before
    /// [`Phase::Split`]'s launch.
    ///
    /// # Errors
    /// The kernels' or the driver's error.
    fn upload_h(&mut self, layer: usize, pairs: &[usize], h: &[f32], stream: &D::Stream) -> Result<(), CudaError>;

    /// Checks what the kernels reported (after the stream's work completed).
    ///
    /// # Errors
    /// [`CudaError::KernelStatus`] or the driver's error.
    fn check(&mut self, stream: &D::Stream) -> Result<(), CudaError>;
}
