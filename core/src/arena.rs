//! Slot arenas: `n` slots of one layer laid out inside a caller-provided byte buffer.
//!
//! A slot holds one expert's slab of every projection of the layer's [`ExpertLayout`], each
//! projection at an offset aligned to the arena's alignment; the slot stride is the slot's size
//! rounded up to that alignment, so every slot and every projection in it starts aligned when the
//! buffer does.

use core::ops::Range;

use heapless::Vec as FixedVec;

use crate::error::LayoutError;
use crate::layout::{align_up, ExpertLayout, MAX_PROJECTIONS};

/// Where each slot of one layer, and each projection within it, lives in a byte buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SlotArena {
    /// Offset and length of each projection within a slot.
    projections: FixedVec<(usize, usize), MAX_PROJECTIONS>,
    slots: usize,
    align: usize,
    slot_stride: usize,
    total_bytes: usize,
}

impl SlotArena {
    /// An arena of `slots` slots for experts of `layout`, every projection aligned to `align`
    /// bytes (a power of two; 1 for none, 16 or 64 for SIMD and DMA engines).
    ///
    /// # Errors
    /// [`LayoutError::AlignmentNotPowerOfTwo`], or [`LayoutError::Overflow`] when the arena's
    /// size does not fit `usize`. Zero slots is allowed (a layer served from slow memory only).
    pub fn new(layout: &ExpertLayout, slots: usize, align: usize) -> Result<Self, LayoutError> {
        let mut projections = FixedVec::new();
        let mut offset = 0usize;
        for (_, stack) in layout.projections() {
            offset = align_up(offset, align)?;
            // The layout holds at most MAX_PROJECTIONS projections, the capacity of this list.
            projections.push((offset, stack.expert_bytes())).map_err(|_| LayoutError::InvalidProjectionSet)?;
            offset = offset.checked_add(stack.expert_bytes()).ok_or(LayoutError::Overflow)?;
        }
        let slot_stride = align_up(offset, align)?;
        let total_bytes = slot_stride.checked_mul(slots).ok_or(LayoutError::Overflow)?;
        Ok(Self { projections, slots, align, slot_stride, total_bytes })
    }

    /// Number of slots.
    pub const fn slots(&self) -> usize {
        self.slots
    }

    /// Alignment of every slot and projection, in bytes.
    pub const fn align(&self) -> usize {
        self.align
    }

    /// Bytes between the starts of two consecutive slots.
    pub const fn slot_stride(&self) -> usize {
        self.slot_stride
    }

    /// Bytes the buffer must hold.
    pub const fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    /// Number of projections per slot.
    pub fn projections(&self) -> usize {
        self.projections.len()
    }

    /// The byte range of slot `slot` in the buffer.
    ///
    /// # Errors
    /// [`LayoutError::SlotOutOfRange`] when `slot >= slots`.
    pub fn slot_range(&self, slot: usize) -> Result<Range<usize>, LayoutError> {
        if slot >= self.slots {
            return Err(LayoutError::SlotOutOfRange { slot, slots: self.slots });
        }
        #[allow(clippy::arithmetic_side_effects, reason = "slot < slots, and slots × stride fits (checked in `new`)")]
        let range = slot * self.slot_stride..(slot + 1) * self.slot_stride;
        Ok(range)
    }

    /// The byte range of projection `index` (its position in the layout) of slot
    /// `slot` in the buffer.
    ///
    /// # Errors
    /// [`LayoutError::SlotOutOfRange`], or [`LayoutError::InvalidProjectionSet`] when the layout
    /// has fewer projections.
    pub fn projection_range(&self, slot: usize, index: usize) -> Result<Range<usize>, LayoutError> {
        let slot_start = self.slot_range(slot)?.start;
        let &(offset, len) = self.projections.get(index).ok_or(LayoutError::InvalidProjectionSet)?;
        #[allow(clippy::arithmetic_side_effects, reason = "the projection lies inside the slot, whose end fits")]
        let range = slot_start + offset..slot_start + offset + len;
        Ok(range)
    }

