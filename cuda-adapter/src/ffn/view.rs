//! What the kernels read experts by: a layer's slots through its device slot table
//! ([`SlotView`]), and each pair's source ([`PairSource`]).

use expertslab::{ExpertLayout, ExpertSource, Projection, SlotArena};

use crate::arena::VramArena;
use crate::driver::Driver;
use crate::error::CudaError;
use crate::host::HostMemory;
use crate::reference::FfnShape;
use crate::sink::{CudaSlotSink, ScratchSlot};
use crate::table::TableView;

/// What the kernels read a layer's slots by: a slot arena in VRAM ([`VramArena`], the sink's)
/// and a device slot table ([`TableView`], the table's current buffer). Only built from those
/// two, so no kernel argument is an address a caller computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotView {
    /// Device address of slot 0 (the arena's base).
    pub(crate) slot_base: u64,
    /// Bytes between consecutive slots.
    pub(crate) slot_stride: u64,
    /// Offsets of gate, up and down inside a slot.
    pub(crate) offsets: [u64; 3],
    /// Device address of the slot table, `i32[experts]`.
    pub(crate) table: u64,
    /// Experts in the layer (the table's length).
    pub(crate) experts: u32,
}

impl SlotView {
    /// The slots of `vram` (laid out for experts of `layout`, which must hold gate, up and down
    /// projections of `shape`) read through `table`.
    ///
    /// # Errors
    /// [`CudaError::Layout`] when the layout lacks a projection, [`CudaError::Unsupported`] when
    /// a projection's shape or format is not the FFN's, or the table's length is not the
    /// layout's expert count.
    pub fn new<D: Driver>(
        shape: &FfnShape,
        layout: &ExpertLayout,
        vram: &VramArena<D>,
        table: TableView,
    ) -> Result<Self, CudaError> {
        if table.experts() as usize != layout.experts() {
            return Err(CudaError::Unsupported(format!(
                "a slot table of {} experts for a layout of {}",
                table.experts(),
                layout.experts()
            )));
        }
        Self::at(shape, layout, vram.arena(), vram.device_ptr(), table.device_ptr())
    }

    /// The view of an arena laid out by `arena` at `slot_base`, read through the table at
    /// `table`.
    fn at(
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
        for (offset, (projection, rows, cols, format)) in offsets.iter_mut().zip([
            (Projection::Gate, shape.ffn, shape.hidden, shape.format),
            (Projection::Up, shape.ffn, shape.hidden, shape.format),
            (Projection::Down, shape.hidden, shape.ffn, shape.down_format),
        ]) {
            let (index, stack) = layout.find(projection)?;
            if stack.rows() != rows || stack.cols() != cols || stack.format() != format {
                return Err(CudaError::Unsupported(format!(
                    "{} is {} × {} {}, the FFN needs {rows} × {cols} {}",
                    projection.name(),
                    stack.rows(),
                    stack.cols(),
                    stack.format().name(),
                    format.name()
                )));
            }
            *offset = one.projection_range(0, index)?.start as u64;
        }
        let experts = u32::try_from(layout.experts())
            .map_err(|_| CudaError::Unsupported(format!("{} experts", layout.experts())))?;
        Ok(Self { slot_base, slot_stride: arena.slot_stride() as u64, offsets, table, experts })
    }
}

/// The gate, up and down indexes of `layout`'s projections.
fn gate_up_down(layout: &ExpertLayout) -> Result<[usize; 3], CudaError> {
    Ok([layout.find(Projection::Gate)?.0, layout.find(Projection::Up)?.0, layout.find(Projection::Down)?.0])
}

/// Where the kernels read a pair's expert from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairSource {
    /// Through the slot table; the slot was filled before this step's copies.
    Resident,
    /// Through the slot table; the slot is filled by this step's copies.
    Promoted,
    /// From these device-visible addresses of gate, up and down: a scratch slot (filled by this
    /// step's copies: `after_copies`) or mapped host memory (zero-copy). Made by
    /// [`PairSource::scratch`] and [`PairSource::mapped`].
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
    /// Computed on the host: no kernel reads it; its output row is uploaded before the combine
    /// ([`crate::StepBuffers::upload_parts`]).
    Host,
    /// Split: gate and up computed on the host, their intermediate row uploaded
    /// ([`crate::StepBuffers::upload_h`]); down computed by the kernels from this address, a
    /// scratch slot's down projection filled by this step's copies. Made by
    /// [`PairSource::split`].
    Split {
        /// Down's address.
        down: u64,
    },
}

impl PairSource {
    /// A pair read from `slot`, a scratch slot `sink` filled for this step (after its copies),
    /// laid out by `layout`.
    ///
    /// # Errors
    /// [`CudaError::UnknownLayer`] when the sink has no such scratch region,
    /// [`CudaError::Layout`] when the slot or a projection is out of range.
    pub fn scratch<D: Driver>(
        sink: &CudaSlotSink<D>,
        layout: &ExpertLayout,
        slot: ScratchSlot,
    ) -> Result<Self, CudaError> {
        let vram = sink.scratch(slot.layer()).ok_or(CudaError::UnknownLayer { layer: slot.layer() })?;
        let [g, u, d] = gate_up_down(layout)?;
        let at = |p: usize| vram.slot_ptr(slot.index(), p);
        Ok(Self::Direct { gate: at(g)?, up: at(u)?, down: at(d)?, after_copies: true })
    }

