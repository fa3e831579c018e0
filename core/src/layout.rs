//! Slab layout math: where each expert's bytes live inside a weight stack, and which projections
//! one expert of a layer needs.
//!
//! A [`StackLayout`] describes one projection of one MoE layer: a row-major `[experts, rows,
//! cols]` stack of one [`Format`], each expert a contiguous slab of `rows × row_bytes` bytes (GGUF's
//! `ne = [cols, rows, experts]`). An [`ExpertLayout`] groups the projections one expert needs
//! (gate, up and down; or a fused gate_up and down). All arithmetic is checked.

use core::ops::Range;

use heapless::Vec as FixedVec;

use crate::error::LayoutError;
use crate::format::Format;
pub use crate::projection::Projection;

/// The most projections one expert layout holds.
pub const MAX_PROJECTIONS: usize = 4;

/// The byte layout of one projection stack `[experts, rows, cols]` in one format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StackLayout {
    format: Format,
    experts: usize,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    expert_bytes: usize,
    total_bytes: usize,
}

impl StackLayout {
    /// The layout of `experts` matrices of `rows × cols` elements of `format`.
    ///
    /// # Errors
    /// [`LayoutError::ZeroDimension`] when a dimension is zero, [`LayoutError::NotWholeBlocks`] when
    /// `cols` is not a multiple of the format's block size, [`LayoutError::Overflow`] when a byte
    /// count does not fit `usize`.
    pub fn new(format: Format, experts: usize, rows: usize, cols: usize) -> Result<Self, LayoutError> {
        if experts == 0 || rows == 0 || cols == 0 {
            return Err(LayoutError::ZeroDimension);
        }
        let row_bytes = format.row_bytes(cols)?;
        let expert_bytes = row_bytes.checked_mul(rows).ok_or(LayoutError::Overflow)?;
        let total_bytes = expert_bytes.checked_mul(experts).ok_or(LayoutError::Overflow)?;
        Ok(Self { format, experts, rows, cols, row_bytes, expert_bytes, total_bytes })
    }

    /// The element format.
    pub const fn format(&self) -> Format {
        self.format
    }

    /// Number of experts (GGUF `ne[2]`).
    pub const fn experts(&self) -> usize {
        self.experts
    }

    /// Rows of one expert's matrix (GGUF `ne[1]`).
    pub const fn rows(&self) -> usize {
        self.rows
    }

    /// Columns, the contiguous dimension (GGUF `ne[0]`).
    pub const fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of one row.
    pub const fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// Bytes of one expert's slab: the stride between experts.
    pub const fn expert_bytes(&self) -> usize {
        self.expert_bytes
    }

    /// Bytes of the whole stack.
    pub const fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    /// The byte range of expert `expert`'s slab within the stack.
    ///
    /// # Errors
    /// [`LayoutError::ExpertOutOfRange`] when `expert >= experts`.
    pub fn expert_range(&self, expert: usize) -> Result<Range<usize>, LayoutError> {
        self.check_expert(expert)?;
        #[allow(
            clippy::arithmetic_side_effects,
            reason = "expert < experts, and experts × expert_bytes fits (checked in `new`)"
        )]
        let range = expert * self.expert_bytes..(expert + 1) * self.expert_bytes;
        Ok(range)
    }

    /// The byte range of rows `rows` of expert `expert` within the stack.
    ///
    /// # Errors
    /// [`LayoutError::ExpertOutOfRange`], or [`LayoutError::RowsOutOfRange`] when the range is
    /// reversed or reaches past the row count. An empty range is allowed.
    pub fn rows_range(&self, expert: usize, rows: Range<usize>) -> Result<Range<usize>, LayoutError> {
        let slab = self.expert_range(expert)?;
        if rows.start > rows.end || rows.end > self.rows {
            return Err(LayoutError::RowsOutOfRange { start: rows.start, end: rows.end, rows: self.rows });
        }
        #[allow(
            clippy::arithmetic_side_effects,
            reason = "rows.start <= rows.end <= rows, so both ends lie inside the slab"
        )]
        let range = slab.start + rows.start * self.row_bytes..slab.start + rows.end * self.row_bytes;
        Ok(range)
    }

    /// Checks that `stack` is exactly as long as the layout.
    ///
    /// # Errors
    /// [`LayoutError::LengthMismatch`] otherwise.
    pub fn check_stack(&self, stack: &[u8]) -> Result<(), LayoutError> {
        if stack.len() != self.total_bytes {
            return Err(LayoutError::LengthMismatch { expected: self.total_bytes, actual: stack.len() });
        }
        Ok(())
    }

    /// Expert `expert`'s slab within `stack`.
    ///
    /// # Errors
    /// [`LayoutError::LengthMismatch`] when `stack` is not the layout's length,
    /// [`LayoutError::ExpertOutOfRange`] when `expert >= experts`.
    pub fn expert_slab<'a>(&self, stack: &'a [u8], expert: usize) -> Result<&'a [u8], LayoutError> {
        self.check_stack(stack)?;
        let range = self.expert_range(expert)?;
        stack.get(range).ok_or(LayoutError::Overflow)
    }

    fn check_expert(&self, expert: usize) -> Result<(), LayoutError> {
        if expert >= self.experts {
            return Err(LayoutError::ExpertOutOfRange { expert, experts: self.experts });
        }
        Ok(())
    }
}