    /// Checks that `buffer` is large enough and starts aligned.
    ///
    /// # Errors
    /// [`LayoutError::BufferTooSmall`] or [`LayoutError::BufferMisaligned`].
    pub fn check_buffer(&self, buffer: &[u8]) -> Result<(), LayoutError> {
        if buffer.len() < self.total_bytes {
            return Err(LayoutError::BufferTooSmall { needed: self.total_bytes, actual: buffer.len() });
        }
        if !buffer.as_ptr().addr().is_multiple_of(self.align) {
            return Err(LayoutError::BufferMisaligned { align: self.align });
        }
        Ok(())
    }

    /// The part of `buffer` the arena can use: from its first byte aligned to the arena's
    /// alignment, `total_bytes` long. Lets an arena live in any byte buffer (a `static`, a `Vec<u8>`
    /// with `align - 1` spare bytes) without an aligned element type.
    ///
    /// # Errors
    /// [`LayoutError::BufferTooSmall`] when what is left after aligning is too short.
    pub fn fit<'a>(&self, buffer: &'a mut [u8]) -> Result<&'a mut [u8], LayoutError> {
        let range = self.fit_range(buffer)?;
        buffer.get_mut(range).ok_or(LayoutError::Overflow)
    }

    /// [`SlotArena::fit`] for reading.
    ///
    /// # Errors
    /// As [`SlotArena::fit`].
    pub fn fit_ref<'a>(&self, buffer: &'a [u8]) -> Result<&'a [u8], LayoutError> {
        let range = self.fit_range(buffer)?;
        buffer.get(range).ok_or(LayoutError::Overflow)
    }

    fn fit_range(&self, buffer: &[u8]) -> Result<Range<usize>, LayoutError> {
        let actual = buffer.len();
        let skip = buffer.as_ptr().align_offset(self.align);
        let needed = skip.checked_add(self.total_bytes).ok_or(LayoutError::Overflow)?;
        if needed > actual {
            return Err(LayoutError::BufferTooSmall { needed, actual });
        }
        Ok(skip..needed)
    }

    /// Writes `bytes` as projection `index` of one slot, given as that slot's bytes
    /// (a chunk of [`SlotArena::slot_stride`] bytes of the buffer).
    ///
    /// # Errors
    /// [`LayoutError::InvalidProjectionSet`] for a projection the layout lacks,
    /// [`LayoutError::LengthMismatch`] when `bytes` is not the projection's length,
    /// [`LayoutError::BufferTooSmall`] when `slot` is shorter than the projection's end.
    pub fn write_projection(&self, slot: &mut [u8], index: usize, bytes: &[u8]) -> Result<(), LayoutError> {
        let &(offset, len) = self.projections.get(index).ok_or(LayoutError::InvalidProjectionSet)?;
        if bytes.len() != len {
            return Err(LayoutError::LengthMismatch { expected: len, actual: bytes.len() });
        }
        let actual = slot.len();
        let end = offset.checked_add(len).ok_or(LayoutError::Overflow)?;
        let out = slot.get_mut(offset..end).ok_or(LayoutError::BufferTooSmall { needed: end, actual })?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    /// Projection `index` of slot `slot` within `buffer`.
    ///
    /// # Errors
    /// As [`SlotArena::check_buffer`] and [`SlotArena::projection_range`].
    pub fn projection_bytes<'a>(&self, buffer: &'a [u8], slot: usize, index: usize) -> Result<&'a [u8], LayoutError> {
        self.check_buffer(buffer)?;
        let range = self.projection_range(slot, index)?;
        buffer.get(range).ok_or(LayoutError::Overflow)
    }

    /// Projection `index` of slot `slot` within `buffer`, writable.
    ///
    /// # Errors
    /// As [`SlotArena::projection_bytes`].
    pub fn projection_bytes_mut<'a>(
        &self,
        buffer: &'a mut [u8],
        slot: usize,
        index: usize,
    ) -> Result<&'a mut [u8], LayoutError> {
        self.check_buffer(buffer)?;
        let range = self.projection_range(slot, index)?;
        buffer.get_mut(range).ok_or(LayoutError::Overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Format;
    use crate::layout::StackLayout;

    fn layout() -> ExpertLayout {
        let gate = StackLayout::new(Format::F32, 8, 3, 2).unwrap(); // 24 B per expert
        let down = StackLayout::new(Format::I8, 8, 2, 5).unwrap(); // 10 B per expert
        ExpertLayout::new(&[(crate::Projection::Gate, gate), (crate::Projection::Down, down)]).unwrap()
    }

    #[test]
    fn projections_and_slots_are_aligned() {
        let a = SlotArena::new(&layout(), 3, 16).unwrap();
        assert_eq!(a.slot_stride(), 48); // 24 → 32, +10 = 42 → 48
        assert_eq!(a.total_bytes(), 144);
        assert_eq!(a.projection_range(1, 0), Ok(48..72));
        assert_eq!(a.projection_range(1, 1), Ok(80..90));
        assert_eq!(a.projection_range(3, 0), Err(LayoutError::SlotOutOfRange { slot: 3, slots: 3 }));
        assert_eq!(a.projection_range(0, 2), Err(LayoutError::InvalidProjectionSet));
        let packed = SlotArena::new(&layout(), 3, 1).unwrap();
        assert_eq!(packed.slot_stride(), 34);
        assert!(matches!(SlotArena::new(&layout(), 3, 12), Err(LayoutError::AlignmentNotPowerOfTwo { align: 12 })));
        assert_eq!(SlotArena::new(&layout(), usize::MAX, 16), Err(LayoutError::Overflow));
    }

    #[test]
    fn buffers_are_checked() {
        let a = SlotArena::new(&layout(), 2, 8).unwrap();
        let mut backing = [0u64; 16]; // 128 bytes, 8-aligned
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut backing);
        assert!(a.check_buffer(bytes).is_ok());
        assert_eq!(
            a.check_buffer(&bytes[..a.total_bytes() - 1]),
            Err(LayoutError::BufferTooSmall { needed: 80, actual: 79 })
        );
        assert_eq!(a.check_buffer(&bytes[1..]), Err(LayoutError::BufferMisaligned { align: 8 }));
        let unaligned = &mut bytes[3..];
        let fitted = a.fit(unaligned).unwrap();
        assert_eq!((fitted.len(), fitted.as_ptr().addr() % 8), (80, 0));
        assert!(a.check_buffer(fitted).is_ok());
        assert_eq!(a.fit(&mut bytes[3..85]).unwrap_err(), LayoutError::BufferTooSmall { needed: 85, actual: 82 });
        assert_eq!(a.fit_ref(&bytes[3..]).unwrap().len(), 80);
        let slot = &mut bytes[..a.slot_stride()];
        a.write_projection(slot, 1, &[5; 10]).unwrap();
        assert_eq!(&slot[24..34], &[5; 10]);
        assert_eq!(a.write_projection(slot, 1, &[5; 9]), Err(LayoutError::LengthMismatch { expected: 10, actual: 9 }));
        assert_eq!(a.write_projection(slot, 2, &[5; 10]), Err(LayoutError::InvalidProjectionSet));
        assert!(matches!(a.write_projection(&mut [0; 20], 1, &[5; 10]), Err(LayoutError::BufferTooSmall { .. })));
        a.projection_bytes_mut(bytes, 1, 1).unwrap().fill(9);
        assert_eq!(&bytes[64..74], &[9u8; 10]);
        assert_eq!(a.projection_bytes(bytes, 1, 1).unwrap(), &[9u8; 10]);
    }
}