    /// A split pair whose down projection `sink` copied into scratch slot `slot` for this step
    /// ([`CudaSlotSink::write_scratch_down`]), laid out by `layout`.
    ///
    /// # Errors
    /// As [`PairSource::scratch`].
    pub fn split<D: Driver>(
        sink: &CudaSlotSink<D>,
        layout: &ExpertLayout,
        slot: ScratchSlot,
    ) -> Result<Self, CudaError> {
        match Self::scratch(sink, layout, slot)? {
            Self::Direct { down, .. } => Ok(Self::Split { down }),
            other => Ok(other),
        }
    }

    /// A pair read over the bus (zero-copy) from expert `expert` of layer `layer` of `source`,
    /// whose slabs lie in host memory `host` registered (or adopted) for the device.
    ///
    /// # Errors
    /// [`CudaError::Unsupported`] when a slab is not in registered memory, or the source's error.
    pub fn mapped<D: Driver, S>(
        host: &HostMemory<D>,
        source: &S,
        layer: usize,
        expert: usize,
    ) -> Result<Self, CudaError>
    where
        S: ExpertSource + ?Sized,
        S::Error: Into<CudaError>,
    {
        let device = |projection: Projection| -> Result<u64, CudaError> {
            let slab = source.expert(layer, projection, expert).map_err(Into::into)?;
            host.device_ptr_of(slab).ok_or_else(|| {
                CudaError::Unsupported(format!(
                    "expert {expert} of layer {layer}: its {} slab is not in registered host memory",
                    projection.name()
                ))
            })
        };
        Ok(Self::Direct {
            gate: device(Projection::Gate)?,
            up: device(Projection::Up)?,
            down: device(Projection::Down)?,
            after_copies: false,
        })
    }

    pub(crate) fn after_copies(&self) -> bool {
        match self {
            Self::Resident | Self::Host => false,
            Self::Promoted | Self::Split { .. } => true,
            Self::Direct { after_copies, .. } => *after_copies,
        }
    }

    /// Whether the kernels compute the whole pair (gate, up and down: every source but
    /// [`PairSource::Host`] and [`PairSource::Split`]).
    pub(crate) fn on_device(&self) -> bool {
        !matches!(self, Self::Host | Self::Split { .. })
    }

    /// Whether the pair is split ([`PairSource::Split`]).
    pub(crate) fn split_pair(&self) -> bool {
        matches!(self, Self::Split { .. })
    }

    pub(crate) fn pointers(&self) -> [u64; 3] {
        match *self {
            Self::Resident | Self::Promoted | Self::Host => [0; 3],
            Self::Direct { gate, up, down, .. } => [gate, up, down],
            Self::Split { down } => [0, 0, down],
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
    /// Every pair the kernels compute whole (not the split pairs).
    All,
    /// Down of the split pairs ([`PairSource::Split`]), after their intermediate rows were
    /// uploaded; gate/up launches nothing for it.
    Split,
}

#[cfg(test)]
mod tests {
    use super::*;
    use expertslab::{Format, StackLayout};

    #[test]
    fn layer_offsets_come_from_the_arena() {
        let shape = FfnShape::new(64, 24, 2, Format::BF16);
        let gate = StackLayout::new(Format::BF16, 8, 24, 64).unwrap();
        let down = StackLayout::new(Format::BF16, 8, 64, 24).unwrap();
        let layout = ExpertLayout::gate_up_down(gate, gate, down).unwrap();
        let arena = SlotArena::new(&layout, 0, 256).unwrap();
        let layer = SlotView::at(&shape, &layout, &arena, 0x1000, 0x2000).unwrap();
        let m = 24 * 64 * 2;
        assert_eq!(layer.offsets, [0, m as u64, 2 * m as u64]); // 3072 is a multiple of 256
        assert_eq!(layer.slot_stride, 3 * m as u64);
        let arena = SlotArena::new(&layout, 3, 4096).unwrap();
        let layer = SlotView::at(&shape, &layout, &arena, 0x1000, 0x2000).unwrap();
        assert_eq!(layer.offsets, [0, 4096, 8192]);
        assert_eq!(layer.slot_stride, 3 * 4096);
        let wrong = FfnShape { ffn: 32, ..shape };
        assert!(matches!(SlotView::at(&wrong, &layout, &arena, 0, 0), Err(CudaError::Unsupported(_))));
        let no_down = ExpertLayout::new(&[(Projection::Gate, gate), (Projection::Up, gate)]).unwrap();
        assert!(matches!(SlotView::at(&shape, &no_down, &arena, 0, 0), Err(CudaError::Layout(_))));
    }
}