/// The projections one expert of a layer needs, in order, each with its stack layout.
///
/// All projections have the same expert count. A slot holds one expert's slab of every projection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ExpertLayout {
    projections: FixedVec<(Projection, StackLayout), MAX_PROJECTIONS>,
    expert_bytes: usize,
}

impl ExpertLayout {
    /// A layout of the given projections, in the order given.
    ///
    /// # Errors
    /// [`LayoutError::InvalidProjectionSet`] for an empty list, more than [`MAX_PROJECTIONS`], a
    /// repeated projection, or `GateUp` beside `Gate` or `Up`;
    /// [`LayoutError::ExpertCountMismatch`] when the stacks disagree on the expert count;
    /// [`LayoutError::Overflow`] when the bytes per expert overflow.
    pub fn new(projections: &[(Projection, StackLayout)]) -> Result<Self, LayoutError> {
        let first = projections.first().ok_or(LayoutError::InvalidProjectionSet)?;
        let list = FixedVec::from_slice(projections).map_err(|_| LayoutError::InvalidProjectionSet)?;
        let has = |p: Projection| projections.iter().filter(|(q, _)| *q == p).count();
        let repeated =
            [Projection::Gate, Projection::Up, Projection::Down, Projection::GateUp].iter().any(|&p| has(p) > 1);
        let fused_clash = has(Projection::GateUp) > 0 && (has(Projection::Gate) > 0 || has(Projection::Up) > 0);
        if repeated || fused_clash {
            return Err(LayoutError::InvalidProjectionSet);
        }
        let mut expert_bytes = 0usize;
        for (_, stack) in projections {
            if stack.experts() != first.1.experts() {
                return Err(LayoutError::ExpertCountMismatch { expected: first.1.experts(), actual: stack.experts() });
            }
            expert_bytes = expert_bytes.checked_add(stack.expert_bytes()).ok_or(LayoutError::Overflow)?;
        }
        Ok(Self { projections: list, expert_bytes })
    }

    /// Separate gate, up and down stacks, in that order.
    ///
    /// # Errors
    /// As [`ExpertLayout::new`].
    pub fn gate_up_down(gate: StackLayout, up: StackLayout, down: StackLayout) -> Result<Self, LayoutError> {
        Self::new(&[(Projection::Gate, gate), (Projection::Up, up), (Projection::Down, down)])
    }

    /// A fused gate_up stack and a down stack, in that order.
    ///
    /// # Errors
    /// As [`ExpertLayout::new`].
    pub fn fused(gate_up: StackLayout, down: StackLayout) -> Result<Self, LayoutError> {
        Self::new(&[(Projection::GateUp, gate_up), (Projection::Down, down)])
    }

    /// Number of experts.
    pub fn experts(&self) -> usize {
        self.projections.first().map_or(0, |(_, s)| s.experts())
    }

    /// Bytes one expert needs over all projections (without slot padding).
    pub const fn expert_bytes(&self) -> usize {
        self.expert_bytes
    }

    /// The projections and their stack layouts, in order.
    pub fn projections(&self) -> &[(Projection, StackLayout)] {
        &self.projections
    }

    /// The position and stack layout of `projection`.
    ///
    /// # Errors
    /// [`LayoutError::ProjectionMissing`] when the layout has no such projection.
    pub fn find(&self, projection: Projection) -> Result<(usize, &StackLayout), LayoutError> {
        self.projections
            .iter()
            .enumerate()
            .find(|(_, (p, _))| *p == projection)
            .map(|(i, (_, s))| (i, s))
            .ok_or(LayoutError::ProjectionMissing { projection })
    }

    /// The share of an expert's bytes that `projection` holds (0 for experts of no bytes):
    /// what a split miss copies when `projection` is down.
    ///
    /// # Errors
    /// [`LayoutError::ProjectionMissing`] when the layout has no such projection.
    pub fn share_of(&self, projection: Projection) -> Result<f64, LayoutError> {
        let bytes = self.find(projection)?.1.expert_bytes();
        Ok(if self.expert_bytes == 0 { 0.0 } else { bytes as f64 / self.expert_bytes as f64 })
    }
}

