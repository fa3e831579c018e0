//! Scratch slots: misses copied for one step without being admitted into the pool
//! ([`CudaSlotSink::write_scratch`], and down alone for a split miss).

use expertslab::{ExpertLayout, ExpertSource, Projection};

use super::CudaSlotSink;
use crate::driver::Driver;
use crate::error::CudaError;
use crate::host::CopyFailure;

/// A scratch slot this sink filled ([`CudaSlotSink::write_scratch`]): one expert of one step,
/// copied for that step's pairs without being admitted into the pool. Kernels read it through
/// [`crate::PairSource::scratch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScratchSlot {
    layer: usize,
    index: usize,
}

impl ScratchSlot {
    /// The scratch region's layer key ([`CudaSlotSink::add_scratch`]).
    pub const fn layer(&self) -> usize {
        self.layer
    }

    /// The slot inside the region.
    pub const fn index(&self) -> usize {
        self.index
    }
}

impl<D: Driver> CudaSlotSink<D> {
    /// Enqueues on the copy stream the copy of `expert` of layer `source_layer` (every
    /// projection of `layout`, from `source`) into scratch slot `index` of layer key `layer`,
    /// waiting first (on the device) for kernels that may still read that scratch slot. The
    /// bytes come as for slot writes: registered memory directly, others through the ring.
    /// Kernels that read the scratch slot must be ordered after the copy stream
    /// ([`CudaSlotSink::order_before`]).
    ///
    /// A copy that fails on the device is reported at the next sync, as for slots; the scratch
    /// slot is then not to be read (the pool is not involved: nothing to repair).
    ///
    /// # Errors
    /// [`CudaError::UnknownLayer`] without a scratch region for `layer`, [`CudaError::Layout`]
    /// for a slot out of range or slabs that do not match the region's layout,
    /// [`CudaError::Unconfirmed`] after an unreported failure, the source's error, or the
    /// driver's error.
    pub fn write_scratch<S>(
        &mut self,
        layer: usize,
        index: usize,
        layout: &ExpertLayout,
        source: &S,
        source_layer: usize,
        expert: usize,
    ) -> Result<ScratchSlot, CudaError>
    where
        S: ExpertSource + ?Sized,
        S::Error: Into<CudaError>,
    {
        self.write_scratch_of(layer, index, layout, source, source_layer, expert, |_| true)
    }

    /// As [`CudaSlotSink::write_scratch`], the down projection alone: what a split miss copies
    /// ([`crate::PairSource::Split`]; the host computes its gate and up). The slot's other
    /// projections are left as they were and are not to be read.
    ///
    /// # Errors
    /// As [`CudaSlotSink::write_scratch`].
    pub fn write_scratch_down<S>(
        &mut self,
        layer: usize,
        index: usize,
        layout: &ExpertLayout,
        source: &S,
        source_layer: usize,
        expert: usize,
    ) -> Result<ScratchSlot, CudaError>
    where
        S: ExpertSource + ?Sized,
        S::Error: Into<CudaError>,
    {
        self.write_scratch_of(layer, index, layout, source, source_layer, expert, |p| p == Projection::Down)
    }

    /// The projections of `layout` that `copied` selects, copied into a scratch slot.
    #[allow(clippy::too_many_arguments)]
    fn write_scratch_of<S>(
        &mut self,
        layer: usize,
        index: usize,
        layout: &ExpertLayout,
        source: &S,
        source_layer: usize,
        expert: usize,
        copied: impl Fn(Projection) -> bool,
    ) -> Result<ScratchSlot, CudaError>
    where
        S: ExpertSource + ?Sized,
        S::Error: Into<CudaError>,
    {
        if self.late.is_some() {
            return Err(CudaError::Unconfirmed);
        }
        let scratch = self.scratch.get(&layer).ok_or(CudaError::UnknownLayer { layer })?;
        let slots = scratch.read.len();
        if index >= slots {
            return Err(expertslab::LayoutError::SlotOutOfRange { slot: index, slots }.into());
        }
        if scratch.read.get(index).copied().unwrap_or(false) && self.fence_pending {
            self.wait_for_reads()?;
        }
        let mut bytes = 0u64;
        for (projection_index, &(projection, _)) in layout.projections().iter().enumerate() {
            if !copied(projection) {
                continue;
            }
            let slab = source.expert(source_layer, projection, expert).map_err(Into::into)?;
            let scratch = self.scratch.get(&layer).ok_or(CudaError::UnknownLayer { layer })?;
            let range = scratch.vram.arena().projection_range(index, projection_index)?;
            if slab.len() != range.len() {
                return Err(
                    expertslab::LayoutError::LengthMismatch { expected: range.len(), actual: slab.len() }.into()
                );
            }
            let dst = scratch.vram.slot_ptr(index, projection_index)?;
            // SAFETY: `dst..dst + slab.len()` is one projection of a scratch slot inside the
            // region's arena (checked above), which lives until the sink is dropped after a
            // device sync.
            match unsafe { self.host.copy(dst, slab, &self.copy) } {
                Ok(_) => {}
                Err(CopyFailure::Enqueue(e)) => return Err(e),
                Err(CopyFailure::Earlier(e)) => return Err(self.note_late_failure(e)),
            }
            bytes = bytes.saturating_add(slab.len() as u64);
        }
        self.stats.scratch_copies = self.stats.scratch_copies.saturating_add(1);
        self.stats.scratch_bytes = self.stats.scratch_bytes.saturating_add(bytes);
        Ok(ScratchSlot { layer, index })
    }
}
