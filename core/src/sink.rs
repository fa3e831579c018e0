//! Sinks: where expert bytes go. [`SlotSink`] writes one expert's slabs into a slot of memory the
//! caller owns; [`StackSink`] receives whole named stacks.

use crate::arena::SlotArena;
use crate::error::LayoutError;
use crate::layout::Projection;

/// Where one slab goes: projection number `index` (`projection`) of slot `slot` of layer `layer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SlotWrite {
    /// The layer.
    pub layer: usize,
    /// The slot within the layer.
    pub slot: usize,
    /// The projection.
    pub projection: Projection,
    /// The projection's position in the layer's [`crate::ExpertLayout`].
    pub index: usize,
}

/// Writes expert slabs into slots of caller-owned memory (an SRAM arena, a DMA region, device
/// memory behind a driver).
///
/// [`crate::migrate()`] calls [`SlotSink::write`] once per projection of a promotion, then
/// [`SlotSink::finish`], and commits the promotion only when both succeeded. A sink that copies
/// asynchronously (DMA) starts transfers in `write` and waits for them in `finish`.
///
/// # What "final" means for an asynchronous sink
///
/// A sink whose copies complete on another engine (a GPU's copy stream) may return `Ok` from
/// `finish` once the slot's copies are enqueued and a completion marker (an event) is recorded
/// after them, without waiting: the bytes are then final for every consumer ordered after that
/// marker, which is every consumer the sink lets read the slot. The pool commits at that point.
/// Such a sink reports copies that failed after `finish` at a later sync point, naming every slot
/// written since its last confirmed sync (errors of asynchronous copies are not tied to one
/// copy); the caller frees each of those slots with [`crate::ExpertPool::demote_slot`]. Then
/// every resident expert is known to be in its slot, the failed slots are free, and migrating
/// again converges.
pub trait SlotSink {
    /// Why a write failed.
    type Error;

    /// Writes `bytes` (one expert's slab of one projection) to `dest`.
    ///
    /// # Errors
    /// When the destination does not exist, `bytes` does not fit it, or the copy failed.
    fn write(&mut self, dest: SlotWrite, bytes: &[u8]) -> Result<(), Self::Error>;

    /// Completes every write into `slot` of `layer`; the slot's bytes are final when it returns
    /// `Ok` (for an asynchronous sink: final for every consumer ordered after the slot's
    /// completion marker, see the trait docs). The default has nothing to wait for.
    ///
    /// # Errors
    /// When a pending copy failed.
    fn finish(&mut self, layer: usize, slot: usize) -> Result<(), Self::Error> {
        let _ = (layer, slot);
        Ok(())
    }
}

impl<S: SlotSink + ?Sized> SlotSink for &mut S {
    type Error = S::Error;

    fn write(&mut self, dest: SlotWrite, bytes: &[u8]) -> Result<(), Self::Error> {
        (**self).write(dest, bytes)
    }

    fn finish(&mut self, layer: usize, slot: usize) -> Result<(), Self::Error> {
        (**self).finish(layer, slot)
    }
}

/// A sink over one layer's slot arena in a caller-provided byte buffer.
///
/// A slice `[ArenaSink]` is a sink for a whole model: layer `l` is element `l`.
#[derive(Debug)]
pub struct ArenaSink<'a> {
    arena: SlotArena,
    layer: usize,
    buffer: &'a mut [u8],
}

impl<'a> ArenaSink<'a> {
    /// A sink writing layer `layer`'s slots into `buffer` as `arena` lays them out.
    ///
    /// # Errors
    /// [`LayoutError::BufferTooSmall`] or [`LayoutError::BufferMisaligned`].
    pub fn new(arena: SlotArena, layer: usize, buffer: &'a mut [u8]) -> Result<Self, LayoutError> {
        arena.check_buffer(buffer)?;
        Ok(Self { arena, layer, buffer })
    }

    /// The arena's layout.
    pub fn arena(&self) -> &SlotArena {
        &self.arena
    }

    /// Projection number `index` of slot `slot`, as written so far.
    ///
    /// # Errors
    /// [`LayoutError::SlotOutOfRange`] or [`LayoutError::InvalidProjectionSet`].
    pub fn slab(&self, slot: usize, index: usize) -> Result<&[u8], LayoutError> {
        // The buffer was checked against the arena when the sink was built.
        let range = self.arena.projection_range(slot, index)?;
        self.buffer.get(range).ok_or(LayoutError::Overflow)
    }

    /// Gives the buffer back.
    pub fn into_buffer(self) -> &'a mut [u8] {
        self.buffer
    }
}

impl SlotSink for ArenaSink<'_> {
    type Error = LayoutError;

    fn write(&mut self, dest: SlotWrite, bytes: &[u8]) -> Result<(), LayoutError> {
        if dest.layer != self.layer {
            return Err(LayoutError::LayerOutOfRange { layer: dest.layer, layers: self.layer.saturating_add(1) });
        }
        // The buffer was checked against the arena when the sink was built.
        let slot = self.buffer.get_mut(self.arena.slot_range(dest.slot)?).ok_or(LayoutError::Overflow)?;
        self.arena.write_projection(slot, dest.index, bytes)
    }
}

impl<S: SlotSink> SlotSink for [S]
where
    S::Error: From<LayoutError>,
{
    type Error = S::Error;

    fn write(&mut self, dest: SlotWrite, bytes: &[u8]) -> Result<(), S::Error> {
        let layers = self.len();
        let sink = self.get_mut(dest.layer).ok_or(LayoutError::LayerOutOfRange { layer: dest.layer, layers })?;
        sink.write(dest, bytes)
    }

    fn finish(&mut self, layer: usize, slot: usize) -> Result<(), S::Error> {
        let layers = self.len();
        let sink = self.get_mut(layer).ok_or(LayoutError::LayerOutOfRange { layer, layers })?;
        sink.finish(layer, slot)
    }
}

/// Receives whole named stacks, for runtimes that take full parameters rather than slots.
pub trait StackSink {
    /// Why a stack could not be taken.
    type Error;

    /// Takes the whole stack of `projection` in layer `layer`, named `name` as GGUF names it
    /// (`blk.{layer}.ffn_{gate,up,down,gate_up}_exps.weight`, see [`crate::stack_name`]).
    ///
    /// # Errors
    /// When the runtime cannot take the stack.
    fn write_stack(
        &mut self,
        name: &str,
        layer: usize,
        projection: Projection,
        bytes: &[u8],
    ) -> Result<(), Self::Error>;
}