/// Rounds `value` up to a multiple of `align` (a power of two).
pub(crate) fn align_up(value: usize, align: usize) -> Result<usize, LayoutError> {
    if !align.is_power_of_two() {
        return Err(LayoutError::AlignmentNotPowerOfTwo { align });
    }
    #[allow(clippy::arithmetic_side_effects, reason = "align is a power of two, so at least 1")]
    let mask = align - 1;
    value.checked_add(mask).map(|v| v & !mask).ok_or(LayoutError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_stack(experts: usize, rows: usize, cols: usize) -> StackLayout {
        StackLayout::new(Format::F32, experts, rows, cols).unwrap()
    }

    #[test]
    fn ranges_of_a_small_stack() {
        let s = f32_stack(4, 3, 5);
        assert_eq!((s.row_bytes(), s.expert_bytes(), s.total_bytes()), (20, 60, 240));
        assert_eq!(s.expert_range(2), Ok(120..180));
        assert_eq!(s.rows_range(2, 1..3), Ok(140..180));
        assert_eq!(s.rows_range(1, 2..2), Ok(100..100));
        assert_eq!(s.expert_range(4), Err(LayoutError::ExpertOutOfRange { expert: 4, experts: 4 }));
        assert_eq!(s.rows_range(0, 2..4), Err(LayoutError::RowsOutOfRange { start: 2, end: 4, rows: 3 }));
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = s.rows_range(0, 2..1);
        assert!(reversed.is_err());
    }

    #[test]
    fn quantized_stack_follows_ggml() {
        // n_embd 4096, n_ff 14336, 8 experts in Q4_K: the worked example of the GGUF notes.
        let s = StackLayout::new(Format::Q4_K, 8, 14336, 4096).unwrap();
        assert_eq!(s.row_bytes(), 2304);
        assert_eq!(s.expert_bytes(), 33_030_144);
        assert_eq!(s.total_bytes(), 264_241_152);
    }

    #[test]
    fn bad_dimensions_are_errors() {
        assert_eq!(StackLayout::new(Format::F32, 0, 1, 1), Err(LayoutError::ZeroDimension));
        assert_eq!(StackLayout::new(Format::F32, 1, 0, 1), Err(LayoutError::ZeroDimension));
        assert_eq!(StackLayout::new(Format::F32, 1, 1, 0), Err(LayoutError::ZeroDimension));
        assert!(matches!(StackLayout::new(Format::Q4_0, 1, 1, 48), Err(LayoutError::NotWholeBlocks { .. })));
        assert_eq!(StackLayout::new(Format::F32, usize::MAX, 2, 2), Err(LayoutError::Overflow));
        assert_eq!(StackLayout::new(Format::F32, 2, usize::MAX / 4, 2), Err(LayoutError::Overflow));
    }

    #[test]
    fn slabs_check_the_stack_length() {
        let s = f32_stack(2, 1, 2);
        let bytes = [7u8; 16];
        assert_eq!(s.expert_slab(&bytes, 1), Ok(&bytes[8..16]));
        assert_eq!(s.expert_slab(&bytes[..15], 0), Err(LayoutError::LengthMismatch { expected: 16, actual: 15 }));
    }

    #[test]
    fn expert_layouts_validate_their_projections() {
        let a = f32_stack(4, 2, 2);
        let b = f32_stack(5, 2, 2);
        let l = ExpertLayout::gate_up_down(a, a, a).unwrap();
        assert_eq!((l.experts(), l.expert_bytes()), (4, 48));
        assert_eq!(l.find(Projection::Down).unwrap().0, 2);
        assert_eq!(l.find(Projection::GateUp), Err(LayoutError::ProjectionMissing { projection: Projection::GateUp }));
        assert_eq!(
            ExpertLayout::gate_up_down(a, b, a),
            Err(LayoutError::ExpertCountMismatch { expected: 4, actual: 5 })
        );
        assert_eq!(ExpertLayout::new(&[]), Err(LayoutError::InvalidProjectionSet));
        assert_eq!(
            ExpertLayout::new(&[(Projection::Down, a), (Projection::Down, a)]),
            Err(LayoutError::InvalidProjectionSet)
        );
        assert_eq!(
            ExpertLayout::new(&[(Projection::GateUp, a), (Projection::Gate, a)]),
            Err(LayoutError::InvalidProjectionSet)
        );
        let too_many = [(Projection::Gate, a); MAX_PROJECTIONS + 1];
        assert_eq!(ExpertLayout::new(&too_many), Err(LayoutError::InvalidProjectionSet));
        assert_eq!(ExpertLayout::fused(a, a).unwrap().expert_bytes(), 32);
    }

    #[test]
    fn align_up_checks_its_inputs() {
        assert_eq!(align_up(13, 8), Ok(16));
        assert_eq!(align_up(16, 8), Ok(16));
        assert_eq!(align_up(0, 64), Ok(0));
        assert_eq!(align_up(1, 3), Err(LayoutError::AlignmentNotPowerOfTwo { align: 3 }));
        assert_eq!(align_up(1, 0), Err(LayoutError::AlignmentNotPowerOfTwo { align: 0 }));
        assert_eq!(align_up(usize::MAX, 2), Err(LayoutError::Overflow));
    }
}
