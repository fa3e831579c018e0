//! A row format's dot product with a vector's activations ([`RowFormat`]): the plain formats
//! by [`super::order`], the block formats by [`super::blocks`]' terms over 32 accumulators, their
//! integer sums with AVX2 where the CPU has it.

use super::blocks::{Blocks, Q8Activations};
use super::order::{dot, pad_to_blocks, Bf16, Element, F32};

/// A vector's activations as the row formats read them: padded with zeros to whole passes
/// ([`pad_to_blocks`]) for the plain formats, quantized to 8 bits for the block formats.
#[derive(Debug, Clone, Default)]
pub(super) struct Activations {
    /// The values, padded to whole passes.
    pub(super) values: Vec<f32>,
    /// The values quantized (empty unless asked for).
    pub(super) q8: Q8Activations,
}

impl Activations {
    /// `x` as a dot product reads it; quantized too when `quantized`.
    pub(super) fn new(x: &[f32], quantized: bool) -> Self {
        let mut a = Self::default();
        pad_to_blocks(x, &mut a.values);
        if quantized {
            a.q8.quantize(x);
        }
        a
    }
}

/// A row format: how many bytes a row of `cols` elements takes, and its dot product with
/// activations, in the shared order.
pub(super) trait RowFormat {
    /// Whether the row loops fetch the rows ahead of the one they compute: the block formats,
    /// whose compute per byte keeps a thread from its memory's pace unless the two overlap; the
    /// plain formats compute at that pace with the hardware's own prefetch.
    const FETCH_AHEAD: bool;
    /// Bytes of a row of `cols` elements (a whole number of the format's blocks).
    fn row_bytes(cols: usize) -> usize;
    /// `row · x`, its accumulators taken `GROUP` at a time where the format allows it.
    fn dot<const GROUP: usize>(row: &[u8], cols: usize, x: &Activations) -> f32;
}

/// The plain formats' rows: elements of [`Element::BYTES`] each, read by [`dot`].
macro_rules! plain_rows {
    ($($element:ty),*) => {$(
        impl RowFormat for $element {
            const FETCH_AHEAD: bool = false;
            fn row_bytes(cols: usize) -> usize {
                cols.saturating_mul(<$element as Element>::BYTES)
            }
            #[inline(always)]
            fn dot<const GROUP: usize>(row: &[u8], cols: usize, x: &Activations) -> f32 {
                dot::<$element, GROUP>(row, cols, &x.values)
            }
        }
    )*};
}
plain_rows!(F32, Bf16);

impl<B: Blocks> RowFormat for B {
    const FETCH_AHEAD: bool = true;
    fn row_bytes(cols: usize) -> usize {
        cols.checked_div(B::ELEMS).unwrap_or(0).saturating_mul(B::BYTES)
    }

    /// [`block_dot`] over the quantized activations (`GROUP` is not used: a block's terms are
    /// few).
    #[inline(always)]
    fn dot<const GROUP: usize>(row: &[u8], cols: usize, x: &Activations) -> f32 {
        block_dot::<B>(row, cols, &x.q8)
    }
}

/// `row · x` for a row of `cols` elements (whole blocks of `B`) against quantized activations
/// of at least `cols` elements, in [`super::blocks`]' order ([`super::blocks::row_dot`]): the
/// whole row compiled for AVX2 where the CPU has it (the same integers, the same terms).
pub(super) fn block_dot<B: Blocks>(row: &[u8], cols: usize, x: &Q8Activations) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code, reason = "calling a function compiled for an instruction set the CPU was found to have")]
        // SAFETY: the CPU has AVX2 (detected above).
        return unsafe { super::blocks_avx2::row_dot::<B>(row, cols, x) };
    }
    super::blocks::row_dot::<B>(row, cols, x, B::sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffn::blocks::Q8_0;
    use crate::ffn::order::{lane_sum, LANES};

    #[test]
    fn a_block_row_sums_its_terms_in_32_accumulators() {
        // A Q8_0 row of 40 blocks: every byte 1 under scale 1.0, so each term is its activation
        // scale times 32 · 127; blocks 0 and 32 share accumulator 0.
        let cols = 40 * 32;
        let row: Vec<u8> = (0..40).flat_map(|_| [0x00, 0x3C].into_iter().chain([1u8; 32])).collect();
        let x: Vec<f32> = (0..cols).map(|i| 1.0 + (i / 32) as f32).collect();
        let a = Q8Activations::new(&x);
        let mut acc = [0.0f32; LANES];
        for b in 0..40 {
            acc[b % 32] += a.d[b] * (32 * 127) as f32;
        }
        assert_eq!(block_dot::<Q8_0>(&row, cols, &a).to_bits(), lane_sum(acc).to_bits());
    }
}
