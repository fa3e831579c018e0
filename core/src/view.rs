//! Typed views of expert slabs through `bytemuck`: borrow when the bytes are aligned, copy when
//! they are not.
//!
//! Slabs inside model files are not guaranteed to be aligned for their element type (GGUF aligns
//! tensor starts, not expert slabs), so [`expert_as`] reports misalignment as an error and
//! [`copy_expert`] reads the same elements into a caller buffer whatever the alignment.

use bytemuck::{AnyBitPattern, NoUninit, PodCastError};

use crate::error::ViewError;
use crate::layout::StackLayout;

/// Reinterprets `bytes` as a slice of `T` without copying.
///
/// # Errors
/// [`ViewError::Misaligned`] when `bytes` does not start at `T`'s alignment,
/// [`ViewError::LengthMismatch`] when its length is not a multiple of `T`'s size.
pub fn cast_bytes<T: AnyBitPattern>(bytes: &[u8]) -> Result<&[T], ViewError> {
    bytemuck::try_cast_slice(bytes).map_err(|e| cast_error::<T>(e, bytes.len()))
}

/// Copies `bytes` into `out`, element by element, whatever the alignment of `bytes`.
///
/// # Errors
/// [`ViewError::LengthMismatch`] when `bytes` is not exactly `out`'s size in bytes.
pub fn copy_bytes<T: AnyBitPattern + NoUninit>(bytes: &[u8], out: &mut [T]) -> Result<(), ViewError> {
    let dst: &mut [u8] = bytemuck::cast_slice_mut(out);
    if dst.len() != bytes.len() {
        return Err(ViewError::LengthMismatch { bytes: bytes.len(), elem_size: core::mem::size_of::<T>() });
    }
    dst.copy_from_slice(bytes);
    Ok(())
}

/// Expert `expert`'s slab of `stack` (laid out by `layout`) as a slice of `T`, without copying.
///
/// `T` is either one element of a plain format (`f32` for `F32`, `u16` or a half type for `F16`
/// and `BF16`, `i8` for `I8`) or one whole block of a quantized format (`[u8; 144]` for `Q4_K`).
///
/// # Errors
/// [`ViewError::ElementSize`] when `T` fits neither, [`ViewError::Layout`] when the stack's
/// length or the expert index is wrong, [`ViewError::Misaligned`] when the slab does not start at
/// `T`'s alignment (use [`copy_expert`] then).
pub fn expert_as<'a, T: AnyBitPattern>(
    layout: &StackLayout,
    stack: &'a [u8],
    expert: usize,
) -> Result<&'a [T], ViewError> {
    check_element::<T>(layout)?;
    cast_bytes(layout.expert_slab(stack, expert)?)
}

/// Copies expert `expert`'s slab of `stack` into `out`, whatever its alignment.
///
/// # Errors
/// As [`expert_as`], except misalignment, and [`ViewError::LengthMismatch`] when `out` does not
/// hold exactly one slab.
pub fn copy_expert<T: AnyBitPattern + NoUninit>(
    layout: &StackLayout,
    stack: &[u8],
    expert: usize,
    out: &mut [T],
) -> Result<(), ViewError> {
    check_element::<T>(layout)?;
    copy_bytes(layout.expert_slab(stack, expert)?, out)
}

fn check_element<T>(layout: &StackLayout) -> Result<(), ViewError> {
    let block = layout.format().block();
    let size = core::mem::size_of::<T>();
    let one_element = block.elems() == 1 && size == block.bytes() as usize;
    let one_block = size == block.bytes() as usize;
    if one_element || one_block {
        Ok(())
    } else {
        Err(ViewError::ElementSize { elem_size: size, block_bytes: block.bytes() })
    }
}

fn cast_error<T>(e: PodCastError, len: usize) -> ViewError {
    match e {
        PodCastError::TargetAlignmentGreaterAndInputNotAligned | PodCastError::AlignmentMismatch => {
            ViewError::Misaligned { align: core::mem::align_of::<T>() }
        }
        PodCastError::OutputSliceWouldHaveSlop | PodCastError::SizeMismatch => {
            ViewError::LengthMismatch { bytes: len, elem_size: core::mem::size_of::<T>() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::LayoutError;
    use crate::format::Format;

    #[test]
    fn aligned_slabs_borrow_and_misaligned_slabs_copy() {
        let layout = StackLayout::new(Format::F32, 2, 1, 3).unwrap();
        let values: [f32; 7] = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let bytes: &[u8] = bytemuck::cast_slice(&values);
        let aligned = &bytes[4..];
        assert_eq!(expert_as::<f32>(&layout, aligned, 1).unwrap(), &[4.0, 5.0, 6.0]);

        let mut backing = [0u32; 7];
        let shifted: &mut [u8] = bytemuck::cast_slice_mut(&mut backing);
        shifted[1..25].copy_from_slice(aligned);
        let misaligned = &shifted[1..25];
        assert_eq!(expert_as::<f32>(&layout, misaligned, 0), Err(ViewError::Misaligned { align: 4 }));
        let mut out = [0f32; 3];
        copy_expert(&layout, misaligned, 1, &mut out).unwrap();
        assert_eq!(out, [4.0, 5.0, 6.0]);
        let mut short = [0f32; 2];
        assert!(matches!(copy_expert(&layout, misaligned, 1, &mut short), Err(ViewError::LengthMismatch { .. })));
    }

    #[test]
    fn element_types_must_match_the_format() {
        let layout = StackLayout::new(Format::Q8_0, 2, 1, 32).unwrap();
        let stack = [0u8; 68];
        assert_eq!(expert_as::<[u8; 34]>(&layout, &stack, 1).unwrap().len(), 1);
        assert_eq!(expert_as::<f32>(&layout, &stack, 1), Err(ViewError::ElementSize { elem_size: 4, block_bytes: 34 }));
        assert_eq!(
            expert_as::<[u8; 34]>(&layout, &stack, 2),
            Err(ViewError::Layout(LayoutError::ExpertOutOfRange { expert: 2, experts: 2 }))
        );
        assert!(matches!(
            cast_bytes::<u32>(&stack[..6]),
            Err(ViewError::LengthMismatch { bytes: 6, elem_size: 4 }) | Err(ViewError::Misaligned { .. })
        ));
    }
}
