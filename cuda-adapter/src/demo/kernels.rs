//! [`CudaKernels`]: the runner's [`Kernels`] on the GPU, the MoE FFN's launches with two step
//! buffers per layer.

use std::sync::Arc;

use cudarc::driver::CudaStream;

use super::router_weights;
use super::runner::Kernels;
use crate::driver::CudaDriver;
use crate::error::CudaError;
use crate::ffn::{MoeFfn, PairSource, Phase, SlotView, StepBuffers};

/// The MoE FFN's kernels as the runner launches them: two step buffers per layer, used in
/// turn, so a layer's next step is staged while its last one may still run.
pub(super) struct CudaKernels<'a> {
    ffn: &'a MoeFfn,
    buffers: Vec<[StepBuffers; 2]>,
    turn: Vec<usize>,
}

impl<'a> CudaKernels<'a> {
    pub(super) fn new(
        ffn: &'a MoeFfn,
        stream: &Arc<CudaStream>,
        layers: usize,
        max_tokens: usize,
    ) -> Result<Self, CudaError> {
        let buffers = (0..layers)
            .map(|_| Ok([ffn.step_buffers(stream, max_tokens)?, ffn.step_buffers(stream, max_tokens)?]))
            .collect::<Result<Vec<_>, CudaError>>()?;
        Ok(Self { ffn, buffers, turn: vec![0; layers] })
    }

    /// Layer `layer`'s buffers of this turn.
    fn current(&mut self, layer: usize) -> Result<&mut StepBuffers, CudaError> {
        let turn = self.turn.get(layer).copied().unwrap_or(0);
        self.buffers.get_mut(layer).and_then(|b| b.get_mut(turn)).ok_or(CudaError::UnknownLayer { layer })
    }
}

impl Kernels<CudaDriver> for CudaKernels<'_> {
    fn stage(
        &mut self,
        layer: usize,
        step: u64,
        ids: &[u32],
        sources: &[PairSource],
        stream: &Arc<CudaStream>,
    ) -> Result<(), CudaError> {
        let weights = router_weights(layer, step, ids.len(), self.ffn.shape().top_k);
        self.current(layer)?.stage(stream, ids, &weights, sources)
    }

    unsafe fn pairs(
        &mut self,
        layer: usize,
        phase: Phase,
        view: &SlotView,
        x: u64,
        y: u64,
        stream: &Arc<CudaStream>,
    ) -> Result<(), CudaError> {
        let ffn = self.ffn;
        let buffers = self.current(layer)?;
        // SAFETY: the caller upholds the launches' contract (this function's).
        unsafe {
            ffn.launch_gate_up(stream, view, buffers, x, phase)?;
            ffn.launch_down(stream, view, buffers, y, phase)
        }
    }

    fn upload_parts(
        &mut self,
        layer: usize,
        pairs: &[usize],
        parts: &[f32],
        stream: &Arc<CudaStream>,
    ) -> Result<(), CudaError> {
        self.current(layer)?.upload_parts(stream, pairs, parts)
    }

    fn upload_h(
        &mut self,
        layer: usize,
        pairs: &[usize],
        h: &[f32],
        stream: &Arc<CudaStream>,
    ) -> Result<(), CudaError> {
        self.current(layer)?.upload_h(stream, pairs, h)
    }

    unsafe fn combine(&mut self, layer: usize, y: u64, stream: &Arc<CudaStream>) -> Result<(), CudaError> {
        let ffn = self.ffn;
        // SAFETY: the caller upholds the launch's contract (this function's).
        unsafe { ffn.launch_combine(stream, self.current(layer)?, y)? };
        if let Some(turn) = self.turn.get_mut(layer) {
            *turn = 1 - *turn;
        }
        Ok(())
    }

    fn check(&mut self, stream: &Arc<CudaStream>) -> Result<(), CudaError> {
        for buffers in &mut self.buffers {
            for b in buffers {
                b.check_status(stream)?;
            }
        }
        Ok(())
    }
}
